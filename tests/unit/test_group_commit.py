"""The group committer without a database: the connections it keeps between commits, what it
does with one whose commit failed, and when it starts a commit next to one in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.ingest.commit import DatabaseUnavailable, GroupCommitter
from app.ingest.repository import EventBatch
from app.ingest.segment import NormalisedEvent


def _batch(size: int, workspace_id: int = 1) -> EventBatch:
    now = datetime.now(UTC)
    events = [
        NormalisedEvent(
            message_id=f"m{i}",
            type="track",
            event="E",
            user_id="u",
            anonymous_id=None,
            timestamp=now,
            received_at=now,
            flags=0,
            payload="{}",
        )
        for i in range(size)
    ]
    return EventBatch(workspace_id, events)


class FakeConnections:
    """A connection factory that counts connections opened and how each was given back."""

    def __init__(self) -> None:
        self.opened = 0
        self.returned: list[type[BaseException] | None] = []

    def __call__(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        @asynccontextmanager
        async def connection() -> AsyncIterator[Any]:
            self.opened += 1
            try:
                yield object()
            except BaseException as exc:
                self.returned.append(type(exc))
                raise
            self.returned.append(None)

        return connection()


class FakeWriter:
    """Stands for EventWriter: records each commit's batches; `gate` holds commits back."""

    def __init__(self) -> None:
        self.commits: list[list[EventBatch]] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail_with: BaseException | None = None

    async def insert(self, conn: Any, batches: Sequence[EventBatch]) -> int:
        self.commits.append(list(batches))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return sum(len(b.events) for b in batches)


def _committer(connections: FakeConnections, writer: FakeWriter, **kwargs: Any) -> GroupCommitter:
    committer = GroupCommitter(connections, **kwargs)
    committer._writer = writer  # type: ignore[assignment]
    committer.start()
    return committer


async def _let_the_dispatcher_run() -> None:
    """Yield to the event loop until every ready task has taken its step (no timing)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_commits_keep_one_connection_and_give_it_back_on_close() -> None:
    connections, writer = FakeConnections(), FakeWriter()
    committer = _committer(connections, writer)
    for size in (1, 3, 2):
        assert await committer.submit(_batch(size)) == size
    assert connections.opened == 1
    assert connections.returned == []
    await committer.close()
    assert connections.returned == [None]


async def test_a_failed_commit_lets_its_connection_go_and_the_next_opens_another() -> None:
    connections, writer = FakeConnections(), FakeWriter()
    committer = _committer(connections, writer)
    assert await committer.submit(_batch(1)) == 1
    writer.fail_with = ConnectionResetError("the database went away")
    with pytest.raises(DatabaseUnavailable):
        await committer.submit(_batch(1))
    # Given back with the error: the pool decides whether the connection is broken.
    assert connections.returned == [ConnectionResetError]
    writer.fail_with = None
    assert await committer.submit(_batch(2)) == 2
    assert connections.opened == 2
    await committer.close()
    assert connections.returned == [ConnectionResetError, None]


async def test_small_requests_wait_for_the_commit_in_flight_and_then_share_one() -> None:
    connections, writer = FakeConnections(), FakeWriter()
    committer = _committer(connections, writer, concurrency=3, parallel_min_events=10)
    writer.gate = asyncio.Event()
    first = asyncio.create_task(committer.submit(_batch(1)))
    await writer.started.wait()
    writer.started.clear()
    # Three free slots, but 1 + 2 + 3 events don't make a second commit worth it.
    waiting = [asyncio.create_task(committer.submit(_batch(n))) for n in (1, 2, 3)]
    await _let_the_dispatcher_run()
    assert len(writer.commits) == 1
    writer.gate.set()
    assert await first == 1
    assert [await task for task in waiting] == [1, 2, 3]
    assert [[len(b.events) for b in commit] for commit in writer.commits] == [[1], [1, 2, 3]]
    await committer.close()


async def test_a_large_queue_starts_a_commit_next_to_the_one_in_flight() -> None:
    connections, writer = FakeConnections(), FakeWriter()
    committer = _committer(connections, writer, concurrency=3, parallel_min_events=10)
    writer.gate = asyncio.Event()
    first = asyncio.create_task(committer.submit(_batch(1)))
    await writer.started.wait()
    writer.started.clear()
    small = asyncio.create_task(committer.submit(_batch(4)))
    await _let_the_dispatcher_run()
    assert len(writer.commits) == 1
    large = asyncio.create_task(committer.submit(_batch(6)))
    await writer.started.wait()  # 4 + 6 events queued: a second commit, the first still open
    assert [[len(b.events) for b in commit] for commit in writer.commits] == [[1], [4, 6]]
    assert connections.opened == 2  # one kept connection per commit in flight
    writer.gate.set()
    assert (await first, await small, await large) == (1, 4, 6)
    await committer.close()
    assert connections.returned == [None, None]
