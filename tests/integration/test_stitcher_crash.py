"""The stitcher worker under SIGKILL and in pairs: exactly the state of an uncrashed run.

`journeys worker` runs as a real subprocess against the test database while events of a few
hundred customers are ingested through the API. It is killed with SIGKILL at random instants and
while a batch transaction is open, restarted, and must end in exactly the state that the same
events stitched without any crash produce (a reference workspace, stitched in-process): every
event on a timeline once, `stitch_progress.events` advanced by exactly the number of raw events.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from app.db.engine import make_engine
from app.journeys.stitcher import LOCK_BASE, Stitcher
from app.workspaces.repository import NewWorkspace
from tests.conftest import ROOT, new_workspace, stop_process
from tests.integration.test_stitching import Payload, ev, send, snapshot

pytestmark = pytest.mark.slow

Stitch = Callable[[], Awaitable[int]]
DAY = 24 * 60
SEED = int(os.environ.get("JOURNEYS_CRASH_SEED", "20261123"))


# --------------------------------------------------------------------------- the load


def journeys_of(customers: int, rng: random.Random) -> list[Payload]:
    """Realistic multi-device journeys: anonymous browsing days before an identify, email clicks
    from a second device, orders, surveys, aliases from legacy ids, shared devices, placeholder
    ids and late events (event times days before their arrival)."""
    events: list[Payload] = []

    def add(minutes: float, type: str = "track", **fields: Any) -> None:
        events.append(ev(f"c{len(events):05d}", minutes, type, **fields))

    for i in range(customers):
        user, device, phone = f"u-{i}", f"d-{i}", f"p-{i}"
        email = f"Customer.{i}@Example.com " if i % 3 else f"customer.{i}@example.com"
        start = rng.randint(0, 20 * DAY)
        for k in range(rng.randint(2, 5)):
            add(
                start + k * rng.randint(1, 600),
                "page",
                anonymousId=device,
                name="Home",
                context={
                    "page": {
                        "url": f"https://shop.example.com/?utm_source=google"
                        f"&utm_medium=cpc&utm_campaign=c{i % 4}"
                    }
                },
            )
            add(
                start + k * 600 + 3,
                event=rng.choice(("Product Viewed", "Products Searched")),
                anonymousId=device,
            )
        seen = start + 5 * 600 + rng.randint(0, DAY)
        add(
            seen,
            "identify",
            userId=user,
            anonymousId=device,
            traits={"email": email, "plan": f"p{i % 3}"},
        )
        add(
            seen + 30,
            event="Email Link Clicked",
            anonymousId=phone,
            context={
                "traits": {"email": email},
                "campaign": {"source": "newsletter", "medium": "email", "name": "n"},
            },
        )
        add(seen + 31, event="Email Opened", anonymousId=phone)
        for k in range(rng.randint(0, 3)):
            add(
                seen + 60 + k * DAY,
                event="Order Completed",
                userId=user,
                properties={"revenue": 10 + k},
            )
        add(
            seen + 5 * DAY,
            event="Survey Responded",
            userId=user,
            properties={"score": rng.randint(0, 10)},
            context={"externalIds": [{"id": f"crm-{i}", "type": "crm_id"}]},
        )
        if i % 7 == 0:
            add(start - 2 * DAY, event="Order Completed", userId=f"legacy-{i}")
            add(seen + 2, "alias", previousId=f"legacy-{i}", userId=user)
        if i % 10 == 0 and i + 1 < customers:
            # The next customer logs in on this device; its later anonymous events are theirs.
            add(seen + 120, "identify", userId=f"u-{i + 1}", anonymousId=device)
            add(seen + 125, event="Cart Viewed", anonymousId=device)
        if i % 11 == 0:
            add(seen + 200, event="Product Viewed", userId="0", anonymousId="undefined")
            add(
                seen + 201,
                "identify",
                userId="undefined",
                anonymousId=device,
                traits={"email": email},
            )
    rng.shuffle(events)  # arrival order has nothing to do with event time
    return events


def chunks(events: list[Payload], size: int) -> list[list[Payload]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


# --------------------------------------------------------------------------- observing


class Worker:
    """`journeys worker` in a subprocess."""

    def __init__(self, database_url: str) -> None:
        env = {**os.environ, "JOURNEYS_DATABASE_URL": database_url, "JOURNEYS_LOG_LEVEL": "warning"}
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - read after the process ends
            prefix="journeys-worker-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to finish, roll back or release anything."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process, grace=30)


@pytest.fixture
def workers(database_url: str) -> Iterator[Callable[[], Worker]]:
    """Start workers; all are stopped at the end of the test, whatever happens."""
    started: list[Worker] = []

    def start() -> Worker:
        worker = Worker(database_url)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
            Path(worker.log.name).unlink(missing_ok=True)


async def poll(
    check: Callable[[], Awaitable[bool]], *, timeout: float, workers: list[Worker] | None = None
) -> bool:
    """Poll an observable condition until it holds (True) or `timeout` passes (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            return False
        for w in workers or []:
            assert w.alive(), f"worker died:\n{w.output()[-3000:]}"
        await asyncio.sleep(0.01)
    return True


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float = 60.0,
    workers: list[Worker] | None = None,
) -> None:
    """Poll an observable condition; fail (with the workers' logs) if it does not come."""
    if not await poll(check, timeout=timeout, workers=workers):
        logs = "\n".join(w.output()[-3000:] for w in workers or [])
        raise AssertionError(f"timed out waiting for {what}\n{logs}")


async def progress(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(events), 0) FROM stitch_progress"))


async def pending(conn: asyncpg.Connection, workspace_id: int) -> int:
    """Raw events of the workspace not yet on a timeline."""
    return int(
        await conn.fetchval(
            "SELECT (SELECT count(DISTINCT message_id) FROM events WHERE workspace_id = $1)"
            " - (SELECT count(*) FROM journey_events WHERE workspace_id = $1)",
            workspace_id,
        )
    )


async def shard_holders(conn: asyncpg.Connection) -> dict[int, int]:
    """Shard → backend pid holding its advisory lock."""
    rows = await conn.fetch(
        "SELECT objid::bigint - $1 AS shard, pid FROM pg_locks WHERE locktype = 'advisory' "
        "AND granted AND classid = 0 AND objsubid = 1 AND objid::bigint BETWEEN $1 AND $1 + 15 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        LOCK_BASE,
    )
    return {int(r["shard"]): int(r["pid"]) for r in rows}


async def writing_transactions(conn: asyncpg.Connection) -> int:
    """Other sessions in a transaction that has written (the worker's batch: nothing else
    writes while the test is not sending)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        )
    )


# The reference of each load, stitched once per test process (customers, seed → workspace).
_REFERENCES: dict[tuple[int, int], NewWorkspace] = {}


async def reference(
    client: httpx.AsyncClient, stitch: Stitch, database_url: str, customers: int, seed: int
) -> tuple[list[Payload], NewWorkspace]:
    """The load, and the same events stitched in-process without any crash. Afterwards the
    whole feed is stitched, so any later progress of the feed is the test's own."""
    events = journeys_of(customers, random.Random(seed))
    await stitch()  # whatever earlier tests left unstitched
    ref = _REFERENCES.get((customers, seed))
    if ref is None:
        ref = await new_workspace(database_url, "reference")
        await send(client, ref, events)
        await stitch()
        _REFERENCES[customers, seed] = ref
    return events, ref


async def assert_exactly_once(
    conn: asyncpg.Connection,
    ws: NewWorkspace,
    ref: NewWorkspace,
    progress_before: int,
    events: list[Payload],
    customers: int,
) -> None:
    raw = await conn.fetchval(
        "SELECT count(*) FROM events WHERE workspace_id = $1", ws.workspace_id
    )
    assert raw == len({e["messageId"] for e in events})
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM journey_events WHERE workspace_id = $1", ws.workspace_id
        )
        == raw
    )
    # Each raw event went through the feed exactly once: no batch counted twice, none lost.
    assert await progress(conn) - progress_before == raw
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM stitch_failures WHERE workspace_id = $1", ws.workspace_id
        )
        == 0
    )
    mine, theirs = await snapshot(conn, ws.workspace_id), await snapshot(conn, ref.workspace_id)
    assert len(mine["customers"]) == customers  # one per journey: the shape is right
    assert mine == theirs


# --------------------------------------------------------------------------- tests


async def test_worker_killed_at_random_instants_reaches_the_uncrashed_state(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
    workers: Callable[[], Worker],
) -> None:
    events, ref = await reference(client, stitch, database_url, 240, SEED)
    assert len(events) > 3000
    rng = random.Random(SEED)
    before = await progress(conn)
    ws = await new_workspace(database_url, "crashed")

    worker = workers()
    await wait_until(lambda: _all_held(conn), "the worker to take every shard", workers=[worker])
    kills = mid_batch = 0
    for i, chunk in enumerate(chunks(events, 400)):
        await send(client, ws, chunk)
        if i % 2 == 0:
            continue
        if kills % 2 == 0:
            # While a batch transaction is open (its writes must all vanish).
            # (If the batch commits first, this is a kill between batches.)
            if await poll(partial(_writing, conn), timeout=5):
                mid_batch += 1
        else:
            await asyncio.sleep(rng.uniform(0, 0.3))  # a random instant, not a synchronisation
        worker.kill()
        kills += 1
        after_kill = await progress(conn)
        worker = workers()
        # Progress (or nothing left to do) before the next kill, so that the test ends.
        await wait_until(
            partial(_moved_or_done, conn, after_kill, ws.workspace_id),
            "the restarted worker to make progress",
            workers=[worker],
        )
    await wait_until(lambda: _drained(conn, ws.workspace_id), "the feed to drain", workers=[worker])
    worker.stop()
    print(f"seed {SEED}: {kills} kills, {mid_batch} inside a batch transaction")
    assert kills >= 4
    assert mid_batch >= 1, "no kill landed inside a batch transaction"
    await assert_exactly_once(conn, ws, ref, before, events, 240)


async def test_two_workers_on_the_same_workspace_stitch_every_event_once(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
    workers: Callable[[], Worker],
) -> None:
    events, ref = await reference(client, stitch, database_url, 240, SEED)
    before = await progress(conn)
    ws = await new_workspace(database_url, "pair")

    first = workers()
    await wait_until(
        lambda: _all_held(conn), "the first worker to take every shard", workers=[first]
    )
    holder = set((await shard_holders(conn)).values())
    second = workers()
    parts = chunks(events, 300)
    for i, chunk in enumerate(parts):
        await send(client, ws, chunk)
        if i == len(parts) // 2:
            # The owner dies mid-stream: the standby takes its shards over.
            await poll(partial(_writing, conn), timeout=5)
            first.kill()
            await wait_until(
                lambda: _held_by_other(conn, holder),
                "the second worker to take over",
                workers=[second],
            )
            first = workers()  # back as the standby
    await wait_until(
        lambda: _drained(conn, ws.workspace_id), "the feed to drain", workers=[first, second]
    )
    first.stop()
    second.stop()
    await assert_exactly_once(conn, ws, ref, before, events, 240)


async def test_two_stitchers_racing_on_one_shard_never_double_process(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """Without the advisory locks (bypassed here), the shard's progress row lock alone keeps
    two stitchers from taking the same batch."""
    events, ref = await reference(client, stitch, database_url, 60, SEED + 2)
    before = await progress(conn)
    ws = await new_workspace(database_url, "race")
    await send(client, ws, events)
    shard = ws.workspace_id % 16
    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        racers = [Stitcher(engine, batch_size=37) for engine in engines]
        rounds = 0
        while True:
            done = await asyncio.gather(*(r.stitch_shard(shard) for r in racers))
            rounds += 1
            assert rounds < 500
            if not any(done):
                break
    finally:
        for engine in engines:
            await engine.dispose()
    assert rounds > 10
    await assert_exactly_once(conn, ws, ref, before, events, 60)


def _read_ahead(result: str) -> float:
    return REGISTRY.get_sample_value("journeys_stitch_read_ahead_total", {"result": result}) or 0.0


async def test_batches_read_ahead_stitch_like_the_reference_and_stale_ones_are_dropped(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """Behind on the feed, a stitcher reads and parses its next batch while it writes the
    current one. With tiny batches nearly every batch is read ahead, and the result is the
    reference's; a read made stale by another stitcher taking the next batch is dropped."""
    events, ref = await reference(client, stitch, database_url, 60, SEED + 3)
    before = await progress(conn)
    ws = await new_workspace(database_url, "ahead")
    await send(client, ws, events)
    shard = ws.workspace_id % 16
    used, stale = _read_ahead("used"), _read_ahead("stale")
    engines = [make_engine(database_url, pool_size=3) for _ in range(2)]
    first, second = (Stitcher(engine, batch_size=11) for engine in engines)
    try:
        assert await first.stitch_shard(shard) == 11  # and reads the next 11 ahead
        assert await second.stitch_shard(shard) == 11  # takes those 11 itself
        assert await first.stitch_shard(shard) == 11  # its read ahead no longer follows
        assert _read_ahead("stale") == stale + 1
        batches = 0
        while await first.stitch_shard(shard):
            batches += 1
    finally:
        for stitcher in (first, second):
            await stitcher._release()
        for engine in engines:
            await engine.dispose()
    assert batches > 5
    # Every full batch after the first of this loop began from a read ahead.
    assert _read_ahead("used") - used >= batches - 1
    await assert_exactly_once(conn, ws, ref, before, events, 60)


# --------------------------------------------------------------------------- conditions


async def _all_held(conn: asyncpg.Connection) -> bool:
    return len(await shard_holders(conn)) == 16


async def _held_by_other(conn: asyncpg.Connection, old: set[int]) -> bool:
    holders = await shard_holders(conn)
    return len(holders) == 16 and not set(holders.values()) & old


async def _writing(conn: asyncpg.Connection) -> bool:
    return await writing_transactions(conn) > 0


async def _moved_or_done(conn: asyncpg.Connection, mark: int, workspace_id: int) -> bool:
    return await progress(conn) > mark or await pending(conn, workspace_id) == 0


async def _drained(conn: asyncpg.Connection, workspace_id: int) -> bool:
    return await pending(conn, workspace_id) == 0
