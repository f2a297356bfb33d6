"""Group commit: every request waits for a COMMIT, but concurrent requests share it.

Requests hand their rows to one `GroupCommitter`; whenever a commit slot is free it takes
everything waiting (up to `max_events`) and writes it in one transaction. Under light load a
request commits alone and immediately; under heavy load, batches grow by themselves while
earlier commits are in flight, so the cost per event falls as load rises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.core.logging import get_logger
from app.db.engine import is_unavailable
from app.ingest.metrics import COMMIT_EVENTS, COMMIT_SECONDS
from app.ingest.repository import EventBatch, EventWriter

log = get_logger(__name__)

ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
# A commit starts next to one in flight only for at least this many queued events (see
# `GroupCommitter._may_start`): never for a few dozen single-event requests, always for a
# /v1/batch request of 100 events.
PARALLEL_MIN_EVENTS = 64

_Held = tuple[AbstractAsyncContextManager[asyncpg.Connection], asyncpg.Connection]


class DatabaseUnavailable(Exception):
    """The database can't take the write now; the client should retry (503)."""


class RowsRefused(Exception):
    """The database refused this request's rows themselves (a 400, never retried)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(slots=True)
class _Pending:
    batch: EventBatch
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter:
    """Batches concurrent submissions into shared transactions."""

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        max_events: int = 5_000,
        max_wait: float = 0.0,
        concurrency: int = 3,
        parallel_min_events: int = PARALLEL_MIN_EVENTS,
    ) -> None:
        self._connect = connect
        self._writer = EventWriter()
        self._max_events = max_events
        self._max_wait = max_wait
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[_Pending] = []
        self._queued_events = 0
        self._running = 0  # commits in flight
        self._parallel_min_events = parallel_min_events
        self._wakeup = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # Connections kept between commits, at most one per slot: checking one out of the
        # pool for every commit cost ~30 µs of CPU, which small commits (/v1/track) pay per
        # request. One that fails is let go (the pool decides whether it is broken), so a
        # database that went away costs each kept connection one failed commit (503) after
        # it is back, as a pooled connection would.
        self._idle: list[_Held] = []
        self._closed = False
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def writer(self) -> EventWriter:
        """The row writer (exposed so retention can reset its partition cache)."""
        return self._writer

    def start(self) -> None:
        """Start the dispatch loop (once, inside the running event loop)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="group-commit")

    async def submit(self, batch: EventBatch) -> int:
        """Store a request's events durably; returns once they are committed (count of new
        rows)."""
        if not batch.events:
            return 0
        if self._closed:
            raise DatabaseUnavailable("the service is shutting down")
        pending = _Pending(batch)
        self._queue.append(pending)
        self._queued_events += len(batch.events)
        self._wakeup.set()
        return await asyncio.shield(pending.done)

    async def close(self) -> None:
        """Flush everything queued and wait for commits in flight (graceful shutdown)."""
        self._closed = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        while self._idle:
            context, _ = self._idle.pop()
            with contextlib.suppress(Exception):
                await context.__aexit__(None, None, None)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and self._may_start():
                await self._slots.acquire()
                if self._max_wait and not self._closed:
                    await asyncio.sleep(self._max_wait)
                batch = self._take()
                self._running += 1
                task = asyncio.create_task(self._flush(batch))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if self._closed and not self._queue:
                return

    def _may_start(self) -> bool:
        """Whether to start a commit now. While one is in flight, another starts only for a
        queue of at least `parallel_min_events` events; else the queue waits for the one in
        flight to finish and then goes in one commit. Each commit costs ~0.4 ms of server CPU
        and as much of PostgreSQL's whatever its size (mostly waking each other up), so
        splitting a few dozen single-event requests (/v1/track) over several small commits
        cost more CPU than their wait for one, on a machine that the load keeps busy."""
        return not self._running or self._closed or self._queued_events >= self._parallel_min_events

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        count = 0
        while self._queue and (
            not taken or count + len(self._queue[0].batch.events) <= self._max_events
        ):
            item = self._queue.pop(0)
            taken.append(item)
            count += len(item.batch.events)
        self._queued_events -= count
        return taken

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._write_group(batch)
        finally:
            self._running -= 1
            self._slots.release()
            self._wakeup.set()  # requests held back by `_may_start` go now

    async def _write_group(self, batch: list[_Pending]) -> None:
        rows = sum(len(pending.batch.events) for pending in batch)
        started = time.perf_counter()
        try:
            stored = await self._insert([pending.batch for pending in batch])
        except Exception as exc:
            if is_unavailable(exc):
                log.warning("commit_unavailable", error=repr(exc), events=rows)
                _fail_all(batch, DatabaseUnavailable(str(exc) or type(exc).__name__))
                return
            if len(batch) > 1:
                # One request's rows broke the shared commit: retry each on its own, so only
                # the culprit fails.
                log.warning("commit_split", error=repr(exc), requests=len(batch))
                for pending in batch:
                    await self._write_group([pending])
                return
            log.error("commit_refused", error=repr(exc), events=rows)
            _fail_all(batch, RowsRefused(_describe(exc)))
            return
        COMMIT_EVENTS.observe(rows)
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        # Duplicates are not an error; each request only learns that its rows are stored.
        share = stored
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(min(share, len(pending.batch.events)))
            share = max(0, share - len(pending.batch.events))

    async def _insert(self, batches: list[EventBatch]) -> int:
        held = self._idle.pop() if self._idle else None
        if held is None:
            context = self._connect()
            held = (context, await context.__aenter__())
        try:
            stored = await self._writer.insert(held[1], batches)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await held[0].__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if self._closed:
            await held[0].__aexit__(None, None, None)
        else:
            self._idle.append(held)
        return stored


def _fail_all(batch: list[_Pending], exc: Exception) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(exc)
            # Mark retrieved: a client may have gone away and nobody awaits the future.
            pending.done.exception()


def _describe(exc: BaseException) -> str:
    detail: Any = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
    return f"the database refused the event: {str(detail)[:300]}"
