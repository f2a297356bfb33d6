"""Deletion racing ingestion: events of the customer keep arriving while its deletion request
is made and its job runs. Afterwards nothing of its identifiers exists anywhere, the profile
is 404, and new events with those identifiers are accepted and dropped."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from app.workspaces.repository import NewWorkspace

Stitch = Callable[[], Awaitable[int]]

USER, ANON, EMAIL = "racer", "racer-device", "racer@example.com"


def _ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": uuid.uuid4().hex, **fields}


def _racer_batch(i: int) -> list[dict[str, Any]]:
    """Events of the customer under every identifier, and of a bystander."""
    return [
        _ev("track", userId=USER, event="Product Viewed", properties={"i": i}),
        _ev("page", anonymousId=ANON, name="Home"),
        _ev("identify", anonymousId=ANON, userId=USER, traits={"email": EMAIL}),
        _ev("identify", anonymousId=f"new-device-{i}", traits={"email": EMAIL}),
        _ev("track", userId="bystander", event="Product Viewed", properties={"i": i}),
    ]


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, batch: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}


async def _left_behind(db: asyncpg.Connection, workspace_id: int) -> dict[str, int]:
    """Rows that still name the customer's identifiers, per table."""
    checks = {
        "events": "SELECT count(*) FROM events WHERE workspace_id = $1 AND (user_id = $2 "
        "OR anonymous_id = $3 OR anonymous_id LIKE 'new-device-%' OR payload::text LIKE $4)",
        "journey_events": "SELECT count(*) FROM journey_events WHERE workspace_id = $1 AND "
        "(user_id = $2 OR anonymous_id = $3 OR anonymous_id LIKE 'new-device-%' "
        "OR traits::text LIKE $4)",
        "identities": "SELECT count(*) FROM identities WHERE workspace_id = $1 AND "
        "(value IN ($2, $3) OR value LIKE 'new-device-%' OR value LIKE $4)",
        "identity_links": "SELECT count(*) FROM identity_links WHERE workspace_id = $1 AND "
        "(a_value IN ($2, $3) OR b_value IN ($2, $3) OR b_value LIKE $4)",
    }
    out = {}
    for table, sql in checks.items():
        out[table] = int(await db.fetchval(sql, workspace_id, USER, ANON, f"%{EMAIL}%"))
    return out


async def _dropped(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(r'^journeys_events_dropped_total{reason="suppressed"} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_events_racing_a_deletion_leave_nothing_behind(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, db: asyncpg.Connection
) -> None:
    read = {"Authorization": f"Bearer {workspace.read_key}"}
    server = {"Authorization": f"Bearer {workspace.server_key}"}
    await _send(client, workspace, _racer_batch(-1))
    await stitch()
    assert (await client.get(f"/v1/profiles/user_id:{USER}", headers=read)).status_code == 200

    dropped_before = await _dropped(client)
    sent = asyncio.Event()
    rounds = 40

    async def ingest() -> None:
        for i in range(rounds):
            await _send(client, workspace, _racer_batch(i))
            if i == rounds // 4:
                sent.set()
            await asyncio.sleep(0)  # let the other tasks interleave between requests

    async def keep_stitching() -> None:
        while not ingesting.done():
            await stitch()  # stitches racing events and runs the job, concurrently with ingest

    async def delete() -> int:
        await sent.wait()  # the deletion lands in the middle of the stream,
        deadline = time.monotonic() + 30
        while True:  # once some of it has been stitched into the customer
            profile = (await client.get(f"/v1/profiles/user_id:{USER}", headers=read)).json()
            if profile["event_count"] > 4:
                break
            assert time.monotonic() < deadline, profile
            await asyncio.sleep(0)
        r = await client.delete(f"/v1/profiles/email:{EMAIL}", headers=server)
        assert r.status_code == 202, r.text
        return int(r.json()["job_id"])

    ingesting = asyncio.create_task(ingest())
    job_id, _ = await asyncio.gather(delete(), keep_stitching())
    await ingesting

    # Drain until the job is done (a deadline, not a sleep).
    deadline = time.monotonic() + 60
    while True:
        await stitch()
        status = (await client.get(f"/v1/deletions/{job_id}", headers=server)).json()
        if status["status"] == "done":
            break
        assert status["status"] in ("pending", "running"), status
        assert time.monotonic() < deadline, status
    # It was a race: events ingested before the request were deleted with the customer, and
    # events ingested after it were dropped by the stitcher.
    assert status["deleted_events"] > 4, status
    assert status["identifiers"] >= 3
    assert await _dropped(client) > dropped_before

    assert await _left_behind(db, workspace.workspace_id) == {
        "events": 0,
        "journey_events": 0,
        "identities": 0,
        "identity_links": 0,
    }
    for ident in (f"user_id:{USER}", f"anonymous_id:{ANON}", f"email:{EMAIL}"):
        assert (await client.get(f"/v1/profiles/{ident}", headers=read)).status_code == 404
    bystander = (await client.get("/v1/profiles/user_id:bystander", headers=read)).json()
    assert bystander["event_count"] == rounds + 1

    # Later events carrying the identifiers: 200, and dropped.
    await _send(client, workspace, _racer_batch(999))
    await stitch()
    assert await _left_behind(db, workspace.workspace_id) == {
        "events": 0,
        "journey_events": 0,
        "identities": 0,
        "identity_links": 0,
    }
    assert (await client.get(f"/v1/profiles/user_id:{USER}", headers=read)).status_code == 404
    bystander = (await client.get("/v1/profiles/user_id:bystander", headers=read)).json()
    assert bystander["event_count"] == rounds + 2
