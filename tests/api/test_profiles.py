"""The profile API over stitched journeys: every identifier kind, stages, timeline, ledger."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.workspaces.repository import NewWorkspace

Stitch = Callable[[], Awaitable[int]]


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "messageId": uuid.uuid4().hex, **fields}


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert "rejected" not in r.json(), r.json()


def _read(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.read_key}"}


async def test_anonymous_history_joins_on_identify(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev("page", "2026-01-01T10:00:00Z", anonymousId="a1", name="Home"),
            _ev("track", "2026-01-01T10:01:00Z", anonymousId="a1", event="Product Viewed"),
        ],
    )
    await stitch()
    await _send(
        client,
        workspace,
        [
            _ev(
                "identify",
                "2026-01-01T10:05:00Z",
                anonymousId="a1",
                userId="u1",
                traits={"email": " Ann@Example.com "},
            ),
            _ev("track", "2026-01-02T09:00:00Z", userId="u1", event="Order Completed"),
        ],
    )
    await stitch()

    by_anon = (await client.get("/v1/profiles/anonymous_id:a1", headers=_read(workspace))).json()
    by_user = (await client.get("/v1/profiles/user_id:u1", headers=_read(workspace))).json()
    by_email = (
        await client.get("/v1/profiles/email:ann@example.com", headers=_read(workspace))
    ).json()
    assert by_anon["customer_id"] == by_user["customer_id"] == by_email["customer_id"]
    assert by_user["event_count"] == 4
    assert by_user["stage"] == "purchase"
    kinds = {(i["kind"], i["value"]) for i in by_user["identifiers"]}
    assert kinds == {("anonymous_id", "a1"), ("user_id", "u1"), ("email", "ann@example.com")}

    stage = (await client.get("/v1/profiles/user_id:u1/stage", headers=_read(workspace))).json()
    assert [h["stage"] for h in stage["stage_history"]] == [
        "awareness",
        "consideration",
        "purchase",
    ]
    timeline = (
        await client.get("/v1/profiles/user_id:u1/timeline?limit=3", headers=_read(workspace))
    ).json()
    assert [e["type"] for e in timeline["events"]] == ["page", "track", "identify"]
    assert timeline["next_cursor"]
    rest = (
        await client.get(
            f"/v1/profiles/user_id:u1/timeline?cursor={timeline['next_cursor']}",
            headers=_read(workspace),
        )
    ).json()
    assert [e["event"] for e in rest["events"]] == ["Order Completed"]
    assert rest["next_cursor"] is None

    ledger = (
        await client.get("/v1/profiles/user_id:u1/identities", headers=_read(workspace))
    ).json()["ledger"]
    assert {e["rule"] for e in ledger} >= {"identify", "email"}


async def test_two_users_never_merge_automatically(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev("identify", "2026-01-01T10:00:00Z", userId="u1", traits={"email": "x@example.com"}),
            _ev("identify", "2026-01-01T11:00:00Z", userId="u2", traits={"email": "x@example.com"}),
        ],
    )
    await stitch()
    one = (await client.get("/v1/profiles/user_id:u1", headers=_read(workspace))).json()
    two = (await client.get("/v1/profiles/user_id:u2", headers=_read(workspace))).json()
    assert one["customer_id"] != two["customer_id"]
    ledger = (
        await client.get("/v1/profiles/user_id:u2/identities", headers=_read(workspace))
    ).json()["ledger"]
    assert any(e["action"] == "refused" for e in ledger), ledger


async def test_unknown_identifier_is_404_and_bad_one_400(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.get("/v1/profiles/user_id:nobody", headers=_read(workspace))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.get("/v1/profiles/nokind", headers=_read(workspace))
    assert r.status_code == 400
