"""Freshness: how long after ingest's 200 an event is on its customer's timeline, at a steady rate.

The issue's requirement reads "under steady load, p95 time from the 200 of ingest to the event
appearing in the customer's timeline is under 1 s, and lag does not grow". This phase measures
exactly that for a given rate: a real `journeys serve` (one process, its in-process stitcher on)
receives `/v1/batch` requests on a fixed schedule (open loop: a slow answer does not delay the
next send, so queueing is not hidden), and a poller asks PostgreSQL every `poll` seconds which
acknowledged events are on a timeline yet. Freshness of an event = the start of the first poll
that saw it - the moment its 200 arrived (clamped at 0), so it errs high by at most one poll
interval plus the poll's own duration, never low. Lag growth shows as the last quarter's p95
against the first quarter's.

The load is generated in Python: at the rates that matter here (a few thousand events/s in
batches) one asyncio client is far from saturating a core, unlike the ingest benchmark's wrk
phases.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from rich.console import Console

from app.bench.report import percentile
from app.db.engine import asyncpg_dsn

FRESHNESS_TARGET_MS = 1_000.0
_EVENTS = (
    ("page", None),
    ("track", "Product Viewed"),
    ("track", "Product Added"),
    ("track", "Checkout Started"),
    ("track", "Order Completed"),
    ("track", "Email Link Clicked"),
)


@dataclass(slots=True)
class FreshnessResult:
    """One steady-rate run."""

    rate: float
    seconds: float
    batch_events: int
    sent: int
    acknowledged: int
    achieved_rate: float
    seen: int
    poll_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    first_quarter_p95_ms: float
    last_quarter_p95_ms: float
    failed_requests: int
    # Ingest's own answer times meanwhile (the stitcher shares the server's event loop).
    request_p50_ms: float = float("nan")
    request_p99_ms: float = float("nan")

    @property
    def met(self) -> bool:
        """p95 under the target, nothing lost, and no growth from the first to the last quarter
        beyond one second (what 'lag does not grow' can mean for a bounded run)."""
        return (
            self.seen == self.acknowledged > 0
            and self.p95_ms < FRESHNESS_TARGET_MS
            and self.last_quarter_p95_ms - self.first_quarter_p95_ms < FRESHNESS_TARGET_MS
        )


def _batch(tag: str, start: int, count: int, customers: int, rng: random.Random) -> list[Any]:
    now = datetime.now(UTC).isoformat()
    events: list[dict[str, Any]] = []
    for i in range(start, start + count):
        who = rng.randrange(customers)
        kind, name = rng.choice(_EVENTS)
        event: dict[str, Any] = {
            "type": kind,
            "messageId": f"fresh-{tag}-{i}",
            "anonymousId": f"fresh-{tag}-anon-{who}",
            "timestamp": now,
            "context": {"page": {"url": f"https://shop.example/p/{who % 50}"}},
            "properties": {"price": 10 + who % 90},
        }
        if who % 3 == 0:
            event["userId"] = f"fresh-{tag}-user-{who}"
        if name is not None:
            event["event"] = name
        events.append(event)
    return events


async def measure(
    base_url: str,
    write_key: str,
    database_url: str,
    workspace_id: int,
    *,
    rate: float,
    seconds: float,
    batch_events: int = 20,
    poll: float = 0.05,
    settle: float = 30.0,
    console: Console | None = None,
) -> FreshnessResult:
    """Send `rate` events/s for `seconds` and time each one onto a timeline."""
    tag = secrets.token_hex(3)
    rng = random.Random(7)
    customers = max(10, int(rate * seconds / 5))  # ~5 events per customer over the run
    interval = batch_events / rate
    total_batches = max(1, int(seconds / interval))
    acked: dict[str, float] = {}
    order: list[str] = []
    seen: dict[str, float] = {}
    failed = 0
    request_ms: list[float] = []
    sending = True

    async def send(client: httpx.AsyncClient, n: int) -> None:
        nonlocal failed
        events = _batch(tag, n * batch_events, batch_events, customers, rng)
        ids = [e["messageId"] for e in events]
        order.extend(ids)
        sent_at = time.monotonic()
        try:
            r = await client.post("/v1/batch", json={"batch": events}, auth=(write_key, ""))
        except httpx.HTTPError:
            failed += 1
            return
        if r.status_code != 200:
            failed += 1
            return
        at = time.monotonic()
        request_ms.append((at - sent_at) * 1000)
        for message_id in ids:
            acked[message_id] = at

    async def poller(conn: asyncpg.Connection) -> None:
        deadline: float | None = None
        while True:
            pending = [m for m in acked if m not in seen]
            if not pending and not sending:
                return
            if not sending:
                deadline = deadline or time.monotonic() + settle
                if time.monotonic() > deadline:
                    return
            started = time.monotonic()
            if pending:
                rows = await conn.fetch(
                    "SELECT message_id FROM journey_events WHERE workspace_id = $1 "
                    "AND message_id = ANY($2::text[])",
                    workspace_id,
                    pending[:20_000],
                )
                for row in rows:
                    seen.setdefault(row["message_id"], started)
            await asyncio.sleep(max(0.0, poll - (time.monotonic() - started)))

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    try:
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            watcher = asyncio.create_task(poller(conn))
            tasks: set[asyncio.Task[None]] = set()
            begin = time.monotonic()
            for n in range(total_batches):
                # Open loop: each batch leaves on its own schedule, whatever the earlier ones do.
                await asyncio.sleep(max(0.0, begin + n * interval - time.monotonic()))
                task = asyncio.create_task(send(client, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            elapsed = time.monotonic() - begin
            sending = False
            if console is not None:
                console.log(
                    f"freshness: sent {len(order):,} events in {elapsed:.1f} s; waiting for "
                    "the last ones to be stitched"
                )
            await watcher
    finally:
        await conn.close()

    lags = {m: max(0.0, (seen[m] - acked[m]) * 1000) for m in acked if m in seen}
    in_order = [lags[m] for m in order if m in lags]
    quarter = max(1, len(in_order) // 4)
    values = list(lags.values())
    return FreshnessResult(
        rate=rate,
        seconds=seconds,
        batch_events=batch_events,
        sent=len(order),
        acknowledged=len(acked),
        achieved_rate=len(acked) / elapsed if elapsed else 0.0,
        seen=len(lags),
        poll_ms=poll * 1000,
        p50_ms=percentile(values, 50),
        p95_ms=percentile(values, 95),
        p99_ms=percentile(values, 99),
        max_ms=max(values) if values else float("nan"),
        first_quarter_p95_ms=percentile(in_order[:quarter], 95),
        last_quarter_p95_ms=percentile(in_order[-quarter:], 95),
        failed_requests=failed,
        request_p50_ms=percentile(request_ms, 50),
        request_p99_ms=percentile(request_ms, 99),
    )


__all__ = ["FRESHNESS_TARGET_MS", "FreshnessResult", "measure"]
