"""Group commit: every request waits for a COMMIT, but concurrent requests share it.

Requests hand their rows to one `GroupCommitter`; whenever a commit slot is free it takes
everything waiting (up to `max_events`) and writes it in one transaction. Under light load a
request commits alone and immediately; under heavy load, batches grow by themselves while
earlier commits are in flight, so the cost per event falls as load rises.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self._connect = connect
        self._writer = EventWriter()
        self._max_events = max_events
        self._max_wait = max_wait
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
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

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                if self._max_wait and not self._closed:
                    await asyncio.sleep(self._max_wait)
                batch = self._take()
                task = asyncio.create_task(self._flush(batch))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if self._closed and not self._queue:
                return

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        count = 0
        while self._queue and (
            not taken or count + len(self._queue[0].batch.events) <= self._max_events
        ):
            item = self._queue.pop(0)
            taken.append(item)
            count += len(item.batch.events)
        return taken

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._write_group(batch)
        finally:
            self._slots.release()

    async def _write_group(self, batch: list[_Pending]) -> None:
        rows = sum(len(pending.batch.events) for pending in batch)
        started = time.perf_counter()
        try:
            async with self._connect() as conn:
                stored = await self._writer.insert(conn, [pending.batch for pending in batch])
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


def _fail_all(batch: list[_Pending], exc: Exception) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(exc)
            # Mark retrieved: a client may have gone away and nobody awaits the future.
            pending.done.exception()


def _describe(exc: BaseException) -> str:
    detail: Any = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
    return f"the database refused the event: {str(detail)[:300]}"
