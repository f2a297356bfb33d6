"""A shard that is behind gets larger batches, and one that has caught up gets short ones again."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from app.journeys.repository import SHARDS
from app.journeys.stitcher import Stitcher
from app.workspaces.repository import NewWorkspace

Stitch = Callable[[], Awaitable[int]]


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    ids = [f"{run}-{i}" for i in range(count)]
    batch = [
        {"type": "track", "userId": f"u-{run}-{i % 3}", "event": "Product Viewed", "messageId": m}
        for i, m in enumerate(ids)
    ]
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200 and "rejected" not in r.json(), r.text
    return ids


async def test_batches_double_while_full_and_shrink_when_caught_up(
    app: Any,
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    stitch: Stitch,
) -> None:
    await stitch()  # whatever earlier tests left in the feed
    shard = workspace.workspace_id % SHARDS
    stitcher = Stitcher(app.state.runtime.engine, batch_size=2, max_batch_size=5, shards=(shard,))
    ids = await _send(client, workspace, 12)
    # 2, then doubled while full (4), capped at 5, then the rest (1): not full, so back to 2.
    assert [await stitcher.stitch_shard(shard) for _ in range(5)] == [2, 4, 5, 1, 0]
    more = await _send(client, workspace, 3)
    assert [await stitcher.stitch_shard(shard) for _ in range(3)] == [2, 1, 0]
    # An explicit limit is taken as given and does not change the growth.
    await _send(client, workspace, 3)
    assert await stitcher.stitch_shard(shard, limit=3) == 3

    stored = await db.fetchval(
        "SELECT count(*) FROM journey_events WHERE workspace_id = $1 AND message_id = ANY($2)",
        workspace.workspace_id,
        ids + more,
    )
    assert stored == len(ids) + len(more)
