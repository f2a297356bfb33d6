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

import asyncpg
import httpx
import orjson
import pytest

from app.journeys.rebuild import rebuild_workspace
from app.workspaces.repository import NewWorkspace
from tests.conftest import insert_raw_event

Stitch = Callable[[], Awaitable[int]]
# A payload without a messageId: ingest would refuse it, the stitcher cannot order it.
BROKEN = {"type": "track", "userId": "u1", "event": "Broken"}


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
    poison = f"{run}-poison"
    await insert_raw_event(db, workspace.workspace_id, poison, BROKEN)
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


async def test_a_rebuild_sets_a_poison_event_aside_and_stitches_it_once_fixed(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    conn: asyncpg.Connection,
    stitch: Stitch,
) -> None:
    """`journeys rebuild` after a poison event: the rebuild completes (the poison is set aside
    again, as the stitcher does) with the same state; once the raw event is fixed, the next
    rebuild stitches it and its failure is gone."""
    run = uuid.uuid4().hex[:8]
    good = [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": f"{run}-1"},
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed", "messageId": f"{run}-2"},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": f"{run}-3"},
    ]
    await send(client, workspace, good[:2])
    poison = f"{run}-poison"
    await insert_raw_event(db, workspace.workspace_id, poison, BROKEN)
    await send(client, workspace, good[2:])
    await stitch()

    async def stitched() -> set[str]:
        rows = await db.fetch(
            "SELECT message_id FROM journey_events WHERE workspace_id = $1", workspace.workspace_id
        )
        return {r["message_id"] for r in rows}

    async def failures() -> list[str]:
        rows = await db.fetch(
            "SELECT message_id FROM stitch_failures WHERE workspace_id = $1",
            workspace.workspace_id,
        )
        return [r["message_id"] for r in rows]

    async def stage() -> str:
        r = await client.get(
            "/v1/profiles/user_id:u1/stage",
            headers={"authorization": f"Bearer {workspace.read_key}"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["stage"])

    assert await stitched() == {e["messageId"] for e in good}
    assert await failures() == [poison]
    before = await stage()

    assert await rebuild_workspace(conn, workspace.workspace_id) == len(good) + 1
    assert await stitched() == {e["messageId"] for e in good}
    assert await failures() == [poison]
    assert await stage() == before

    fixed = {"type": "track", "userId": "u1", "event": "Broken", "messageId": poison}
    await db.execute(
        "UPDATE events SET payload = $3::jsonb WHERE workspace_id = $1 AND message_id = $2",
        workspace.workspace_id,
        poison,
        orjson.dumps(fixed).decode(),
    )
    await rebuild_workspace(conn, workspace.workspace_id)
    assert await stitched() == {e["messageId"] for e in good} | {poison}
    assert await failures() == []


async def test_a_rebuild_that_fails_for_every_event_fails_whole(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, stitch: Stitch
) -> None:
    """A fault that is not in the events (here: a connection without the app's JSON codecs, so
    every payload reads as text) fails the rebuild and rolls it back; it never sets a whole
    workspace aside."""
    run = uuid.uuid4().hex[:8]
    await send(
        client,
        workspace,
        [
            {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": f"{run}-1"},
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": f"{run}-2"},
        ],
    )
    await stitch()
    with pytest.raises(AttributeError):
        await rebuild_workspace(db, workspace.workspace_id)
    stitched = await db.fetchval(
        "SELECT count(*) FROM journey_events WHERE workspace_id = $1", workspace.workspace_id
    )
    failed = await db.fetchval(
        "SELECT count(*) FROM stitch_failures WHERE workspace_id = $1", workspace.workspace_id
    )
    assert (stitched, failed) == (2, 0)
