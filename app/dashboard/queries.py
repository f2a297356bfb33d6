"""The dashboard's own reads: stage entries per day (for the trend chart) and the workspace's
name. Everything else comes from app/aggregates/service.py and app/profiles/service.py.

Same conventions as the aggregate service: rollup rows are cohort rows filed under the UTC day
a customer entered the stage, `dim`/`dval` select a breakdown group (`TOTAL` = no breakdown),
and every query leads with `workspace_id`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import asyncpg

from app.aggregates.service import Window


async def stage_days(
    conn: asyncpg.Connection, ws: int, *, dim: str, dval: str | None, win: Window
) -> dict[str, list[int]]:
    """stage -> customers who entered it on each day of the window (one entry per day, zeros
    included); `dval` keeps one breakdown group (None: every group of `dim` summed)."""
    rows = await conn.fetch(
        "SELECT day, stage, sum(entered)::int8 AS entered FROM agg_stage_days "
        "WHERE workspace_id = $1 AND dim = $2 AND day BETWEEN $3 AND $4 "
        "AND ($5::text IS NULL OR dval = $5) "
        "GROUP BY day, stage HAVING sum(entered) > 0",
        ws,
        dim,
        win.start,
        win.end,
        dval,
    )
    span = (win.end - win.start).days + 1
    out: dict[str, list[int]] = defaultdict(lambda: [0] * span)
    for r in rows:
        day: date = r["day"]
        out[r["stage"]][(day - win.start).days] = int(r["entered"])
    return dict(out)


def window_days(win: Window) -> list[date]:
    """Every day of a window, in order."""
    return [win.start + timedelta(days=i) for i in range((win.end - win.start).days + 1)]


async def workspace_name(conn: asyncpg.Connection, ws: int) -> str | None:
    """The workspace's name (shown in the header)."""
    name: str | None = await conn.fetchval("SELECT name FROM workspaces WHERE id = $1", ws)
    return name
