"""Everything a running application holds: database, group committer, caches, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.aggregates.funnel_store import trim_changes
from app.core.logging import get_logger
from app.core.settings import Settings
from app.db.embedded import EmbeddedPostgres, start_embedded
from app.db.engine import asyncpg_dsn, init_connection, make_engine, raw_connection
from app.db.partitions import drop_weeks_before, ensure_week_partition, week_of
from app.ingest.commit import GroupCommitter
from app.ingest.ratelimit import RateLimiter
from app.ingest.service import IngestService
from app.journeys.stitcher import Stitcher
from app.webhooks.delivery import WebhookDeliverer
from app.workspaces.auth import KeyResolver

log = get_logger(__name__)

MAINTENANCE_INTERVAL_SECONDS = 3600.0


async def _no_reset(conn: asyncpg.Connection) -> None:
    del conn


def resolve_database(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The database URL to use, starting the embedded server when none is configured."""
    if settings.database_url:
        return settings.database_url, None
    embedded = start_embedded(settings.data_dir)
    return embedded.url(), embedded


@dataclass
class Runtime:
    """The services of one application instance (one per process)."""

    settings: Settings
    database_url: str
    engine: AsyncEngine
    committer: GroupCommitter
    keys: KeyResolver
    ingest: IngestService
    stitcher: Stitcher
    embedded: EmbeddedPostgres | None = None
    read_pool: asyncpg.Pool | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(
        cls, settings: Settings, *, database_url: str, embedded: EmbeddedPostgres | None = None
    ) -> Runtime:
        """Wire the services together (no I/O yet)."""
        engine = make_engine(database_url, pool_size=settings.pool_size)

        def connect() -> AbstractAsyncContextManager[asyncpg.Connection]:
            return raw_connection(engine)

        stitcher = Stitcher(engine)
        committer = GroupCommitter(
            connect,
            max_events=settings.commit_max_events,
            max_wait=settings.commit_max_wait_ms / 1000,
            concurrency=settings.commit_concurrency,
        )
        keys = KeyResolver(engine, ttl=settings.key_cache_seconds)
        limiter = RateLimiter(
            rate=settings.rate_limit_events_per_second, burst=settings.rate_limit_burst
        )
        return cls(
            settings=settings,
            database_url=database_url,
            engine=engine,
            committer=committer,
            keys=keys,
            ingest=IngestService(keys=keys, limiter=limiter, committer=committer),
            stitcher=stitcher,
            embedded=embedded,
        )

    async def start(self) -> None:
        """Start background work; tolerate a database that is down (readyz reports it)."""
        # Read routes use a plain asyncpg pool: one round trip per query, no SQLAlchemy
        # checkout. Their queries leave no session state, so the reset on release is skipped.
        self.read_pool = await asyncpg.create_pool(
            asyncpg_dsn(self.database_url),
            min_size=0,
            max_size=self.settings.pool_size,
            init=init_connection,
            reset=_no_reset,
        )
        self.committer.start()
        self._tasks.append(asyncio.create_task(self._maintain(), name="partition-maintenance"))
        if self.settings.inprocess_worker:
            self._tasks.append(asyncio.create_task(self.stitcher.run(self._stop), name="stitcher"))
            deliverer = WebhookDeliverer(self.engine, settings=self.settings)
            self._tasks.append(asyncio.create_task(deliverer.run(self._stop), name="webhooks"))

    async def stop(self) -> None:
        """Flush acknowledged-to-be work, stop tasks, close the pool, stop our own database."""
        await self.committer.close()
        # The stitcher finishes its batch (one transaction) and stops at a consistent point.
        self._stop.set()
        for task in self._tasks:
            if task.get_name() != "stitcher":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.read_pool is not None:
            await self.read_pool.close()
        await self.engine.dispose()
        if self.embedded is not None:
            self.embedded.stop()

    @contextlib.asynccontextmanager
    async def read_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for read-only queries (profiles, settings reads)."""
        assert self.read_pool is not None, "the runtime is not started"
        async with self.read_pool.acquire() as conn:
            yield conn

    async def maintain_partitions(self) -> None:
        """Keep this week's and next week's partitions ready; drop weeks past retention."""
        now = datetime.now(UTC)
        async with raw_connection(self.engine) as conn:
            for week in (week_of(now), week_of(now + timedelta(days=7))):
                await ensure_week_partition(conn, week)
            days = self.settings.retention_days
            if days:
                dropped = await drop_weeks_before(conn, (now - timedelta(days=days)).date())
                if dropped:
                    self.committer.writer.forget_partitions()
                    log.info("retention_dropped_partitions", partitions=dropped)

    async def trim_funnel_changes(self) -> int:
        """Drop the funnel change feed's rows past retention (app/aggregates/funnel_store)."""
        seconds = self.settings.funnel_changes_retention_seconds
        async with raw_connection(self.engine) as conn:
            return await trim_changes(conn, older_than=timedelta(seconds=seconds))

    async def _maintain(self) -> None:
        while True:
            try:
                await self.maintain_partitions()
            except Exception as exc:  # the next round retries; ingest creates partitions too
                log.warning("partition_maintenance_failed", error=repr(exc))
            try:
                await self.trim_funnel_changes()
            except Exception as exc:  # the next round retries; the feed only grows meanwhile
                log.warning("funnel_changes_trim_failed", error=repr(exc))
            await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """A started runtime for the app's lifespan."""
    url, embedded = await asyncio.to_thread(resolve_database, settings)
    rt = Runtime.build(settings, database_url=url, embedded=embedded)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()
