"""Ingest through the app: every route, the shapes real SDKs send, dedupe, storage, CORS."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.db.partitions import ensure_week_partition, week_of
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

ORIGIN = "https://shop.example"

SINGLE_BODIES: dict[str, dict[str, Any]] = {
    "track": {"userId": "u1", "event": "Product Viewed", "properties": {"sku": "A-1"}},
    "identify": {"userId": "u1", "anonymousId": "a1", "traits": {"email": "ann@example.com"}},
    "page": {
        "anonymousId": "a1",
        "name": "Home",
        "category": None,
        "properties": {"url": "https://shop.example/"},
    },
    "screen": {"userId": "u1", "name": "Cart"},
    "group": {"userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}},
    "alias": {"previousId": "a1", "userId": "u1", "anonymousId": None},
}
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


async def stored_rows(db: asyncpg.Connection, workspace_id: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT message_id, type, event, user_id, anonymous_id, timestamp, received_at, flags,"
        " payload FROM events WHERE workspace_id = $1 ORDER BY message_id",
        workspace_id,
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


async def count_all(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events"))


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("path", "kind"),
    [(f"/v1/{k}", k) for k in SINGLE_BODIES] + [(f"/v1/{s}", k) for s, k in SHORT.items()],
)
async def test_every_single_event_route(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    path: str,
    kind: str,
) -> None:
    message_id = f"{kind}-{uuid.uuid4().hex}"
    body = {**SINGLE_BODIES[kind], "messageId": message_id}
    r = await client.post(path, json=body, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert r.headers["content-type"] == "application/json"
    rows = await stored_rows(db, workspace.workspace_id)
    assert [(row["message_id"], row["type"]) for row in rows] == [(message_id, kind)]
    payload = rows[0]["payload"]
    assert payload["type"] == kind and payload["messageId"] == message_id
    if kind == "track":
        assert rows[0]["event"] == "Product Viewed"
    if kind == "alias":
        assert payload["previousId"] == "a1" and "anonymousId" not in payload
    if kind == "page":
        assert "category" not in payload


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b"])
async def test_batch_routes(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, path: str
) -> None:
    batch = [
        {**body, "type": kind, "messageId": f"b-{kind}"} for kind, body in SINGLE_BODIES.items()
    ]
    r = await client.post(
        path,
        json={"batch": batch, "sentAt": datetime.now(UTC).isoformat()},
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    rows = await stored_rows(db, workspace.workspace_id)
    assert sorted((row["message_id"], row["type"]) for row in rows) == sorted(
        (f"b-{kind}", kind) for kind in SINGLE_BODIES
    )


async def test_client_metrics_answer_200_and_store_nothing(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    before = await count_all(db)
    metrics = {
        "series": [
            {
                "type": "Counter",
                "metric": "analytics_js.invoke",
                "value": 1,
                "tags": {"method": "track"},
            }
        ]
    }
    attempts: list[dict[str, Any]] = [
        {"content": orjson.dumps(metrics), "headers": {"content-type": "text/plain"}},
        {"json": {**SINGLE_BODIES["track"], "writeKey": workspace.write_key}},
        {"content": b"not json at all"},
    ]
    for kwargs in attempts:
        r = await client.post("/v1/m", **kwargs)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
    assert await count_all(db) == before
    assert await stored_rows(db, workspace.workspace_id) == []


async def test_analytics_js_text_plain_beacon(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    """What @segment/analytics-next sends: text/plain JSON with writeKey, _metadata,
    userAgentData, its own messageId, and an Authorization: Basic header."""
    sent = datetime.now(UTC)
    body: dict[str, Any] = {
        "timestamp": (sent - timedelta(milliseconds=40))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "integrations": {},
        "type": "track",
        "event": "Product Viewed",
        "properties": {"sku": "A-1", "price": 12.5},
        "context": {
            "page": {
                "path": "/p/a-1",
                "referrer": "",
                "search": "?utm_source=news",
                "title": "A-1",
                "url": "https://shop.example/p/a-1?utm_source=news",
            },
            "userAgent": "Mozilla/5.0 (Macintosh) Chrome/124.0",
            "userAgentData": {
                "brands": [{"brand": "Chromium", "version": "124"}],
                "mobile": False,
                "platform": "macOS",
            },
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "npm:next-1.84.0"},
            "campaign": {"source": "news"},
        },
        "messageId": "ajs-next-1714561200000-6f1b0a1c",
        "anonymousId": "8d1c5e2a-2f9e-4b8a-9d3c-1a2b3c4d5e6f",
        "userId": None,
        "writeKey": workspace.write_key,
        "sentAt": sent.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
    }
    r = await client.post(
        "/v1/t",
        content=orjson.dumps(body),
        headers={
            "content-type": "text/plain",
            "authorization": basic(workspace.write_key),
            "origin": ORIGIN,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    rows = await stored_rows(db, workspace.workspace_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["message_id"] == "ajs-next-1714561200000-6f1b0a1c"
    assert (row["type"], row["event"], row["user_id"], row["anonymous_id"]) == (
        "track",
        "Product Viewed",
        None,
        body["anonymousId"],
    )
    payload = row["payload"]
    assert payload["_metadata"] == body["_metadata"]
    assert payload["context"]["userAgentData"] == body["context"]["userAgentData"]
    assert payload["context"]["page"] == body["context"]["page"]
    assert payload["integrations"] == {}
    assert "writeKey" not in payload and "userId" not in payload
    assert workspace.write_key not in json.dumps(payload)


async def test_write_key_in_the_body_alone_is_enough(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    for path, body in (
        ("/v1/p", {**SINGLE_BODIES["page"], "messageId": "p1"}),
        ("/v1/b", {"batch": [{**SINGLE_BODIES["track"], "type": "track", "messageId": "b1"}]}),
    ):
        r = await client.post(
            path,
            content=orjson.dumps({**body, "writeKey": workspace.write_key}),
            headers={"content-type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 200, r.text
    assert [row["message_id"] for row in await stored_rows(db, workspace.workspace_id)] == [
        "b1",
        "p1",
    ]


async def test_rudder_gzip_batch(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    """rudder-sdk-python: gzip on, Basic auth, no writeKey in the body, identify traits in
    context.traits, items with channel "server" and integrations {"All": true}."""
    now = datetime.now(UTC)
    batch = [
        {
            "type": "identify",
            "userId": "u-rudder",
            "anonymousId": "a-rudder",
            "context": {
                "traits": {"email": "Ann@Example.com", "plan": "pro"},
                "library": {"name": "analytics-python", "version": "2.1.9"},
            },
            "integrations": {"All": True},
            "channel": "server",
            "messageId": "rudder-1",
            "timestamp": now.isoformat(),
            "originalTimestamp": None,
        },
        {
            "type": "track",
            "userId": "u-rudder",
            "event": "Order Completed",
            "properties": {"revenue": 99.9},
            "context": {"library": {"name": "analytics-python"}},
            "integrations": {"All": True},
            "channel": "server",
            "messageId": "rudder-2",
            "timestamp": now.isoformat(),
        },
    ]
    raw = gzip.compress(orjson.dumps({"batch": batch, "sentAt": now.isoformat()}))
    r = await client.post(
        "/v1/batch",
        content=raw,
        headers={
            "content-type": "application/json",
            "content-encoding": "gzip",
            "authorization": basic(workspace.write_key),
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    rows = await stored_rows(db, workspace.workspace_id)
    by_id = {row["message_id"]: row for row in rows}
    assert set(by_id) == {"rudder-1", "rudder-2"}
    identify = by_id["rudder-1"]["payload"]
    assert identify["context"]["traits"] == {"email": "Ann@Example.com", "plan": "pro"}
    assert identify["channel"] == "server" and identify["integrations"] == {"All": True}
    assert by_id["rudder-2"]["event"] == "Order Completed"
    assert by_id["rudder-1"]["timestamp"] == now


# --------------------------------------------------------------------------- dedupe


async def test_retry_of_the_same_message_id_is_stored_once(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    body = {**SINGLE_BODIES["track"], "messageId": "retry-1"}
    for _ in range(3):
        r = await client.post(
            "/v1/track", json=body, auth=(workspace.write_key, ""), headers={"x-retry-count": "1"}
        )
        assert r.status_code == 200
    # The same id twice inside one batch, plus an earlier one again.
    batch = [
        {**body, "type": "track"},
        {**body, "type": "track", "messageId": "retry-2"},
        {**body, "type": "track", "messageId": "retry-2"},
    ]
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(workspace.write_key, ""))
    assert r.status_code == 200
    assert [row["message_id"] for row in await stored_rows(db, workspace.workspace_id)] == [
        "retry-1",
        "retry-2",
    ]


async def test_concurrent_retries_are_stored_once(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"conc-{i}"}
            for i in range(20)
        ]
    }
    single = {**SINGLE_BODIES["identify"], "messageId": "conc-single"}
    requests = [
        client.post("/v1/batch", json=batch, auth=(workspace.write_key, "")) for _ in range(10)
    ]
    requests += [
        client.post("/v1/identify", json=single, auth=(workspace.write_key, "")) for _ in range(10)
    ]
    answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [200] * 20
    ids = [row["message_id"] for row in await stored_rows(db, workspace.workspace_id)]
    assert sorted(ids) == sorted([f"conc-{i}" for i in range(20)] + ["conc-single"])


async def test_each_row_keeps_its_own_payload_in_shared_commits(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """Concurrent requests of two workspaces share commits, whose rows are sorted and whose
    payloads travel one per line: every stored row's columns must match its own payload,
    whatever newlines or other characters its strings hold."""
    workspaces = [await new_workspace(database_url), await new_workspace(database_url)]
    texts = ["plain", "two\nlines", "crlf\r\nend", "sep\u2028x", 'tab\tq"uote', "é✓😀"]

    def item(ws: int, n: int) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": f"u\n{ws}-{n}" if n % 3 == 0 else f"u{ws}-{n}",
            "event": f"E {texts[n % len(texts)]}",
            # Descending ids: the commit re-sorts rows, so arrival order is not storage order.
            "messageId": f"m-{99 - n:02d}-{ws}",
            "properties": {"n": n, "ws": ws, "text": texts[n % len(texts)]},
        }

    requests = [
        client.post(
            "/v1/batch",
            json={"batch": [item(w, n) for n in range(start, start + 10)]},
            auth=(ws.write_key, ""),
        )
        for w, ws in enumerate(workspaces)
        for start in range(0, 40, 10)
    ]
    requests += [
        client.post("/v1/track", json=item(w, 40 + n), auth=(ws.write_key, ""))
        for w, ws in enumerate(workspaces)
        for n in range(5)
    ]
    answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [200] * len(requests)
    for w, ws in enumerate(workspaces):
        rows = await stored_rows(db, ws.workspace_id)
        assert len(rows) == 45
        for row in rows:
            payload = row["payload"]
            n = payload["properties"]["n"]
            assert payload == {**payload, **item(w, n)} | {"properties": payload["properties"]}
            assert payload["properties"] == {"n": n, "ws": w, "text": texts[n % len(texts)]}
            assert (row["message_id"], row["user_id"], row["event"]) == (
                payload["messageId"],
                payload["userId"],
                payload["event"],
            )
            assert row["message_id"] == item(w, n)["messageId"]


async def test_retry_across_the_week_boundary_is_not_stored_again(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    last_week = week_of(now) - timedelta(days=7)
    await ensure_week_partition(db, last_week)
    earlier = datetime.combine(last_week, time(12), tzinfo=UTC) + timedelta(days=5)
    await db.execute(
        "INSERT INTO events (workspace_id, received_week, message_id, type, event, user_id,"
        " timestamp, received_at, payload) VALUES ($1, $2, 'week-1', 'track', 'E', 'u1', $3, $3,"
        " '{}'::jsonb)",
        workspace.workspace_id,
        last_week,
        earlier,
    )
    r = await client.post(
        "/v1/track",
        json={"userId": "u1", "event": "E", "messageId": "week-1"},
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200
    r = await client.post(
        "/v1/track",
        json={"userId": "u1", "event": "E", "messageId": "week-2"},
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200
    rows = await db.fetch(
        "SELECT message_id, received_week FROM events WHERE workspace_id = $1 ORDER BY message_id",
        workspace.workspace_id,
    )
    assert [(row["message_id"], row["received_week"]) for row in rows] == [
        ("week-1", last_week),
        ("week-2", week_of(now)),
    ]


async def test_same_message_id_in_two_workspaces_is_stored_in_both(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    other = await new_workspace(database_url)
    body = {**SINGLE_BODIES["track"], "messageId": "shared-id"}
    answers = await asyncio.gather(
        client.post("/v1/track", json=body, auth=(workspace.write_key, "")),
        client.post("/v1/track", json=body, auth=(other.write_key, "")),
    )
    assert [a.status_code for a in answers] == [200, 200]
    for ws in (workspace, other):
        assert [row["message_id"] for row in await stored_rows(db, ws.workspace_id)] == [
            "shared-id"
        ]


# --------------------------------------------------------------------------- stored form


async def test_stored_payload_keeps_unknown_fields_and_strips_server_owned(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    body = {
        **SINGLE_BODIES["track"],
        "messageId": "keep-1",
        "channel": "web",
        "_metadata": {"nodeVersion": "20"},
        "customTopLevel": {"a": [1, 2]},
        "receivedAt": "2000-01-01T00:00:00Z",
        "writeKey": workspace.write_key,
        "workspaceId": 999999,
        "projectId": "p-1",
        "context": {"ip": "203.0.113.77", "library": {"name": "x"}},
    }
    r = await client.post("/v1/track", json=body, auth=(workspace.write_key, ""))
    assert r.status_code == 200
    [row] = await stored_rows(db, workspace.workspace_id)
    payload = row["payload"]
    assert payload["channel"] == "web"
    assert payload["_metadata"] == {"nodeVersion": "20"}
    assert payload["customTopLevel"] == {"a": [1, 2]}
    for key in ("writeKey", "workspaceId", "projectId"):
        assert key not in payload
    received = datetime.fromisoformat(payload["receivedAt"].replace("Z", "+00:00"))
    assert received == row["received_at"]
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
    assert payload["context"] == {"ip": "203.0.113.0", "library": {"name": "x"}}


async def test_client_address_is_stored_truncated(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    r = await client.post("/v1/track", json=SINGLE_BODIES["track"], auth=(workspace.write_key, ""))
    assert r.status_code == 200
    [row] = await stored_rows(db, workspace.workspace_id)
    # httpx's ASGI transport reports the client as 127.0.0.1.
    assert row["payload"]["context"]["ip"] == "127.0.0.0"


async def test_stored_timestamp_is_the_corrected_event_time(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    skew = timedelta(hours=3, seconds=7)  # the device clock is 3 h fast
    device_now = datetime.now(UTC) + skew
    events = [
        {
            "type": "track",
            "userId": "u",
            "event": "Skewed",
            "messageId": "skew",
            "originalTimestamp": (device_now - timedelta(seconds=30)).isoformat(),
            "sentAt": device_now.isoformat(),
        },
        {
            "type": "track",
            "userId": "u",
            "event": "Explicit",
            "messageId": "explicit",
            "timestamp": "2024-04-30T10:11:12.123456+00:00",
        },
        {
            "type": "track",
            "userId": "u",
            "event": "Future",
            "messageId": "future",
            "timestamp": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        },
        {"type": "track", "userId": "u", "event": "None", "messageId": "none"},
    ]
    r = await client.post("/v1/batch", json={"batch": events}, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    rows = {row["message_id"]: row for row in await stored_rows(db, workspace.workspace_id)}
    skewed = rows["skew"]
    assert skewed["timestamp"] == skewed["received_at"] - timedelta(seconds=30)
    assert skewed["flags"] == 0
    assert rows["explicit"]["timestamp"] == datetime(2024, 4, 30, 10, 11, 12, 123456, UTC)
    assert rows["future"]["timestamp"] == rows["future"]["received_at"]
    assert rows["future"]["flags"] == 1
    assert rows["none"]["timestamp"] == rows["none"]["received_at"]
    for row in rows.values():
        stamp = datetime.fromisoformat(row["payload"]["timestamp"].replace("Z", "+00:00"))
        assert stamp == row["timestamp"]


async def test_extreme_but_valid_timestamps_are_stored(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    events = [
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "year-1",
            "timestamp": "0001-01-01T00:00:01Z",
        },
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "go-zero-time",
            "timestamp": "0001-01-01T00:00:00Z",
        },
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "year-9999",
            "timestamp": "9999-12-31T23:59:59.999999Z",
        },
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "offset",
            "timestamp": "2024-05-01T23:30:00-14:00",
        },
    ]
    r = await client.post("/v1/batch", json={"batch": events}, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    # Go's zero time would be stored as -infinity: it is refused instead.
    assert [(x["index"], x["code"]) for x in r.json()["rejected"]] == [(1, "invalid_timestamp")]
    rows = {row["message_id"]: row for row in await stored_rows(db, workspace.workspace_id)}
    assert set(rows) == {"year-1", "year-9999", "offset"}
    assert rows["year-1"]["timestamp"] == datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert rows["year-9999"]["timestamp"] == rows["year-9999"]["received_at"]
    assert rows["year-9999"]["flags"] == 1
    assert rows["offset"]["timestamp"] == datetime(2024, 5, 2, 13, 30, tzinfo=UTC)


async def test_empty_batch_is_a_success_that_stores_nothing(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    r = await client.post(
        "/v1/batch",
        json={"batch": [], "sentAt": datetime.now(UTC).isoformat()},
        auth=(workspace.write_key, ""),
    )
    assert r.status_code == 200
    assert r.json() == {"success": True}
    assert await stored_rows(db, workspace.workspace_id) == []


# --------------------------------------------------------------------------- CORS, request id

INGEST_PATHS = [f"/v1/{name}" for name in (*SINGLE_BODIES, "batch", *SHORT, "b", "m")]


@pytest.mark.parametrize("path", INGEST_PATHS)
async def test_preflight_on_ingest_routes(client: httpx.AsyncClient, path: str) -> None:
    r = await client.options(
        path,
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "origin" in r.headers.get("vary", "").lower()


async def test_post_responses_carry_cors_headers(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    ok = await client.post(
        "/v1/track",
        json=SINGLE_BODIES["track"],
        auth=(workspace.write_key, ""),
        headers={"origin": ORIGIN},
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    # Errors too, or the browser could not read them.
    bad = await client.post(
        "/v1/track",
        json={"userId": "u"},
        auth=(workspace.write_key, ""),
        headers={"origin": ORIGIN},
    )
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == ORIGIN
    denied = await client.post(
        "/v1/track", json=SINGLE_BODIES["track"], headers={"origin": "https://other.example"}
    )
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://other.example"
    # No Origin, no CORS headers.
    plain = await client.post(
        "/v1/track", json=SINGLE_BODIES["track"], auth=(workspace.write_key, "")
    )
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/nope", "/v1/track/x"])
async def test_read_and_ops_routes_send_no_cors_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path, headers={"origin": ORIGIN})
    assert r.status_code < 500
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    pre = await client.options(
        path,
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization",
        },
    )
    assert not [h for h in pre.headers if h.lower().startswith("access-control-")]


async def test_request_id_is_echoed_or_generated(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.post(
        "/v1/track",
        json=SINGLE_BODIES["track"],
        auth=(workspace.write_key, ""),
        headers={"x-request-id": "req-42"},
    )
    assert r.headers["x-request-id"] == "req-42"
    generated = {
        (await client.get("/healthz")).headers["x-request-id"],
        (await client.post("/v1/track", json={})).headers["x-request-id"],
        (await client.options("/v1/t", headers={"origin": ORIGIN})).headers["x-request-id"],
    }
    assert len(generated) == 3
    assert all(len(rid) >= 16 for rid in generated)
    err = await client.post("/v1/track", json={}, headers={"x-request-id": "req-err"})
    assert err.status_code == 401 and err.headers["x-request-id"] == "req-err"
    long = await client.get("/healthz", headers={"x-request-id": "x" * 500})
    assert long.headers["x-request-id"] == "x" * 64
