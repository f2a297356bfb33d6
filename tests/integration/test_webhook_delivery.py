"""Webhook deliveries end to end: events stitched, merged and deleted through the API reach a
real HTTP receiver on 127.0.0.1, signed, retried with backoff, in order per customer.

The app here is the suite's, with private destinations allowed (the receiver is local) and a
fast backoff; the delivery loop is the real one, started per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
from prometheus_client import REGISTRY

from app.core.settings import Settings
from app.db.engine import raw_connection
from app.journeys.lag import stitch_lag
from app.main import create_app
from app.webhooks.delivery import WebhookDeliverer
from app.workspaces.repository import NewWorkspace
from tests.conftest import ROOT, LiveServer, free_port, new_workspace

BASE = 0.05  # seconds: the first retry delay here (10 s in production)


# --------------------------------------------------------------------------- the receiver


def _documented_verify() -> Callable[[str, str, bytes], bool]:
    """The receiver's check is the Python snippet of docs/webhooks.md, run as written."""
    text = (ROOT / "docs" / "webhooks.md").read_text()
    snippet = next(
        block.split("\n", 1)[1]
        for block in text.split("```")
        if block.startswith("python\n") and "def verify(" in block
    )
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)  # noqa: S102 - our own docs
    verify: Callable[[str, str, bytes], bool] = namespace["verify"]
    return verify


verify_signature = _documented_verify()


@dataclass
class Received:
    """One request the receiver got, and what it answered."""

    at: float
    event_id: str
    type: str
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    signed: bool
    status: int


@dataclass
class Endpoint:
    """One webhook URL of the receiver: its secret and how often to fail each event."""

    secret: str = ""
    fail_first: int = 0
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [r for r in self.requests if r.status == 200]


class Receiver:
    """A tiny ASGI app under uvicorn: `/hooks/{name}` records, verifies and answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoints: dict[str, Endpoint] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    def endpoint(self, name: str, **plan: Any) -> Endpoint:
        self.endpoints[name] = Endpoint(**plan)
        return self.endpoints[name]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        endpoint = self.endpoints.get(scope["path"].rsplit("/", 1)[-1])
        status = 404
        if endpoint is not None:
            body = orjson.loads(raw)
            event_id = headers.get("journeys-event-id", "")
            tried = sum(1 for r in endpoint.requests if r.event_id == event_id)
            failing = endpoint.always_fail or tried < endpoint.fail_first
            status = 500 if failing else 200
            endpoint.requests.append(
                Received(
                    at=time.monotonic(),
                    event_id=event_id,
                    type=headers.get("journeys-event-type", ""),
                    body=body,
                    raw=raw,
                    headers=headers,
                    signed=verify_signature(
                        endpoint.secret, headers.get("journeys-signature", "t=0,v1=x"), raw
                    ),
                    status=status,
                )
            )
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    config = uvicorn.Config(
        recv, host="127.0.0.1", port=recv.port, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, what="the receiver to listen")
    try:
        yield recv
    finally:
        server.should_exit = True
        await task


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhooks_allow_private": True,
            "webhooks_backoff_base_seconds": BASE,
            "webhooks_backoff_max_seconds": 8 * BASE,
            "webhooks_timeout_seconds": 5.0,
        }
    )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def hook_app(hook_settings: Settings) -> AsyncIterator[Any]:
    application = create_app(hook_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def api(hook_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=hook_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def deliverer(hook_app: Any, hook_settings: Settings) -> AsyncIterator[None]:
    """The real delivery loop, polling fast, for the duration of a test."""
    loop = WebhookDeliverer(
        hook_app.state.runtime.engine, settings=hook_settings, poll_interval=0.02
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def stitch(hook_app: Any) -> Callable[[], Awaitable[int]]:
    """Stitch everything committed so far. The feed shows an event only once every older
    transaction has ended, and the delivery loop's short transactions may be running: drain
    until no shard is behind."""
    runtime = hook_app.state.runtime

    async def drain() -> int:
        total = 0

        async def caught_up() -> bool:
            nonlocal total
            total += await runtime.stitcher.drain()
            async with raw_connection(runtime.engine) as conn:
                return bool((await stitch_lag(conn))["shards_behind"] == 0)

        await until(caught_up, what="the stitcher to catch up")
        return total

    return drain


Stitch = Callable[[], Awaitable[int]]


# --------------------------------------------------------------------------- helpers


async def until(
    check: Callable[[], Any], *, timeout: float = 20.0, what: str = "the condition"
) -> Any:
    """Poll `check` (sync or async) until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "messageId": uuid.uuid4().hex, **fields}


async def _send(api: httpx.AsyncClient, ws: NewWorkspace, *events: dict[str, Any]) -> None:
    r = await api.post("/v1/batch", json={"batch": list(events)}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert "rejected" not in r.json(), r.json()


def _server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


async def _subscribe(
    api: httpx.AsyncClient,
    ws: NewWorkspace,
    receiver: Receiver,
    events: list[str],
    **plan: Any,
) -> tuple[int, Endpoint]:
    name = uuid.uuid4().hex
    r = await api.post(
        "/v1/webhooks",
        json={"url": receiver.url(name), "events": events},
        headers=_server(ws),
    )
    assert r.status_code == 201, r.text
    endpoint = receiver.endpoint(name, secret=r.json()["secret"], **plan)
    return int(r.json()["id"]), endpoint


async def _customer(api: httpx.AsyncClient, ws: NewWorkspace, ident: str) -> str:
    r = await api.get(f"/v1/profiles/{ident}", headers={"Authorization": f"Bearer {ws.read_key}"})
    assert r.status_code == 200, r.text
    return str(r.json()["customer_id"])


async def _deliveries(
    api: httpx.AsyncClient, ws: NewWorkspace, webhook_id: int, query: str = ""
) -> dict[str, Any]:
    r = await api.get(f"/v1/webhooks/{webhook_id}/deliveries?{query}", headers=_server(ws))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _settled(api: httpx.AsyncClient, ws: NewWorkspace, webhook_id: int) -> dict[str, Any]:
    """The delivery log once nothing is pending (the receiver answers before the outcome is
    recorded)."""

    async def log() -> dict[str, Any] | None:
        body = await _deliveries(api, ws, webhook_id)
        return None if any(d["status"] == "pending" for d in body["deliveries"]) else body

    settled: dict[str, Any] = await until(log, what="every delivery to be settled")
    return settled


def _counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("journeys_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


# --------------------------------------------------------------------------- tests


async def test_stage_changes_are_delivered_signed_after_stitching(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
) -> None:
    delivered_before = _counter("delivered")
    webhook_id, endpoint = await _subscribe(api, workspace, receiver, ["stage.changed"])
    viewed = _ev("track", "2026-03-01T10:01:00Z", anonymousId="a1", event="Product Viewed")
    await _send(api, workspace, _ev("page", "2026-03-01T10:00:00Z", anonymousId="a1"), viewed)
    await stitch()
    customer = await _customer(api, workspace, "anonymous_id:a1")
    await until(lambda: endpoint.delivered(), what="the first stage change")

    order = _ev("track", "2026-03-02T09:00:00Z", anonymousId="a1", event="Order Completed")
    await _send(api, workspace, order)
    await stitch()
    await until(lambda: len(endpoint.delivered()) == 2, what="the second stage change")

    first, second = endpoint.delivered()
    assert all(r.signed for r in endpoint.requests)
    assert first.headers["content-type"] == "application/json"
    assert first.headers["journeys-event-type"] == "stage.changed"
    assert first.headers["journeys-event-id"] == first.body["id"]
    assert first.headers["journeys-signature"].startswith("t=")
    assert first.headers["user-agent"].startswith("Journeys-Webhooks/")
    assert first.body["type"] == "stage.changed"
    assert first.body["data"] == {
        "customer_id": customer,
        "old_stage": None,
        "new_stage": "consideration",
        "entered_at": "2026-03-01T10:01:00+00:00",
        "message_id": viewed["messageId"],
    }
    assert second.body["data"] == {
        "customer_id": customer,
        "old_stage": "consideration",
        "new_stage": "purchase",
        "entered_at": "2026-03-02T09:00:00+00:00",
        "message_id": order["messageId"],
    }
    # A signature made with another secret, or over other bytes, does not verify.
    header = first.headers["journeys-signature"]
    assert not verify_signature("whsec_wrong", header, first.raw)
    assert not verify_signature(endpoint.secret, header, first.raw + b" ")

    log = await _settled(api, workspace, webhook_id)
    assert [d["event_id"] for d in log["deliveries"]] == [second.event_id, first.event_id]
    for entry in log["deliveries"]:
        assert entry["status"] == "delivered"
        assert entry["attempts"] == 1
        assert entry["last_status_code"] == 200
        assert entry["last_error"] is None
        assert entry["next_attempt_at"] is None
        assert entry["delivered_at"] is not None
        assert entry["customer_id"] == customer
        assert entry["type"] == "stage.changed"
    await until(lambda: _counter("delivered") >= delivered_before + 2, what="the delivered counter")

    r = await api.get("/metrics")
    assert "journeys_webhook_backlog" in r.text
    assert "journeys_webhook_deliveries_total" in r.text


async def test_failures_are_retried_with_backoff_in_order_per_customer(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
) -> None:
    retried_before = _counter("retried")
    webhook_id, endpoint = await _subscribe(
        api, workspace, receiver, ["stage.changed"], fail_first=2
    )
    # x moves three times (three stitches: three events of x); y once, alongside x's first.
    await _send(
        api,
        workspace,
        _ev("page", "2026-03-01T10:00:00Z", anonymousId="x"),
        _ev("page", "2026-03-01T10:00:00Z", anonymousId="y"),
    )
    await stitch()
    await _send(
        api,
        workspace,
        _ev("track", "2026-03-01T11:00:00Z", anonymousId="x", event="Product Viewed"),
    )
    await stitch()
    await _send(
        api,
        workspace,
        _ev("track", "2026-03-01T12:00:00Z", anonymousId="x", event="Order Completed"),
    )
    await stitch()
    x = await _customer(api, workspace, "anonymous_id:x")
    y = await _customer(api, workspace, "anonymous_id:y")
    await until(lambda: len(endpoint.delivered()) == 4, what="every event delivered")

    requests = endpoint.requests
    assert all(r.signed for r in requests)
    # Each event: two failed attempts, then the delivery; retries are the same bytes.
    by_event: dict[str, list[Received]] = {}
    for r in requests:
        by_event.setdefault(r.event_id, []).append(r)
    assert all([a.status for a in attempts] == [500, 500, 200] for attempts in by_event.values())
    assert all(len({a.raw for a in attempts}) == 1 for attempts in by_event.values())
    # Backoff: base, then twice the base (±20 %), at least.
    for attempts in by_event.values():
        assert attempts[1].at - attempts[0].at >= 0.8 * BASE
        assert attempts[2].at - attempts[1].at >= 0.8 * 2 * BASE

    # In order per customer: x's next event is first sent only after its previous one was
    # delivered; y was not held back by x's failures.
    x_events = [r.event_id for r in endpoint.delivered() if r.body["data"]["customer_id"] == x]
    assert [
        r.body["data"]["new_stage"]
        for r in endpoint.delivered()
        if r.body["data"]["customer_id"] == x
    ] == ["awareness", "consideration", "purchase"]
    assert x_events == sorted(x_events, key=lambda e: int(e.removeprefix("evt_")))
    for earlier, later in itertools.pairwise(x_events):
        delivered_at = next(
            i for i, r in enumerate(requests) if r.event_id == earlier and r.status == 200
        )
        first_sent = next(i for i, r in enumerate(requests) if r.event_id == later)
        assert first_sent > delivered_at, (earlier, later)
    y_first_sent = next(i for i, r in enumerate(requests) if r.body["data"]["customer_id"] == y)
    x_first_done = next(
        i for i, r in enumerate(requests) if r.body["data"]["customer_id"] == x and r.status == 200
    )
    assert y_first_sent < x_first_done

    log = await _settled(api, workspace, webhook_id)
    assert len(log["deliveries"]) == 4
    for entry in log["deliveries"]:
        assert (entry["status"], entry["attempts"], entry["last_status_code"]) == (
            "delivered",
            3,
            200,
        )
    await until(lambda: _counter("retried") >= retried_before + 8, what="the retried counter")


async def test_a_delivery_is_given_up_and_then_holds_nothing_back(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
    db: asyncpg.Connection,
) -> None:
    failed_before = _counter("failed")
    webhook_id, endpoint = await _subscribe(
        api, workspace, receiver, ["stage.changed"], always_fail=True
    )
    await _send(api, workspace, _ev("page", "2026-03-01T10:00:00Z", anonymousId="z"))
    await stitch()
    await _send(
        api,
        workspace,
        _ev("track", "2026-03-01T11:00:00Z", anonymousId="z", event="Product Viewed"),
    )
    await stitch()
    await until(lambda: len(endpoint.requests) >= 2, what="a few failed attempts")
    first_event = endpoint.requests[0].event_id
    assert {r.event_id for r in endpoint.requests} == {first_event}  # the second waits

    log = await _deliveries(api, workspace, webhook_id, "status=pending")
    head = next(d for d in log["deliveries"] if d["event_id"] == first_event)
    [waiting] = [d for d in log["deliveries"] if d["event_id"] != first_event]
    assert (waiting["attempts"], waiting["next_attempt_at"]) == (0, None)  # queued behind
    assert head["last_status_code"] == 500
    assert head["last_error"] == "HTTP 500"
    assert head["next_attempt_at"] is not None
    assert head["delivered_at"] is None

    # 24 hours of failures later (the give-up horizon), the next failure gives it up.
    await db.execute(
        "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours' "
        "WHERE workspace_id = $1 AND event_id = $2",
        workspace.workspace_id,
        int(first_event.removeprefix("evt_")),
    )

    async def given_up() -> bool:
        log = await _deliveries(api, workspace, webhook_id, "status=failed")
        return [d["event_id"] for d in log["deliveries"]] == [first_event]

    await until(given_up, what="the delivery to be given up")
    second = await until(
        lambda: [r for r in endpoint.requests if r.event_id != first_event],
        what="the customer's next event to be attempted",
    )
    assert second[0].body["data"]["new_stage"] == "consideration"
    failed = (await _deliveries(api, workspace, webhook_id, "status=failed"))["deliveries"][0]
    assert failed["next_attempt_at"] is None
    assert failed["last_error"] == "HTTP 500"
    await until(lambda: _counter("failed") >= failed_before + 1, what="the failed counter")

    # Deleting the webhook drops what it still had to send.
    r = await api.delete(f"/v1/webhooks/{webhook_id}", headers=_server(workspace))
    assert r.status_code == 204
    left = await db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE workspace_id = $1 AND webhook_id = $2",
        workspace.workspace_id,
        webhook_id,
    )
    assert left == 0


async def test_identity_merged_when_an_identify_joins_two_devices(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
    db: asyncpg.Connection,
) -> None:
    _, endpoint = await _subscribe(api, workspace, receiver, ["identity.merged"])
    await _send(
        api,
        workspace,
        _ev("page", "2026-03-01T10:00:00Z", anonymousId="phone"),
        _ev("page", "2026-03-01T11:00:00Z", anonymousId="laptop"),
    )
    await stitch()
    phone = await _customer(api, workspace, "anonymous_id:phone")
    laptop = await _customer(api, workspace, "anonymous_id:laptop")
    assert phone != laptop

    # The first identify only names the phone's customer (u1 is new); the second joins the
    # laptop's customer to it.
    joining = _ev("identify", "2026-03-02T09:05:00Z", userId="u1", anonymousId="laptop")
    await _send(
        api,
        workspace,
        _ev(
            "identify",
            "2026-03-02T09:00:00Z",
            userId="u1",
            anonymousId="phone",
            traits={"email": "ann@example.com"},
        ),
        joining,
    )
    await stitch()
    merged = await _customer(api, workspace, "user_id:u1")
    assert merged == await _customer(api, workspace, "anonymous_id:laptop")
    [event] = await until(lambda: endpoint.delivered(), what="identity.merged")
    assert event.signed
    data = event.body["data"]
    assert data["customer_id"] == merged
    assert data["merged_customer_ids"] == sorted([phone, laptop])
    assert data["identifiers"] == ["user_id:u1", "anonymous_id:laptop"]
    assert data["message_id"] == joining["messageId"]
    assert data["rule"] == "identify"
    assert data["action"] in ("linked", "merged")
    assert data["at"] == "2026-03-02T09:05:00+00:00"
    # The same decision, with the same reason, as the identity ledger shows.
    r = await api.get(
        "/v1/profiles/user_id:u1/identities",
        headers={"Authorization": f"Bearer {workspace.read_key}"},
    )
    ledger = [e for e in r.json()["ledger"] if e["message_id"] == joining["messageId"]]
    assert [e["reason"] for e in ledger] == [data["reason"]]

    # Stitching more of the same customer merges nothing new: no second event is written.
    await _send(api, workspace, _ev("page", "2026-03-03T10:00:00Z", userId="u1"))
    await _send(api, workspace, _ev("page", "2026-03-03T11:00:00Z", anonymousId="laptop"))
    await stitch()
    written = await db.fetchval(
        "SELECT count(*) FROM webhook_events WHERE workspace_id = $1", workspace.workspace_id
    )
    assert written == 1


async def test_customer_deleted_after_the_deletion_job_and_identifiers_are_struck(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
    db: asyncpg.Connection,
) -> None:
    _, endpoint = await _subscribe(
        api, workspace, receiver, ["stage.changed", "identity.merged", "customer.deleted"]
    )
    await _send(
        api,
        workspace,
        _ev("page", "2026-03-01T10:00:00Z", anonymousId="dev-1"),
        _ev("page", "2026-03-01T11:00:00Z", anonymousId="dev-2"),
    )
    await stitch()
    await _send(
        api,
        workspace,
        _ev("identify", "2026-03-02T09:00:00Z", userId="doomed", anonymousId="dev-1"),
        _ev("identify", "2026-03-02T09:05:00Z", userId="doomed", anonymousId="dev-2"),
    )
    await stitch()
    customer = await _customer(api, workspace, "user_id:doomed")
    await until(
        lambda: any(r.type == "identity.merged" for r in endpoint.delivered()),
        what="identity.merged",
    )

    r = await api.delete("/v1/profiles/user_id:doomed", headers=_server(workspace))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    await stitch()  # runs the deletion job
    r = await api.get(f"/v1/deletions/{job_id}", headers=_server(workspace))
    assert r.json()["status"] == "done", r.text
    last = await until(
        lambda: [r for r in endpoint.delivered() if r.type == "customer.deleted"],
        what="customer.deleted",
    )
    [deleted] = last
    assert deleted.signed
    assert set(deleted.body["data"]) == {"customer_id", "job_id", "deleted_at"}
    assert deleted.body["data"]["customer_id"] == customer
    assert deleted.body["data"]["job_id"] == job_id
    for personal in (b"doomed", b"dev-1", b"dev-2"):
        assert personal not in deleted.raw
    # It comes after every earlier event of the customer.
    earlier = [r for r in endpoint.delivered() if r.body["data"]["customer_id"] == customer]
    assert earlier[-1] is deleted and len(earlier) > 1

    # The outbox no longer names the erased identifiers anywhere.
    texts = [
        r["data"]
        for r in await db.fetch(
            "SELECT type, data::text AS data FROM webhook_events WHERE workspace_id = $1",
            workspace.workspace_id,
        )
    ]
    assert texts and not [t for t in texts if "doomed" in t or "dev-1" in t or "dev-2" in t]
    redacted = await db.fetchval(
        "SELECT bool_and((data ->> 'redacted')::boolean) FROM webhook_events "
        "WHERE workspace_id = $1 AND type = 'identity.merged'",
        workspace.workspace_id,
    )
    assert redacted is True


async def test_nothing_is_written_for_types_nobody_subscribes_to(
    api: httpx.AsyncClient,
    receiver: Receiver,
    stitch: Stitch,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    quiet = await new_workspace(database_url, "quiet")
    await _send(
        api,
        quiet,
        _ev("page", "2026-03-01T10:00:00Z", anonymousId="q1"),
        _ev("identify", "2026-03-01T10:05:00Z", anonymousId="q1", userId="q"),
    )
    await stitch()
    partial = await new_workspace(database_url, "partial")
    await _subscribe(api, partial, receiver, ["customer.deleted"])
    await _send(api, partial, _ev("page", "2026-03-01T10:00:00Z", anonymousId="p1"))
    await stitch()
    for ws in (quiet, partial):
        count = await db.fetchval(
            "SELECT count(*) FROM webhook_events WHERE workspace_id = $1", ws.workspace_id
        )
        assert count == 0


async def test_the_delivery_log_pages_newest_first(
    api: httpx.AsyncClient,
    workspace: NewWorkspace,
    receiver: Receiver,
    deliverer: None,
    stitch: Stitch,
) -> None:
    webhook_id, endpoint = await _subscribe(api, workspace, receiver, ["stage.changed"])
    await _send(
        api,
        workspace,
        *(_ev("page", "2026-03-01T10:00:00Z", anonymousId=f"page-{n}") for n in range(5)),
    )
    await stitch()
    await until(lambda: len(endpoint.delivered()) == 5, what="five deliveries")
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = await _deliveries(api, workspace, webhook_id, f"limit=2{cursor}")
        pages += 1
        seen += [d["event_id"] for d in page["deliveries"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == sorted(seen, key=lambda e: -int(e.removeprefix("evt_")))
    assert set(seen) == {r.event_id for r in endpoint.delivered()}
    assert (await _deliveries(api, workspace, webhook_id, "status=failed"))["deliveries"] == []


@pytest.mark.slow
async def test_journeys_serve_delivers_with_its_in_process_worker(
    receiver: Receiver, database_url: str
) -> None:
    ws = await new_workspace(database_url, "live")
    server = LiveServer(
        database_url,
        extra_env={
            "JOURNEYS_WEBHOOKS_ALLOW_PRIVATE": "true",
            "JOURNEYS_WEBHOOKS_BACKOFF_BASE_SECONDS": str(BASE),
        },
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as live:
            _, endpoint = await _subscribe(live, ws, receiver, ["stage.changed"], fail_first=1)
            await _send(live, ws, _ev("page", "2026-03-01T10:00:00Z", anonymousId="live"))
            [event] = await until(lambda: endpoint.delivered(), what="a delivery from serve")
        assert event.signed
        assert event.body["data"]["new_stage"] == "awareness"
        assert [r.status for r in endpoint.requests] == [500, 200]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.stop)
