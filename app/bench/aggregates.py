"""`journeys bench aggregates`: the `/v1/aggregates/*` endpoints over HTTP, against `/healthz`.

Phases, against one database, in one run:

(a) Dataset and derived state, by default (`--derived copy`) with `app.bench.dataset` kind
    "aggregates": the archetypes (2,000 customer journeys) are stitched by the real
    `WorkspaceStitcher` with the workspace's journey model (keeping `--breakdown` besides the
    defaults: the generator sets the trait `marketing_opt_in`, never `persona` or
    `variation_name`), and every customer is a copy of one with renamed identifiers and shifted
    times: raw events, timelines, identities, customers with their stored contributions
    (`customers.facts`, `dims`) and stage entries; then the rollups are summed from
    `customers.facts` in SQL (`app.aggregates.rollups_from_facts`). 1M customers / 10M events
    take ~20 minutes on 2 cores. Then the copy is verified: `--verify` random customers are
    re-stitched from their raw events by the real stitcher and every derived row and
    contribution compared, and every rollup row is compared with a from-scratch sum of all
    customers' contributions by the stitcher's own `add_facts`. Any difference fails the run.
    With `--derived stitch`, every event goes through the real `Stitcher.stitch_shard` instead
    (rollups on, batches of 2,000, VACUUM ANALYZE as the tables grow: `maintenance_due`), at
    ~3,000 events/s: for 10M events, about an hour.
(b) HTTP: `journeys serve` (1 process, `JOURNEYS_INPROCESS_WORKER=false`) and wrk (`--connections`,
    default 4) against each endpoint for a `--window-days` window ending on the dataset's last
    day, with and without the breakdown, after a short warm-up; first `/healthz` under the same
    wrk settings: the HTTP floor of this server on this machine in this run. Endpoints answered
    through the exact answer cache (`app.aggregates.cache`) run twice: as served (the cache
    warm) and uncached (`Cache-Control: no-cache` on every request: computed from the
    database); their first request is reported too. An endpoint whose first request takes
    `--slow-ms` or more is measured one request at a time instead (wrk's requests would outlive
    the phase). With `--rounds N` the whole list runs N times and the medians are reported.
    Server and PostgreSQL CPU per request come from the same CPU meter as the other benchmarks.

Target: p99 < 50 ms per endpoint.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import asyncpg
import httpx
import orjson
import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.bench import dataset as ds
from app.bench.lookup import LookupBenchFailed, LookupPhase, _median_phase, _wrk
from app.bench.report import emit, machine_line, number, verdict_lines
from app.bench.wrk import LUA_DONE, WrkError, _lua_string, ensure_wrk
from app.db.engine import asyncpg_dsn, make_engine

P99_TARGET_MS = 50.0
DEFAULT_BREAKDOWN = "trait:marketing_opt_in"
ROLLUP_TABLES = ("agg_stage_days", "agg_stage_durations", "agg_touch_days", "agg_attribution_days")
ATTRIBUTION_MODELS = ("first", "last", "linear", "position", "time_decay")
# With the breakdown, only these attribution models run (all five run without it).
ATTRIBUTION_WITH_BREAKDOWN = ("linear", "time_decay")
STAGE_FUNNEL = "awareness,consideration,purchase,loyalty"
EVENT_FUNNEL = "Product Viewed,Product Added,Checkout Started,Order Completed"
DROPOFF_STAGE = "consideration"
SANITY_TIMEOUT_S = 600.0
# How long an endpoint may take to become fast after its first requests: a large workspace's
# funnel index loads in the background (~25 s at 1M customers, ~30 s more for event steps).
SETTLE_SECONDS = 180.0
SEQUENTIAL_MAX = 5


class AggregatesBenchFailed(RuntimeError):
    """The benchmark itself could not run."""


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One wrk phase: a fixed GET path."""

    name: str
    path: str
    label: str
    # What the endpoint reads: "floor" (/healthz), "rollups" (rollup rows, bounded by days x
    # stages x channels x groups), "rollups + 1 day" (and the customers who entered a stage on
    # one day), "customers" (stage entries, timelines or customers: grows with the data).
    reads: str
    breakdown: bool = False
    # Answered through the exact answer cache (`app.aggregates.cache`): measured twice, as
    # served (the cache warm: every request after the first is a hit) and uncached (every
    # request with `Cache-Control: no-cache`: computed from the database).
    cached: bool = True


def endpoints(start: date, end: date, breakdown: str) -> list[Endpoint]:
    """Every phase of the run, `/healthz` first."""
    window = {"from": start.isoformat(), "to": end.isoformat()}

    def path(route: str, params: dict[str, str]) -> str:
        return f"/v1/aggregates/{route}?" + urlencode(params, quote_via=quote, safe=":,")

    found = [
        Endpoint("healthz", "/healthz", "GET /healthz (the HTTP floor)", "floor", cached=False)
    ]

    def add(
        name: str, route: str, params: dict[str, str], label: str, reads: str, cached: bool = True
    ) -> None:
        found.append(Endpoint(name, path(route, {**params, **window}), label, reads, cached=cached))
        found.append(
            Endpoint(
                f"{name}+bd",
                path(route, {**params, **window, "breakdown": breakdown}),
                f"{label}, breakdown",
                reads,
                breakdown=True,
                cached=cached,
            )
        )

    add("stages", "stages", {}, "stages", "rollups")
    add(
        "funnel-stages",
        "funnel",
        {"steps": STAGE_FUNNEL, "window": "30d"},
        f"funnel, stage steps ({STAGE_FUNNEL}, 30d)",
        "customers",
    )
    add(
        "funnel-events",
        "funnel",
        {"steps": EVENT_FUNNEL, "window": "14d"},
        f"funnel, event steps ({EVENT_FUNNEL}, 14d)",
        "customers",
    )
    add(
        "channels",
        "channels",
        {"stage": DROPOFF_STAGE},
        f"channels?stage={DROPOFF_STAGE}",
        "rollups",
    )
    for model in ATTRIBUTION_MODELS:
        params = {"model": model, "conversion": "purchase"}
        name = f"attribution-{model}"
        label = f"attribution, {model}"
        if model in ATTRIBUTION_WITH_BREAKDOWN:
            add(name, "attribution", params, label, "rollups")
        else:
            found.append(
                Endpoint(name, path("attribution", {**params, **window}), label, "rollups")
            )
    # Drop-off counts (also in the journey map) add the customers who entered the stage on the
    # threshold's own day, read from `customers`: one day's entries of the stage.
    add("journey-map", "journey-map", {}, "journey-map", "rollups + 1 day")
    add("dropoff", "dropoff", {}, "dropoff (counts)", "rollups + 1 day", cached=False)
    found.append(
        Endpoint(
            "dropoff-customers",
            f"/v1/aggregates/dropoff?customers=true&stage={DROPOFF_STAGE}",
            f"dropoff?customers=true&stage={DROPOFF_STAGE} (first page of 100, stalled now)",
            "customers",
            cached=False,
        )
    )
    return found


def select(all_endpoints: Sequence[Endpoint], only: str | None) -> list[Endpoint]:
    """`--only a,b`: those endpoints (names or prefixes: `attribution` takes all five), with
    `/healthz` always first."""
    if not only:
        return list(all_endpoints)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = {e.name for e in all_endpoints}
    unknown = [w for w in wanted if w not in names and not any(n.startswith(w) for n in names)]
    if unknown:
        raise typer.BadParameter(
            f"unknown endpoint(s) {', '.join(unknown)}; endpoints: {', '.join(sorted(names))}",
            param_hint="--only",
        )
    return [
        e
        for e in all_endpoints
        if e.name == "healthz" or any(e.name == w or e.name.startswith(w) for w in wanted)
    ]


def digest(body: Any) -> str:
    """A one-line summary of an answer (shows the figures are real)."""
    if not isinstance(body, dict):
        return ""
    if "groups" in body:
        values = [g.get("value") for g in body["groups"]]
        first = body["groups"][0] if body["groups"] else {}
        inner = digest({k: v for k, v in first.items() if k != "value"})
        shown = ", ".join("none" if v is None else str(v) for v in values)
        return f"{len(values)} groups ({shown}); first: {inner}"
    if "steps" in body:
        return "customers per step " + " → ".join(f"{s['customers']:,}" for s in body["steps"])
    if "customers" in body and isinstance(body["customers"], list):
        more = " (more pages)" if body.get("next_cursor") else ""
        return f"{len(body['customers'])} customers{more}"
    if "conversions" in body:
        top = body["channels"][0] if body.get("channels") else None
        lead = f"; top {top['channel']} {top['credit']:,.1f}" if top else ""
        return f"{body['conversions']:,} conversions, {len(body['channels'])} channels{lead}"
    if "channels" in body:
        touches = sum(c["touches"] for c in body["channels"])
        return f"{len(body['channels'])} channels, {touches:,} touches"
    if "stages" in body:
        stages = body["stages"]
        if stages and "stalled" in stages[0]:
            return "stalled " + ", ".join(f"{s['stage']} {s['stalled']:,}" for s in stages)
        if stages and "entered" in stages[0]:
            return "entered " + ", ".join(f"{s['stage']} {s['entered']:,}" for s in stages)
    if body.get("status") == "ok":
        return "ok"
    return ""


UNCACHED = {"Cache-Control": "no-cache"}
FRESH = "~uncached"  # suffix of the uncached phases' names


def lua_script(path: str, authorization: str | None, extra: dict[str, str] | None = None) -> str:
    """A wrk script GETting one fixed path, ending with the machine-readable `done()`."""
    auth = f'\n  ["Authorization"] = {_lua_string(authorization)},' if authorization else ""
    for name, value in (extra or {}).items():
        # `[ [=[…]=] ]`: without the spaces `[[` would open a Lua long string.
        auth += f"\n  [ {_lua_string(name)} ] = {_lua_string(value)},"
    return f"""-- generated by `journeys bench aggregates`: GET one path
local path = {_lua_string(path)}
local headers = {{["Accept"] = "application/json",{auth}
}}
local threads = {{}}
counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function request()
  counter = counter + 1
  return wrk.format("GET", path, headers)
end

{LUA_DONE}"""


# --------------------------------------------------------------------------- options, report


@dataclass(slots=True)
class AggregatesBenchOptions:
    """Everything `journeys bench aggregates` can be told."""

    database_url: str
    spec: ds.DatasetSpec
    breakdown: str = DEFAULT_BREAKDOWN
    window_days: int = 90
    reuse: bool = False
    keep: bool = False
    batch_size: int = 2_000
    duration: int = 10
    warmup: int = 2
    connections: int = 4
    wrk_threads: int = 2
    rounds: int = 1
    only: str | None = None
    profile_dir: Path | None = None
    slow_ms: float = 2_000.0
    # "copy": archetypes stitched by the real stitcher, copied in SQL with their contributions,
    # rollups summed from those (`app.bench.dataset`, kind "aggregates"), then verified; "stitch":
    # every event through the real stitcher (~3k events/s).
    derived: str = "copy"
    verify: int = 200


@dataclass(slots=True)
class AggregatesBenchReport:
    """The whole run."""

    started_at: str
    machine: dict[str, Any]
    database: str
    dataset: dict[str, Any]
    breakdowns: list[str] = field(default_factory=list)
    breakdown: str = DEFAULT_BREAKDOWN
    window: dict[str, str] = field(default_factory=dict)
    rounds: int = 1
    stitch: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    row_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    phases: list[LookupPhase] = field(default_factory=list)
    summary: dict[str, LookupPhase] = field(default_factory=dict)
    profiles: dict[str, LookupPhase] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # The server's resident memory at the end of the HTTP phases (funnel indexes included).
    server_memory_mb: dict[str, float] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The benchmark ran (targets missed are findings, not failures)."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        body = asdict(self)
        body["ok"] = self.ok
        return body


# --------------------------------------------------------------------------- stitching


async def set_breakdowns(dsn: str, workspace_id: int, breakdown: str) -> list[str]:
    """Keep `breakdown` (besides the default ones) in the workspace's journey model."""
    return await ds.set_journey_model(dsn, workspace_id, [breakdown])


async def _stitched_already(dsn: str, workspace_id: int, breakdowns: list[str]) -> bool:
    """A kept dataset this bench stitched completely with the same breakdowns (and nothing
    reset since: the customers are there and the feed is past every event)."""
    from app.bench.stitch import SHARDS

    conn = await asyncpg.connect(dsn)
    try:
        info = await conn.fetchval(
            "SELECT settings -> 'bench_aggregates' FROM workspaces WHERE id = $1", workspace_id
        )
        if info is None:
            return False
        mark = orjson.loads(info)
        if mark.get("breakdowns") != breakdowns:
            return False
        customers = await conn.fetchval(
            "SELECT count(*) FROM customers WHERE workspace_id = $1", workspace_id
        )
        remaining = await conn.fetchval(
            "SELECT count(*) FROM events e JOIN stitch_progress p ON p.shard = $1 "
            "WHERE e.workspace_id = $2 AND (e.tx, e.seq) > (p.tx, p.seq)",
            workspace_id % SHARDS,
            workspace_id,
        )
        return bool(customers == mark.get("customers") and remaining == 0)
    finally:
        await conn.close()


MAINTAIN_FIRST = 10_000
MAINTAIN_GROWTH = 1.5
MAINTAIN_EVERY = 100_000


def maintenance_due(done: int, last: int) -> bool:
    """Whether to VACUUM ANALYZE the derived tables after `done` stitched events (the previous
    pass after `last`): first at MAINTAIN_FIRST, then whenever the stitched events grew by half,
    at least every MAINTAIN_EVERY events, as autovacuum would keep statistics and dead rows in
    check on tables that grow from nothing (the stitcher's plans go bad on stale statistics)."""
    if done < MAINTAIN_FIRST:
        return False
    if not last:
        return True
    return done >= min(last * MAINTAIN_GROWTH, last + MAINTAIN_EVERY)


async def _vacuum_analyze(conn: asyncpg.Connection) -> float:
    from app.journeys.rebuild import DERIVED_TABLES

    t0 = time.perf_counter()
    for table in DERIVED_TABLES:
        await conn.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - t0


async def stitch_all(
    url: str, workspace_id: int, *, batch_size: int, console: Console
) -> dict[str, Any]:
    """Stitch every event of the workspace's feed (from a rewound position) with the real
    stitcher, rollups on, with a progress bar; VACUUM ANALYZE of the derived tables as they
    grow (`maintenance_due`; not counted in the stitch rate) and at the end."""
    from app.bench.report import percentile
    from app.bench.stitch import SHARDS, StitchBenchFailed
    from app.journeys.stitcher import LOCK_BASE, Stitcher

    shard = workspace_id % SHARDS
    dsn = asyncpg_dsn(url)
    lock = await asyncpg.connect(dsn)
    engine = make_engine(url, pool_size=2)
    latencies: list[float] = []
    try:
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_BASE + shard):
            raise StitchBenchFailed(
                f"shard {shard} is held by another stitcher (a running `journeys serve` or "
                "`journeys worker` on this database): stop it for the benchmark"
            )
        total = int(
            await lock.fetchval(
                "SELECT count(*) FROM events e JOIN stitch_progress p ON p.shard = $1 "
                "WHERE e.workspace_id % 16 = $1 AND (e.tx, e.seq) > (p.tx, p.seq)",
                shard,
            )
        )
        autovacuum = str(await lock.fetchval("SHOW autovacuum"))
        stitcher = Stitcher(engine, batch_size=batch_size, shards=(shard,))
        done = 0
        idle = 0
        maintained = 0
        passes = 0
        maintain_s = 0.0
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("stitch (rollups on)", total=total, info="")
            while done < total:
                t0 = time.perf_counter()
                n = await stitcher.stitch_shard(shard)
                if not n:
                    idle += 1
                    if idle > 20:  # held back by a long transaction, or nothing left
                        break
                    await asyncio.sleep(0.5)
                    continue
                idle = 0
                latencies.append(time.perf_counter() - t0)
                done += n
                if maintenance_due(done, maintained) and done < total:
                    bar.update(task, info="VACUUM ANALYZE")
                    maintain_s += await _vacuum_analyze(lock)
                    maintained = done
                    passes += 1
                elapsed = time.perf_counter() - started - maintain_s
                bar.update(task, completed=done, info=f"{done / elapsed:,.0f} events/s")
        elapsed = time.perf_counter() - started - maintain_s
        await lock.execute("SELECT pg_advisory_unlock($1)", LOCK_BASE + shard)
        if done < total:
            raise StitchBenchFailed(
                f"the stitcher stopped after {done:,} of {total:,} events (the feed is held "
                "back by a long-running transaction: see pg_stat_activity)"
            )
        vacuum_s = await _vacuum_analyze(lock)
    finally:
        await engine.dispose()
        await lock.close()
    return {
        "events": done,
        "seconds": round(elapsed, 1),
        "events_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        "batches": len(latencies),
        "batch_size": batch_size,
        "batch_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "batch_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "vacuum_analyze_s": round(vacuum_s, 1),
        "maintenance_passes": passes,
        "maintenance_s": round(maintain_s, 1),
        "autovacuum": autovacuum,
    }


async def _mark_stitched(dsn: str, workspace_id: int, breakdowns: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        customers = await conn.fetchval(
            "SELECT count(*) FROM customers WHERE workspace_id = $1", workspace_id
        )
        await conn.execute(
            "UPDATE workspaces SET settings = settings || jsonb_build_object('bench_aggregates', "
            "$2::jsonb) WHERE id = $1",
            workspace_id,
            orjson.dumps({"breakdowns": breakdowns, "customers": customers}).decode(),
        )
    finally:
        await conn.close()


async def row_counts(
    dsn: str, workspace_id: int, breakdown: str, start: date, end: date
) -> dict[str, dict[str, int]]:
    """Rows per rollup table (all, no breakdown, the breakdown, the window without breakdown)
    and of what the customer-level endpoints read."""
    conn = await asyncpg.connect(dsn)
    try:
        counts: dict[str, dict[str, int]] = {}
        for table in ROLLUP_TABLES:
            row = await conn.fetchrow(
                f"SELECT count(*) AS rows, count(*) FILTER (WHERE dim = '') AS total, "
                f"count(*) FILTER (WHERE dim = $2) AS breakdown, "
                f"count(*) FILTER (WHERE dim = '' AND day BETWEEN $3 AND $4) AS window, "
                f"count(*) FILTER (WHERE dim = $2 AND day BETWEEN $3 AND $4) AS window_breakdown, "
                f"count(DISTINCT day) AS days, count(DISTINCT dval) AS groups "
                f"FROM {table} WHERE workspace_id = $1",
                workspace_id,
                breakdown,
                start,
                end,
            )
            counts[table] = {k: int(v) for k, v in row.items()}
        start_at = datetime.combine(start, datetime.min.time(), UTC)
        end_at = datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC)
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE entered_at >= $2 AND "
            "entered_at < $3) AS window FROM stage_entries WHERE workspace_id = $1",
            workspace_id,
            start_at,
            end_at,
        )
        counts["stage_entries"] = {k: int(v) for k, v in row.items()}
        steps = [s.strip() for s in EVENT_FUNNEL.split(",")]
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE timestamp >= $2 AND "
            "timestamp < $3) AS window, count(*) FILTER (WHERE event = ANY($4::text[]) AND "
            "timestamp >= $2 AND timestamp < $3 + interval '14 days') AS window_funnel_events "
            "FROM journey_events WHERE workspace_id = $1",
            workspace_id,
            start_at,
            end_at,
            steps,
        )
        counts["journey_events"] = {k: int(v) for k, v in row.items()}
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE stage = $2) AS in_dropoff_stage "
            "FROM customers WHERE workspace_id = $1",
            workspace_id,
            DROPOFF_STAGE,
        )
        counts["customers"] = {k: int(v) for k, v in row.items()}
        return counts
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the run


def _window(anchor: str, days: int) -> tuple[date, date]:
    """The last `days` days of the dataset (its anchor's UTC day included)."""
    end = (datetime.fromisoformat(anchor) if anchor else datetime.now(UTC)).astimezone(UTC).date()
    return end - timedelta(days=days - 1), end


def _get(url: str, endpoint: Endpoint, headers: dict[str, str]) -> httpx.Response:
    answer = httpx.get(url + endpoint.path, headers=headers, timeout=SANITY_TIMEOUT_S)
    if answer.status_code != 200:
        raise AggregatesBenchFailed(
            f"GET {endpoint.path} answered {answer.status_code}: {answer.text[:500]}"
        )
    return answer


def _sanity(
    url: str,
    endpoint: Endpoint,
    headers: dict[str, str],
    *,
    slow_ms: float = float("inf"),
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """The first request (with the cache: a miss, computed), then for cached endpoints one
    more (a hit) and one with `Cache-Control: no-cache` (computed again), which must all
    answer the same. While that uncached request takes `slow_ms` or more, it is repeated for
    up to `settle_s` seconds: a large workspace's funnel index loads in the background after
    the first request (the SQL path answers meanwhile), and the phases measure what follows
    (`settled_s`: how long that took)."""
    answer = _get(url, endpoint, headers)
    body = answer.json()
    extra: dict[str, Any] = {}
    if endpoint.cached:
        hit = _get(url, endpoint, headers)
        fresh = _get(url, endpoint, {**headers, **UNCACHED})
        found = [r.headers.get("x-journeys-cache") for r in (answer, hit, fresh)]
        if found != ["miss", "hit", "bypass"] or not body == hit.json() == fresh.json():
            raise AggregatesBenchFailed(
                f"GET {endpoint.path}: the cache answered {found}, or the answers differ"
            )
        started = time.monotonic()
        settled: float | None = None
        while fresh.elapsed.total_seconds() * 1000 >= slow_ms:
            if time.monotonic() - started > settle_s:
                break
            time.sleep(1.0)
            fresh = _get(url, endpoint, {**headers, **UNCACHED})
            if fresh.json() != body:
                raise AggregatesBenchFailed(f"GET {endpoint.path}: the answers differ")
            settled = time.monotonic() - started
        extra = {
            "ms_hit": round(hit.elapsed.total_seconds() * 1000, 1),
            "ms_uncached": round(fresh.elapsed.total_seconds() * 1000, 1),
        }
        if settled is not None:
            extra["settled_s"] = round(settled, 1)
    return {
        **extra,
        "name": endpoint.name,
        "label": endpoint.label,
        "path": endpoint.path,
        "reads": endpoint.reads,
        "bytes": len(answer.content),
        "ms_once": round(answer.elapsed.total_seconds() * 1000, 1),
        "digest": digest(body),
        "mode": "wrk",
    }


def sequential_phase(
    url: str,
    endpoint: Endpoint,
    headers: dict[str, str],
    *,
    first_ms: float,
    budget_s: float,
    server_pid: int,
    postmaster: int | None,
    dsn: str,
) -> LookupPhase:
    """An endpoint too slow to load with wrk: one request at a time (the sanity request's time
    counts as the first sample) until `budget_s` is spent, at least 2 and at most
    `SEQUENTIAL_MAX` requests.
    CPU is measured over the requests after the first (when there are any)."""
    from app.bench.ingest import CpuMeter, _pg_pids_now

    samples = [first_ms]
    name = endpoint.name + (FRESH if headers.get("Cache-Control") else "")
    meter = CpuMeter(server_pid, postmaster)
    meter.start(_pg_pids_now(dsn) if postmaster else None)
    while len(samples) < 2 or (sum(samples) < budget_s * 1000 and len(samples) < SEQUENTIAL_MAX):
        t0 = time.perf_counter()
        answer = httpx.get(url + endpoint.path, headers=headers, timeout=SANITY_TIMEOUT_S)
        samples.append((time.perf_counter() - t0) * 1000)
        if answer.status_code != 200:
            raise AggregatesBenchFailed(f"GET {endpoint.path} answered {answer.status_code}")
    cpu = meter.stop(load_generator=False, pg_pids=_pg_pids_now(dsn) if postmaster else None)
    if len(samples) > 1:
        # % of one core over the later requests' wall time; scaled to all samples' time so that
        # `cpu_us_per_request` (pct x seconds / requests) gives the CPU of one later request.
        later = sum(samples[1:]) / 1000
        total = sum(samples) / 1000
        cpu = {k: v * later / total * len(samples) / (len(samples) - 1) for k, v in cpu.items()}
    else:
        cpu = {}
    ordered = sorted(samples)
    seconds = sum(samples) / 1000
    return LookupPhase(
        name=name,
        label=endpoint.label,
        connections=1,
        seconds=round(seconds, 3),
        requests=len(samples),
        requests_per_s=len(samples) / seconds if seconds else 0.0,
        p50_ms=statistics.median(ordered),
        p90_ms=ordered[-1],
        p99_ms=ordered[-1],
        max_ms=ordered[-1],
        non2xx=0,
        socket_errors={},
        cpu_pct=cpu,
        busiest_others=list(meter.others),
    )


async def wait_idle(dsn: str, timeout: float = 120.0) -> float:
    """Wait until no other query runs in the bench database (a slow endpoint's requests still
    running after wrk stopped would load the next phase); the seconds waited."""
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND pid <> pg_backend_pid()"
            )
            if not busy:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return time.perf_counter() - started


def run(opts: AggregatesBenchOptions, console: Console) -> AggregatesBenchReport:
    """Dataset, stitching, the server, the wrk phases, the verdict."""
    from app.bench.ingest import ServerProcess, _database_info, machine_info, redact
    from app.bench.stitch import reset_derived, rewind_feed
    from app.db.migrate import upgrade_head

    begun = time.perf_counter()
    url = opts.database_url
    dsn = asyncpg_dsn(url)
    exe = ensure_wrk()
    console.log(f"database {redact(url)}; applying migrations")
    upgrade_head(url)
    version, postmaster = asyncio.run(_database_info(dsn))
    t0 = time.perf_counter()
    copy = opts.derived == "copy"
    spec = replace(opts.spec, breakdowns=(opts.breakdown,)) if copy else opts.spec
    kind: ds.Kind = "aggregates" if copy else "raw"
    data = asyncio.run(ds.ensure_dataset(url, spec, kind, console, reuse=opts.reuse))
    start, end = _window(data.anchor, opts.window_days)
    report = AggregatesBenchReport(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        database=version,
        dataset=data.as_dict(),
        breakdown=opts.breakdown,
        window={"from": start.isoformat(), "to": end.isoformat(), "days": str(opts.window_days)},
        rounds=opts.rounds,
    )
    report.timings["dataset_s"] = round(time.perf_counter() - t0, 1)
    try:
        report.breakdowns = asyncio.run(set_breakdowns(dsn, data.workspace_id, opts.breakdown))
        t0 = time.perf_counter()
        if copy:
            report.stitch = {"copied": True}
            report.verification = _verify(url, data.workspace_id, opts.verify, console)
            report.timings["verify_s"] = round(time.perf_counter() - t0, 1)
            failed = [
                k
                for k, v in report.verification.items()
                if isinstance(v, dict) and not v["identical"]
            ]
            if failed:
                raise AggregatesBenchFailed(
                    f"the copied derived state differs from the real stitcher's ({failed}): "
                    f"{report.verification}"
                )
        elif data.reused and asyncio.run(
            _stitched_already(dsn, data.workspace_id, report.breakdowns)
        ):
            console.log("the kept dataset is stitched with these breakdowns: not stitching again")
            report.stitch = {"reused": True}
        else:
            if data.reused:
                console.log("resetting the kept dataset's derived state")
                asyncio.run(reset_derived(dsn, data.workspace_id))
            asyncio.run(rewind_feed(dsn, data.workspace_id))
            report.stitch = asyncio.run(
                stitch_all(url, data.workspace_id, batch_size=opts.batch_size, console=console)
            )
            asyncio.run(_mark_stitched(dsn, data.workspace_id, report.breakdowns))
            console.log(
                f"stitched {report.stitch['events']:,} events in {report.stitch['seconds']:.0f} s"
                f" ({report.stitch['events_per_s']:,.0f} events/s); VACUUM ANALYZE "
                f"{report.stitch['vacuum_analyze_s']:.0f} s"
            )
        if not copy:
            report.timings["stitch_s"] = round(time.perf_counter() - t0, 1)
        report.row_counts = asyncio.run(
            row_counts(dsn, data.workspace_id, opts.breakdown, start, end)
        )
        t0 = time.perf_counter()
        _phases(
            report,
            opts,
            exe=exe,
            url=url,
            dsn=dsn,
            read_key=data.read_key,
            start=start,
            end=end,
            postmaster=postmaster,
            console=console,
            server_cls=ServerProcess,
        )
        report.timings["http_s"] = round(time.perf_counter() - t0, 1)
    finally:
        if not opts.keep and not data.reused:
            console.log(f"deleting the dataset (workspace {data.workspace_id}; --keep keeps it)")
            asyncio.run(ds.drop_workspace_data(dsn, data.workspace_id))
        else:
            console.log(
                f"kept dataset {data.name} (workspace {data.workspace_id}), stitched; "
                "--reuse runs on it again"
            )
    report.timings["total_s"] = round(time.perf_counter() - begun, 1)
    judge(report)
    return report


def _verify(url: str, workspace_id: int, sample: int, console: Console) -> dict[str, Any]:
    """The copied state against the real stitcher: `sample` random customers re-stitched from
    their raw events (every derived row and contribution compared), and every rollup row against
    a from-scratch sum of all customers' contributions. `sample` 0: neither (a kept dataset
    verified by an earlier run; the rollup check alone takes minutes at 1M customers)."""
    found: dict[str, Any] = {}
    if sample:
        found["sample"] = asyncio.run(ds.verify_sample(url, workspace_id, sample, console))
        found["rollups"] = asyncio.run(ds.verify_rollups(url, workspace_id, console))
    return found


def _phases(
    report: AggregatesBenchReport,
    opts: AggregatesBenchOptions,
    *,
    exe: str,
    url: str,
    dsn: str,
    read_key: str,
    start: date,
    end: date,
    postmaster: int | None,
    console: Console,
    server_cls: Any,
) -> None:
    auth = f"Bearer {read_key}"
    chosen = select(endpoints(start, end, opts.breakdown), opts.only)
    server = server_cls(url, workers=1, env={"JOURNEYS_INPROCESS_WORKER": "false"})
    with tempfile.TemporaryDirectory(prefix="journeys-bench-aggregates-") as tmp:
        scripts: dict[str, Path] = {}
        for e in chosen:
            scripts[e.name] = Path(tmp) / f"{e.name}.lua"
            scripts[e.name].write_text(lua_script(e.path, auth))
            if e.cached:
                scripts[e.name + FRESH] = Path(tmp) / f"{e.name}-uncached.lua"
                scripts[e.name + FRESH].write_text(lua_script(e.path, auth, UNCACHED))
        try:
            server.start()
            console.log(
                f"journeys serve pid {server.pid} on {server.url} (1 process, "
                f"JOURNEYS_INPROCESS_WORKER=false); window {start} … {end}; wrk "
                f"{opts.connections} connections, {opts.duration} s per endpoint"
            )
            headers = {"Authorization": auth}
            for e in chosen:
                report.endpoints.append(
                    _sanity(server.url, e, headers, slow_ms=opts.slow_ms, settle_s=SETTLE_SECONDS)
                )
                got = report.endpoints[-1]
                console.log(
                    f"{e.name:<26} first request: {got['ms_once']:,.1f} ms"
                    + (
                        f", cached {got['ms_hit']:,.1f} ms, uncached {got['ms_uncached']:,.1f} ms"
                        if e.cached
                        else ""
                    )
                    + f"; {got['digest']}"
                )

            def phase(
                e: Endpoint, duration: int, *, profile: bool, suffix: str = ""
            ) -> LookupPhase:
                return _wrk(
                    exe=exe,
                    name=e.name + suffix,
                    label=e.label,
                    base_url=server.url,
                    script=scripts[e.name + suffix],
                    connections=opts.connections,
                    threads=opts.wrk_threads,
                    duration=duration,
                    server_pid=server.pid,
                    postmaster=postmaster,
                    dsn=dsn,
                    profile_dir=opts.profile_dir if profile else None,
                    profile_prefix="aggregates",
                )

            sizes = {d["name"]: d["bytes"] for d in report.endpoints}
            info = {d["name"]: d for d in report.endpoints}
            variants = [
                (e, "", headers, "ms_hit" if e.cached else "ms_once", "mode") for e in chosen
            ] + [
                (e, FRESH, {**headers, **UNCACHED}, "ms_uncached", "mode_uncached")
                for e in chosen
                if e.cached
            ]
            for _ in range(opts.rounds):
                for e, suffix, sent, timing, mode in variants:
                    first_ms = info[e.name][timing]
                    info[e.name][mode] = "wrk"
                    if first_ms >= opts.slow_ms:
                        # wrk's requests would outlive the phase (and time out): one at a time.
                        info[e.name][mode] = "sequential"
                        result = sequential_phase(
                            server.url,
                            e,
                            sent,
                            first_ms=first_ms,
                            budget_s=opts.duration,
                            server_pid=server.pid,
                            postmaster=postmaster,
                            dsn=dsn,
                        )
                    else:
                        if opts.warmup:
                            phase(e, opts.warmup, profile=False, suffix=suffix)
                        result = phase(e, opts.duration, profile=False, suffix=suffix)
                    waited = asyncio.run(wait_idle(dsn))
                    if waited > 1:
                        report.warnings.append(
                            f"{e.name}{suffix}: requests still ran {waited:.0f} s after the "
                            "phase (waited for them before the next phase)"
                        )
                    result.response_bytes = sizes[e.name]
                    report.phases.append(result)
                    console.log(
                        f"{e.name + suffix:<34} {result.requests_per_s:8,.0f} req/s  p50 "
                        f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  cpu "
                        f"{result.cpu_pct}"
                    )
            if opts.profile_dir is not None:
                # Profiled runs are slowed by py-spy: extra runs, not part of the results.
                for e in chosen:
                    if info[e.name]["mode"] == "wrk":
                        report.profiles[e.name] = phase(e, opts.duration, profile=True)
                        asyncio.run(wait_idle(dsn))
            report.server_memory_mb = process_memory_mb(server.pid)
        except LookupBenchFailed as exc:
            raise AggregatesBenchFailed(str(exc)) from None
        finally:
            server.stop()


def process_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return out


def cpu_us_per_request(p: LookupPhase, who: str) -> float | None:
    """CPU of one consumer (`server`, `postgres`) per request, in µs."""
    pct = p.cpu_pct.get(who)
    if pct is None or not p.requests:
        return None
    return pct / 100 * p.seconds / p.requests * 1e6


def judge(report: AggregatesBenchReport) -> None:
    """Medians per endpoint, failures, warnings and the p99 target."""
    by_name: dict[str, list[LookupPhase]] = {}
    for p in report.phases:
        by_name.setdefault(p.name, []).append(p)
        if p.non2xx:
            report.failures.append(
                f"{p.name}: {p.non2xx:,} of {p.requests:,} responses were not 2xx"
            )
        errors = {k: v for k, v in p.socket_errors.items() if v and k != "timeout"}
        if errors:
            report.failures.append(f"{p.name}: socket errors {errors}")
        if p.socket_errors.get("timeout"):
            report.warnings.append(
                f"{p.name}: {p.socket_errors['timeout']:,} requests timed out (10 s) under wrk"
            )
        if p.name.endswith(FRESH) and p.cpu_pct.get("postgres", 1.0) < 1.0:
            report.failures.append(
                f"{p.name}: PostgreSQL did no work during an uncached phase: the requests were "
                "not sent with Cache-Control: no-cache"
            )
        other = p.cpu_pct.get("other", 0.0)
        if other >= 25:
            report.warnings.append(
                f"{p.name}: other processes used {other:.0f}% of a core during the phase; the "
                f"machine was not quiet (busiest: {', '.join(p.busiest_others) or '?'})"
            )
    for name, phases in by_name.items():
        report.summary[name] = _median_phase(phases)
    cached = {e["name"] for e in report.endpoints if "ms_hit" in e}
    served = {n: p for n, p in report.summary.items() if n != "healthz" and FRESH not in n}
    uncached = {
        n.removesuffix(FRESH): p
        for n, p in report.summary.items()
        if n.endswith(FRESH) or (n != "healthz" and n not in cached)
    }
    for what, measured in (
        ("as served (answer cache warm: every request after the first is a hit)", served),
        (
            "uncached (every request computed from the database: `Cache-Control: no-cache`)",
            uncached,
        ),
    ):
        if not measured:
            continue
        missed = [(n, p) for n, p in measured.items() if p.p99_ms >= P99_TARGET_MS]
        worst_name, worst = max(measured.items(), key=lambda kv: kv[1].p99_ms)
        report.targets.append(
            {
                "target": f"p99 < {P99_TARGET_MS:g} ms for every endpoint, {what}",
                "met": not missed,
                "measured": (
                    f"worst {worst_name} {worst.p99_ms:.1f} ms"
                    + (
                        "; missed by " + ", ".join(f"{n} ({p.p99_ms:.1f} ms)" for n, p in missed)
                        if missed
                        else ""
                    )
                ),
            }
        )


# --------------------------------------------------------------------------- output


def markdown(report: AggregatesBenchReport) -> str:
    """The results table, the row counts, the dataset, the machine, the targets."""
    m = report.machine
    d = report.dataset
    first = next(iter(report.summary.values()), None)
    conns = first.connections if first else 0
    seconds = report.phases[0].seconds if report.phases else 0.0
    floor = report.summary.get("healthz")
    w = report.window
    lines = [
        f"Window {w.get('from')} … {w.get('to')} ({w.get('days')} days); breakdown "
        f"`{report.breakdown}`; wrk {conns} connections, {seconds:.0f} s per endpoint"
        + (f", medians of {report.rounds} rounds" if report.rounds > 1 else "")
        + ".",
        "",
        "Two phases per cached endpoint: **as served** (the exact answer cache warm: the first "
        "request computed the answer, every later one is a hit while the data does not change) "
        "and **uncached** (every request sent with `Cache-Control: no-cache`: computed from the "
        "database, as after every change to the workspace's data). Endpoints without a cache "
        "(`dropoff`) are computed at every request: one phase, in both columns.",
        "",
        "| endpoint | reads | first request ms | as served: req/s | p50 ms | p99 ms | uncached: "
        "req/s | p50 ms | p99 ms | uncached server CPU µs/req | uncached PostgreSQL CPU µs/req "
        "| bytes | p99 < 50 ms served / uncached |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    reads = {e["name"]: e["reads"] for e in report.endpoints}

    def yes(p: LookupPhase) -> str:
        return "yes" if p.p99_ms < P99_TARGET_MS else "**NO**"

    for e in report.endpoints:
        p = report.summary.get(e["name"])
        if p is None:
            continue
        fresh = report.summary.get(e["name"] + FRESH, p if "ms_hit" not in e else None)
        notes = []
        if e.get("mode") == "sequential":
            notes.append(f"as served: {p.requests} requests one at a time")
        if fresh is not None and e.get("mode_uncached") == "sequential":
            notes.append(f"uncached: too slow for wrk, {fresh.requests} requests one at a time")
        if "settled_s" in e:
            notes.append(
                f"fast {e['settled_s']:,.0f} s after the first request (its index loading in "
                "the background, the SQL path answering meanwhile); measured after that"
            )
        label = e["label"] + (f" — **{'; '.join(notes)}**" if notes else "")
        verdict = (
            "-"
            if e["name"] == "healthz"
            else f"{yes(p)} / {yes(fresh) if fresh is not None else '-'}"
        )
        if fresh is None:
            uncached_cols = "- | - | - | - | -"
        else:
            uncached_cols = (
                f"{fresh.requests_per_s:,.1f} | {fresh.p50_ms:.2f} | {fresh.p99_ms:.2f} | "
                f"{number(cpu_us_per_request(fresh, 'server'), ',.0f')} | "
                f"{number(cpu_us_per_request(fresh, 'postgres'), ',.0f')}"
            )
        lines.append(
            f"| {label} | {reads[e['name']]} | {number(e.get('ms_once'), ',.1f')} | "
            f"{p.requests_per_s:,.1f} | "
            f"{p.p50_ms:.2f} | {p.p99_ms:.2f} | {uncached_cols} | {e['bytes']:,} | {verdict} |"
        )
    if floor is not None:
        lines += ["", f"/healthz: {floor.requests_per_s:,.0f} req/s, p99 {floor.p99_ms:.2f} ms."]
    lines += [
        "",
        "reads: `rollups` = rollup rows only (bounded by days x stages x channels x groups, "
        "whatever the number of customers, but agg_stage_durations also has a duration bucket "
        "per row); `rollups + 1 day` = and the customers who entered a stage with a drop-off "
        "threshold on the threshold's day; `customers` = stage entries, timeline rows or "
        "customers in the window (grows with customers and events); `floor` = no database.",
    ]
    if report.row_counts:
        lines += [
            "",
            f"| rollup table | rows | no breakdown (dim '') | `{report.breakdown}` | "
            "no breakdown, in the window | breakdown, in the window | days | groups (dval) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for table in ROLLUP_TABLES:
            c = report.row_counts.get(table)
            if c is None:
                continue
            lines.append(
                f"| {table} | {c['rows']:,} | {c['total']:,} | {c['breakdown']:,} | "
                f"{c['window']:,} | {c['window_breakdown']:,} | {c['days']:,} | {c['groups']:,} |"
            )
        se = report.row_counts.get("stage_entries", {})
        je = report.row_counts.get("journey_events", {})
        cu = report.row_counts.get("customers", {})
        lines += [
            "",
            f"What the customer-level endpoints read: stage_entries {se.get('rows', 0):,} rows "
            f"({se.get('window', 0):,} in the window: the stage funnel); journey_events "
            f"{je.get('rows', 0):,} rows ({je.get('window', 0):,} in the window, "
            f"{je.get('window_funnel_events', 0):,} of the event funnel's steps in the window "
            f"+ 14 days); customers {cu.get('rows', 0):,} ({cu.get('in_dropoff_stage', 0):,} "
            f"now in {DROPOFF_STAGE}).",
        ]
    stats = d.get("archetype_stats", {})
    s = report.stitch
    lines += [
        "",
        f"Dataset: {d['customers']:,} customers, {d['events']:,} raw events over "
        f"{d['spec']['days']} days ({stats.get('identified_pct', '?')}% identified, "
        f"{stats.get('buyers_pct', '?')}% buyers, {stats.get('repeat_buyers_pct', '?')}% repeat "
        f"buyers, {stats.get('survey_pct', '?')}% surveys); "
        + ("kept from an earlier run" if d.get("reused") else "generated")
        + f"; journey model breakdowns: {', '.join(f'`{b}`' for b in report.breakdowns)}.",
    ]
    if s.get("copied"):
        t = d.get("timings", {})
        lines.append(
            f"Derived state: {d.get('derived', '')}. Generation: archetypes stitched in "
            f"{t.get('template_stitch_s', 0):,.0f} s, raw events + timeline rows "
            f"{t.get('raw_s', 0):,.0f} s, customers + identities + contributions + stage entries "
            f"{t.get('derived_s', 0):,.0f} s, rollups from customers.facts "
            f"{t.get('rollups_s', 0):,.0f} s, VACUUM ANALYZE {t.get('vacuum_s', 0):,.0f} s; "
            f"total {t.get('total_s', 0):,.0f} s"
            + (" (kept from an earlier run)" if d.get("reused") else "")
            + "."
        )
        v = report.verification
        if not v:
            lines.append("Verification: skipped (`--verify 0`: verified by an earlier run).")
        if v.get("sample"):
            smp = v["sample"]
            lines.append(
                f"Verification: {smp['customers']} random customers re-stitched from their "
                f"{smp.get('raw_events', 0):,} raw events by the real stitcher, "
                f"{smp['rows_compared']:,} rows compared (customers, timelines, identities, "
                "links, contributions `customers.facts` + `dims`, stage entries): "
                + ("**identical**" if smp["identical"] else f"**MISMATCH** {smp['mismatches']}")
                + "."
            )
        if v.get("rollups"):
            r = v["rollups"]
            rows = ", ".join(f"{k} {n:,}" for k, n in r["rows"].items())
            lines.append(
                "Rollups vs a from-scratch sum of every customer's contribution by the "
                f"stitcher's own `add_facts` ({rows} rows; {r['seconds']:,.0f} s): "
                + ("**identical**" if r["identical"] else f"**MISMATCH** {r['mismatches'][:3]}")
                + "."
            )
    elif s.get("reused"):
        lines.append("Stitching: the kept dataset was already stitched by this benchmark.")
    elif s:
        lines.append(
            f"Stitching: all {s['events']:,} events by the real `Stitcher.stitch_shard` (rollups "
            f"on, batches of {s['batch_size']:,}) in {s['seconds']:,.0f} s: "
            f"{s['events_per_s']:,.0f} events/s (batch p50 {s['batch_p50_ms']:,.0f} ms, p99 "
            f"{s['batch_p99_ms']:,.0f} ms), not counting {s.get('maintenance_passes', 0)} "
            f"VACUUM ANALYZE passes over the derived tables as they grew "
            f"({s.get('maintenance_s', 0):,.0f} s; autovacuum is `{s.get('autovacuum', '?')}` on "
            "this server, and on stale statistics the stitcher's plans go bad); a final VACUUM "
            f"ANALYZE took {s['vacuum_analyze_s']:,.0f} s."
        )
    if report.endpoints:
        lines += ["", "Answers (one request each before the load):", ""]
        lines += [f"- {e['name']}: {e['digest']}" for e in report.endpoints]
    if report.server_memory_mb:
        mem = report.server_memory_mb
        lines += [
            "",
            f"Server memory at the end of the HTTP phases (funnel indexes included): RSS "
            f"{mem.get('rss', 0):,.0f} MB, peak {mem.get('peak', 0):,.0f} MB.",
        ]
    if report.timings:
        lines += [
            "",
            "Run time: "
            + ", ".join(f"{k.removesuffix('_s')} {v:,.0f} s" for k, v in report.timings.items())
            + ".",
        ]
    lines.append(
        machine_line(m, report.database, "server (1 process), PostgreSQL and wrk share the cores.")
    )
    lines += verdict_lines(report.targets, report.warnings, report.failures)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def bench_aggregates(
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql://… [JOURNEYS_DATABASE_URL; else the embedded PostgreSQL]"),
    ] = None,
    customers: Annotated[
        int,
        typer.Option(
            help="customers in the dataset (the issue's 1,000,000: ~20 minutes with --derived "
            "copy on 2 cores)",
            min=1_000,
            max=100_000_000,
        ),
    ] = 50_000,
    events_per_customer: Annotated[
        int, typer.Option(help="average events per customer", min=2, max=200)
    ] = 10,
    days: Annotated[int, typer.Option(help="days of history", min=7, max=3 * 365)] = 180,
    archetypes: Annotated[
        int, typer.Option(help="distinct journeys the customers copy", min=100, max=100_000)
    ] = 2_000,
    breakdown: Annotated[
        str,
        typer.Option(
            help="the breakdown to request (kept by the workspace's journey model besides the "
            "defaults); the generator sets the trait marketing_opt_in"
        ),
    ] = DEFAULT_BREAKDOWN,
    window_days: Annotated[
        int, typer.Option(help="days of the requested window (ending on the last day)", min=1)
    ] = 90,
    duration: Annotated[int, typer.Option(help="seconds per wrk phase", min=2, max=300)] = 10,
    warmup: Annotated[
        int, typer.Option(help="seconds of unmeasured warm-up per endpoint", min=0, max=60)
    ] = 2,
    connections: Annotated[int, typer.Option(help="wrk connections", min=1, max=1024)] = 4,
    wrk_threads: Annotated[int, typer.Option(help="wrk threads", min=1, max=16)] = 2,
    rounds: Annotated[
        int, typer.Option(help="run every endpoint this many times; report medians", min=1, max=10)
    ] = 1,
    only: Annotated[
        str | None,
        typer.Option(
            help="comma-separated endpoint names or prefixes (e.g. funnel,dropoff); /healthz "
            "always runs"
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="stitcher batch size", min=1, max=100_000)
    ] = 2_000,
    slow_ms: Annotated[
        float,
        typer.Option(
            help="an endpoint whose first request takes this long is measured one request at a "
            "time instead of with wrk (its requests would outlive the phase)",
            min=100,
        ),
    ] = 2_000.0,
    reuse: Annotated[
        bool, typer.Option(help="use a kept dataset of the same shape (stitched: not again)")
    ] = False,
    keep: Annotated[bool, typer.Option(help="keep the stitched dataset for --reuse")] = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="also record the server with py-spy (an extra, unreported run per endpoint) "
            "into this directory"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="dataset seed")] = 7,
    derived: Annotated[
        str,
        typer.Option(
            help="copy: archetypes stitched by the real stitcher, copied in SQL with their "
            "contributions, rollups summed from them (minutes at 1M customers), verified; "
            "stitch: every event through the real stitcher (~3k events/s)"
        ),
    ] = "copy",
    verify: Annotated[
        int,
        typer.Option(
            help="copy: customers re-stitched from raw events to check the copy, then every "
            "rollup row against a sum of the contributions (0: no verification)",
            min=0,
        ),
    ] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    output: Annotated[Path | None, typer.Option(help="write the markdown report here")] = None,
) -> None:
    """The /v1/aggregates endpoints over HTTP (wrk) on a dataset whose derived state is the real
    stitcher's (copied and verified, or stitched), against /healthz."""
    from app.bench.ingest import BenchFailed
    from app.bench.stitch import StitchBenchFailed, print_profile

    console = Console(stderr=True)
    # Fail on a bad --only before spending minutes on the dataset.
    select(endpoints(date.today(), date.today(), breakdown), only)
    url, embedded = ds.resolve_url(database_url, console)
    opts = AggregatesBenchOptions(
        database_url=url,
        spec=ds.DatasetSpec(
            customers=customers,
            events_per_customer=events_per_customer,
            archetypes=min(archetypes, customers),
            days=days,
            seed=seed,
        ),
        breakdown=breakdown,
        window_days=window_days,
        reuse=reuse,
        keep=keep,
        batch_size=batch_size,
        duration=duration,
        warmup=warmup,
        connections=connections,
        wrk_threads=wrk_threads,
        rounds=rounds,
        only=only,
        profile_dir=profile,
        slow_ms=slow_ms,
        derived=derived,
        verify=verify,
    )
    if derived not in ("copy", "stitch"):
        raise typer.BadParameter("copy or stitch", param_hint="--derived")
    try:
        report = run(opts, console)
    except (AggregatesBenchFailed, StitchBenchFailed, BenchFailed, WrkError) as exc:
        console.print(Panel(str(exc), title="journeys bench aggregates: FAILED", style="bold red"))
        raise typer.Exit(2) from None
    finally:
        if embedded is not None:
            embedded.stop()
    out = emit(markdown(report), report.as_dict(), output=output, as_json=as_json)
    if out is not None:
        for name, phase in report.profiles.items():
            print_profile(out, f"server under {name}", phase.profile)
    if not report.ok:
        raise typer.Exit(1)


__all__ = [
    "AggregatesBenchOptions",
    "AggregatesBenchReport",
    "Endpoint",
    "bench_aggregates",
    "digest",
    "endpoints",
    "lua_script",
    "markdown",
    "run",
    "select",
]
