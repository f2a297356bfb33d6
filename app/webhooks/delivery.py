"""The delivery loop: claims due webhook deliveries and POSTs them, signed.

Runs beside the stitcher (`journeys serve` with the in-process worker, and `journeys worker`);
any number may run, claims use `FOR UPDATE SKIP LOCKED`. At least once: a delivery is settled
only after the receiver answered 2xx; a sender that dies mid-flight leaves it claimed until
its lease runs out, and then it is sent again. In order per customer: only the oldest pending
event of a (webhook, customer) is ever claimed (app/webhooks/repository.claim_due).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.core.logging import get_logger
from app.core.settings import Settings
from app.db.engine import is_unavailable, raw_connection
from app.webhooks import repository as webhooks
from app.webhooks.destinations import DestinationError, check_address, check_url
from app.webhooks.protocol import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    Backoff,
    envelope,
    event_id,
    signature_header,
)

log = get_logger(__name__)

DELIVERIES = Counter(
    "journeys_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retried, failed: given up)",
    ["outcome"],
)
BACKLOG = Gauge(
    "journeys_webhook_backlog", "Webhook deliveries pending (not yet delivered nor given up)"
)
ATTEMPT_SECONDS = Histogram(
    "journeys_webhook_attempt_seconds",
    "Duration of one webhook POST",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_OUTCOMES = {"delivered": "delivered", "pending": "retried", "failed": "failed"}

PRUNE_EVERY_SECONDS = 3600.0
MAX_ERROR_LENGTH = 500


async def measure_backlog(conn: asyncpg.Connection) -> None:
    """Set the backlog gauge (on each /metrics scrape)."""
    BACKLOG.set(await webhooks.backlog(conn))


class WebhookDeliverer:
    """Sends due deliveries, `concurrency` at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        settings: Settings,
        concurrency: int = 16,
        poll_interval: float = 0.5,
    ) -> None:
        self._engine = engine
        self._allow_private = settings.webhooks_allow_private
        self._timeout = settings.webhooks_timeout_seconds
        self._backoff = Backoff(
            base=settings.webhooks_backoff_base_seconds, cap=settings.webhooks_backoff_max_seconds
        )
        self._give_up = settings.webhooks_give_up_hours * 3600.0
        # Claimed deliveries are sent again after this long without an outcome.
        self._lease = self._timeout + 60.0
        self._concurrency = concurrency
        self._poll = poll_interval
        # All database work of this loop goes through one pooled connection at a time, so a
        # worker with a small pool is never starved by its deliveries.
        self._db_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _db(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._db_lock, raw_connection(self._engine) as conn:
            yield conn

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
            # No proxy from the environment: the destination checks are about where we connect.
            trust_env=False,
            limits=httpx.Limits(max_connections=self._concurrency),
            headers={"user-agent": f"Journeys-Webhooks/{__version__}"},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; survives database outages and bad receivers."""
        in_flight: set[asyncio.Task[None]] = set()
        last_prune = time.monotonic()
        async with self._client() as client, asyncio.TaskGroup() as tasks:
            while not stop.is_set():
                try:
                    free = self._concurrency - len(in_flight)
                    if free > 0:
                        async with self._db() as conn:
                            claimed = await webhooks.claim_due(
                                conn, limit=free, lease_seconds=self._lease
                            )
                        for due in claimed:
                            task = tasks.create_task(self._deliver(client, due))
                            in_flight.add(task)
                            task.add_done_callback(in_flight.discard)
                    if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                        last_prune = time.monotonic()
                        async with self._db() as conn:
                            await webhooks.prune(conn)
                except Exception as exc:
                    if is_unavailable(exc):
                        log.warning("webhooks_database_unavailable", error=repr(exc))
                    else:
                        log.exception("webhooks_claim_failed", error=repr(exc))
                # A full claim fills every slot: the next one comes when a delivery ends.
                await self._pause(stop, in_flight)

    async def _pause(self, stop: asyncio.Event, in_flight: set[asyncio.Task[None]]) -> None:
        """Until the poll interval passes, a delivery ends (the customer's next event may be
        due) or `stop` is set."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {stopping, *in_flight}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()

    async def _deliver(self, client: httpx.AsyncClient, due: webhooks.DueDelivery) -> None:
        body = envelope(
            event_number=due.event_id,
            event_type=due.type,
            created_at=due.event_created_at,
            data=due.data,
        )
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            await self._check_destination(due.url)
            headers = {
                "content-type": "application/json",
                SIGNATURE_HEADER: signature_header(due.secret, int(time.time()), body),
                EVENT_ID_HEADER: event_id(due.event_id),
                EVENT_TYPE_HEADER: due.type,
            }
            # Streamed and never read: a receiver's answer body is of no interest, whatever
            # its size.
            async with client.stream("POST", due.url, content=body, headers=headers) as answer:
                status_code = answer.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except DestinationError as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:
            log.exception("webhook_attempt_crashed", error=repr(exc))
            error = repr(exc)
        ATTEMPT_SECONDS.observe(time.perf_counter() - started)
        await self._record(due, status_code=status_code, error=error)

    async def _record(
        self, due: webhooks.DueDelivery, *, status_code: int | None, error: str | None
    ) -> None:
        retry_in = self._backoff.delay(due.attempts, random.random())
        try:
            async with self._db() as conn:
                status = await webhooks.record_attempt(
                    conn,
                    due,
                    delivered=error is None,
                    status_code=status_code,
                    error=error[:MAX_ERROR_LENGTH] if error else None,
                    retry_in=retry_in,
                    give_up_seconds=self._give_up,
                )
        except Exception as exc:
            # Unrecorded: the claim's lease runs out and the event is sent again.
            log.warning("webhook_outcome_not_recorded", event_id=due.event_id, error=repr(exc))
            return
        outcome = _OUTCOMES.get(status or "")
        if outcome is not None:
            DELIVERIES.labels(outcome).inc()
        if status == "failed":
            log.warning(
                "webhook_given_up",
                workspace_id=due.workspace_id,
                webhook_id=due.webhook_id,
                event_id=due.event_id,
                attempts=due.attempts,
                error=error,
            )

    async def _check_destination(self, url: str) -> None:
        """The URL rules again (settings may have changed), then every address the host
        resolves to now."""
        check_url(url, allow_private=self._allow_private)
        if self._allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DestinationError(f"cannot resolve {host}: {exc}") from None
        for info in infos:
            check_address(str(info[4][0]), allow_private=False)
