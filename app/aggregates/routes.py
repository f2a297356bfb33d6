"""Aggregate routes (read key): stage-level figures for dashboards, read from the rollups."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.aggregates import service
from app.aggregates.cache import ANSWERS, snapshot_version
from app.aggregates.facts import ATTRIBUTION_MODELS
from app.aggregates.funnel_store import FUNNELS, IndexUnusable, funnel_found
from app.core.auth import ReadWorkspace
from app.core.deps import runtime
from app.journeys.stages import JourneyModel

router = APIRouter(prefix="/v1/aggregates", tags=["aggregates"])

_DAY = r"^\d{4}-\d{2}-\d{2}$"
From = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=_DAY,
        description="First UTC day of the window, YYYY-MM-DD (default: 29 days before `to`)",
        json_schema_extra={"format": "date"},
    ),
]
To = Annotated[
    str | None,
    Query(
        alias="to",
        pattern=_DAY,
        description="Last UTC day of the window, YYYY-MM-DD (default: today)",
        json_schema_extra={"format": "date"},
    ),
]
Breakdown = Annotated[
    str | None,
    Query(
        description="`trait:NAME` or `property:NAME`, one of the journey model's `breakdowns`",
        examples=["trait:persona"],
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Invalid window, stage, steps, model or cursor, or a breakdown the "
        "journey model does not keep"
    },
    401: {"description": "Missing or unknown read key"},
    403: {"description": "A key of another kind"},
}


def _doc(*names: str) -> str:
    return "\n\n".join(f"**{name}**: {service.DEFINITIONS[name]}" for name in names)


Compute = Callable[[asyncpg.Connection, JourneyModel, str], Awaitable[Any]]


def _fresh(request: Request) -> bool:
    """`Cache-Control: no-cache` (or `no-store`): compute the answer now, whatever is stored."""
    value = request.headers.get("cache-control", "").lower()
    return "no-cache" in value or "no-store" in value


async def _answer(
    request: Request,
    workspace_id: int,
    breakdown: str | None,
    key: tuple[Any, ...],
    compute: Compute,
    *,
    live: Callable[[asyncpg.Connection, JourneyModel, str, Any], Awaitable[Any]] | None = None,
    serial: bool = True,
    guard: Callable[[asyncpg.Connection], Awaitable[AbstractAsyncContextManager[Any]]]
    | None = None,
) -> Response:
    """The answer of `compute` for this request: from the exact answer cache when the
    workspace's data version and journey model are those it was computed for, else computed in
    one REPEATABLE READ snapshot and stored under that snapshot's version. `live` adds what
    depends on the clock (never cached). `X-Journeys-Cache`: hit, miss or bypass. `serial`:
    computed without parallel workers (rollup reads; a funnel's scan may use them). `guard`:
    a context held from before the snapshot is taken until the answer is computed."""
    fresh = _fresh(request)
    async with runtime(request).read_connection() as conn:
        state = await ANSWERS.state(conn, workspace_id)
        dim = service.breakdown_dim(state.model, breakdown)
        stored = (workspace_id, state.version, state.model_text, dim, key)
        body = None if fresh else ANSWERS.get(stored)
        status = "hit"
        if body is None:
            status = "bypass" if fresh else "miss"
            held = contextlib.nullcontext() if guard is None else await guard(conn)
            async with (
                held,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                version = await snapshot_version(conn, workspace_id, serial=serial)
                body = await compute(conn, state.model, dim)
            ANSWERS.put((workspace_id, version, state.model_text, dim, key), body)
        if live is not None:
            body = await live(conn, state.model, dim, body)
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"X-Journeys-Cache": status}
    )


@asynccontextmanager
async def _reading(
    request: Request, workspace_id: int, breakdown: str | None
) -> AsyncIterator[tuple[asyncpg.Connection, JourneyModel, str]]:
    """A read connection, the workspace's journey model and the breakdown's rollup `dim`."""
    async with runtime(request).read_connection() as conn:
        model = (await ANSWERS.state(conn, workspace_id)).model
        yield conn, model, service.breakdown_dim(model, breakdown)


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/stages",
    summary="Customers per stage, entries and conversion",
    description="`{from, to, stages: [{stage, customers, entered, converted, conversion_rate, "
    "median_seconds_to_next}]}`\n\n"
    + _doc(
        "window",
        "customers",
        "entered",
        "converted",
        "conversion_rate",
        "median_seconds_to_next",
        "breakdown",
    ),
    responses=_ERRORS,
)
async def get_stages(
    request: Request,
    workspace_id: ReadWorkspace,
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end)
    return await _answer(
        request,
        workspace_id,
        breakdown,
        ("stages", win),
        lambda conn, model, dim: service.stages(conn, workspace_id, model, dim=dim, win=win),
    )


@router.get(
    "/funnel",
    summary="An ordered funnel of stages or events",
    description="`{from, to, window_seconds, steps: [{step, kind, customers, conversion_rate, "
    "conversion_rate_from_first, median_seconds_from_previous}]}`; `conversion_rate` is from "
    "the previous step.\n\n" + _doc("window", "funnel", "breakdown"),
    responses=_ERRORS,
)
async def get_funnel(
    request: Request,
    workspace_id: ReadWorkspace,
    steps: Annotated[
        str,
        Query(
            description="2 to 10 comma-separated stage or event names",
            examples=["consideration,purchase,loyalty"],
        ),
    ],
    window: Annotated[
        str, Query(description="Time allowed from the first step: 14d, 24h, 30m or 3600s")
    ] = "14d",
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end)
    span = service.funnel_window(window)
    settings = runtime(request).settings
    indexed = False

    async def guard(conn: asyncpg.Connection) -> AbstractAsyncContextManager[Any]:
        # A large workspace's funnels come from its in-memory index, whose gate is entered
        # before the request's snapshot: the snapshots it is brought to only move forward
        # (`funnel_found` lets the gate go once the index is at this snapshot).
        nonlocal indexed
        indexed = await FUNNELS.chosen(
            conn, workspace_id, min_customers=settings.funnel_index_min_customers
        )
        return FUNNELS.lock(workspace_id) if indexed else contextlib.nullcontext()

    async def compute(conn: asyncpg.Connection, model: JourneyModel, dim: str) -> Any:
        parsed = service.funnel_steps(model, steps)
        if indexed:
            try:
                found = await funnel_found(
                    FUNNELS,
                    conn,
                    workspace_id,
                    stages=model.stage_names,
                    breakdowns=model.breakdowns,
                    dim=dim,
                    steps=parsed,
                    start=win.start_at,
                    end=win.end_at,
                    span=span,
                    max_bytes=settings.funnel_index_max_mb * 1_000_000,
                    # (a large workspace's index loads in the background: SQL meanwhile)
                    connect=runtime(request).read_connection,
                )
                return service.funnel_answer(dim, win, parsed, span, found)
            except IndexUnusable:
                pass  # logged; this workspace keeps the SQL path
        return await service.funnel(
            conn, workspace_id, model, dim=dim, win=win, steps=parsed, span=span
        )

    return await _answer(
        request,
        workspace_id,
        breakdown,
        ("funnel", win, steps, span),
        compute,
        serial=False,
        guard=guard,
    )


@router.get(
    "/channels",
    summary="Channels that touched customers in a stage",
    description="`{from, to, stage, channels: [{channel, touches, customers}]}`; without "
    "`stage`, touches over the whole journey, filed under each customer's first day.\n\n"
    + _doc("window", "touches", "customers", "breakdown"),
    responses=_ERRORS,
)
async def get_channels(
    request: Request,
    workspace_id: ReadWorkspace,
    stage: Annotated[str | None, Query(description="A stage of the journey model")] = None,
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end)
    return await _answer(
        request,
        workspace_id,
        breakdown,
        ("channels", win, stage),
        lambda conn, model, dim: service.channels(
            conn, workspace_id, model, dim=dim, win=win, stage=stage
        ),
    )


@router.get(
    "/attribution",
    summary="Conversion credit per channel",
    description="`{from, to, model, conversion, conversions, channels: [{channel, credit}]}`"
    "\n\n" + _doc("window", "attribution", "breakdown"),
    responses=_ERRORS,
)
async def get_attribution(
    request: Request,
    workspace_id: ReadWorkspace,
    model: Annotated[str, Query(description=f"One of {', '.join(ATTRIBUTION_MODELS)}")] = "last",
    conversion: Annotated[str, Query(description="The conversion stage")] = "purchase",
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end)
    return await _answer(
        request,
        workspace_id,
        breakdown,
        ("attribution", win, model, conversion),
        lambda conn, journey, dim: service.attribution(
            conn, workspace_id, journey, dim=dim, win=win, model_name=model, conversion=conversion
        ),
    )


@router.get(
    "/journey-map",
    summary="The journey map: every stage with its channels and feedback",
    description="`{from, to, stages: [{stage, customers, entered, conversion_rate, "
    "median_seconds_in_stage, dropoff, feedback, channels: [{channel, touches, customers, "
    "conversion_rate, feedback}]}]}`; `feedback` = `{responses, nps, csat, effort, "
    "success_rate, sentiment}`.\n\n"
    + _doc("window", "customers", "entered", "touches", "feedback", "dropoff", "breakdown"),
    responses=_ERRORS,
)
async def get_journey_map(
    request: Request,
    workspace_id: ReadWorkspace,
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end)
    return await _answer(
        request,
        workspace_id,
        breakdown,
        ("journey-map", win),
        lambda conn, model, dim: service.journey_map_rollups(
            conn, workspace_id, model, dim=dim, win=win
        ),
        live=lambda conn, model, dim, base: service.with_dropoff(
            conn, workspace_id, model, base, dim=dim
        ),
    )


@router.get(
    "/dropoff",
    summary="Customers stalled in a stage",
    description="`{stages: [{stage, threshold_seconds, stalled}]}`; with `customers=true&stage=`"
    ", `{stage, threshold_seconds, customers: [{customer_id, entered_at, stalled_seconds, "
    "last_seen, email}], next_cursor}` for automation tools. Without from/to: everyone stalled "
    "now.\n\n" + _doc("dropoff", "breakdown"),
    responses=_ERRORS,
)
async def get_dropoff(
    request: Request,
    workspace_id: ReadWorkspace,
    customers: bool = False,
    stage: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    start: From = None,
    end: To = None,
    breakdown: Breakdown = None,
) -> Response:
    win = service.window(start, end) if start or end else None
    async with _reading(request, workspace_id, breakdown) as (conn, model, dim):
        return _json(
            await service.dropoff(
                conn,
                workspace_id,
                model,
                dim=dim,
                win=win,
                with_customers=customers,
                stage=stage,
                limit=limit,
                cursor=cursor,
            )
        )
