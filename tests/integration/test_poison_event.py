"""A poison event in the stitcher's feed is set aside; it never stalls its shard.

Ingest refuses what it can't parse, so the poison here is a raw event that reached `events`
some other way (a bug of an older version, a manual fix, a restore): its stored payload has no
`messageId`, which the stitcher cannot order or reference. Valid events ingested before and
after it, in the same shard, must all be stitched; the poison alone goes to `stitch_failures`
with its error, `/readyz` counts it, and later events keep flowing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson

from app.db.partitions import week_of
from app.workspaces.repository import NewWorkspace

Stitch = Callable[[], Awaitable[int]]


async def send(client: httpx.AsyncClient, ws: NewWorkspace, batch: list[dict[str, object]]) -> None:
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200 and "rejected" not in r.json(), r.text


async def test_a_poison_event_is_set_aside_and_its_shard_keeps_flowing(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, stitch: Stitch
) -> None:
    run = uuid.uuid4().hex[:8]
    before = [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": f"{run}-1"},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": f"{run}-2"},
    ]
    after = [
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": f"{run}-3"},
        {"type": "track", "userId": "u2", "event": "Product Viewed", "messageId": f"{run}-4"},
    ]
    await send(client, workspace, before)
    now = datetime.now(UTC)
    poison = f"{run}-poison"
    await db.execute(
        "INSERT INTO events (workspace_id, received_week, message_id, type, user_id, timestamp,"
        " received_at, payload) VALUES ($1, $2, $3, 'track', 'u1', $4, $4, $5::jsonb)",
        workspace.workspace_id,
        week_of(now),
        poison,
        now,
        orjson.dumps({"type": "track", "userId": "u1", "event": "Broken"}).decode(),
    )
    await send(client, workspace, after)

    await stitch()  # bounded by its own timeout; a stalled shard would never drain

    stitched = {
        r["message_id"]
        for r in await db.fetch(
            "SELECT message_id FROM journey_events WHERE workspace_id = $1",
            workspace.workspace_id,
        )
    }
    assert stitched == {e["messageId"] for e in before + after}
    failures = await db.fetch(
        "SELECT message_id, error FROM stitch_failures WHERE workspace_id = $1",
        workspace.workspace_id,
    )
    assert [r["message_id"] for r in failures] == [poison]
    assert "messageId" in failures[0]["error"]
    ready = (await client.get("/readyz")).json()
    assert ready["stitcher"]["failed_events"] >= 1

    # The shard is not stalled: what arrives next is stitched as usual, into the same customer.
    later = [{"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": f"{run}-5"}]
    await send(client, workspace, later)
    await stitch()
    timeline = await client.get(
        "/v1/profiles/user_id:u1/timeline",
        headers={"authorization": f"Bearer {workspace.read_key}"},
    )
    assert timeline.status_code == 200, timeline.text
    ids = {e["message_id"] for e in timeline.json()["events"]}
    assert ids == {f"{run}-1", f"{run}-2", f"{run}-3", f"{run}-5"}
