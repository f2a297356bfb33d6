"""Concurrent identifies of the same people and crossed aliases (A→B and B→A at once).

The same evidence is ingested into two workspaces:

- the reference, sequentially in one canonical order, then stitched;
- the concurrent one, split into tiny batches sent in a shuffled order by 16 concurrent requests
  (the same person's identify arriving from several requests at once, each alias pair A→B / B→A
  in flight together, retries of the same messageIds), while two stitchers race on the
  workspace's shard, the advisory lock bypassed, so stitching interleaves with the commits.

The identity graph must converge to exactly the reference: the same customers with the same
identifiers, stages, timelines and ledger (customer ids are content-derived). No deadlock: every
request answers 200 within the time limit, no stitch batch raises, nothing is set aside in
`stitch_failures`, and PostgreSQL counted no deadlock for the test database.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from app.db.engine import make_engine
from app.journeys.stitcher import Stitcher
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace
from tests.integration.test_stitching import Payload, ev, send, snapshot

pytestmark = pytest.mark.slow

Stitch = Callable[[], Awaitable[int]]
PEOPLE = 24
CONCURRENCY = 16
SEED = 20261123


def evidence(rng: random.Random) -> list[Payload]:
    """Each person: two devices browsing, identifies from both (one sent three times with
    different messageIds, as tabs and retries do), an email click from a third device, and a
    purchase. Pairs of people alias each other's user ids in both directions."""
    events: list[Payload] = []

    def add(minutes: float, type: str = "track", **fields: Any) -> None:
        events.append(ev(f"ci-{len(events):04d}", minutes, type, **fields))

    for i in range(PEOPLE):
        user, email = f"user-{i}", f"person.{i}@example.com"
        start = i * 240 + rng.randint(0, 60)
        add(start, "page", anonymousId=f"dev-{i}-a", name="Home")
        add(start + 1, anonymousId=f"dev-{i}-b", event="Product Viewed")
        for copy in range(3):
            add(
                start + 5 + copy,
                "identify",
                userId=user,
                anonymousId=f"dev-{i}-a",
                traits={"email": email, "copy": copy},
            )
        add(start + 9, "identify", userId=user, anonymousId=f"dev-{i}-b")
        add(
            start + 20,
            anonymousId=f"dev-{i}-c",
            event="Email Link Clicked",
            context={"traits": {"email": email.upper()}},
        )
        add(start + 30, userId=user, event="Order Completed", properties={"revenue": i})
    for i in range(0, PEOPLE - 1, 4):  # crossed aliases: A→B and B→A
        a, b = f"user-{i}", f"user-{i + 1}"
        add(i * 240 + 100, "alias", previousId=a, userId=b)
        add(i * 240 + 100, "alias", previousId=b, userId=a)
    return events


async def deadlocks(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def test_concurrent_identifies_and_crossed_aliases_converge_to_the_sequential_graph(
    client: httpx.AsyncClient, stitch: Stitch, conn: asyncpg.Connection, database_url: str
) -> None:
    rng = random.Random(SEED)
    events = evidence(rng)

    # The reference: one order, stitched once.
    reference = await new_workspace(database_url, "sequential")
    await send(client, reference, events)
    await stitch()
    expected = await snapshot(conn, reference.workspace_id)
    assert len(expected["customers"]) < PEOPLE  # the aliases joined some people: not trivial

    ws: NewWorkspace = await new_workspace(database_url, "concurrent")
    shard = ws.workspace_id % 16
    deadlocks_before = await deadlocks(conn)
    # Each alias pair and each person's repeated identifies as single-event requests next to
    # each other in the queue, so different senders have them in flight at the same time; the
    # rest in tiny shuffled batches; then retries of random events (the same messageIds).
    together = [e for e in events if e["type"] == "alias" or "copy" in e.get("traits", {})]
    pieces: list[list[Payload]] = [[e] for e in together]
    rest = [e for e in events if e not in together]
    rng.shuffle(rest)
    while rest:
        size = rng.randint(1, 3)
        pieces.append(rest[:size])
        rest = rest[size:]
    pieces += [rng.sample(events, 2) for _ in range(len(pieces) // 4)]
    queue: asyncio.Queue[list[Payload]] = asyncio.Queue()
    for piece in pieces:
        queue.put_nowait(piece)
    statuses: list[int] = []

    async def sender() -> None:
        while not queue.empty():
            piece = queue.get_nowait()
            r = await client.post("/v1/batch", json={"batch": piece}, auth=(ws.write_key, ""))
            statuses.append(r.status_code)
            assert r.status_code == 200 and "rejected" not in r.json(), r.text

    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    ingest_done = asyncio.Event()
    rounds = 0

    async def racer(stitcher: Stitcher) -> None:
        nonlocal rounds
        # Until ingest is over and the shard has nothing left: a batch error fails the test.
        while True:
            did = await stitcher.stitch_shard(shard)
            rounds += 1
            if not did:
                if ingest_done.is_set():
                    return
                await asyncio.sleep(0.005)  # nothing committed yet: let ingest run

    async def ingest() -> None:
        try:
            await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        finally:
            ingest_done.set()

    try:
        racers = [racer(Stitcher(engine, batch_size=5)) for engine in engines]
        await asyncio.wait_for(asyncio.gather(ingest(), *racers), timeout=120)
    finally:
        for engine in engines:
            await engine.dispose()  # the racers' backends exit: their statistics are flushed
    await stitch()  # whatever the racers left (nothing, normally) and other shards

    assert statuses == [200] * len(pieces)
    assert rounds > 10, "the stitchers did not interleave with the ingest"
    failures = await conn.fetchval(
        "SELECT count(*) FROM stitch_failures WHERE workspace_id = $1", ws.workspace_id
    )
    assert failures == 0
    raw = await conn.fetchval(
        "SELECT count(*) FROM events WHERE workspace_id = $1", ws.workspace_id
    )
    assert raw == len(events)  # retries stored once
    got = await snapshot(conn, ws.workspace_id)
    assert got["customers"] == expected["customers"]
    assert got["identities"] == expected["identities"]
    assert got["timeline"] == expected["timeline"]
    assert got == expected
    assert await deadlocks(conn) == deadlocks_before
