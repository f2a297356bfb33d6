"""`/healthz` (the process), `/readyz` (database and migrations), `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import text

from app.core.deps import runtime
from app.db.engine import raw_connection
from app.db.migrate import head_revision
from app.journeys.lag import stitch_lag
from app.webhooks.delivery import BACKLOG, measure_backlog

router = APIRouter(tags=["operations"])

STITCH_LAG = Gauge(
    "journeys_stitch_lag_seconds", "Age of the oldest committed event not yet stitched"
)
FEED_HELD = Gauge(
    "journeys_stitch_feed_held_seconds",
    "How long the write transaction holding the stitcher's feed back has been open (0: none)",
)


def _observe_lag(stitcher: dict[str, Any]) -> None:
    STITCH_LAG.set(stitcher["lag_seconds"])
    holder = stitcher["held_back_by"]
    FEED_HELD.set(holder["seconds"] if holder else 0.0)


_HEAD = head_revision()


_STATUS: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}
_READY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Database reachable and migrated; the stitcher's lag is reported",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status", "database", "migration", "stitcher"],
                    "properties": {
                        "status": {"const": "ok"},
                        "database": {"const": "ok"},
                        "migration": {"type": "string"},
                        "stitcher": {"type": "object"},
                    },
                }
            }
        },
    },
    503: {
        "description": "Database unreachable, or its schema is not at the newest migration",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "unavailable"}},
                }
            }
        },
    },
}


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get(
    "/healthz",
    summary="The process is up",
    responses={
        200: {"description": "Always", "content": {"application/json": {"schema": _STATUS}}}
    },
)
async def healthz() -> Response:
    """Always 200 while the process serves requests."""
    return _json({"status": "ok"})


@router.get("/readyz", summary="Database reachable and migrated to head", responses=_READY)
async def readyz(request: Request) -> Response:
    """200 when the database answers and its schema is at the newest migration, else 503."""
    rt = runtime(request)
    try:
        async with asyncio.timeout(2):
            async with rt.engine.connect() as conn:
                current = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        body = {"status": "unavailable", "database": "unreachable", "error": type(exc).__name__}
        return _json(body, 503)
    if current != _HEAD:
        return _json(
            {"status": "unavailable", "database": "ok", "migration": current, "expected": _HEAD},
            503,
        )
    async with raw_connection(rt.engine) as conn:
        stitcher = await stitch_lag(conn)
    _observe_lag(stitcher)
    # Lag is reported, not a reason to refuse traffic: ingest stays available while it catches up.
    return _json({"status": "ok", "database": "ok", "migration": current, "stitcher": stitcher})


POOL_IN_USE = Gauge("journeys_db_pool_in_use", "Database connections checked out", ["pool"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (stitcher lag, webhook backlog and pools measured on each
    scrape)."""
    rt = runtime(request)
    POOL_IN_USE.labels(pool="write").set(rt.engine.pool.checkedout())  # type: ignore[attr-defined]
    if rt.read_pool is not None:
        POOL_IN_USE.labels(pool="read").set(rt.read_pool.get_size() - rt.read_pool.get_idle_size())
    try:
        async with asyncio.timeout(2), raw_connection(runtime(request).engine) as conn:
            _observe_lag(await stitch_lag(conn))
            await measure_backlog(conn)
    except Exception:  # metrics must render even when the database is down
        STITCH_LAG.set(float("nan"))
        BACKLOG.set(float("nan"))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
