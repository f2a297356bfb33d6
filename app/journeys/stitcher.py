"""The stitcher worker: follows the raw event feed and keeps every journey up to date.

Work is divided into 16 shards of workspaces (`workspace_id % 16`). A worker owns a shard while
it holds the shard's advisory lock on a dedicated connection, so any number of workers (inside
`journeys serve` or as `journeys worker`) can run: each shard is stitched by one at a time, and a
dead worker's shards are picked up by the others. Each batch is one transaction that writes the
derived state *and* advances the shard's feed position, so a crash at any instant leaves either
all of a batch or none of it: restarted, the stitcher reaches exactly the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.logging import get_logger
from app.core.memory import collector_paused
from app.db.engine import is_unavailable, raw_connection
from app.journeys import repository as journeys
from app.journeys.jobs import run_one_chunk
from app.journeys.stages import DEFAULT_MODEL, JourneyModel, JourneyModelError, model_from_dict
from app.journeys.stitch import Parsed, WorkspaceStitcher, parse_ahead

log = get_logger(__name__)

LOCK_BASE = 0x4A53_0000  # advisory lock ids of the shards: "JS" + shard
MODEL_CACHE_SECONDS = 5.0

STITCHED = Counter("journeys_stitched_events_total", "Events stitched into journeys")
BATCH_SECONDS = Histogram(
    "journeys_stitch_batch_seconds",
    "Duration of one stitch batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHARDS_HELD = Gauge("journeys_stitch_shards_held", "Shards this process stitches")
STITCH_ERRORS = Counter("journeys_stitch_errors_total", "Stitch batches that failed")
SKIPPED = Counter(
    "journeys_stitch_skipped_events_total", "Poison events set aside in stitch_failures"
)
READ_AHEAD = Counter(
    "journeys_stitch_read_ahead_total",
    "Batches read and parsed while the previous batch was being written, by whether the "
    "batch used them (used) or read the feed again (stale: the position moved, or it failed)",
    ["result"],
)

Ahead = tuple[list[asyncpg.Record], list[Parsed | None]]


@dataclass
class _ModelCache:
    entries: dict[int, tuple[float, JourneyModel]] = field(default_factory=dict)

    async def get(self, conn: asyncpg.Connection, workspace_id: int) -> JourneyModel:
        now = time.monotonic()
        hit = self.entries.get(workspace_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        raw = await conn.fetchval(
            "SELECT settings -> 'journey_model' FROM workspaces WHERE id = $1", workspace_id
        )
        model = DEFAULT_MODEL
        if raw is not None:
            try:
                model = model_from_dict(raw)
            except JourneyModelError as exc:  # validated on PUT; a bad stored one falls back
                log.error("journey_model_invalid", workspace_id=workspace_id, error=str(exc))
        self.entries[workspace_id] = (now + MODEL_CACHE_SECONDS, model)
        return model

    def forget(self, workspace_id: int) -> None:
        self.entries.pop(workspace_id, None)


async def model_for(conn: asyncpg.Connection, workspace_id: int) -> JourneyModel:
    """A workspace's journey model, read now (no cache)."""
    return await _ModelCache().get(conn, workspace_id)


JOB_EVERY = 1.0
# After a round that stitched something but less than a full batch: pause this fraction of the
# poll interval before the next round.
PARTIAL_PAUSE = 0.25


class Stitcher:
    """Owns shards and stitches their feed in batches."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 2_000,
        poll_interval: float = 0.2,
        shards: tuple[int, ...] = tuple(range(journeys.SHARDS)),
        rollups: bool = True,
    ) -> None:
        self._engine = engine
        # Off only in `journeys bench stitch`, to measure what maintaining the rollups costs.
        self._rollups = rollups
        self._batch_size = batch_size
        self._poll = poll_interval
        self._wanted = shards
        self._held: set[int] = set()
        self._models = _ModelCache()
        self._lock_conn: asyncpg.Connection | None = None
        self._lock_ctx: Any = None
        # Per shard, the next batch being read and parsed on another connection while the
        # current one is written (behind on the feed only): (position it follows, task).
        self._ahead: dict[int, tuple[tuple[int, int], asyncio.Task[Ahead]]] = {}

    def forget_model(self, workspace_id: int) -> None:
        """The workspace's journey model changed."""
        self._models.forget(workspace_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Stitch until `stop` is set; survives database outages."""
        last_claim = 0.0
        last_job = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - last_claim > 5 or not self._held:
                    await self._claim()
                    last_claim = time.monotonic()
                done = 0
                for shard in await self._pending():
                    done += await self._stitch_or_isolate(shard)
                # Straight on after a full batch. After a partial one, a short pause lets a few
                # commits accumulate (batches, not a transaction per ingest commit) without
                # adding a whole poll interval to every event's way onto the timeline; only an
                # idle round waits the poll interval.
                # Jobs (deletions first) get a chunk at least every JOB_EVERY seconds, so a
                # shard that never runs dry cannot starve them.
                full = done >= self._batch_size
                ran_job = False
                if not full or time.monotonic() - last_job > JOB_EVERY:
                    ran_job = await self._run_job()
                    last_job = time.monotonic()
                if full or ran_job:
                    continue
                pause = self._poll * PARTIAL_PAUSE if done else self._poll
            except Exception as exc:
                STITCH_ERRORS.inc()
                if is_unavailable(exc):
                    log.warning("stitcher_database_unavailable", error=repr(exc))
                    await self._release()
                else:
                    log.exception("stitch_failed", error=repr(exc))
                pause = self._poll
            await self._sleep(stop, pause)
        await self._release()

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    async def _pending(self) -> list[int]:
        """The held shards with events to read now."""
        if not self._held:
            return []
        async with raw_connection(self._engine) as conn:
            return await journeys.pending_shards(conn, sorted(self._held))

    async def _claim(self) -> None:
        if self._lock_conn is None or self._lock_conn.is_closed():
            self._lock_ctx = raw_connection(self._engine)
            self._lock_conn = await self._lock_ctx.__aenter__()
            self._held.clear()
        for shard in self._wanted:
            if shard in self._held:
                continue
            if await self._lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_BASE + shard):
                self._held.add(shard)
        SHARDS_HELD.set(len(self._held))

    async def _release(self) -> None:
        self._drop_ahead()
        self._held.clear()
        SHARDS_HELD.set(0)
        if self._lock_ctx is not None:
            with contextlib.suppress(Exception):
                if self._lock_conn is not None and not self._lock_conn.is_closed():
                    await self._lock_conn.execute("SELECT pg_advisory_unlock_all()")
                await self._lock_ctx.__aexit__(None, None, None)
        self._lock_conn = None
        self._lock_ctx = None

    async def _run_job(self) -> bool:
        if not self._held:
            return False
        async with raw_connection(self._engine) as conn:
            with collector_paused():
                return await run_one_chunk(conn, self._held)

    async def _stitch_or_isolate(self, shard: int) -> int:
        """Stitch a batch; if it fails for a reason other than the database being away, go
        event by event so one poison event is set aside instead of stalling its shard."""
        try:
            return await self.stitch_shard(shard)
        except Exception as exc:
            if is_unavailable(exc):
                raise
            log.error("stitch_batch_failed_isolating", shard=shard, error=repr(exc))
        done = 0
        for _ in range(self._batch_size):
            try:
                step = await self.stitch_shard(shard, limit=1)
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                await self._skip_poison(shard, exc)
                step = 1
            if not step:
                break
            done += step
        return done

    async def _skip_poison(self, shard: int, exc: Exception) -> None:
        async with raw_connection(self._engine) as conn, conn.transaction():
            position = await journeys.lock_progress(conn, shard)
            records = await journeys.read_feed(conn, shard=shard, after=position, limit=1)
            if not records:
                return
            bad = records[0]
            log.error(
                "stitch_event_skipped",
                workspace_id=bad["workspace_id"],
                message_id=bad["message_id"],
                error=repr(exc),
            )
            await journeys.set_aside(conn, bad["workspace_id"], bad["message_id"], exc)
            await journeys.save_progress(conn, shard, (bad["tx"], bad["seq"]), 1)
        SKIPPED.inc()

    def _drop_ahead(self) -> None:
        for _, task in self._ahead.values():
            task.cancel()
        self._ahead.clear()

    async def _read_ahead(self, shard: int, after: tuple[int, int]) -> Ahead:
        async with raw_connection(self._engine) as conn:
            records = await journeys.read_feed(
                conn, shard=shard, after=after, limit=self._batch_size
            )
        return records, await parse_ahead(records)

    async def _ahead_of(self, shard: int, position: tuple[int, int]) -> Ahead | None:
        """The batch read ahead for this shard, if it follows `position` (else None)."""
        found = self._ahead.pop(shard, None)
        if found is None:
            return None
        after, task = found
        if after != position:
            task.cancel()
            READ_AHEAD.labels("stale").inc()
            return None
        try:
            ahead = await task
        except Exception as exc:
            log.warning("stitch_read_ahead_failed", shard=shard, error=repr(exc))
            READ_AHEAD.labels("stale").inc()
            return None
        if not ahead[0]:
            return None  # nothing then; there may be now
        READ_AHEAD.labels("used").inc()
        return ahead

    async def stitch_shard(self, shard: int, *, limit: int | None = None) -> int:
        """Stitch the next batch of a shard; returns how many raw events it consumed.

        While the shard is behind (a full batch), the next batch is read and parsed on a second
        connection as this one is written, so the parsing overlaps this batch's waits on
        PostgreSQL. That read is only a head start: it is used only if this batch commits and
        the shard's position is then exactly where it began (otherwise it is dropped), and it
        holds exactly what the feed gives after that position (rows below the oldest running
        transaction: no row can join them later)."""
        started = time.perf_counter()
        with collector_paused():
            return await self._stitch_batch(shard, limit, started)

    async def _stitch_batch(self, shard: int, limit: int | None, started: float) -> int:
        async with raw_connection(self._engine) as conn, conn.transaction():
            position = await journeys.lock_progress(conn, shard)
            ahead = await self._ahead_of(shard, position) if limit is None else None
            if ahead is not None:
                records, parsed = ahead
            else:
                records = await journeys.read_feed(
                    conn, shard=shard, after=position, limit=limit or self._batch_size
                )
                parsed = [None] * len(records)
            if not records:
                return 0
            last = records[-1]
            if limit is None and len(records) >= self._batch_size:
                after = (int(last["tx"]), int(last["seq"]))
                task = asyncio.create_task(self._read_ahead(shard, after))
                # A dropped read's failure is not news (its batch reads the feed itself).
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                self._ahead[shard] = (after, task)
            by_workspace: dict[int, list[int]] = {}
            for i, record in enumerate(records):
                by_workspace.setdefault(record["workspace_id"], []).append(i)
            for workspace_id, at in sorted(by_workspace.items()):
                model = await self._models.get(conn, workspace_id)
                await WorkspaceStitcher(conn, workspace_id, model, rollups=self._rollups).stitch(
                    [records[i] for i in at], parsed_ahead=[parsed[i] for i in at]
                )
            await journeys.save_progress(conn, shard, (last["tx"], last["seq"]), len(records))
        STITCHED.inc(len(records))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        return len(records)

    async def drain(self, *, timeout: float = 60.0, settle: bool = True) -> int:
        """Stitch until the feed is empty (tests); returns events done.

        The feed reads only below the oldest raw-event writer still running
        (`journeys.FEED_HORIZON`), so an empty read does not mean that everything committed
        has been stitched. With `settle` the drain first waits until the horizon has passed
        every transaction that had ended when it began: then it stitches everything committed
        before the call. Without it, it leaves what the worker would leave."""
        total = 0
        # Shards claimed only for this drain are given back afterwards: kept, they would lock
        # every other stitcher (a `journeys worker`, another server) out for good.
        borrowed = not self._held
        try:
            async with asyncio.timeout(timeout):
                if settle:
                    await self._settle()
                await self._claim()
                while True:
                    done = 0
                    for shard in sorted(self._held):
                        done += await self._stitch_or_isolate(shard)
                    total += done
                    if not done and not await self._run_job():
                        return total
        finally:
            if borrowed:
                await self._release()

    async def _settle(self) -> None:
        """Wait until the feed's horizon has passed every transaction ended now (`drain`)."""
        async with raw_connection(self._engine) as conn:
            ended = await conn.fetchval(_ENDED_BELOW)
            # Polled: PostgreSQL signals no transaction's end to an onlooker.
            while True:
                if await conn.fetchval(_HORIZON) >= ended:
                    return
                await asyncio.sleep(SETTLE_POLL)


# Transaction ids as bigint: every transaction that has ended is below the first (the snapshot's
# xmax); the second is the feed's horizon.
_ENDED_BELOW = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
_HORIZON = f"SELECT {journeys.FEED_HORIZON}::text::bigint"
SETTLE_POLL = 0.005
