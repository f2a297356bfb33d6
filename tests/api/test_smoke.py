"""The smallest end-to-end proof: an event goes in over HTTP and is stored once."""

from __future__ import annotations

import asyncpg
import httpx

from app.workspaces.repository import NewWorkspace


async def test_track_is_stored_once(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    body = {"userId": "u1", "event": "Product Viewed", "messageId": "smoke-1"}
    for _ in range(2):
        r = await client.post("/v1/track", json=body, auth=(workspace.write_key, ""))
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
    rows = await db.fetch(
        "SELECT type, event, user_id FROM events WHERE workspace_id = $1", workspace.workspace_id
    )
    assert [tuple(r) for r in rows] == [("track", "Product Viewed", "u1")]
