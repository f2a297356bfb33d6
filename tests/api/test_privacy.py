"""Privacy: deleting a customer (job, suppression, rollups), export, and consent."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from app.core.security import hash_key
from app.db.engine import connect
from app.journeys import jobs
from app.journeys.repository import lock_progress
from app.privacy import deletion
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

Stitch = Callable[[], Awaitable[int]]
WINDOW = {"from": "2026-01-01", "to": "2026-01-31"}


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "messageId": uuid.uuid4().hex, **fields}


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert "rejected" not in r.json(), r.json()


def _read(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.read_key}"}


def _server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


def _sha(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()


def _ann(
    user: str = "u1", anon: str = "a1", email: str = "ann@example.com"
) -> list[dict[str, Any]]:
    """A customer with three identifiers, a purchase and properties."""
    return [
        _ev("page", "2026-01-02T10:00:00Z", anonymousId=anon, name="Home"),
        _ev(
            "track",
            "2026-01-02T10:01:00Z",
            anonymousId=anon,
            event="Product Viewed",
            properties={"sku": "A-1", "price": 12.5},
        ),
        _ev(
            "identify",
            "2026-01-02T10:05:00Z",
            anonymousId=anon,
            userId=user,
            traits={"email": email},
        ),
        _ev("track", "2026-01-03T09:00:00Z", userId=user, event="Order Completed"),
    ]


def _bob(user: str = "u2") -> list[dict[str, Any]]:
    return [
        _ev("page", "2026-01-04T10:00:00Z", userId=user, name="Home"),
        _ev("track", "2026-01-05T10:00:00Z", userId=user, event="Checkout Started"),
    ]


async def _delete(client: httpx.AsyncClient, ws: NewWorkspace, ident: str) -> int:
    r = await client.delete(f"/v1/profiles/{ident}", headers=_server(ws))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert r.headers["location"] == f"/v1/deletions/{body['job_id']}"
    return int(body["job_id"])


async def _deletion(client: httpx.AsyncClient, ws: NewWorkspace, job_id: int) -> dict[str, Any]:
    r = await client.get(f"/v1/deletions/{job_id}", headers=_server(ws))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _count(db: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await db.fetchval(sql, *args))


async def _held_about(db: asyncpg.Connection, ws: NewWorkspace, user: str, anon: str) -> int:
    """Rows anywhere that name this user id or anonymous id."""
    wid = ws.workspace_id
    total = 0
    for sql in (
        "SELECT count(*) FROM events WHERE workspace_id = $1 "
        "AND (user_id = $2 OR anonymous_id = $3)",
        "SELECT count(*) FROM journey_events WHERE workspace_id = $1 "
        "AND (user_id = $2 OR anonymous_id = $3)",
        "SELECT count(*) FROM identities WHERE workspace_id = $1 AND value IN ($2, $3)",
        "SELECT count(*) FROM identity_links WHERE workspace_id = $1 "
        "AND (a_value IN ($2, $3) OR b_value IN ($2, $3))",
        "SELECT count(*) FROM identity_ledger WHERE workspace_id = $1 "
        "AND ('user_id:' || $2 = ANY(identifiers) OR 'anonymous_id:' || $3 = ANY(identifiers))",
    ):
        total += await _count(db, sql, wid, user, anon)
    return total


async def test_delete_removes_the_stitched_customer_and_suppresses_its_identifiers(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, db: asyncpg.Connection
) -> None:
    await _send(client, workspace, _ann() + _bob())
    await stitch()
    before = (await client.get("/v1/profiles/user_id:u1", headers=_read(workspace))).json()

    # Any identifier of the stitched customer answers for the whole customer.
    job_id = await _delete(client, workspace, "email:Ann@Example.com")
    pending = await _deletion(client, workspace, job_id)
    assert pending["status"] == "pending"
    assert pending["identifiers"] == 3
    assert pending["finished_at"] is None
    await stitch()  # the stitcher runs deletion jobs at once (no start delay)

    done = await _deletion(client, workspace, job_id)
    assert done["status"] == "done", done
    assert done["deleted_events"] == 4
    assert done["identifiers"] == 3
    assert done["finished_at"] is not None
    expected = {_sha("user_id:u1"), _sha("anonymous_id:a1"), _sha("email:ann@example.com")}
    assert set(done["identifier_hashes"]) == expected

    for ident in ("user_id:u1", "anonymous_id:a1", "email:ann@example.com"):
        r = await client.get(f"/v1/profiles/{ident}", headers=_read(workspace))
        assert r.status_code == 404, ident
    r = await client.get(
        f"/v1/profiles/customer_id:{before['customer_id']}", headers=_read(workspace)
    )
    assert r.status_code == 404
    assert await _held_about(db, workspace, "u1", "a1") == 0
    wid = workspace.workspace_id
    assert (
        await _count(
            db,
            "SELECT count(*) FROM identities WHERE workspace_id = $1 AND value = 'ann@example.com'",
            wid,
        )
        == 0
    )
    assert await _count(db, "SELECT count(*) FROM customers WHERE workspace_id = $1", wid) == 1
    assert (
        await _count(
            db,
            "SELECT count(*) FROM stage_entries WHERE workspace_id = $1 AND customer_id = $2",
            wid,
            before["customer_id"],
        )
        == 0
    )

    # The suppression list and the ledger hold hashes only, and who asked.
    hashes = {
        bytes(r["identifier_hash"]).hex()
        for r in await db.fetch(
            "SELECT identifier_hash FROM suppressed_identifiers WHERE workspace_id = $1", wid
        )
    }
    assert hashes == expected
    ledger = await db.fetchrow("SELECT * FROM deletions WHERE workspace_id = $1", wid)
    assert ledger is not None
    key_id = await db.fetchval(
        "SELECT id FROM api_keys WHERE key_hash = $1", hash_key(workspace.server_key)
    )
    assert ledger["requested_by_key_id"] == key_id
    assert "ann@example.com" not in str(dict(ledger))
    assert not re.search(r"\bu1\b|\ba1\b", str(dict(ledger)))

    # The other customer is untouched.
    bob = (await client.get("/v1/profiles/user_id:u2", headers=_read(workspace))).json()
    assert bob["event_count"] == 2


async def test_later_events_with_a_suppressed_identifier_are_accepted_and_dropped(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, db: asyncpg.Connection
) -> None:
    await _send(client, workspace, _ann())
    await stitch()
    await _delete(client, workspace, "user_id:u1")
    await stitch()
    dropped_before = await _dropped(client, "suppressed")

    later = [
        _ev("track", "2026-01-10T10:00:00Z", userId="u1", event="Order Completed"),
        _ev("page", "2026-01-10T10:01:00Z", anonymousId="a1"),
        # Only the email of the deleted customer (with a new device): dropped too.
        _ev(
            "identify",
            "2026-01-10T10:02:00Z",
            anonymousId="a-new",
            traits={"email": "ANN@example.com"},
        ),
        # An alias naming the deleted user id would bring it back: dropped.
        _ev("alias", "2026-01-10T10:03:00Z", previousId="u1", userId="u1-new"),
        # Someone else: kept.
        _ev("track", "2026-01-10T10:04:00Z", userId="u3", event="Product Viewed"),
    ]
    await _send(client, workspace, later)
    r = await client.post(
        "/v1/track",
        json=_ev("track", "2026-01-10T11:00:00Z", userId="u1", event="X"),
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200
    await stitch()

    wid = workspace.workspace_id
    assert await _held_about(db, workspace, "u1", "a1") == 0
    assert await _count(db, "SELECT count(*) FROM events WHERE workspace_id = $1", wid) == 1
    assert await _count(db, "SELECT count(*) FROM journey_events WHERE workspace_id = $1", wid) == 1
    for ident in (
        "user_id:u1",
        "anonymous_id:a1",
        "email:ann@example.com",
        "anonymous_id:a-new",
        "user_id:u1-new",
    ):
        r = await client.get(f"/v1/profiles/{ident}", headers=_read(workspace))
        assert r.status_code == 404, ident
    assert (
        await client.get("/v1/profiles/user_id:u3", headers=_read(workspace))
    ).status_code == 200
    assert await _dropped(client, "suppressed") - dropped_before == 5


async def _dropped(client: httpx.AsyncClient, reason: str) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(rf'^journeys_events_dropped_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_rollups_after_a_deletion_equal_a_workspace_that_never_had_the_customer(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, database_url: str
) -> None:
    carol = [
        _ev(
            "page",
            "2026-01-06T08:00:00Z",
            anonymousId="c-anon",
            context={"campaign": {"source": "google", "medium": "cpc"}},
        ),
        _ev(
            "track",
            "2026-01-06T08:05:00Z",
            anonymousId="c-anon",
            userId="u3",
            event="Order Completed",
        ),
        _ev("track", "2026-01-20T08:05:00Z", userId="u3", event="Order Completed"),
    ]
    await _send(client, workspace, _ann() + _bob() + carol)
    await stitch()
    job_id = await _delete(client, workspace, "anonymous_id:a1")
    await stitch()
    assert (await _deletion(client, workspace, job_id))["status"] == "done"

    fresh = await new_workspace(database_url, "fresh")
    await _send(client, fresh, _bob() + carol)
    await stitch()

    for path, params in (
        ("stages", {}),
        ("funnel", {"steps": "awareness,consideration,purchase"}),
        ("channels", {"stage": "awareness"}),
        ("attribution", {"model": "linear", "conversion": "purchase"}),
        ("journey-map", {}),
    ):
        got = await _aggregate(client, workspace, path, params)
        want = await _aggregate(client, fresh, path, params)
        assert got == want, path
    stages = {s["stage"]: s for s in (await _aggregate(client, workspace, "stages", {}))["stages"]}
    assert stages["awareness"]["entered"] == 2


async def _aggregate(
    client: httpx.AsyncClient, ws: NewWorkspace, path: str, params: dict[str, str]
) -> Any:
    r = await client.get(f"/v1/aggregates/{path}", params={**WINDOW, **params}, headers=_read(ws))
    assert r.status_code == 200, r.text
    return r.json()


async def test_deletion_and_export_need_the_server_key(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, database_url: str
) -> None:
    await _send(client, workspace, _ann())
    await stitch()
    for method, path in (
        ("DELETE", "/v1/profiles/user_id:u1"),
        ("GET", "/v1/profiles/user_id:u1/export"),
        ("GET", "/v1/deletions/1"),
        ("GET", "/v1/settings/privacy"),
    ):
        r = await client.request(method, path, headers=_read(workspace))
        assert r.status_code == 403, (method, path)
        r = await client.request(method, path, auth=(workspace.write_key, ""))
        assert r.status_code == 403, (method, path)
        r = await client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.headers["content-type"] == "application/problem+json"

    r = await client.delete("/v1/profiles/user_id:nobody", headers=_server(workspace))
    assert r.status_code == 404
    r = await client.get("/v1/profiles/user_id:nobody/export", headers=_server(workspace))
    assert r.status_code == 404
    r = await client.delete("/v1/profiles/nokind", headers=_server(workspace))
    assert r.status_code == 400

    # Another workspace sees neither the customer nor the job.
    job_id = await _delete(client, workspace, "user_id:u1")
    other = await new_workspace(database_url, "other")
    r = await client.get(f"/v1/deletions/{job_id}", headers=_server(other))
    assert r.status_code == 404
    r = await client.get("/v1/profiles/user_id:u1/export", headers=_server(other))
    assert r.status_code == 404
    r = await client.get("/v1/deletions/not-a-number", headers=_server(workspace))
    assert r.status_code == 400


async def test_a_second_request_while_one_is_under_way_gets_the_same_job(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(client, workspace, _ann())
    await stitch()
    first = await _delete(client, workspace, "user_id:u1")
    second = await _delete(client, workspace, "anonymous_id:a1")
    assert first == second
    await stitch()
    assert (await _deletion(client, workspace, first))["deleted_events"] == 4
    r = await client.delete("/v1/profiles/user_id:u1", headers=_server(workspace))
    assert r.status_code == 404


async def test_export_holds_everything_about_the_customer(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(client, workspace, _ann() + _bob())
    await stitch()
    r = await client.get("/v1/profiles/anonymous_id:a1/export", headers=_server(workspace))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "attachment" in r.headers["content-disposition"]
    body = r.json()
    profile = (await client.get("/v1/profiles/user_id:u1", headers=_read(workspace))).json()
    assert body["customer_id"] == profile["customer_id"]
    assert body["profile"]["stage"] == "purchase"
    assert body["profile"]["event_count"] == 4
    assert body["profile"]["traits"] == {"email": "ann@example.com"}
    assert [h["stage"] for h in body["profile"]["stage_history"]] == [
        "awareness",
        "consideration",
        "purchase",
    ]
    assert {(i["kind"], i["value"]) for i in body["identifiers"]} == {
        ("user_id", "u1"),
        ("anonymous_id", "a1"),
        ("email", "ann@example.com"),
    }
    assert {e["rule"] for e in body["ledger"]} >= {"identify", "email"}
    assert [e["type"] for e in body["timeline"]] == ["page", "track", "identify", "track"]
    viewed = body["timeline"][1]
    assert viewed["properties"] == {"sku": "A-1", "price": 12.5}
    assert viewed["channel"] and viewed["session_id"] and viewed["stage"] == "consideration"
    assert len(body["raw_events"]) == 4
    raw = {e["message_id"]: e["payload"] for e in body["raw_events"]}
    assert raw[viewed["message_id"]]["properties"] == {"sku": "A-1", "price": 12.5}
    assert raw[viewed["message_id"]]["anonymousId"] == "a1"
    # Nothing of the other customer.
    assert "u2" not in r.text


async def test_a_shared_device_is_kept_for_the_other_customers(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, db: asyncpg.Connection
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev("page", "2026-01-02T09:00:00Z", anonymousId="family-pc"),
            _ev("identify", "2026-01-02T10:00:00Z", anonymousId="family-pc", userId="mum"),
            _ev("track", "2026-01-02T10:05:00Z", anonymousId="family-pc", event="Product Viewed"),
            _ev("identify", "2026-01-03T10:00:00Z", anonymousId="family-pc", userId="dad"),
            _ev("track", "2026-01-03T10:05:00Z", anonymousId="family-pc", event="Order Completed"),
        ],
    )
    await stitch()
    dad = (await client.get("/v1/profiles/user_id:dad", headers=_read(workspace))).json()
    assert dad["event_count"] == 2
    job_id = await _delete(client, workspace, "user_id:mum")
    await stitch()
    done = await _deletion(client, workspace, job_id)
    assert done["status"] == "done"
    assert done["identifier_hashes"] == [_sha("user_id:mum")]
    assert done["deleted_events"] == 3
    assert (
        await client.get("/v1/profiles/user_id:mum", headers=_read(workspace))
    ).status_code == 404
    after = (await client.get("/v1/profiles/user_id:dad", headers=_read(workspace))).json()
    assert after["event_count"] == 2
    assert after["stage"] == "purchase"
    # The device keeps working for dad.
    await _send(
        client,
        workspace,
        [
            _ev(
                "track",
                "2026-01-04T10:00:00Z",
                anonymousId="family-pc",
                userId="dad",
                event="Product Reviewed",
            )
        ],
    )
    await stitch()
    after = (await client.get("/v1/profiles/user_id:dad", headers=_read(workspace))).json()
    assert after["event_count"] == 3
    assert (
        await _count(
            db,
            "SELECT count(*) FROM events WHERE workspace_id = $1 AND user_id = 'mum'",
            workspace.workspace_id,
        )
        == 0
    )


async def test_a_deletion_resumes_after_a_crash_and_counts_each_event_once(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    stitch: Stitch,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _send(
        client,
        workspace,
        _ann() + [_ev("page", f"2026-01-04T10:0{i}:00Z", userId="u1") for i in range(5)],
    )
    await stitch()
    monkeypatch.setattr(deletion, "EVENT_CHUNK", 2)
    job_id = await _delete(client, workspace, "user_id:u1")
    conn = await connect(database_url)

    async def step() -> None:
        """What the stitcher's job runner does for one step of this job."""
        async with conn.transaction():
            await lock_progress(conn, workspace.workspace_id % 16)
            job = await conn.fetchrow(
                "SELECT * FROM jobs WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
                workspace.workspace_id,
                job_id,
            )
            await jobs.run_deletion_step(conn, job)

    try:
        await step()
        await step()
        mid = await _deletion(client, workspace, job_id)
        assert mid["status"] == "running"
        assert mid["deleted_events"] == 4

        # A crash in the middle of a step: rolled back, counted, retried.
        real = deletion.run_chunk
        calls = 0

        async def crash_once(*args: Any) -> None:
            nonlocal calls
            calls += 1
            await real(*args)
            if calls == 1:
                raise RuntimeError("power cut")

        monkeypatch.setattr(deletion, "run_chunk", crash_once)
        await step()
        after_crash = await _deletion(client, workspace, job_id)
        assert after_crash["status"] == "running"
        assert after_crash["deleted_events"] == 4
        assert "power cut" in after_crash["error"]
    finally:
        await conn.close()
    await stitch()
    done = await _deletion(client, workspace, job_id)
    assert done["status"] == "done"
    assert done["deleted_events"] == 9
    assert done["error"] is None


async def test_a_deletion_that_keeps_failing_is_marked_failed(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    stitch: Stitch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _send(client, workspace, _ann())
    await stitch()

    async def broken(*_: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(deletion, "run_chunk", broken)
    job_id = await _delete(client, workspace, "user_id:u1")
    await stitch()  # returns: a failed job is not retried for ever
    failed = await _deletion(client, workspace, job_id)
    assert failed["status"] == "failed"
    assert "bug" in failed["error"]
    # The identifiers stay suppressed; asking again starts a new job.
    monkeypatch.undo()
    again = await _delete(client, workspace, "user_id:u1")
    assert again != job_id
    await stitch()
    assert (await _deletion(client, workspace, again))["status"] == "done"


async def test_consent_required_by_the_workspace_is_honoured(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch, db: asyncpg.Connection
) -> None:
    r = await client.get("/v1/settings/privacy", headers=_server(workspace))
    assert r.json() == {"require_consent_category": None}

    def consent(**prefs: Any) -> dict[str, Any]:
        return {"consent": {"categoryPreferences": prefs}}

    events = [
        _ev(
            "track",
            "2026-01-02T10:00:00Z",
            userId="c1",
            event="A",
            context=consent(Analytics=False),
        ),
        _ev(
            "track", "2026-01-02T10:01:00Z", userId="c1", event="B", context=consent(Analytics=True)
        ),
        _ev("track", "2026-01-02T10:02:00Z", userId="c1", event="C"),
    ]
    # Default: no category required, everything is stored.
    await _send(client, workspace, events)
    await stitch()
    stored = await _count(
        db, "SELECT count(*) FROM journey_events WHERE workspace_id = $1", workspace.workspace_id
    )
    assert stored == 3

    r = await client.put(
        "/v1/settings/privacy",
        json={"require_consent_category": "Analytics"},
        headers=_server(workspace),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"require_consent_category": "Analytics"}
    assert (await client.get("/v1/settings/privacy", headers=_server(workspace))).json() == r.json()
    dropped_before = await _dropped(client, "consent")
    denied = [
        _ev(
            "track",
            "2026-01-03T10:00:00Z",
            userId="c1",
            event="D",
            context=consent(Analytics=False, Advertising=True),
        ),
        # Our tracker sends lower-case categories; the match ignores case.
        _ev("page", "2026-01-03T10:01:00Z", anonymousId="x9", context=consent(analytics=False)),
    ]
    allowed = [
        _ev(
            "track",
            "2026-01-03T10:02:00Z",
            userId="c1",
            event="E",
            context=consent(Analytics=True, Advertising=False),
        ),
        _ev(
            "track",
            "2026-01-03T10:03:00Z",
            userId="c1",
            event="F",
            context=consent(Advertising=False),
        ),
        _ev("track", "2026-01-03T10:04:00Z", userId="c1", event="G"),
    ]
    await _send(client, workspace, denied + allowed)
    # Batch-level context applies to every item (and is honoured the same way).
    r = await client.post(
        "/v1/batch",
        json={
            "batch": [_ev("track", "2026-01-03T10:05:00Z", userId="c1", event="H")],
            "context": consent(Analytics=False),
        },
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200 and r.json() == {"success": True}
    await stitch()
    names = [
        r["event"]
        for r in await db.fetch(
            "SELECT event FROM journey_events WHERE workspace_id = $1 ORDER BY timestamp",
            workspace.workspace_id,
        )
    ]
    assert names == ["A", "B", "C", "E", "F", "G"]
    assert (
        await _count(
            db, "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
        == 6
    )
    assert await _dropped(client, "consent") - dropped_before == 3

    r = await client.put(
        "/v1/settings/privacy", json={"require_consent_category": None}, headers=_server(workspace)
    )
    assert r.json() == {"require_consent_category": None}
    for bad in ({"require_consent_category": ""}, {"require_consent_category": 5}, {"other": 1}):
        r = await client.put("/v1/settings/privacy", json=bad, headers=_server(workspace))
        assert r.status_code == 400, bad
        assert r.headers["content-type"] == "application/problem+json"


async def test_events_denying_the_required_consent_are_never_stored(
    client: httpx.AsyncClient, database_url: str, db: Any
) -> None:
    ws = await new_workspace(database_url, "consent")
    # The setting comes before the write key is first used (key lookups are cached briefly).
    r = await client.put(
        "/v1/settings/privacy", json={"require_consent_category": "Analytics"}, headers=_server(ws)
    )
    assert r.status_code == 200
    dropped_before = await _dropped(client, "consent")
    denied = {"consent": {"categoryPreferences": {"Analytics": False}}}
    await _send(
        client,
        ws,
        [
            _ev("track", "2026-01-03T10:00:00Z", userId="n1", event="Denied", context=denied),
            _ev("track", "2026-01-03T10:01:00Z", userId="n1", event="Allowed"),
        ],
    )
    # Not stored at all: no raw row, even before the stitcher runs.
    rows = await db.fetch(
        "SELECT payload->>'event' AS e FROM events WHERE workspace_id = $1", ws.workspace_id
    )
    assert [r["e"] for r in rows] == ["Allowed"]
    assert await _dropped(client, "consent") - dropped_before == 1


async def test_a_customer_whose_user_id_holds_a_slash_is_deleted_by_its_customer_id(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    """Deletion and export take `{id}` as one plain path segment: for an identifier holding a
    `/`, the profile (which reads it as `%2F`) gives the `customer_id` they take instead; the
    identifier sent as it is never reaches them."""
    await _send(client, workspace, _ann(user="google/123"))
    await stitch()
    profile = await client.get("/v1/profiles/user_id:google%2F123", headers=_read(workspace))
    assert profile.status_code == 200, profile.text
    ident = f"customer_id:{profile.json()['customer_id']}"
    export = await client.get(f"/v1/profiles/{ident}/export", headers=_server(workspace))
    assert export.status_code == 200, export.text
    assert len(export.json()["timeline"]) == len(_ann())
    for path in ("user_id:google%2F123", "user_id:google/123"):
        r = await client.delete(f"/v1/profiles/{path}", headers=_server(workspace))
        assert r.status_code in (404, 405), r.text
        assert r.headers["content-type"] == "application/problem+json"
    job_id = await _delete(client, workspace, ident)
    await stitch()
    assert (await _deletion(client, workspace, job_id))["status"] == "done"
    gone = await client.get("/v1/profiles/user_id:google%2F123", headers=_read(workspace))
    assert gone.status_code == 404, gone.text
