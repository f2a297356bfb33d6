"""Durability of ingest against a real uvicorn: a 200 means committed, whatever happens next.

Many concurrent clients post batches and single events with unique messageIds while the server
is killed (SIGKILL) or stopped (SIGTERM); the database must then hold every acknowledged event
exactly once and every other event at most once. Retrying everything (as SDKs do, same
messageIds) against a fresh server must leave every event stored exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

CLIENTS = 16
REQUESTS_PER_CLIENT = 20


@dataclass(slots=True)
class Call:
    """One HTTP request of the load and what became of it."""

    path: str
    body: dict[str, Any]
    message_ids: list[str]
    status: int | None = None
    error: str | None = None


@dataclass(slots=True)
class Load:
    calls: list[list[Call]]  # per client, in order
    done: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def all_calls(self) -> list[Call]:
        return [call for calls in self.calls for call in calls]


def make_load(run: str, *, clients: int = CLIENTS, per_client: int = REQUESTS_PER_CLIENT) -> Load:
    """Per client: alternately a /v1/batch of 1-12 events and a /v1/track, unique messageIds."""
    calls: list[list[Call]] = []
    for c in range(clients):
        mine: list[Call] = []
        for r in range(per_client):
            base = f"{run}-{c}-{r}"
            if r % 2 == 0:
                ids = [f"{base}-{i}" for i in range(1 + (c * 7 + r) % 12)]
                batch = [
                    {
                        "type": "track",
                        "userId": f"user-{c}",
                        "event": "Product Viewed",
                        "messageId": mid,
                        "properties": {"client": c, "request": r, "pad": "x" * 100},
                    }
                    for mid in ids
                ]
                mine.append(Call("/v1/batch", {"batch": batch}, ids))
            else:
                body = {
                    "userId": f"user-{c}",
                    "event": "Order Completed",
                    "messageId": base,
                    "properties": {"client": c, "request": r},
                }
                mine.append(Call("/v1/track", body, [base]))
        calls.append(mine)
    return Load(calls)


async def run_load(
    url: str,
    write_key: str,
    load: Load,
    *,
    disturb: Callable[[], Awaitable[None]] | None = None,
    disturb_after: int = 0,
) -> None:
    """CLIENTS concurrent clients send their calls in order; `disturb` runs once `disturb_after`
    calls have completed, while the others are still being sent."""

    async def client_loop(client: httpx.AsyncClient, calls: list[Call]) -> None:
        for call in calls:
            try:
                response = await client.post(call.path, json=call.body)
                call.status = response.status_code
                if response.status_code != 200:
                    call.error = response.text
            except httpx.HTTPError as exc:  # connection-level failure
                call.error = f"{type(exc).__name__}: {exc}"
            load.done += 1
            load.progress.set()

    async def disturber() -> None:
        assert disturb is not None
        while load.done < disturb_after:
            load.progress.clear()
            await load.progress.wait()
        await disturb()

    size = len(load.calls)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(
        base_url=url, auth=(write_key, ""), limits=limits, timeout=httpx.Timeout(45.0)
    ) as client:
        tasks = [asyncio.create_task(client_loop(client, calls)) for calls in load.calls]
        if disturb is not None:
            tasks.append(asyncio.create_task(disturber()))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=50)


async def stored_counts(db: asyncpg.Connection, workspace_id: int) -> Counter[str]:
    rows = await db.fetch(
        "SELECT message_id, count(*) AS n FROM events WHERE workspace_id = $1 GROUP BY 1",
        workspace_id,
    )
    return Counter({row["message_id"]: row["n"] for row in rows})


def check_after_disturbance(load: Load, counts: Counter[str]) -> tuple[int, int]:
    """Every acknowledged event exactly once, every other at most once; returns (ok, failed)."""
    every_id = {mid for call in load.all_calls() for mid in call.message_ids}
    assert set(counts) <= every_id, "stored events nobody sent"
    assert all(n == 1 for n in counts.values()), {m: n for m, n in counts.items() if n != 1}
    ok = failed = 0
    for call in load.all_calls():
        if call.status == 200:
            ok += 1
            missing = [mid for mid in call.message_ids if counts[mid] != 1]
            assert not missing, f"{call.path} answered 200 but {missing} are not stored"
        else:
            failed += 1
    return ok, failed


async def retry_everything(url: str, write_key: str, load: Load) -> None:
    """What an SDK does with its unacknowledged (here: all) batches: send them again."""
    retry = Load([[Call(c.path, c.body, c.message_ids) for c in calls] for calls in load.calls])
    await run_load(url, write_key, retry)
    bad = [(c.path, c.status, c.error) for c in retry.all_calls() if c.status != 200]
    assert not bad, bad[:5]


async def test_kill_9_mid_load_loses_no_acknowledged_event(
    database_url: str, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    load = make_load(uuid.uuid4().hex[:8])
    total_calls = len(load.all_calls())
    server = LiveServer(database_url)
    restarted: LiveServer | None = None
    try:
        await run_load(
            server.url,
            workspace.write_key,
            load,
            disturb=lambda: asyncio.to_thread(server.kill),
            disturb_after=total_calls // 3,
        )
        assert server.process.returncode is not None  # really killed

        # Before the kill the server was healthy: any answer it gave was a 200.
        answered = [c for c in load.all_calls() if c.status is not None]
        assert all(c.status == 200 for c in answered), [
            (c.status, c.error) for c in answered if c.status != 200
        ][:5]
        ok, failed = check_after_disturbance(load, await stored_counts(db, workspace.workspace_id))
        assert ok >= total_calls // 3
        assert failed > 0, "the kill happened after the load: nothing was in flight"

        restarted = LiveServer(database_url)
        await retry_everything(restarted.url, workspace.write_key, load)
        counts = await stored_counts(db, workspace.workspace_id)
        every_id = [mid for call in load.all_calls() for mid in call.message_ids]
        assert len(every_id) == len(set(every_id))
        assert counts == Counter(every_id), "after the retry every event is stored exactly once"
    finally:
        if server.process.poll() is None:
            server.kill()
        if restarted is not None:
            restarted.stop()


async def test_sigterm_under_load_never_acknowledges_an_unstored_event(
    database_url: str, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    load = make_load(uuid.uuid4().hex[:8])
    total_calls = len(load.all_calls())
    server = LiveServer(database_url)
    restarted: LiveServer | None = None
    try:
        await run_load(
            server.url,
            workspace.write_key,
            load,
            disturb=lambda: asyncio.to_thread(server.stop),
            disturb_after=total_calls // 3,
        )
        assert server.process.returncode is not None

        # In flight at SIGTERM: completed with a 200, or failed at the connection level.
        answered = [c for c in load.all_calls() if c.status is not None]
        assert all(c.status == 200 for c in answered), [
            (c.status, c.error) for c in answered if c.status != 200
        ][:5]
        ok, failed = check_after_disturbance(load, await stored_counts(db, workspace.workspace_id))
        assert ok >= total_calls // 3
        assert failed > 0, "the stop happened after the load: nothing was in flight"

        restarted = LiveServer(database_url)
        await retry_everything(restarted.url, workspace.write_key, load)
        counts = await stored_counts(db, workspace.workspace_id)
        every_id = [mid for call in load.all_calls() for mid in call.message_ids]
        assert counts == Counter(every_id)
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


async def test_concurrent_duplicates_are_stored_once(
    live_server: LiveServer, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    """32 concurrent requests carrying the same messageIds (an SDK retrying while its first
    attempt is still being committed, many times over): each event is stored once."""
    run = uuid.uuid4().hex[:8]
    expected: set[str] = set()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        base_url=live_server.url, auth=(workspace.write_key, ""), limits=limits, timeout=30
    ) as client:
        for round_ in range(3):
            ids = [f"dup-{run}-{round_}-{i}" for i in range(100)]
            expected.update(ids)
            batch = [
                {
                    "type": "track",
                    "userId": f"user-{i % 7}",
                    "event": "Product Added",
                    "messageId": mid,
                    "properties": {"i": i},
                }
                for i, mid in enumerate(ids)
            ]
            # Different orders and a few single-event routes, so commits overlap differently.
            requests = []
            for n in range(32):
                if n % 8 == 7:
                    requests.append(client.post("/v1/track", json=batch[n]))
                else:
                    ordered = batch if n % 2 else list(reversed(batch))
                    requests.append(client.post("/v1/batch", json={"batch": ordered}))
            responses = await asyncio.gather(*requests)
            assert [r.status_code for r in responses] == [200] * 32, [
                r.text for r in responses if r.status_code != 200
            ][:3]
            assert all(r.json() == {"success": True} for r in responses)

    counts = await stored_counts(db, workspace.workspace_id)
    assert set(counts) == expected
    assert set(counts.values()) == {1}
