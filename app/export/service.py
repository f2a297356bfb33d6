"""Exports of a workspace: the aggregate reports, and one row per customer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from app.aggregates import service as aggregates
from app.export import repository
from app.export.aggregates import COLUMNS as AGGREGATE_COLUMNS
from app.export.aggregates import aggregate_rows, default_conversion
from app.export.tables import Column, Format, Kind, TableWriter
from app.journeys.stitcher import model_for

CHUNK = 5_000

PROFILE_COLUMNS = (
    Column("customer_id", Kind.TEXT),
    Column("stage", Kind.TEXT),
    Column("stage_entered_at", Kind.TIMESTAMP),
    Column("first_seen", Kind.TIMESTAMP),
    Column("last_seen", Kind.TIMESTAMP),
    Column("event_count", Kind.INT),
    Column("identifiers", Kind.TEXT_LIST),
    Column("traits", Kind.JSON),
)

# (done, total) after each chunk; total first, with done = 0.
Progress = Callable[[int, int], None]


class WorkspaceNotFound(LookupError):
    """No workspace has this name or id."""


async def find_workspace(conn: asyncpg.Connection, ref: str) -> int:
    """A workspace id from its name or numeric id."""
    found = await conn.fetchval(
        "SELECT id FROM workspaces WHERE name = $1 OR id::text = $1 ORDER BY name = $1 DESC "
        "LIMIT 1",
        ref,
    )
    if found is None:
        raise WorkspaceNotFound(ref)
    return int(found)


def format_of(path: Path, fmt: Format | None) -> Format:
    """The format asked for, else the one the file name says (`.parquet`), else CSV."""
    if fmt is not None:
        return fmt
    return Format.PARQUET if path.suffix.lower() in (".parquet", ".pq") else Format.CSV


async def export_aggregates(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    path: Path,
    fmt: Format,
    start: date | None = None,
    end: date | None = None,
    conversion: str | None = None,
) -> int:
    """The aggregate reports of the window (default: the last 30 days, as the API) to `path`;
    returns the rows written. Raises ProblemError for a window or stage the API would refuse."""
    win = aggregates.window(start, end)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        model = await model_for(conn, workspace_id)
        rows = await aggregate_rows(
            conn,
            workspace_id,
            model,
            win=win,
            conversion=conversion or default_conversion(model),
        )
    with TableWriter(path, fmt, AGGREGATE_COLUMNS) as out:
        out.write(rows)
    return out.rows


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


async def export_profiles(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    path: Path,
    fmt: Format,
    start: date | None = None,
    end: date | None = None,
    progress: Progress | None = None,
    chunk: int = CHUNK,
) -> int:
    """One row per customer to `path`, `chunk` customers at a time, all from one snapshot;
    with `start`/`end` (UTC days, inclusive) only customers seen in that window. Returns the
    rows written."""
    seen_from = _day_start(start) if start else None
    seen_before = _day_start(end + timedelta(days=1)) if end else None
    window: dict[str, Any] = {"seen_from": seen_from, "seen_before": seen_before}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        total = await repository.count_customers(conn, workspace_id, **window)
        if progress is not None:
            progress(0, total)
        with TableWriter(path, fmt, PROFILE_COLUMNS) as out:
            after = ""
            while True:
                rows = await repository.customers_after(
                    conn, workspace_id, after=after, limit=chunk, **window
                )
                if not rows:
                    break
                ids = [r["customer_id"] for r in rows]
                identifiers = await repository.identifiers_of(conn, workspace_id, ids)
                out.write(
                    [
                        {**dict(r), "identifiers": identifiers.get(r["customer_id"], [])}
                        for r in rows
                    ]
                )
                after = ids[-1]
                if progress is not None:
                    progress(out.rows, total)
    return out.rows
