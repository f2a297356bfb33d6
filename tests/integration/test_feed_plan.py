"""The stitcher's feed query must walk the feed index, never sort the whole events table by a
computed column (a bare `tx` in ORDER BY once meant the `tx::text::bigint` output column)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from app.db.partitions import ensure_week_partition, week_of
from app.journeys import repository


async def test_read_feed_walks_the_feed_index(db: asyncpg.Connection) -> None:
    await ensure_week_partition(db, week_of(datetime.now(UTC)))
    captured: list[str] = []

    class Explaining:
        async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
            await db.execute("SET enable_seqscan = off")
            try:
                rows = await db.fetch("EXPLAIN " + sql, *args)
            finally:
                await db.execute("RESET enable_seqscan")
            captured.append("\n".join(r[0] for r in rows))
            return []

    await repository.read_feed(Explaining(), shard=3, after=(0, 0), limit=10)  # type: ignore[arg-type]
    plan = captured[0]
    assert "ix_events_feed" in plan or ("events_p" in plan and "Index" in plan), plan
    # On a tiny table the planner may sort the few index-scanned rows; what must never happen
    # is ordering by the computed bigint column, which no index provides (a full sort).
    sort_keys = [line for line in plan.splitlines() if "Sort Key" in line]
    assert all("::bigint" not in line for line in sort_keys), plan
