"""Sending a generated demo through the public HTTP API, as an SDK would, and waiting for it to
be stitched.

Events go to `POST /v1/batch` with the write key (HTTP Basic), a few connections at a time,
optionally gzip-compressed. Like the Segment SDKs, a batch is retried with the same messageIds
on connection errors, 429 and 5xx (honouring `Retry-After`), so a retry is stored once; any other
4xx stops the demo with the server's problem detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip as gzip_module
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from app.demo.generator import EXPERIMENT, PERSONA_NAMES, STAGES, DemoDataset
from app.demo.workspace import DemoKeys

DEFAULT_URL = "http://127.0.0.1:8000"
# Well inside the API's limits (2,500 items, 500 KB after decompression per batch).
BATCH_EVENTS = 200
BATCH_BYTES = 400_000
MAX_ATTEMPTS = 8
STITCH_POLL_SECONDS = 0.5


class DemoError(Exception):
    """The demo cannot go on (service unreachable, key refused, invalid request)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One request body and how many events it carries."""

    events: int
    body: bytes


@dataclass(slots=True)
class SendReport:
    """What the service answered."""

    events: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class StitchReport:
    """Whether the stitcher caught up, how long it took, and its last `/readyz` figures."""

    caught_up: bool
    seconds: float
    stitcher: dict[str, Any]


def make_batches(
    events: Sequence[dict[str, Any]],
    *,
    sent_at: datetime,
    max_events: int = BATCH_EVENTS,
    max_bytes: int = BATCH_BYTES,
) -> list[Batch]:
    """Split events into `/v1/batch` bodies of at most `max_events` items and `max_bytes`."""
    stamp = sent_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    envelope = len(orjson.dumps({"batch": [], "sentAt": stamp}))
    batches: list[Batch] = []
    current: list[bytes] = []
    size = envelope

    def flush() -> None:
        nonlocal current, size
        if current:
            body = b'{"sentAt":"' + stamp.encode() + b'","batch":[' + b",".join(current) + b"]}"
            batches.append(Batch(events=len(current), body=body))
        current, size = [], envelope

    for event in events:
        encoded = orjson.dumps(event)
        if current and (len(current) >= max_events or size + len(encoded) + 1 > max_bytes):
            flush()
        current.append(encoded)
        size += len(encoded) + 1
    flush()
    return batches


def check_service(url: str, *, timeout: float = 5.0) -> None:
    """Raise DemoError unless the service answers `/healthz`."""
    try:
        response = httpx.get(url.rstrip("/") + "/healthz", timeout=timeout)
    except httpx.HTTPError as exc:
        raise DemoError(
            f"no Journeys service at {url} ({type(exc).__name__}); start it with `make run` "
            "or `journeys serve`, or pass --url"
        ) from None
    if response.status_code != 200:
        raise DemoError(f"{url}/healthz answered {response.status_code}")


def _retry_after(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        header = response.headers.get("retry-after")
        if header is not None:
            try:
                return min(max(float(header), 0.1), 30.0)
            except ValueError:
                pass
    return float(min(0.25 * 2**attempt, 10.0))


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body)
    return str(body)


async def _post(
    client: httpx.AsyncClient, batch: Batch, *, compress: bool, report: SendReport
) -> None:
    headers = {"content-type": "application/json"}
    content = batch.body
    if compress:
        content = gzip_module.compress(batch.body, compresslevel=5)
        headers["content-encoding"] = "gzip"
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            headers["x-retry-count"] = str(attempt)
            report.retries += 1
        response: httpx.Response | None = None
        with contextlib.suppress(httpx.TransportError):  # retried like a 503
            response = await client.post("/v1/batch", content=content, headers=headers)
        report.requests += 1
        if response is not None and response.status_code == 200:
            rejected = response.json().get("rejected") or []
            report.accepted += batch.events - len(rejected)
            report.rejected.extend(rejected)
            return
        if response is not None and response.status_code in (401, 403):
            raise DemoError(
                f"the write key was refused ({response.status_code}: {_problem(response)}); "
                "does the service use the same database as this command? Pass --write-key."
            )
        if response is not None and response.status_code != 429 and response.status_code < 500:
            raise DemoError(f"/v1/batch answered {response.status_code}: {_problem(response)}")
        await asyncio.sleep(_retry_after(response, attempt))
    raise DemoError(f"/v1/batch kept failing after {MAX_ATTEMPTS} attempts")


async def send_events(
    events: Sequence[dict[str, Any]],
    *,
    url: str,
    write_key: str,
    concurrency: int = 4,
    compress: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> SendReport:
    """POST the events to `/v1/batch` over `concurrency` connections; returns the answers."""
    batches = make_batches(events, sent_at=datetime.now(UTC))
    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    report = SendReport(events=len(events))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"),
        auth=(write_key, ""),
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=limits,
        headers={"user-agent": "journeys-demo/1.0"},
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                await _post(client, batch, compress=compress, report=report)
                if on_progress is not None:
                    on_progress(batch.events)

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(batches)))):
                group.create_task(worker())
    report.seconds = time.perf_counter() - started
    return report


async def stitcher_status(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """The `stitcher` part of `/readyz`, or None if the service does not report it."""
    try:
        response = await client.get("/readyz")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    stitcher = body.get("stitcher") if isinstance(body, dict) else None
    return stitcher if isinstance(stitcher, dict) else None


async def wait_until_stitched(
    url: str,
    *,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
) -> StitchReport:
    """Poll `/readyz` until no shard has unstitched events (everything acknowledged so far is
    committed, so then every demo event is stitched), or `timeout` passes."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10.0) as client:
        status: dict[str, Any] = {}
        while True:
            found = await stitcher_status(client)
            if found is not None:
                status = found
                if on_progress is not None:
                    on_progress(int(status.get("stitched_events", 0)))
                if status.get("shards_behind") == 0:
                    return StitchReport(True, time.perf_counter() - started, status)
            if time.perf_counter() - started > timeout:
                return StitchReport(False, time.perf_counter() - started, status)
            await asyncio.sleep(STITCH_POLL_SECONDS)


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The outcome of `run_demo`."""

    send: SendReport
    stitch: StitchReport | None

    def as_dict(self, dataset: DemoDataset) -> dict[str, Any]:
        """The JSON summary printed by `journeys demo --json`."""
        return {
            "seed": dataset.seed,
            "customers": len(dataset.customers),
            "days": dataset.days,
            "events": self.send.events,
            "accepted": self.send.accepted,
            "rejected": self.send.rejected,
            "requests": self.send.requests,
            "retries": self.send.retries,
            "send_seconds": round(self.send.seconds, 3),
            "stitched": None if self.stitch is None else self.stitch.caught_up,
            "stitch_seconds": None if self.stitch is None else round(self.stitch.seconds, 3),
            "planned_stages": planned_stages(dataset),
            "experiment": experiment_summary(dataset),
        }


def planned_stages(dataset: DemoDataset) -> dict[str, int]:
    """How many customers should end in each stage of the default journey model."""
    counts = Counter(c.planned_stage for c in dataset.customers)
    return {stage: counts.get(stage, 0) for stage in STAGES}


def experiment_summary(dataset: DemoDataset) -> dict[str, dict[str, float]]:
    """Per variation of the checkout experiment: customers in it, orders, conversion."""
    result: dict[str, dict[str, float]] = {}
    for variation in ("control", "treatment"):
        members = [c for c in dataset.customers if c.variation == variation]
        buyers = sum(
            1 for c in members if any(e.get("event") == "Order Completed" for e in c.events)
        )
        result[variation] = {
            "customers": len(members),
            "buyers": buyers,
            "conversion": round(buyers / len(members), 3) if members else 0.0,
        }
    return result


async def run_demo(
    dataset: DemoDataset,
    *,
    url: str,
    write_key: str,
    console: Console,
    concurrency: int = 4,
    compress: bool = False,
    wait: bool = True,
    wait_timeout: float = 300.0,
    show_progress: bool = True,
) -> DemoReport:
    """Send the dataset with a progress bar, then wait for the stitcher to catch up."""
    events = dataset.events()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        sending = progress.add_task("sending events", total=len(events))
        baseline: int | None = None
        if wait:
            async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10.0) as client:
                status = await stitcher_status(client)
            baseline = None if status is None else int(status.get("stitched_events", 0))
        sent = await send_events(
            events,
            url=url,
            write_key=write_key,
            concurrency=concurrency,
            compress=compress,
            on_progress=lambda n: progress.advance(sending, n),
        )
        stitched: StitchReport | None = None
        if wait:
            stitching = progress.add_task("stitching journeys", total=sent.accepted)

            def show(total: int) -> None:
                if baseline is not None:
                    done = min(max(total - baseline, 0), sent.accepted)
                    progress.update(stitching, completed=done)

            stitched = await wait_until_stitched(url, timeout=wait_timeout, on_progress=show)
            if stitched.caught_up:
                progress.update(stitching, completed=sent.accepted)
    return DemoReport(send=sent, stitch=stitched)


def summary_table(dataset: DemoDataset, report: DemoReport) -> Table:
    """A human-readable summary of what was sent and what the journeys should show."""
    table = Table(title=f"journeys demo (seed {dataset.seed})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    send = report.send
    rate = send.accepted / send.seconds if send.seconds else 0.0
    table.add_row("customers", f"{len(dataset.customers):,} over the last {dataset.days} days")
    table.add_row(
        "events",
        f"{send.events:,} sent, {send.accepted:,} accepted, {len(send.rejected):,} rejected "
        f"in {send.requests:,} requests ({send.retries} retries), {send.seconds:.1f} s, "
        f"{rate:,.0f} events/s",
    )
    if report.stitch is not None:
        state = "caught up" if report.stitch.caught_up else "still behind"
        table.add_row("stitcher", f"{state} after {report.stitch.seconds:.1f} s")
    stages = planned_stages(dataset)
    table.add_row("stages", ", ".join(f"{stage} {count}" for stage, count in stages.items()))
    personas = Counter(c.persona for c in dataset.customers)
    table.add_row("personas", ", ".join(f"{p} {personas.get(p, 0)}" for p in PERSONA_NAMES))
    ab = experiment_summary(dataset)
    table.add_row(
        f"A/B {EXPERIMENT}",
        ", ".join(
            f"{variation} {int(v['buyers'])}/{int(v['customers'])} = {v['conversion']:.0%}"
            for variation, v in ab.items()
        ),
    )
    return table


def keys_panel(keys: DemoKeys, url: str) -> Panel:
    """The demo workspace's keys, with where to use the read key."""
    base = url.rstrip("/")
    lines = [
        f"workspace [bold]{keys.name}[/] (id {keys.workspace_id})"
        + ("" if keys.created else ": new keys, the previous ones expire in 24 h"),
        f"write key  [green]{keys.write_key}[/]  (public: SDKs, ingest)",
        f"read key   [yellow]{keys.read_key}[/]  (secret: dashboard and query APIs)",
    ]
    if keys.server_key is not None:
        lines.append(f"server key [red]{keys.server_key}[/]  (secret: privacy, settings)")
    lines += [
        "These keys are shown once. Open the dashboard at "
        f"[link={base}/]{base}/[/link] with the read key, or:",
        f'curl -H "Authorization: Bearer {keys.read_key}" {base}/v1/aggregates/stages',
    ]
    return Panel.fit("\n".join(lines), title="Journeys demo workspace")
