"""The ingest write path against real PostgreSQL, in both of its forms (a small commit's INSERT,
a large commit's look-up and COPY): duplicates inside a commit and against stored rows, and two
commits racing to store the same messageId (a COPY that loses fails with a unique violation and
its commit is run again with ON CONFLICT)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import make_engine, raw_connection
from app.db.partitions import ensure_week_partition, week_of
from app.ingest.repository import COPY_MIN_ROWS, EventBatch, EventWriter
from app.ingest.segment import NormalisedEvent, RequestMeta, normalise_event
from app.workspaces.repository import NewWorkspace

# Rows padding a commit to the size that takes the COPY path (or not).
SIZES = {"insert": 0, "copy": COPY_MIN_ROWS}


def _event(message_id: str, note: str, received_at: datetime) -> NormalisedEvent:
    return normalise_event(
        {"userId": "u1", "event": "E", "messageId": message_id, "properties": {"note": note}},
        type_hint="track",
        meta=RequestMeta(received_at=received_at),
    )


def _padding(path: str, note: str, received_at: datetime) -> list[NormalisedEvent]:
    return [_event(f"pad-{note}-{i:03d}", note, received_at) for i in range(SIZES[path])]


def _races() -> float:
    return REGISTRY.get_sample_value("journeys_commit_races_total") or 0.0


async def _stored(db: asyncpg.Connection, workspace_id: int) -> list[tuple[str, str, object]]:
    rows = await db.fetch(
        "SELECT message_id, payload, received_week FROM events WHERE workspace_id = $1"
        " AND message_id NOT LIKE 'pad-%' ORDER BY message_id, received_week",
        workspace_id,
    )
    return [
        (r["message_id"], json.loads(r["payload"])["properties"]["note"], r["received_week"])
        for r in rows
    ]


async def _count(db: asyncpg.Connection, workspace_id: int) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM events WHERE workspace_id = $1", workspace_id)
    )


async def _until_waiting_for_a_transaction(db: asyncpg.Connection, pid: int) -> None:
    """Poll until backend `pid` waits for another transaction (the one whose uncommitted row
    it found in the primary key), or fail."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = await db.fetchval(
            "SELECT wait_event = 'transactionid' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the second commit never waited for the first one's row")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Connections like the group committer's: the pool's, with SQLAlchemy's binary JSON codecs
    (which COPY needs)."""
    eng = make_engine(database_url, pool_size=2)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def pooled(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with raw_connection(engine) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def pooled_too(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with raw_connection(engine) as c:
        yield c


@pytest.mark.parametrize("path", ["insert", "copy"])
async def test_duplicates_inside_one_commit_are_stored_once_first_wins(
    pooled: asyncpg.Connection, db: asyncpg.Connection, workspace: NewWorkspace, path: str
) -> None:
    now = datetime.now(UTC)
    ws = workspace.workspace_id
    races = _races()
    stored = await EventWriter().insert(
        pooled,
        [
            EventBatch(ws, [_event("dup-b", "first b", now), _event("dup-a", "first a", now)]),
            EventBatch(ws, [_event("dup-a", "second a", now), *_padding(path, "p", now)]),
            EventBatch(ws, [_event("dup-b", "third b", now), _event("dup-c", "c", now)]),
        ],
    )
    assert stored == 3 + SIZES[path]
    week = week_of(now)
    assert await _stored(db, ws) == [
        ("dup-a", "first a", week),
        ("dup-b", "first b", week),
        ("dup-c", "c", week),
    ]
    assert _races() == races  # removed before the statement: no unique violation


@pytest.mark.parametrize("path", ["insert", "copy"])
async def test_rows_stored_this_week_or_last_are_not_stored_again(
    pooled: asyncpg.Connection, db: asyncpg.Connection, workspace: NewWorkspace, path: str
) -> None:
    now = datetime.now(UTC)
    ws = workspace.workspace_id
    last_week = week_of(now) - timedelta(days=7)
    await ensure_week_partition(db, last_week)
    writer = EventWriter()
    earlier = [_event("last-week", "first", now - timedelta(days=7))]
    earlier.append(_event("this-week", "first", now))
    assert await writer.insert(pooled, [EventBatch(ws, earlier)]) == 2
    later = now + timedelta(seconds=1)
    retry = [_event(m, "retry", later) for m in ("last-week", "this-week", "new")]
    assert await writer.insert(pooled, [EventBatch(ws, retry + _padding(path, "p", later))]) == (
        1 + SIZES[path]
    )
    assert await _stored(db, ws) == [
        ("last-week", "first", last_week),
        ("new", "retry", week_of(now)),
        ("this-week", "first", week_of(now)),
    ]
    assert await _count(db, ws) == 3 + SIZES[path]


@pytest.mark.parametrize("path", ["insert", "copy"])
@pytest.mark.parametrize("straddles_weeks", [False, True])
async def test_commit_racing_another_for_a_message_id_stores_it_once(
    pooled: asyncpg.Connection,
    pooled_too: asyncpg.Connection,
    db: asyncpg.Connection,
    workspace: NewWorkspace,
    straddles_weeks: bool,
    path: str,
) -> None:
    """The first commit has inserted `race-1` and not committed yet; the second, with
    `race-1` too, waits for the first one's row. A small commit's ON CONFLICT then skips it;
    a large one's COPY (whose look-up could not see the row) fails with a unique violation and
    the commit is run again with ON CONFLICT. Either way `race-1` stays the first commit's and
    the second's other rows are stored once (also those of an earlier statement of its
    transaction that the violation rolled back)."""
    now = datetime.now(UTC)
    ws = workspace.workspace_id
    last_week = week_of(now) - timedelta(days=7)
    await ensure_week_partition(db, last_week)
    writer = EventWriter()
    # Both weeks' partitions checked now: the check takes an advisory lock that the first
    # commit's transaction would hold, and the race is about rows, not partitions.
    warm = [_event("warm-0", "w", now - timedelta(days=7)), _event("warm-1", "w", now)]
    assert await writer.insert(pooled, [EventBatch(ws, warm)]) == 2
    racing = [_event("race-1", "second", now), _event("race-2", "second", now)]
    racing += _padding(path, "second", now)
    if straddles_weeks:
        # Received last week: its own statement, before this week's, in one transaction.
        racing.append(_event("race-0", "second", now - timedelta(days=7)))
    races = _races()

    first = pooled.transaction()
    await first.start()
    try:
        one = [_event("race-1", "first", now)]
        assert await writer.insert(pooled, [EventBatch(ws, one)]) == 1
        pid = await pooled_too.fetchval("SELECT pg_backend_pid()")
        racer = asyncio.create_task(writer.insert(pooled_too, [EventBatch(ws, racing)]))
        await _until_waiting_for_a_transaction(db, pid)
    except BaseException:
        await first.rollback()
        raise
    await first.commit()

    assert await racer == len(racing) - 1
    assert _races() == races + (1 if path == "copy" else 0)
    expected = [("race-1", "first", week_of(now)), ("race-2", "second", week_of(now))]
    if straddles_weeks:
        expected.insert(0, ("race-0", "second", last_week))
    expected += [("warm-0", "w", last_week), ("warm-1", "w", week_of(now))]
    assert await _stored(db, ws) == expected
    assert await _count(db, ws) == len(racing) + 2


async def test_a_connection_without_binary_json_codecs_takes_the_insert_path(
    conn: asyncpg.Connection, db: asyncpg.Connection, workspace: NewWorkspace
) -> None:
    """`conn` has the text JSON codecs of `init_connection`, with which COPY can't send jsonb:
    a large commit is stored all the same."""
    now = datetime.now(UTC)
    ws = workspace.workspace_id
    events = [_event(f"text-{i:03d}", "t", now) for i in range(COPY_MIN_ROWS + 1)]
    assert await EventWriter().insert(conn, [EventBatch(ws, events)]) == len(events)
    assert await _count(db, ws) == len(events)


async def test_the_look_up_before_a_copy_is_never_a_cached_generic_plan(
    pooled: asyncpg.Connection, workspace: NewWorkspace
) -> None:
    """A generic plan made while the week's partition was empty would scan the whole partition
    for every row once it has grown: each large commit plans its look-up anew."""
    now = datetime.now(UTC)
    ws = workspace.workspace_id
    writer = EventWriter()
    for n in range(8):  # PostgreSQL considers a generic plan from a statement's 6th execution
        events = [_event(f"g{n}-{i:03d}", "g", now) for i in range(COPY_MIN_ROWS)]
        assert await writer.insert(pooled, [EventBatch(ws, events)]) == COPY_MIN_ROWS
    plans = await pooled.fetch(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
        " WHERE statement LIKE '%AS i(workspace_id, message_id)%'"
        " AND statement NOT LIKE '%pg_prepared_statements%'"
    )
    # A cached statement would be here, executed 8 times (and from the 6th, maybe generic);
    # each fresh one runs once and asyncpg closes it when it is garbage.
    assert all(p["generic_plans"] == 0 and p["custom_plans"] <= 1 for p in plans), plans
