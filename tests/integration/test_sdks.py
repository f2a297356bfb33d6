"""The real server-side SDKs, unchanged but for their host, against a real uvicorn.

Every call of segment-analytics-python 2.4 and rudder-sdk-python must be stored exactly once,
with the SDK's own messageIds and timestamps, and the SDK must report no error. What went over
the wire is observed with a `requests` response hook on the SDK's own session (nothing is
replaced), and retries are provoked by a fault-injecting TCP-level proxy on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class Sent:
    """One HTTP request an SDK made, as `requests` saw it."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def record_requests(session: Any) -> Iterator[list[Sent]]:
    """Observe every request an SDK's module-level `requests` session makes."""
    seen: list[Sent] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        request = response.request
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        seen.append(
            Sent(
                method=request.method,
                path=httpx.URL(request.url).path,
                status=response.status_code,
                headers=dict(request.headers),
                body=body,
            )
        )

    session.hooks["response"].append(hook)
    try:
        yield seen
    finally:
        session.hooks["response"].remove(hook)


async def stored_events(db: asyncpg.Connection, workspace_id: int) -> dict[str, dict[str, Any]]:
    """The workspace's stored events by messageId (fails on any duplicate)."""
    rows = await db.fetch(
        "SELECT message_id, type, event, user_id, anonymous_id, timestamp, received_at, flags,"
        " payload FROM events WHERE workspace_id = $1",
        workspace_id,
    )
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["message_id"] not in by_id, f"stored twice: {row['message_id']}"
        record = dict(row)
        record["payload"] = json.loads(row["payload"])
        by_id[row["message_id"]] = record
    return by_id


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_to_completion(client: Any) -> None:
    """flush() then shutdown(): what an application does at exit (blocking)."""
    client.flush()
    client.shutdown()


class LostResponseProxy:
    """An HTTP proxy on 127.0.0.1 that forwards every request to `upstream` but, for the first
    `drop` requests, hangs up instead of relaying the answer: the server stored the events, the
    client never learns it and must retry with the same messageIds."""

    def __init__(self, upstream: str, *, drop: int) -> None:
        self.upstream = upstream
        self.remaining_drops = drop
        self.requests: list[tuple[dict[str, str], int]] = []  # headers, upstream status
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                upstream = httpx.post(
                    proxy.upstream + self.path, content=body, headers=headers, timeout=30
                )
                with proxy._lock:
                    proxy.requests.append((dict(self.headers.items()), upstream.status_code))
                    drop = proxy.remaining_drops > 0
                    if drop:
                        proxy.remaining_drops -= 1
                if drop:
                    self.close_connection = True
                    return
                self.send_response(upstream.status_code)
                for key in ("Content-Type", "Retry-After"):
                    if key in upstream.headers:
                        self.send_header(key, upstream.headers[key])
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LostResponseProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def segment_client(write_key: str, host: str, errors: list[Any], **overrides: Any) -> Any:
    from segment.analytics import Client

    options: dict[str, Any] = {
        "write_key": write_key,
        "host": host,
        "sync_mode": False,
        "on_error": lambda error, batch: errors.append((error, batch)),
        "upload_interval": 0.1,
        "max_retries": 3,
        "timeout": 10,
    }
    options.update(overrides)
    return Client(**options)


def send_every_call(client: Any, run: str) -> dict[str, dict[str, Any]]:
    """One call of each type through an SDK client; returns the messages it queued, by
    messageId (the SDK generates messageIds and timestamps itself)."""
    user, anon, other = f"user-{run}", f"anon-{run}", f"user-old-{run}"
    explicit = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=2)
    calls = [
        client.identify(
            user_id=user,
            anonymous_id=anon,
            traits={"email": f"{run}@example.com", "plan": "pro", "age": 41},
        ),
        client.track(
            user_id=user, event="Product Viewed", properties={"sku": "A-1", "price": 19.99}
        ),
        client.track(
            anonymous_id=anon, event="Order Completed", properties={"total": 42}, timestamp=explicit
        ),
        client.page(user_id=user, name="Home", properties={"url": "https://shop.example/"}),
        client.screen(user_id=user, name="Cart", properties={"items": 2}),
        client.group(user_id=user, group_id=f"group-{run}", traits={"name": "Acme", "seats": 7}),
        client.alias(previous_id=other, user_id=user),
    ]
    messages: dict[str, dict[str, Any]] = {}
    for ok, msg in calls:
        assert ok, msg
        messages[msg["messageId"]] = msg
    assert len(messages) == len(calls), "the SDK generated a messageId twice"
    return messages


def assert_stored_as_sent(
    stored: dict[str, dict[str, Any]], sent: dict[str, dict[str, Any]]
) -> None:
    """Each queued message is stored once, with its type, ids and parsed timestamp."""
    assert set(stored) == set(sent)
    for message_id, msg in sent.items():
        row = stored[message_id]
        assert row["type"] == msg["type"]
        assert row["user_id"] == msg.get("userId")
        assert row["anonymous_id"] == msg.get("anonymousId")
        assert row["event"] == (msg["event"] if msg["type"] == "track" else None)
        # The SDK's own timestamp string, parsed (not receivedAt, not the SDK's sentAt).
        assert row["timestamp"] == parse_iso(msg["timestamp"]), (row["timestamp"], msg)
        assert row["flags"] == 0
        payload = row["payload"]
        assert payload["messageId"] == message_id
        assert parse_iso(payload["timestamp"]) == row["timestamp"]
        assert parse_iso(payload["receivedAt"]) == row["received_at"]
        assert parse_iso(payload["sentAt"]) <= row["received_at"] + timedelta(seconds=5)
        assert "writeKey" not in payload, "the write key must not be stored with the event"
        assert payload["context"]["library"] == msg["context"]["library"]
        for key in ("properties", "traits", "groupId", "previousId", "name"):
            if msg.get(key) is not None:
                assert payload[key] == msg[key], key


# --------------------------------------------------------------------------- segment


async def test_segment_python_sdk_delivers_every_call_once(
    live_server: LiveServer, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    import segment.analytics.request as segment_request

    errors: list[Any] = []
    run = uuid.uuid4().hex[:8]
    with record_requests(segment_request._session) as wire:
        client = segment_client(workspace.write_key, live_server.url, errors)
        try:
            sent = send_every_call(client, run)
        finally:
            await asyncio.to_thread(run_to_completion, client)

    assert errors == []
    assert wire, "the SDK sent nothing"
    for request in wire:
        assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
        assert request.headers["User-Agent"] == "analytics-python/2.4.0"
        assert request.headers["Authorization"].startswith("Basic ")
        assert "Content-Encoding" not in request.headers
        assert "X-Retry-Count" not in request.headers  # nothing needed a retry
        assert json.loads(request.body)["writeKey"] == workspace.write_key

    stored = await stored_events(db, workspace.workspace_id)
    assert_stored_as_sent(stored, sent)
    assert sorted(row["type"] for row in stored.values()) == sorted(
        ["identify", "track", "track", "page", "screen", "group", "alias"]
    )
    identify = next(row for row in stored.values() if row["type"] == "identify")
    assert identify["payload"]["traits"] == {
        "email": f"{run}@example.com",
        "plan": "pro",
        "age": 41,
    }
    assert identify["anonymous_id"] == f"anon-{run}"
    order = next(row for row in stored.values() if row["event"] == "Order Completed")
    # The explicit timestamp keeps the millisecond precision the SDK sends.
    assert order["timestamp"].microsecond == 123000
    assert order["user_id"] is None and order["anonymous_id"] == f"anon-{run}"
    alias = next(row for row in stored.values() if row["type"] == "alias")
    assert alias["payload"]["previousId"] == f"user-old-{run}"
    assert alias["anonymous_id"] is None  # the SDK sends an explicit null
    page = next(row for row in stored.values() if row["type"] == "page")
    assert "category" not in page["payload"]  # explicit null means absent


async def test_segment_resend_with_same_message_ids_is_stored_once(
    live_server: LiveServer, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    """An application that sends the same events again (e.g. after a crash, replaying its own
    log with the same explicit messageIds) gets each stored once."""
    errors: list[Any] = []
    run = uuid.uuid4().hex[:8]
    ids = [f"replay-{run}-{i}" for i in range(20)]
    sent: dict[str, dict[str, Any]] = {}
    for attempt in range(2):
        client = segment_client(workspace.write_key, live_server.url, errors)
        try:
            for i, message_id in enumerate(ids):
                ok, msg = client.track(
                    user_id=f"user-{run}",
                    event=f"Step {i}",
                    message_id=message_id,
                    properties={"attempt": attempt},
                )
                assert ok
                sent.setdefault(message_id, msg)
        finally:
            await asyncio.to_thread(run_to_completion, client)

    assert errors == []
    stored = await stored_events(db, workspace.workspace_id)
    assert set(stored) == set(ids)
    # The first delivery wins; the replay changed nothing.
    assert {row["payload"]["properties"]["attempt"] for row in stored.values()} == {0}
    assert_stored_as_sent(stored, sent)


async def test_segment_retry_after_lost_response_is_stored_once(
    live_server: LiveServer, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    """The server commits a batch but the answer is lost: the SDK retries the same batch
    (same SDK-generated messageIds, `X-Retry-Count: 1`) and every event is stored once."""
    errors: list[Any] = []
    run = uuid.uuid4().hex[:8]
    with LostResponseProxy(live_server.url, drop=1) as proxy:
        # One upload for everything, so the first (dropped) request carries all events.
        client = segment_client(workspace.write_key, proxy.url, errors, upload_interval=1.0)
        try:
            sent = send_every_call(client, run)
        finally:
            await asyncio.to_thread(run_to_completion, client)
        requests = list(proxy.requests)

    assert errors == []
    assert len(requests) >= 2, requests
    assert all(status == 200 for _, status in requests)
    assert "X-Retry-Count" not in requests[0][0]
    assert requests[1][0].get("X-Retry-Count") == "1"
    stored = await stored_events(db, workspace.workspace_id)
    assert_stored_as_sent(stored, sent)


# --------------------------------------------------------------------------- rudderstack


async def test_rudderstack_python_sdk_delivers_every_call_once_gzipped(
    live_server: LiveServer, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    import rudderstack.analytics.request as rudder_request
    from rudderstack.analytics import Client

    errors: list[Any] = []
    run = uuid.uuid4().hex[:8]
    with record_requests(rudder_request._session) as wire:
        # Only the data plane URL is set: gzip stays at the SDK's default.
        client = Client(
            workspace.write_key,
            host=live_server.url,
            upload_interval=0.1,
            max_retries=3,
            timeout=10,
            on_error=lambda error, batch: errors.append((error, batch)),
        )
        try:
            assert client.gzip is True and all(c.gzip for c in client.consumers)
            sent = send_every_call(client, run)
        finally:
            await asyncio.to_thread(run_to_completion, client)

    assert errors == []
    assert wire, "the SDK sent nothing"
    for request in wire:
        assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.body[:2] == b"\x1f\x8b", "the body on the wire is not gzip"
        assert request.headers["Authorization"].startswith("Basic ")

    stored = await stored_events(db, workspace.workspace_id)
    assert_stored_as_sent(stored, sent)
    assert sorted(row["type"] for row in stored.values()) == sorted(
        ["identify", "track", "track", "page", "screen", "group", "alias"]
    )
    for row in stored.values():
        assert row["payload"]["channel"] == "server"
        assert row["payload"]["integrations"] == {"All": True}
    identify = next(row for row in stored.values() if row["type"] == "identify")
    # RudderStack puts identify traits in context.traits, not at the top level.
    assert "traits" not in identify["payload"]
    assert identify["payload"]["context"]["traits"] == {
        "email": f"{run}@example.com",
        "plan": "pro",
        "age": 41,
    }
    order = next(row for row in stored.values() if row["event"] == "Order Completed")
    # RudderStack sends microseconds: they survive.
    assert order["timestamp"].microsecond == 123456
