"""Background jobs of a workspace, run by the stitcher: re-deriving stages after a change of
the journey model, and deleting a customer (app/privacy/deletion.py). Each chunk is one
transaction that also records the job's progress, so a job survives crashes and restarts and
never does a customer twice."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from app.core.logging import get_logger
from app.db.engine import is_unavailable
from app.journeys import repository as journeys
from app.journeys.stitch import WorkspaceStitcher

log = get_logger(__name__)

REDERIVE = "rederive_stages"
# Deleting a customer (GDPR); starts at once: it re-derives nothing with a stale model.
DELETE_CUSTOMER = "delete_customer"
CHUNK = 500
# A stitcher may hold a workspace's old model for this long (see stitcher.MODEL_CACHE_SECONDS);
# a job starts after it, so no customer is re-derived and then stitched with the old model.
START_DELAY_SECONDS = 6


def job_json(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """The public view of a job."""
    if row is None:
        return None
    return {
        "job_id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "done": row["done"],
        "total": row["total"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "error": row["error"],
    }


async def enqueue(
    conn: asyncpg.Connection, workspace_id: int, kind: str, *, total: int | None = None
) -> asyncpg.Record:
    """Queue a job; `total` defaults to the number of customers at this moment."""
    row = await conn.fetchrow(
        "INSERT INTO jobs (workspace_id, kind, total) VALUES "
        "($1, $2, coalesce($3, (SELECT count(*) FROM customers WHERE workspace_id = $1))) "
        "RETURNING *",
        workspace_id,
        kind,
        total,
    )
    assert row is not None
    return row


async def latest(conn: asyncpg.Connection, workspace_id: int, kind: str) -> asyncpg.Record | None:
    """The newest job of a kind."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM jobs WHERE workspace_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
        workspace_id,
        kind,
    )
    return row


async def run_one_chunk(conn: asyncpg.Connection, shards: Iterable[int]) -> bool:
    """Advance the oldest open job of these shards by one chunk; False when there is none."""
    from app.journeys.stitcher import model_for

    async with conn.transaction():
        # A failed job stays failed (it is not retried for ever). Deletions go first: they
        # are short, and must not wait behind the re-derivation of a large workspace.
        job = await conn.fetchrow(
            "SELECT * FROM jobs WHERE status IN ('pending', 'running') "
            "AND workspace_id % 16 = ANY($1::int[]) "
            f"AND (kind = '{DELETE_CUSTOMER}' "
            f"OR created_at < now() - interval '{START_DELAY_SECONDS} seconds') "
            f"ORDER BY kind = '{DELETE_CUSTOMER}' DESC, created_at LIMIT 1 "
            "FOR UPDATE SKIP LOCKED",
            sorted(shards),
        )
        if job is None:
            return False
        workspace_id = job["workspace_id"]
        # Serialise with the stitcher of this shard, which writes the same rows.
        await journeys.lock_progress(conn, workspace_id % journeys.SHARDS)
        if job["kind"] == DELETE_CUSTOMER:
            await run_deletion_step(conn, job)
            return True
        if job["kind"] != REDERIVE:
            await conn.execute(
                "UPDATE jobs SET status = 'failed', error = 'unknown job kind', updated_at = now()"
                " WHERE workspace_id = $1 AND id = $2",
                workspace_id,
                job["id"],
            )
            return True
        # A newer job of the same kind supersedes this one (the model changed again).
        newer = await conn.fetchval(
            "SELECT 1 FROM jobs WHERE workspace_id = $1 AND kind = $2 AND id > $3",
            workspace_id,
            job["kind"],
            job["id"],
        )
        ids = (
            []
            if newer
            else [
                r["customer_id"]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customers "
                    "WHERE workspace_id = $1 AND customer_id > $2 "
                    "ORDER BY customer_id LIMIT $3",
                    workspace_id,
                    job["cursor"],
                    CHUNK,
                )
            ]
        )
        if not ids:
            await conn.execute(
                "UPDATE jobs SET status = 'done', updated_at = now() "
                "WHERE workspace_id = $1 AND id = $2",
                workspace_id,
                job["id"],
            )
            return True
        model = await model_for(conn, workspace_id)
        await WorkspaceStitcher(conn, workspace_id, model).recompute_customers(ids)
        await conn.execute(
            "UPDATE jobs SET status = 'running', done = done + $3, cursor = $4, updated_at = now()"
            " WHERE workspace_id = $1 AND id = $2",
            workspace_id,
            job["id"],
            len(ids),
            ids[-1],
        )
        return True


async def run_deletion_step(conn: asyncpg.Connection, job: asyncpg.Record) -> None:
    """One step of a deletion; a step that fails is rolled back to a savepoint and counted, and
    after a few failures the job is marked failed (with its error) instead of retried for ever."""
    from app.journeys.stitcher import model_for
    from app.privacy import deletion

    model = await model_for(conn, job["workspace_id"])
    try:
        async with conn.transaction():
            await deletion.run_chunk(conn, job, model)
    except Exception as exc:
        if is_unavailable(exc):
            raise
        log.exception("deletion_step_failed", job_id=job["id"], error=repr(exc))
        await deletion.record_failure(conn, job, exc)
