"""`journeys bench lookup`: profile reads over HTTP against a bare primary-key lookup, one run.

Phases, against one database and one dataset (`app.bench.dataset`, kind "full": raw events and
the stitched state of every customer, whose rows `lookup_rows.widen_customers` then makes as wide
as the stitcher writes them, `dims` and `facts` included; or kind "aggregates", which writes each
customer's own; `verify_sample` re-stitches random customers with the real stitcher and compares
every derived row):

(a) baseline: a bare primary-key lookup endpoint, `create_baseline_app` below: FastAPI, one route,
    `SELECT customer_id, stage FROM customers WHERE workspace_id = $1 AND customer_id = $2`
    through an asyncpg pool (10 connections, as `journeys serve`), served by uvicorn in a
    subprocess with the settings of `journeys serve` (uvloop, httptools, 1 worker, no access
    log).
(b) `GET /v1/profiles/user_id:<random user>/stage` on `journeys serve` with the read key (in-process
    stitcher disabled: the dataset's raw events are not in its feed position, and stitching is
    measured by `journeys bench stitch`).
(c) `GET /v1/profiles/user_id:<random heavy user>/timeline?limit=50`, customers with ≥ 50 events.

Each phase: wrk at 8 connections (2 threads) for `--duration` after a short warm-up, every request
for an id drawn at random from a list file (the baseline's list holds the customer ids of the
stage phase's users, so both read the same rows). With `--rounds N` the baseline and stage phases
alternate N times and the medians are reported (less sensitive to a noisy machine).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import orjson
import typer
from fastapi import FastAPI, Request
from fastapi.responses import Response
from rich.console import Console
from rich.panel import Panel

from app.bench import dataset as ds
from app.bench import lookup_rows
from app.bench.ingest import ServerProcess
from app.bench.profile import ProfileSummary, start_recording, summarise
from app.bench.report import emit, machine_line, stats_row, verdict_lines
from app.bench.wrk import LUA_DONE, WrkError, _lua_string, ensure_wrk, parse_output
from app.db.engine import asyncpg_dsn

BASELINE_SQL = (
    "SELECT customer_id, stage FROM customers WHERE workspace_id = $1 AND customer_id = $2"
)
STAGE_P99_MS = 5.0
STAGE_RATIO = 0.8
TIMELINE_P99_MS = 15.0
# Under wrk load a phase whose whole machine used less than this (% of one core, 2 cores) while
# PostgreSQL read from outside shared_buffers was waiting on the disk.
IDLE_MACHINE_PCT = 100.0
HEAVY_EVENTS = 50


class LookupBenchFailed(RuntimeError):
    """The benchmark itself could not run."""


# --------------------------------------------------------------------------- baseline app


def create_baseline_app() -> FastAPI:
    """The bare primary-key lookup (uvicorn factory). Configured by environment:
    JOURNEYS_BENCH_DSN, JOURNEYS_BENCH_WORKSPACE, JOURNEYS_BENCH_POOL (default 10)."""
    dsn = os.environ["JOURNEYS_BENCH_DSN"]
    workspace_id = int(os.environ["JOURNEYS_BENCH_WORKSPACE"])
    pool_size = int(os.environ.get("JOURNEYS_BENCH_POOL", "10"))
    # asyncpg resets a connection when it returns to the pool (advisory locks, cursors, LISTEN,
    # settings): one more round trip per request. Off unless JOURNEYS_BENCH_POOL_RESET=1, so
    # the baseline is exactly one query round trip.
    reset_on_release = os.environ.get("JOURNEYS_BENCH_POOL_RESET", "0") == "1"

    async def no_reset(conn: asyncpg.Connection) -> None:
        del conn

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            dsn,
            min_size=pool_size,
            max_size=pool_size,
            **({} if reset_on_release else {"reset": no_reset}),
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v1/customers/{customer_id}")
    async def lookup(customer_id: str, request: Request) -> Response:
        row = await request.app.state.pool.fetchrow(BASELINE_SQL, workspace_id, customer_id)
        if row is None:
            return Response(
                b'{"detail":"not found"}', status_code=404, media_type="application/json"
            )
        return Response(
            orjson.dumps({"customer_id": row["customer_id"], "stage": row["stage"]}),
            media_type="application/json",
        )

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


class BaselineServer(ServerProcess):
    """uvicorn serving `create_baseline_app` like `journeys serve` serves the API."""

    def __init__(
        self, dsn: str, workspace_id: int, *, pool_size: int = 10, reset_on_release: bool = False
    ) -> None:
        super().__init__(
            dsn,
            workers=None,
            env={
                "JOURNEYS_BENCH_DSN": dsn,
                "JOURNEYS_BENCH_WORKSPACE": str(workspace_id),
                "JOURNEYS_BENCH_POOL": str(pool_size),
                "JOURNEYS_BENCH_POOL_RESET": "1" if reset_on_release else "0",
            },
        )

    def command(self) -> list[str]:
        """The one-route baseline app, with the same uvicorn settings as `journeys serve`."""
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.bench.lookup:create_baseline_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--timeout-keep-alive",
            "5",
            "--limit-concurrency",
            "2000",
            "--backlog",
            "2048",
            "--log-level",
            "warning",
        ]


# --------------------------------------------------------------------------- wrk


def get_lua_script(*, prefix: str, suffix: str, ids_file: Path, authorization: str | None) -> str:
    """A wrk script: every request GETs `prefix .. <random id of the file> .. suffix`; `done()`
    prints the same machine-readable line as the ingest bench's script (parsed by
    `wrk.parse_output`)."""
    auth = f'\n  ["Authorization"] = {_lua_string(authorization)},' if authorization else ""
    return f"""-- generated by `journeys bench lookup`: GET a random id of a list per request
local prefix = {_lua_string(prefix)}
local suffix = {_lua_string(suffix)}
local ids_file = {_lua_string(str(ids_file))}
local headers = {{["Accept"] = "application/json",{auth}
}}
local threads = {{}}
local ids = {{}}
local nids = 0
counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  for line in io.lines(ids_file) do
    if #line > 0 then
      nids = nids + 1
      ids[nids] = line
    end
  end
  math.randomseed(os.time() * 1000 + id * 7919 + math.floor(os.clock() * 1000000))
end

function request()
  counter = counter + 1
  return wrk.format("GET", prefix .. ids[math.random(nids)] .. suffix, headers)
end

{LUA_DONE}"""


@dataclass(slots=True)
class LookupPhase:
    """One wrk run."""

    name: str
    label: str
    connections: int
    seconds: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: dict[str, int]
    response_bytes: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)
    busiest_others: list[str] = field(default_factory=list)
    profile: ProfileSummary | None = None
    # PostgreSQL buffer reads during the phase (pg_stat_database): `read` came from outside
    # shared_buffers (the OS page cache or the disk), `hit` from inside.
    blocks_read: int | None = None
    blocks_hit: int | None = None


def _block_counts(dsn: str) -> tuple[int, int] | None:
    """The database's (blks_read, blks_hit) so far."""
    row = stats_row(
        dsn,
        "SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()",
    )
    return None if row is None else (row["blks_read"], row["blks_hit"])


def _wrk(
    *,
    exe: str,
    name: str,
    label: str,
    base_url: str,
    script: Path,
    connections: int,
    threads: int,
    duration: int,
    server_pid: int,
    postmaster: int | None,
    dsn: str,
    profile_dir: Path | None = None,
    profile_prefix: str = "lookup",
) -> LookupPhase:
    from app.bench.ingest import CpuMeter, _pg_pids_now

    args = [
        exe,
        "--latency",
        "-t",
        str(max(1, min(threads, connections))),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
    ]
    meter = CpuMeter(server_pid, postmaster)
    meter.start(_pg_pids_now(dsn) if postmaster else None)
    blocks_before = _block_counts(dsn)
    spy = None
    spy_out: Path | None = None
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        if profile_dir is not None:
            time.sleep(min(2.0, duration / 4))
            profile_dir.mkdir(parents=True, exist_ok=True)
            spy_out = profile_dir / f"{profile_prefix}-{name}.txt"
            spy = start_recording(server_pid, spy_out, max(1, duration - 4))
        output = proc.communicate(timeout=duration + 60)[0].decode(errors="replace")
    except BaseException:
        for child in (proc, spy):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        raise
    cpu = meter.stop(load_generator=True, pg_pids=_pg_pids_now(dsn) if postmaster else None)
    # A second later: the server's backends have flushed their counters by then.
    time.sleep(1.0)
    blocks_after = _block_counts(dsn)
    busiest = list(meter.others)
    profile = None
    if spy is not None and spy_out is not None:
        spy.wait(timeout=duration + 30)
        profile = summarise(spy_out) if spy_out.exists() else None
    if proc.returncode != 0:
        raise LookupBenchFailed(f"wrk exited with {proc.returncode}:\n{output[-2000:]}")
    result = parse_output(output)
    return LookupPhase(
        name=name,
        label=label,
        connections=connections,
        seconds=round(result.duration_s, 3),
        requests=result.requests,
        requests_per_s=result.requests_per_s,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        non2xx=result.non2xx,
        socket_errors=result.socket_errors,
        cpu_pct=cpu,
        profile=profile,
        busiest_others=busiest,
        blocks_read=blocks_after[0] - blocks_before[0] if blocks_before and blocks_after else None,
        blocks_hit=blocks_after[1] - blocks_before[1] if blocks_before and blocks_after else None,
    )


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class LookupBenchOptions:
    """Everything `journeys bench lookup` can be told."""

    database_url: str
    spec: ds.DatasetSpec
    reuse: bool = False
    keep: bool = False
    duration: int = 15
    warmup: int = 3
    connections: int = 8
    wrk_threads: int = 2
    rounds: int = 1
    ids: int = 20_000
    verify: int = 200
    profile_dir: Path | None = None
    baseline_reset: bool = False
    # "full" leaves dims and facts empty (narrower rows than production's) and is widened below;
    # "aggregates" writes them, at a higher generation cost.
    kind: ds.Kind = "full"
    # Kind "full" only: give the customers real-sized dims and facts first (`lookup_rows`).
    widen: bool = True


@dataclass(slots=True)
class LookupBenchReport:
    """The whole run."""

    started_at: str
    machine: dict[str, Any]
    database: str
    dataset: dict[str, Any]
    verification: dict[str, Any] | None = None
    customers_row: dict[str, Any] = field(default_factory=dict)
    widened: dict[str, Any] | None = None
    id_lists: dict[str, int] = field(default_factory=dict)
    phases: list[LookupPhase] = field(default_factory=list)
    summary: dict[str, LookupPhase] = field(default_factory=dict)
    ratio: float | None = None
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


async def _id_lists(dsn: str, workspace_id: int, count: int, workdir: Path) -> dict[str, Path]:
    conn = await asyncpg.connect(dsn)
    try:
        users = await conn.fetch(
            "SELECT value, customer_id FROM identities WHERE workspace_id = $1 "
            "AND kind = 'user_id' ORDER BY random() LIMIT $2",
            workspace_id,
            count,
        )
        heavy = await conn.fetch(
            "SELECT i.value FROM identities i JOIN customers c ON c.workspace_id = i.workspace_id"
            " AND c.customer_id = i.customer_id WHERE i.workspace_id = $1 "
            "AND i.kind = 'user_id' AND c.event_count >= $3 ORDER BY random() LIMIT $2",
            workspace_id,
            count,
            HEAVY_EVENTS,
        )
    finally:
        await conn.close()
    if not users or not heavy:
        raise LookupBenchFailed(
            f"the dataset has {len(users)} users and {len(heavy)} customers "
            f"with ≥ {HEAVY_EVENTS} events: generate a larger one"
        )
    files = {
        "users": workdir / "users.txt",
        "customers": workdir / "customers.txt",
        "heavy": workdir / "heavy.txt",
    }
    files["users"].write_text("".join(f"{r['value']}\n" for r in users))
    files["customers"].write_text("".join(f"{r['customer_id']}\n" for r in users))
    files["heavy"].write_text("".join(f"{r['value']}\n" for r in heavy))
    return files


async def _customers_row(dsn: str, workspace_id: int) -> dict[str, Any]:
    """How wide the customers rows are (a sample): the stage lookup must not pay for the
    columns it does not read."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS sampled, round(avg(pg_column_size(c.*))) AS row_bytes, "
            "round(avg(coalesce(pg_column_size(c.facts), 0))) AS facts_bytes, "
            "round(avg(pg_column_size(c.dims))) AS dims_bytes, "
            "round(avg(pg_column_size(c.stage_history))) AS stage_history_bytes, "
            "round(100.0 * count(c.facts) / greatest(count(*), 1), 1) AS facts_pct "
            "FROM (SELECT * FROM customers WHERE workspace_id = $1 LIMIT 20000) c",
            workspace_id,
        )
    finally:
        await conn.close()
    return {k: float(v) if v is not None else None for k, v in dict(row).items()}


def _sanity(url: str, path: str, headers: dict[str, str], *, events: int | None = None) -> int:
    answer = httpx.get(url + path, headers=headers, timeout=30)
    if answer.status_code != 200:
        raise LookupBenchFailed(f"GET {path} answered {answer.status_code}: {answer.text[:500]}")
    if events is not None and len(answer.json().get("events", ())) != events:
        raise LookupBenchFailed(
            f"GET {path} returned {len(answer.json()['events'])} events, expected {events}"
        )
    return len(answer.content)


def run(opts: LookupBenchOptions, console: Console) -> LookupBenchReport:
    """Dataset (and its verification), both servers, the wrk phases, the verdict."""
    from app.bench.ingest import ServerProcess, _database_info, machine_info, redact
    from app.db.migrate import upgrade_head

    url = opts.database_url
    dsn = asyncpg_dsn(url)
    exe = ensure_wrk()
    console.log(f"database {redact(url)}; applying migrations")
    upgrade_head(url)
    version, postmaster = asyncio.run(_database_info(dsn))
    data = asyncio.run(ds.ensure_dataset(url, opts.spec, opts.kind, console, reuse=opts.reuse))
    report = LookupBenchReport(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        database=version,
        dataset=data.as_dict(),
    )
    try:
        if (
            opts.kind == "full"
            and opts.widen
            and not asyncio.run(lookup_rows.facts_filled(dsn, data.workspace_id))
        ):
            asyncio.run(lookup_rows.widen_customers(url, data.workspace_id, console))
        report.widened = asyncio.run(lookup_rows.widened(dsn, data.workspace_id))
        if opts.verify:
            report.verification = asyncio.run(
                ds.verify_sample(url, data.workspace_id, opts.verify, console)
            )
            if report.widened is not None:
                report.verification = lookup_rows.split_verification(report.verification)
            if not report.verification["identical"]:
                report.failures.append(
                    "the dataset's derived state differs from what the "
                    f"stitcher produces: {report.verification['mismatches']}"
                )
        report.customers_row = asyncio.run(_customers_row(dsn, data.workspace_id))
        with tempfile.TemporaryDirectory(prefix="journeys-bench-lookup-") as tmp:
            workdir = Path(tmp)
            files = asyncio.run(_id_lists(dsn, data.workspace_id, opts.ids, workdir))
            report.id_lists = {k: len(v.read_text().splitlines()) for k, v in files.items()}
            _phases(
                report,
                opts,
                exe=exe,
                url=url,
                dsn=dsn,
                workspace_id=data.workspace_id,
                read_key=data.read_key,
                files=files,
                workdir=workdir,
                postmaster=postmaster,
                console=console,
                server_cls=ServerProcess,
            )
    finally:
        if not opts.keep and not data.reused:
            console.log(f"deleting the dataset (workspace {data.workspace_id}; --keep keeps it)")
            asyncio.run(ds.drop_workspace_data(dsn, data.workspace_id))
        else:
            console.log(
                f"kept dataset {data.name} (workspace {data.workspace_id}); "
                "--reuse runs on it again"
            )
    _judge(report)
    return report


def _phases(
    report: LookupBenchReport,
    opts: LookupBenchOptions,
    *,
    exe: str,
    url: str,
    dsn: str,
    workspace_id: int,
    read_key: str,
    files: dict[str, Path],
    workdir: Path,
    postmaster: int | None,
    console: Console,
    server_cls: Any,
) -> None:
    auth = f"Bearer {read_key}"
    scripts = {
        "baseline": get_lua_script(
            prefix="/v1/customers/", suffix="", ids_file=files["customers"], authorization=None
        ),
        "stage": get_lua_script(
            prefix="/v1/profiles/user_id:",
            suffix="/stage",
            ids_file=files["users"],
            authorization=auth,
        ),
        "timeline": get_lua_script(
            prefix="/v1/profiles/user_id:",
            suffix="/timeline?limit=50",
            ids_file=files["heavy"],
            authorization=auth,
        ),
    }
    paths: dict[str, Path] = {}
    for name, text in scripts.items():
        paths[name] = workdir / f"{name}.lua"
        paths[name].write_text(text)
    labels = {
        "baseline": (
            "baseline: bare PK lookup (FastAPI + asyncpg pool; 1 query"
            + (" + asyncpg's reset on release" if opts.baseline_reset else "")
            + ")"
        ),
        "stage": "GET /v1/profiles/user_id:…/stage",
        "timeline": f"GET /v1/profiles/user_id:…/timeline?limit=50 (customers ≥ {HEAVY_EVENTS} "
        "events)",
    }
    baseline = BaselineServer(dsn, workspace_id, reset_on_release=opts.baseline_reset)
    journeys = server_cls(url, workers=1, env={"JOURNEYS_INPROCESS_WORKER": "false"})
    try:
        baseline.start()
        journeys.start()
        console.log(
            f"baseline pid {baseline.pid} on {baseline.url}; journeys serve pid "
            f"{journeys.pid} on {journeys.url} (JOURNEYS_INPROCESS_WORKER=false)"
        )
        rng = random.Random(1)
        user = rng.choice(files["users"].read_text().split())
        customer = files["customers"].read_text().split()[0]
        heavy = rng.choice(files["heavy"].read_text().split())
        headers = {"Authorization": auth}
        sizes = {
            "baseline": _sanity(baseline.url, f"/v1/customers/{customer}", {}),
            "stage": _sanity(journeys.url, f"/v1/profiles/user_id:{user}/stage", headers),
            "timeline": _sanity(
                journeys.url, f"/v1/profiles/user_id:{heavy}/timeline?limit=50", headers, events=50
            ),
        }
        servers = {"baseline": baseline, "stage": journeys, "timeline": journeys}
        order = ["baseline", "stage"] * opts.rounds + ["timeline"]

        def phase(name: str, duration: int, *, profile: bool) -> LookupPhase:
            server = servers[name]
            return _wrk(
                exe=exe,
                name=name,
                label=labels[name],
                base_url=server.url,
                script=paths[name],
                connections=opts.connections,
                threads=opts.wrk_threads,
                duration=duration,
                server_pid=server.pid,
                postmaster=postmaster,
                dsn=dsn,
                profile_dir=opts.profile_dir if profile else None,
            )

        if opts.warmup:
            for name in ("baseline", "stage", "timeline"):
                phase(name, opts.warmup, profile=False)
        for i, name in enumerate(order):
            last_of_kind = name not in order[i + 1 :]
            # Profiled runs are slowed by py-spy: an extra run, not part of the medians.
            result = phase(name, opts.duration, profile=False)
            result.response_bytes = sizes[name]
            report.phases.append(result)
            console.log(
                f"{name:<9} {result.requests_per_s:8,.0f} req/s  p50 "
                f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  cpu "
                f"{result.cpu_pct}"
            )
            if (
                opts.profile_dir is not None
                and last_of_kind
                and name in ("stage", "timeline", "baseline")
            ):
                spied = phase(name, opts.duration, profile=True)
                report.summary[f"{name}_profiled"] = spied
    finally:
        journeys.stop()
        baseline.stop()


def _median_phase(phases: list[LookupPhase]) -> LookupPhase:
    if len(phases) == 1:
        return phases[0]
    first = phases[0]
    return LookupPhase(
        name=first.name,
        label=first.label + f" (median of {len(phases)} runs)",
        connections=first.connections,
        seconds=sum(p.seconds for p in phases),
        requests=sum(p.requests for p in phases),
        requests_per_s=statistics.median(p.requests_per_s for p in phases),
        p50_ms=statistics.median(p.p50_ms for p in phases),
        p90_ms=statistics.median(p.p90_ms for p in phases),
        p99_ms=statistics.median(p.p99_ms for p in phases),
        max_ms=max(p.max_ms for p in phases),
        non2xx=sum(p.non2xx for p in phases),
        socket_errors={
            k: sum(p.socket_errors.get(k, 0) for p in phases) for k in first.socket_errors
        },
        response_bytes=first.response_bytes,
        cpu_pct=first.cpu_pct,
        blocks_read=_total(p.blocks_read for p in phases),
        blocks_hit=_total(p.blocks_hit for p in phases),
    )


def _total(counts: Iterable[int | None]) -> int | None:
    values = list(counts)
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _judge(report: LookupBenchReport) -> None:
    by_name: dict[str, list[LookupPhase]] = {}
    for p in report.phases:
        by_name.setdefault(p.name, []).append(p)
        if p.non2xx:
            report.failures.append(
                f"{p.name}: {p.non2xx:,} of {p.requests:,} responses were not 2xx"
            )
        if any(p.socket_errors.values()):
            report.failures.append(f"{p.name}: socket errors {p.socket_errors}")
        other = p.cpu_pct.get("other", 0.0)
        if other >= 25:
            report.warnings.append(
                f"{p.name}: other processes used {other:.0f}% of a core "
                "during the phase; the machine was not quiet (busiest: "
                f"{', '.join(p.busiest_others) or '?'})"
            )
        if p.blocks_read and p.requests:
            machine = p.cpu_pct.get("machine", 0.0)
            per_request = p.blocks_read / p.requests
            if machine < IDLE_MACHINE_PCT and per_request >= 1:
                report.warnings.append(
                    f"{p.name}: the CPUs were mostly idle ({machine:.0f}% of one core for the "
                    f"whole machine) while PostgreSQL read {per_request:.1f} blocks per request "
                    "from outside shared_buffers: the phase waited on the disk, not on the code"
                )
    for name, phases in by_name.items():
        report.summary[name] = _median_phase(phases)
    base, stage, timeline = (report.summary.get(k) for k in ("baseline", "stage", "timeline"))
    if stage is not None:
        report.targets.append(
            {
                "target": f"stage p99 < {STAGE_P99_MS:g} ms",
                "met": stage.p99_ms < STAGE_P99_MS,
                "measured": f"{stage.p99_ms:.2f} ms",
            }
        )
    if stage is not None and base is not None and base.requests_per_s:
        report.ratio = stage.requests_per_s / base.requests_per_s
        report.targets.append(
            {
                "target": f"stage ≥ {STAGE_RATIO:.0%} of the bare PK lookup's req/s",
                "met": report.ratio >= STAGE_RATIO,
                "measured": f"{report.ratio:.2f}x ({stage.requests_per_s:,.0f} vs "
                f"{base.requests_per_s:,.0f} req/s)",
            }
        )
    if timeline is not None:
        report.targets.append(
            {
                "target": f"timeline (50 events) p99 < {TIMELINE_P99_MS:g} ms",
                "met": timeline.p99_ms < TIMELINE_P99_MS,
                "measured": f"{timeline.p99_ms:.2f} ms",
            }
        )


# --------------------------------------------------------------------------- output


def markdown(report: LookupBenchReport) -> str:
    """The results table with the dataset, the machine and the targets."""
    m = report.machine
    d = report.dataset
    conns = next(iter(report.summary.values())).connections if report.summary else 8
    duration = report.phases[0].seconds if report.phases else 0
    lines = [
        f"| endpoint (wrk, {conns} connections, {duration:.0f} s) | req/s | p50 ms | "
        "p90 ms | p99 ms | ratio to baseline | response bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = report.summary.get("baseline")
    for name in ("baseline", "stage", "timeline"):
        p = report.summary.get(name)
        if p is None:
            continue
        ratio = (
            f"{p.requests_per_s / base.requests_per_s:.2f}"
            if base is not None and base.requests_per_s
            else "-"
        )
        lines.append(
            f"| {p.label} | {p.requests_per_s:,.0f} | {p.p50_ms:.2f} | {p.p90_ms:.2f} "
            f"| {p.p99_ms:.2f} | {ratio} | {p.response_bytes:,} |"
        )
    stats = d.get("archetype_stats", {})
    lines += [
        "",
        f"Dataset: {d['customers']:,} customers, {d['events']:,} raw events and as many "
        f"timeline rows over {d['spec']['days']} days ({stats.get('identified_pct', '?')}% "
        f"identified, {stats.get('buyers_pct', '?')}% buyers, {stats.get('heavy_pct', '?')}% "
        "heavy customers with 60-150 events); generated"
        + (f" in {d['timings'].get('total_s', 0):.0f} s" if d.get("timings") else "")
        + (" (kept from an earlier run)" if d["reused"] else "")
        + f". Derived state: {d['derived']}.",
    ]
    v = report.verification
    if v is not None:
        lines.append(
            f"Verification: {v['customers']} random customers re-stitched from their "
            f"{v.get('raw_events', 0):,} raw events by the real stitcher: "
            + (
                "every customer, timeline, identity and link row identical"
                if v["identical"]
                else f"**MISMATCH** {v['mismatches']}"
            )
            + (
                f" (not comparable here: {', '.join(v['not_comparable'])}, borrowed or not "
                "copied by the widening)."
                if v.get("not_comparable")
                else "."
            )
        )
    w = report.widened
    if w is not None:
        lines.append(
            f"Customers widened (`app/bench/lookup_rows.py`): the dims and facts "
            f"of {w['stitched_with_facts']} customers re-stitched by the real stitcher, given "
            f"to {w['updated']:,} customers of the same event count, in {w['total_s']:.0f} s."
        )
    row = report.customers_row
    if row:
        lines.append(
            f"Customers rows (first {row['sampled']:,.0f} of the workspace): "
            f"{row['row_bytes']:,.0f} bytes on average, of which facts "
            f"{row['facts_bytes']:,.0f} (filled in {row['facts_pct']:g}%), dims "
            f"{row['dims_bytes']:,.0f}, stage_history {row['stage_history_bytes']:,.0f}."
        )
    lines.append(
        "Ids: "
        + ", ".join(f"{v:,} {k}" for k, v in report.id_lists.items())
        + " drawn at random per request; the baseline reads the customers of the "
        "stage phase's users."
    )
    for name in ("baseline", "stage", "timeline"):
        p = report.summary.get(name)
        if p is not None and p.cpu_pct:
            lines.append(
                f"CPU during {name} (% of one core): "
                + ", ".join(f"{k} {v:.0f}" for k, v in p.cpu_pct.items())
            )
        if p is not None and p.blocks_read is not None and p.blocks_hit is not None and p.requests:
            lines.append(
                f"PostgreSQL blocks per request during {name}: "
                f"{p.blocks_hit / p.requests:.1f} found in shared_buffers, "
                f"{p.blocks_read / p.requests:.1f} read from outside (OS page cache or disk)"
            )
    lines.append(
        machine_line(
            m, report.database, "servers (1 worker each), PostgreSQL and wrk share the cores."
        )
    )
    lines += verdict_lines(report.targets, report.warnings, report.failures)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def bench_lookup(
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql://… [JOURNEYS_DATABASE_URL; else the embedded PostgreSQL]"),
    ] = None,
    customers: Annotated[
        int, typer.Option(help="customers in the dataset", min=1_000, max=100_000_000)
    ] = 1_000_000,
    events_per_customer: Annotated[
        int, typer.Option(help="average events per customer", min=2, max=200)
    ] = 10,
    archetypes: Annotated[
        int, typer.Option(help="distinct journeys the customers copy", min=100, max=100_000)
    ] = 2_000,
    duration: Annotated[int, typer.Option(help="seconds per wrk phase", min=2, max=300)] = 15,
    warmup: Annotated[
        int, typer.Option(help="seconds of unmeasured warm-up per endpoint", min=0, max=60)
    ] = 3,
    connections: Annotated[int, typer.Option(help="wrk connections", min=1, max=1024)] = 8,
    rounds: Annotated[
        int,
        typer.Option(
            help="alternate baseline and stage this many times; report medians", min=1, max=10
        ),
    ] = 1,
    verify: Annotated[
        int,
        typer.Option(
            help="re-stitch this many random customers and compare (0: skip)", min=0, max=10_000
        ),
    ] = 200,
    reuse: Annotated[bool, typer.Option(help="use a kept dataset of the same shape")] = False,
    keep: Annotated[bool, typer.Option(help="keep the dataset for --reuse")] = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="also record each server with py-spy (an extra, unreported run per endpoint) "
            "into this directory"
        ),
    ] = None,
    baseline_reset: Annotated[
        bool,
        typer.Option(
            help="let the baseline's asyncpg pool reset connections on release (its default: one "
            "more round trip per request)"
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="dataset seed")] = 7,
    kind: Annotated[
        str,
        typer.Option(
            help="dataset kind: full (dims and facts left empty, then widened: see --widen) or "
            "aggregates (each customer's own dims and facts; slower to generate)"
        ),
    ] = "full",
    widen: Annotated[
        bool,
        typer.Option(
            help="kind full: first give the customers the dims and facts of really stitched "
            "customers (rows as wide as production's)"
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    output: Annotated[Path | None, typer.Option(help="write the markdown table here")] = None,
) -> None:
    """GET …/stage and …/timeline over HTTP (wrk) against a bare primary-key lookup."""
    from app.bench.ingest import BenchFailed
    from app.bench.stitch import print_profile

    console = Console(stderr=True)
    url, embedded = ds.resolve_url(database_url, console)
    opts = LookupBenchOptions(
        database_url=url,
        spec=ds.DatasetSpec(
            customers=customers,
            events_per_customer=events_per_customer,
            archetypes=min(archetypes, customers),
            seed=seed,
        ),
        reuse=reuse,
        keep=keep,
        duration=duration,
        warmup=warmup,
        connections=connections,
        rounds=rounds,
        verify=verify,
        profile_dir=profile,
        baseline_reset=baseline_reset,
        kind="aggregates" if kind == "aggregates" else "full",
        widen=widen,
    )
    if kind not in ("full", "aggregates"):
        console.print(Panel(f"--kind {kind!r}: aggregates or full", style="bold red"))
        raise typer.Exit(2)
    try:
        report = run(opts, console)
    except (LookupBenchFailed, BenchFailed, WrkError) as exc:
        console.print(Panel(str(exc), title="journeys bench lookup: FAILED", style="bold red"))
        raise typer.Exit(2) from None
    finally:
        if embedded is not None:
            embedded.stop()
    out = emit(markdown(report), report.as_dict(), output=output, as_json=as_json)
    if out is not None:
        for key, phase in report.summary.items():
            if key.endswith("_profiled"):
                print_profile(out, f"server under {phase.name}", phase.profile)
    if not report.ok:
        raise typer.Exit(1)
