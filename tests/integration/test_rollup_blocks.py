"""The aligned blocks the stitcher adds beside the day rollups, in the same statement."""

from __future__ import annotations

from datetime import date, timedelta

import asyncpg

from app.aggregates.facts import TOUCH_FIELDS, Deltas
from app.aggregates.repository import BLOCK_SPANS, apply_deltas, rebuild_blocks
from tests.conftest import new_workspace

EPOCH = date(1970, 1, 1)


def _touch(touches: float, customers: float) -> list[float]:
    return [touches, customers] + [0.0] * (len(TOUCH_FIELDS) - 2)


async def _blocks(conn: asyncpg.Connection, ws: int) -> dict[str, list[tuple[object, ...]]]:
    touch = await conn.fetch(
        "SELECT dim, span, start, stage, channel, dval, touches, customers FROM agg_touch_blocks "
        "WHERE workspace_id = $1 ORDER BY 1, 2, 3, 4, 5, 6",
        ws,
    )
    durations = await conn.fetch(
        "SELECT dim, span, start, stage, dval, bucket, n FROM agg_stage_duration_blocks "
        "WHERE workspace_id = $1 ORDER BY 1, 2, 3, 4, 5, 6",
        ws,
    )
    return {"touch": [tuple(r) for r in touch], "durations": [tuple(r) for r in durations]}


async def test_day_deltas_sum_into_their_aligned_blocks_and_cancelling_blocks_vanish(
    conn: asyncpg.Connection, database_url: str
) -> None:
    ws = (await new_workspace(database_url, "blocks")).workspace_id
    d1 = date(2026, 11, 1)
    d2 = d1 + timedelta(days=1)  # 2026-11-01/02 share their 2-, 8- and 32-day blocks
    before_epoch = date(1969, 12, 31)  # blocks start on or before the day, also before 1970
    deltas = Deltas(
        touches={
            ("", "", "purchase", "Email", d1.toordinal()): _touch(1.0, 2.0),
            ("", "", "purchase", "Email", d2.toordinal()): _touch(3.0, -2.0),
            ("persona", "pro", "purchase", "Email", d1.toordinal()): _touch(1.0, 0.0),
            ("persona", "pro", "purchase", "Email", d2.toordinal()): _touch(-1.0, 0.0),
            ("", "", "awareness", "Direct", before_epoch.toordinal()): _touch(1.0, 1.0),
        },
        durations={
            ("", "", "purchase", d1.toordinal(), 3): 2,
            ("", "", "purchase", d2.toordinal(), 3): -2,
            ("", "", "purchase", d2.toordinal(), 4): 1,
        },
    )
    async with conn.transaction():
        await apply_deltas(conn, ws, deltas)
    got = await _blocks(conn, ws)

    def start(day: date, span: int) -> date:
        return EPOCH + timedelta(days=((day - EPOCH).days // span) * span)

    assert all(start(d1, span) == start(d2, span) for span in BLOCK_SPANS)
    assert got["touch"] == sorted(
        [("", span, start(d1, span), "purchase", "Email", "", 4.0, 0.0) for span in BLOCK_SPANS]
        + [
            ("", span, start(before_epoch, span), "awareness", "Direct", "", 1.0, 1.0)
            for span in BLOCK_SPANS
        ]
    )
    assert got["durations"] == sorted(
        ("", span, start(d1, span), "purchase", "", 4, 1) for span in BLOCK_SPANS
    )
    # Day rows written in the same statement; the blocks equal the sums of the day rows.
    days = await conn.fetchval("SELECT count(*) FROM agg_touch_days WHERE workspace_id = $1", ws)
    assert days == 5
    async with conn.transaction():
        await apply_deltas(conn, ws, deltas)  # adding again doubles everything
    doubled = await _blocks(conn, ws)
    assert [r[:-2] for r in doubled["touch"]] == [r[:-2] for r in got["touch"]]
    assert [r[-2:] for r in doubled["touch"]] == [(2 * a, 2 * b) for *_, a, b in got["touch"]]
    async with conn.transaction():
        await rebuild_blocks(conn, ws)  # the blocks from the day rows, by another route
    rebuilt = await _blocks(conn, ws)
    assert [r for r in rebuilt["touch"] if any(r[-2:])] == doubled["touch"]
    assert [r for r in rebuilt["durations"] if r[-1]] == doubled["durations"]
