"""The stitcher's feed query must walk the feed index, never sort the whole events table by a
computed column (a bare `tx` in ORDER BY once meant the `tx::text::bigint` output column)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx

from app.db.partitions import ensure_week_partition, week_of
from app.journeys import repository
from app.workspaces.repository import NewWorkspace


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


async def test_pending_shards_names_only_shards_with_readable_events(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    stitch: Callable[[], Awaitable[int]],
    db: asyncpg.Connection,
) -> None:
    """The stitcher's idle check: one query tells which shards have events it could read now."""
    await stitch()  # whatever earlier tests left
    everyone = list(range(repository.SHARDS))
    assert await repository.pending_shards(db, everyone) == []
    shard = workspace.workspace_id % repository.SHARDS
    event = {"userId": "u-pending", "event": "Product Viewed"}
    r = await client.post("/v1/track", json=event, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    assert await repository.pending_shards(db, everyone) == [shard]
    others = [s for s in everyone if s != shard]
    assert await repository.pending_shards(db, others) == []
    assert await stitch() == 1
    assert await repository.pending_shards(db, everyone) == []
