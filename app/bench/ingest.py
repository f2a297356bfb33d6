"""`journeys bench ingest`: the raw COPY ceiling and the HTTP ingest path, measured in one run.

Phases, against one database:

(a) COPY: `copy_records_to_table` of the bench events into a scratch table `LIKE events` (same
    columns and types incl. jsonb, same primary key and feed index, same defaults), a regular
    logged table, batches of 10,000 events each its own transaction, one connection.
(b) HTTP, through a `journeys serve` subprocess on 127.0.0.1 driven by wrk: `/v1/batch` (100
    events per request) and `/v1/track` (one event per request), fresh messageIds per request,
    so every event is validated, deduplicated against the primary key and committed.

Each phase starts after a CHECKPOINT, so none pays for the previous phase's writes; the
checkpoints that still run during a phase are reported. Then the server is stopped (SIGTERM:
it flushes what it acknowledged) and the stored events of the bench workspace are counted
against the acknowledged ones.
"""

from __future__ import annotations

import asyncio
import base64
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from app.bench import wrk
from app.bench.events import MESSAGE_ID_PLACEHOLDER, EventTemplate, average_size, make_templates
from app.bench.profile import ProfileSummary, start_recording, summarise
from app.bench.report import machine_line, number, percentile, stats_row, verdict_lines
from app.db.engine import asyncpg_dsn, make_engine
from app.db.partitions import partition_name, week_of
from app.ingest.repository import COPY_COLUMNS

TEMPLATES = 256


class BenchFailed(RuntimeError):
    """The benchmark could not run (missing tool, server that does not start, …)."""


@dataclass(slots=True)
class IngestBenchOptions:
    """Everything `journeys bench ingest` can be told."""

    database_url: str
    duration: int = 15
    batch_connections: int = 32
    track_connections: int = 64
    batch_size: int = 100
    copy_events: int = 200_000
    copy_batch: int = 10_000
    wrk_threads: int = 2
    wrk_timeout: int = 10
    workers: int | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None
    profile_seconds: int = 10
    profile_format: str = "raw"  # raw (summarised in the report), flamegraph, speedscope
    keep_events: bool = False
    embedded: bool = False


@dataclass(slots=True)
class PhaseResult:
    """One phase's measurements (latencies: per request, or per COPY statement)."""

    name: str
    label: str
    events: int
    seconds: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    latency_of: str
    connections: int
    events_per_request: int
    requests: int = 0
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    sent_requests: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)
    busiest_others: list[str] = field(default_factory=list)
    profile: ProfileSummary | None = None
    ratio_to_copy: float | None = None
    checkpoints: int | None = None  # PostgreSQL checkpoints that ran during the phase
    commits: int | None = None  # transactions the bench database committed during the phase


@dataclass(slots=True)
class IngestBenchReport:
    """The whole run."""

    started_at: str
    machine: dict[str, Any]
    database: str
    event_bytes: float
    server: dict[str, Any]
    phases: list[PhaseResult]
    stored: int = 0
    acknowledged: int = 0
    sent_upper_bound: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No failure (targets missed are findings, not failures)."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        body = asdict(self)
        body["ok"] = self.ok
        for phase, data in zip(self.phases, body["phases"], strict=True):
            data["cpu_us_per_event"] = cpu_per_event(phase)
        return body


# --------------------------------------------------------------------------- helpers


def redact(url: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, Python."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb: float | None = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": model,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


class CpuMeter:
    """CPU time over a window, in % of one core (psutil; empty when it is unavailable): the
    server with its workers, PostgreSQL (the backends of the bench database and the cluster's
    background processes, not other databases' backends), wrk, this process, and the whole
    machine; `other` is what the machine spent on anything else (other processes competing
    for the cores make the results pessimistic)."""

    def __init__(self, server_pid: int | None, postmaster_pid: int | None) -> None:
        self._roots = {"server": server_pid, "postgres": postmaster_pid, "bench": os.getpid()}
        self._pg_pids: set[int] = set()
        self._start: dict[str, Any] | None = None
        self._t0 = 0.0
        self.others: list[str] = []  # the busiest other processes of the last window

    @staticmethod
    def _psutil() -> Any:
        try:
            import psutil
        except ImportError:
            return None
        return psutil

    def _tree(self, psutil: Any, pid: int | None, *, children: bool) -> dict[int, float]:
        cpu: dict[int, float] = {}
        if pid is None:
            return cpu
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)] if children else [root]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return cpu
        for proc in procs:
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            # A process's own time (children reaped by it are counted where they ran).
            cpu[proc.pid] = times.user + times.system
        return cpu

    def _sample(self) -> dict[str, Any]:
        psutil = self._psutil()
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        sample: dict[str, Any] = {"children": reaped.ru_utime + reaped.ru_stime}
        if psutil is None:
            return sample
        times = psutil.cpu_times()
        sample["busy"] = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        sample["steal"] = getattr(times, "steal", 0.0)
        for name, pid in self._roots.items():
            sample[name] = self._tree(psutil, pid, children=name == "server")
        if self._roots["postgres"] is not None:
            for pid in self._pg_pids:
                sample["postgres"].update(self._tree(psutil, pid, children=False))
        everyone: dict[int, tuple[str, float]] = {}
        for proc in psutil.process_iter(["name", "cpu_times"]):
            cpu = proc.info["cpu_times"]
            if cpu is not None:
                everyone[proc.pid] = (proc.info["name"] or "?", cpu.user + cpu.system)
        sample["everyone"] = everyone
        return sample

    def start(self, pg_pids: set[int] | None = None) -> None:
        """Begin the window (`pg_pids`: the PostgreSQL processes that count, see `_pg_pids`)."""
        self._pg_pids = set(pg_pids or ())
        self._start = self._sample()
        self._t0 = time.perf_counter()

    def stop(
        self, *, load_generator: bool, wall: float | None = None, pg_pids: set[int] | None = None
    ) -> dict[str, float]:
        """End the window: % of one core per consumer (of `wall` seconds if given)."""
        assert self._start is not None
        wall = max(wall or time.perf_counter() - self._t0, 1e-9)
        self._pg_pids |= set(pg_pids or ())
        end = self._sample()
        before = self._start

        def per_pid(key: str) -> float:
            old: dict[int, float] = before.get(key, {})
            new: dict[int, float] = end.get(key, {})
            return sum(max(0.0, cpu - old.get(pid, 0.0)) for pid, cpu in new.items())

        seconds: dict[str, float] = {}
        if "busy" in end:
            for name, pid in self._roots.items():
                if pid is not None:
                    seconds[name] = per_pid(name)
        if load_generator:
            seconds["wrk"] = end["children"] - before["children"]
        pct = {k: 100 * v / wall for k, v in seconds.items()}
        self.others = []
        if "busy" in end:
            machine = 100 * (end["busy"] - before["busy"]) / wall
            pct["steal"] = 100 * (end["steal"] - before["steal"]) / wall
            pct["other"] = max(0.0, machine - sum(pct.values()))
            pct["machine"] = machine
            ours = {pid for key in self._roots for pid in end.get(key, {})}
            old_all: dict[int, tuple[str, float]] = before["everyone"]
            used: dict[str, float] = {}
            for pid, (name, cpu) in end["everyone"].items():
                if pid in ours:
                    continue
                spent = cpu - old_all.get(pid, (name, 0.0))[1]
                if spent > 0:
                    used[name] = used.get(name, 0.0) + spent
            self.others = [
                f"{name} {100 * cpu / wall:.0f}%"
                for name, cpu in sorted(used.items(), key=lambda kv: -kv[1])[:3]
                if 100 * cpu / wall >= 5
            ]
        return {k: round(v, 1) for k, v in pct.items()}


# --------------------------------------------------------------------------- database


async def _create_workspace(url: str) -> tuple[int, str]:
    from sqlalchemy import text

    from app.workspaces.repository import create_workspace

    engine = make_engine(url, pooled=False)
    try:
        async with engine.begin() as conn:
            name = f"bench-ingest-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
            created = await create_workspace(conn, name)
            # The bench measures the pipeline, not the limiter (which still runs on every
            # request): lift this workspace's own limit far above anything 2 cores can send.
            await conn.execute(
                text("UPDATE workspaces SET rate_limit_per_second = 1e9 WHERE id = :id"),
                {"id": created.workspace_id},
            )
            return created.workspace_id, created.write_key
    finally:
        await engine.dispose()


_PG_PIDS = """
SELECT pid FROM pg_stat_activity
WHERE (datname = current_database() OR datname IS NULL) AND ($1 OR pid <> pg_backend_pid())
"""


async def _pg_pids(conn: asyncpg.Connection, *, include_self: bool) -> set[int]:
    """The backends of the bench database and the cluster's background processes."""
    return {int(r["pid"]) for r in await conn.fetch(_PG_PIDS, include_self)}


def _checkpoints_now(dsn: str) -> int | None:
    """Checkpoints the cluster has run so far: one during a phase stalls commits (fsync), which
    shows in its p99."""
    row = stats_row(dsn, "SELECT checkpoints_timed + checkpoints_req AS n FROM pg_stat_bgwriter")
    return None if row is None else row["n"]


def _commits_now(dsn: str) -> int | None:
    """Transactions committed in the bench database so far: a phase's count tells how many
    events a group commit carried (the statistics lag by up to a second, small against a
    phase)."""
    row = stats_row(
        dsn, "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()"
    )
    return None if row is None else row["n"]


def _checkpoint(dsn: str) -> None:
    """CHECKPOINT before a phase, so that no phase pays for the writes of the one before it
    (the batch phase writes about a gigabyte of WAL; the checkpoint it triggers would land in
    the track phase and stall its commits). Skipped without the privilege."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    with suppress(OSError, asyncpg.PostgresError):
        asyncio.run(run())


def _pg_pids_now(dsn: str) -> set[int]:
    async def query() -> set[int]:
        conn = await asyncpg.connect(dsn)
        try:
            return await _pg_pids(conn, include_self=False)
        finally:
            await conn.close()

    try:
        return asyncio.run(query())
    except (OSError, asyncpg.PostgresError):
        return set()


async def _database_info(dsn: str) -> tuple[str, int | None]:
    """Version and settings, and the postmaster's pid when it runs on this machine."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        sync = await conn.fetchval("SHOW synchronous_commit")
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        postmaster: int | None = None
        try:  # while the backend lives
            import psutil

            postmaster = int(psutil.Process(backend).ppid())
        except Exception:  # not local, not visible, no psutil: PostgreSQL's CPU not reported
            postmaster = None
    finally:
        await conn.close()
    return f"PostgreSQL {version} (synchronous_commit={sync})", postmaster


async def _count_stored(dsn: str, workspace_id: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM events WHERE workspace_id = $1", workspace_id)
        )
    finally:
        await conn.close()


async def _drop_workspace(dsn: str, workspace_id: int, *, keep_events: bool) -> list[str]:
    """Delete every row of the bench workspace (events, and whatever the stitcher derived from
    them: any table with a `workspace_id` column), then VACUUM what was touched so the dead
    rows don't cost the next run an autovacuum in the middle of a phase."""
    if keep_events:
        return []
    conn = await asyncpg.connect(dsn)
    cleaned: list[str] = []
    try:
        tables = await conn.fetch(
            """
            SELECT c.relname, c.relkind
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE a.attname = 'workspace_id' AND NOT a.attisdropped
              AND n.nspname = current_schema() AND c.relkind IN ('r', 'p')
              AND NOT c.relispartition
            ORDER BY c.relname
            """
        )
        for row in tables:
            status = await conn.execute(
                f'DELETE FROM "{row["relname"]}" WHERE workspace_id = $1', workspace_id
            )
            if status.rsplit(" ", 1)[-1] != "0":
                cleaned.append(row["relname"])
        await conn.execute("DELETE FROM workspaces WHERE id = $1", workspace_id)
        for name in cleaned:
            if name == "events":
                now = datetime.now(UTC)
                partitions = sorted(
                    {
                        partition_name(week_of(now - timedelta(hours=1))),
                        partition_name(week_of(now)),
                    }
                )
            else:
                partitions = [name]
            for table in partitions:
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                    await conn.execute(f'VACUUM "{table}"')
    finally:
        await conn.close()
    return cleaned


async def _copy_phase(
    dsn: str,
    *,
    workspace_id: int,
    templates: list[EventTemplate],
    total: int,
    batch: int,
    run_tag: str,
    postmaster: int | None,
    advance: Callable[[int], None],
) -> PhaseResult:
    """COPY `total` events in transactions of `batch` into a scratch copy of `events`."""
    table = f"bench_copy_{run_tag}"
    conn = await asyncpg.connect(dsn)
    latencies: list[float] = []
    meter = CpuMeter(None, postmaster)
    try:
        await conn.execute(
            f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING INDEXES)"
        )
        # Like the server, whose rows land in this week's partition.
        week = week_of(templates[0].stored.received_at)
        done = 0
        meter.start(await _pg_pids(conn, include_self=True))
        while done < total:
            count = min(batch, total - done)
            records = []
            for i in range(done, done + count):
                ev = templates[i % len(templates)].stored
                message_id = f"{run_tag}-copy-{i}"
                records.append(
                    (
                        workspace_id,
                        week,
                        message_id,
                        ev.type,
                        ev.event,
                        ev.user_id,
                        ev.anonymous_id,
                        ev.timestamp,
                        ev.received_at,
                        ev.flags,
                        ev.payload.replace(MESSAGE_ID_PLACEHOLDER, message_id, 1),
                    )
                )
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table(table, records=records, columns=COPY_COLUMNS)
            latencies.append(time.perf_counter() - started)
            done += count
            advance(count)
        # The window also holds the (untimed) building of records: divide by COPY time.
        cpu = meter.stop(
            load_generator=False,
            wall=sum(latencies),
            pg_pids=await _pg_pids(conn, include_self=True),
        )
    finally:
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await conn.close()
    seconds = sum(latencies)
    return PhaseResult(
        name="copy",
        label=f"COPY → scratch table ({batch:,} events per COPY + commit, 1 connection)",
        events=total,
        seconds=round(seconds, 3),
        events_per_s=total / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        latency_of=f"one COPY of {batch:,} events",
        connections=1,
        events_per_request=batch,
        requests=len(latencies),
        cpu_pct=cpu,
        busiest_others=meter.others,
    )


# --------------------------------------------------------------------------- the server


class ServerProcess:
    """`python -m app.cli serve` on 127.0.0.1 with its own port and log file."""

    def __init__(self, database_url: str, *, workers: int | None, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "JOURNEYS_DATABASE_URL": database_url,
            "JOURNEYS_LOG_LEVEL": "warning",
            **env,
        }
        if workers is not None:
            self.env["JOURNEYS_WORKERS"] = str(workers)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the run)
            prefix="journeys-bench-serve-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's (parent) process id."""
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        """What to run (subclasses serve something else the same way)."""
        return [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait for /readyz."""
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BenchFailed(f"the server did not become ready; its log:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """The server's log so far."""
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM and wait for the graceful exit (it flushes acknowledged events)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode


@contextmanager
def _server(database_url: str, opts: IngestBenchOptions) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url, workers=opts.workers, env=opts.server_env)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- HTTP phases


def _authorization(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def _sanity_check(
    url: str, authorization: str, parts: list[tuple[str, str]], run_tag: str, batch_size: int
) -> int:
    """One batch and one track request built like wrk's: must be 200 with nothing rejected."""
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    items = [
        a + f"{run_tag}-check-b{i}" + b
        for i, (a, b) in enumerate(parts[i % len(parts)] for i in range(batch_size))
    ]
    checks = [
        ("/v1/batch", '{"batch":[' + ",".join(items) + "]}", batch_size),
        ("/v1/track", parts[0][0] + f"{run_tag}-check-t" + parts[0][1], 1),
    ]
    stored = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for path, body, events in checks:
            answer = client.post(path, content=body.encode(), headers=headers)
            if answer.status_code != 200 or answer.json().get("rejected"):
                raise BenchFailed(
                    f"POST {path} of bench events answered {answer.status_code}: "
                    f"{answer.text[:1000]}"
                )
            stored += events
    return stored


def _http_phase(
    *,
    exe: str,
    server: ServerProcess,
    name: str,
    path: str,
    connections: int,
    events_per_request: int,
    authorization: str,
    parts: list[tuple[str, str]],
    run_tag: str,
    opts: IngestBenchOptions,
    workdir: Path,
    postmaster: int | None,
    progress: Callable[[float], None],
) -> tuple[PhaseResult, str]:
    script = workdir / f"{name}.lua"
    script.write_text(
        wrk.lua_script(
            path=path,
            authorization=authorization,
            run_tag=f"{run_tag}{name[0]}",
            templates=parts,
            events_per_request=events_per_request,
            sent_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
    )
    threads = max(1, min(opts.wrk_threads, connections))
    args = [
        exe,
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{opts.duration}s",
        "--timeout",
        f"{opts.wrk_timeout}s",
        "-s",
        str(script),
        server.url + path,
    ]
    meter = CpuMeter(server.pid, postmaster)
    dsn = asyncpg_dsn(opts.database_url)
    checkpoints_before = _checkpoints_now(dsn)
    commits_before = _commits_now(dsn)
    meter.start(_pg_pids_now(dsn) if postmaster else None)
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    spy: subprocess.Popen[bytes] | None = None
    spy_out: Path | None = None
    spy_at = min(2.0, opts.duration / 4)
    spy_seconds = max(1, min(opts.profile_seconds, int(opts.duration - spy_at - 1)))
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            progress(min(elapsed, float(opts.duration)))
            if opts.profile_dir is not None and spy is None and elapsed >= spy_at:
                opts.profile_dir.mkdir(parents=True, exist_ok=True)
                suffix = {"raw": "txt", "flamegraph": "svg"}.get(opts.profile_format, "json")
                spy_out = opts.profile_dir / f"ingest-{name}.{suffix}"
                spy = start_recording(server.pid, spy_out, spy_seconds, fmt=opts.profile_format)
            if elapsed > opts.duration + opts.wrk_timeout + 30:
                proc.kill()
                raise BenchFailed(f"wrk did not finish the {name} phase in time")
            time.sleep(0.2)
        output = proc.communicate()[0].decode(errors="replace")
        cpu = meter.stop(load_generator=True, pg_pids=_pg_pids_now(dsn) if postmaster else None)
        checkpoints_after = _checkpoints_now(dsn)
        commits_after = _commits_now(dsn)
    except BaseException:
        for child in (proc, spy):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        raise
    profile: ProfileSummary | None = None
    if spy is not None and spy_out is not None:
        try:
            _, err = spy.communicate(timeout=spy_seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy_out.exists():
            profile = summarise(spy_out) if opts.profile_format == "raw" else None
        else:
            raise BenchFailed(f"py-spy recorded nothing: {err.decode(errors='replace')[-500:]}")
    if proc.returncode != 0:
        raise BenchFailed(f"wrk exited with {proc.returncode}:\n{output[-2000:]}")
    result = wrk.parse_output(output)
    progress(float(opts.duration))
    events = result.succeeded * events_per_request
    label = (
        f"HTTP {path} ({events_per_request} events/request, {connections} connections)"
        if events_per_request > 1
        else f"HTTP {path} (single events, {connections} connections)"
    )
    return PhaseResult(
        name=name,
        label=label,
        events=events,
        seconds=round(result.duration_s, 3),
        events_per_s=events / result.duration_s if result.duration_s else 0.0,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        latency_of="one request",
        connections=connections,
        events_per_request=events_per_request,
        requests=result.requests,
        non2xx=result.non2xx,
        socket_errors=result.socket_errors,
        sent_requests=result.sent,
        cpu_pct=cpu,
        busiest_others=meter.others,
        profile=profile,
        checkpoints=None
        if checkpoints_before is None or checkpoints_after is None
        else checkpoints_after - checkpoints_before,
        commits=None
        if commits_before is None or commits_after is None
        else commits_after - commits_before,
    ), output


# --------------------------------------------------------------------------- the run


def run(opts: IngestBenchOptions, console: Console) -> IngestBenchReport:
    """Run every phase; raises BenchFailed when the benchmark itself cannot run."""
    from app.db.migrate import upgrade_head

    exe = wrk.ensure_wrk()
    dsn = asyncpg_dsn(opts.database_url)
    run_tag = secrets.token_hex(4)
    console.log(f"database {redact(opts.database_url)}; applying migrations")
    upgrade_head(opts.database_url)
    templates = make_templates(TEMPLATES)
    parts = [t.wire_parts() for t in templates]
    version, postmaster = asyncio.run(_database_info(dsn))
    workspace_id, write_key = asyncio.run(_create_workspace(opts.database_url))
    report = IngestBenchReport(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        database=("embedded " if opts.embedded else "") + version,
        event_bytes=round(average_size(templates), 1),
        server={
            "workers": opts.workers or int(os.environ.get("JOURNEYS_WORKERS", "1")),
            "env": dict(opts.server_env),
            "workspace_id": workspace_id,
        },
        phases=[],
    )
    console.log(
        f"workspace {workspace_id}; events ~{report.event_bytes:.0f} bytes; "
        f"{report.machine['cores']} cores shared by server, PostgreSQL and wrk"
    )
    authorization = _authorization(write_key)
    acknowledged = 0
    sent = 0
    try:
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task: TaskID = bar.add_task("COPY baseline", total=opts.copy_events, info="")
            _checkpoint(dsn)
            copy = asyncio.run(
                _copy_phase(
                    dsn,
                    workspace_id=workspace_id,
                    templates=templates,
                    total=opts.copy_events,
                    batch=opts.copy_batch,
                    run_tag=run_tag,
                    postmaster=postmaster,
                    advance=lambda n: bar.advance(task, n),
                )
            )
            bar.update(task, info=f"{copy.events_per_s:,.0f} events/s")
            report.phases.append(copy)

            task = bar.add_task("starting server", total=None, info="")
            with _server(opts.database_url, opts) as server:
                bar.update(task, total=1, completed=1, info=f"pid {server.pid} on {server.url}")
                checked = _sanity_check(server.url, authorization, parts, run_tag, opts.batch_size)
                acknowledged += checked
                sent += checked
                with tempfile.TemporaryDirectory(prefix="journeys-bench-") as tmp:
                    for name, path, conns, per in (
                        ("batch", "/v1/batch", opts.batch_connections, opts.batch_size),
                        ("track", "/v1/track", opts.track_connections, 1),
                    ):
                        task = bar.add_task(f"HTTP {path} x{conns}", total=opts.duration, info="")

                        def show(done: float, task: TaskID = task) -> None:
                            bar.update(task, completed=done)

                        _checkpoint(dsn)
                        phase, output = _http_phase(
                            exe=exe,
                            server=server,
                            name=name,
                            path=path,
                            connections=conns,
                            events_per_request=per,
                            authorization=authorization,
                            parts=parts,
                            run_tag=run_tag,
                            opts=opts,
                            workdir=Path(tmp),
                            postmaster=postmaster,
                            progress=show,
                        )
                        bar.update(task, info=f"{phase.events_per_s:,.0f} events/s")
                        report.phases.append(phase)
                        acknowledged += phase.events
                        sent += phase.sent_requests * per
                        if phase.non2xx:
                            report.failures.append(
                                f"{path}: {phase.non2xx:,} of {phase.requests:,} responses were "
                                "not 2xx"
                            )
                        if any(phase.socket_errors.values()):
                            report.failures.append(f"{path}: socket errors {phase.socket_errors}")
                        if phase.requests == 0:
                            report.failures.append(f"{path}: no request completed:\n{output}")
                        time.sleep(1.0)
                task = bar.add_task("stopping server", total=None, info="")
            code = server.process.returncode if server.process else None
            bar.update(task, total=1, completed=1, info=f"exit {code}")
            # After its graceful shutdown uvicorn re-raises SIGTERM (-15, or 143 via a shell).
            if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM, None):
                report.failures.append(f"the server exited with {code}: {server.output()[-1500:]}")
        report.stored = asyncio.run(_count_stored(dsn, workspace_id))
        report.acknowledged = acknowledged
        report.sent_upper_bound = sent
        if not acknowledged <= report.stored <= sent:
            report.failures.append(
                f"stored {report.stored:,} events but {acknowledged:,} were acknowledged "
                f"(and at most {sent:,} sent)"
            )
    finally:
        if opts.keep_events:
            console.log(f"kept workspace {workspace_id} and its events (--keep-events)")
        else:
            console.log(f"deleting the rows of workspace {workspace_id} and vacuuming")
            cleaned = asyncio.run(_drop_workspace(dsn, workspace_id, keep_events=False))
            console.log(f"cleaned {', '.join(cleaned) or 'nothing'}")
    _judge(report)
    return report


def _judge(report: IngestBenchReport) -> None:
    phases = {p.name: p for p in report.phases}
    for phase in report.phases:
        other = phase.cpu_pct.get("other", 0.0) + phase.cpu_pct.get("steal", 0.0)
        if other >= 25:
            who = f" (busiest: {', '.join(phase.busiest_others)})" if phase.busiest_others else ""
            report.warnings.append(
                f"{phase.name}: other processes and steal used {other:.0f}% of a core during "
                f"the phase{who}; the machine was not quiet and these numbers are pessimistic"
            )
    copy = phases.get("copy")
    for phase in report.phases:
        if copy and copy.events_per_s:
            phase.ratio_to_copy = phase.events_per_s / copy.events_per_s
    batch, track = phases.get("batch"), phases.get("track")
    if copy and batch and batch.ratio_to_copy is not None:
        report.targets.append(
            {
                "target": "/v1/batch ≥ 0.5 x COPY ceiling",
                "met": batch.ratio_to_copy >= 0.5,
                "measured": f"{batch.ratio_to_copy:.2f}x ({batch.events_per_s:,.0f} vs "
                f"{copy.events_per_s:,.0f} events/s)",
            }
        )
    if track:
        report.targets.append(
            {
                "target": "/v1/track ≥ 4,000 events/s",
                "met": track.events_per_s >= 4000,
                "measured": f"{track.events_per_s:,.0f} events/s",
            }
        )
        report.targets.append(
            {
                "target": "/v1/track p99 < 50 ms",
                "met": track.p99_ms < 50,
                "measured": f"{track.p99_ms:.1f} ms",
            }
        )


# --------------------------------------------------------------------------- output


def cpu_per_event(phase: PhaseResult) -> dict[str, float]:
    """CPU microseconds per event of each consumer (the server, PostgreSQL, wrk, this process)."""
    if not phase.events_per_s:
        return {}
    return {
        k: round(v / 100 * 1e6 / phase.events_per_s, 1)
        for k, v in phase.cpu_pct.items()
        if k in ("server", "postgres", "wrk", "bench")
    }


def markdown(report: IngestBenchReport) -> str:
    """The results table with the machine, the verification and the targets."""
    m = report.machine
    in_flight = sum(p.connections * p.events_per_request for p in report.phases if p.name != "copy")
    lines = [
        "| phase | events/s | p50 ms | p99 ms | ratio to COPY |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in report.phases:
        lines.append(
            f"| {p.label} | {number(p.events_per_s, ',.0f')} | {number(p.p50_ms, '.1f')} "
            f"| {number(p.p99_ms, '.1f')} | {number(p.ratio_to_copy, '.2f')} |"
        )
    lines += [
        "",
        machine_line(
            m,
            report.database,
            f"server workers: {report.server['workers']}"
            + (f", env {report.server['env']}" if report.server["env"] else "")
            + ".",
        ),
        f"The load generator (wrk) runs on the same {m['cores']} cores as the server and "
        "PostgreSQL. Events are Segment track events of "
        f"~{report.event_bytes:.0f} bytes; every HTTP event has a fresh messageId and goes through "
        "full validation, dedupe and a durable commit. Latency: per request (HTTP), per COPY "
        "statement (COPY).",
        "",
        "CPU during each phase (% of one core): "
        + "; ".join(
            f"{p.name}: " + ", ".join(f"{k} {v:.0f}" for k, v in p.cpu_pct.items())
            for p in report.phases
            if p.cpu_pct
        )
        + ".",
        "CPU per event (µs; robust to a busy machine, unlike events/s): "
        + "; ".join(
            f"{p.name}: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_per_event(p).items())
            for p in report.phases
            if p.cpu_pct
        )
        + ".",
        "",
        "PostgreSQL checkpoints during each HTTP phase (each phase starts after a CHECKPOINT; "
        "one during a phase stalls its commits): "
        + "; ".join(
            f"{p.name}: {p.checkpoints}" for p in report.phases if p.checkpoints is not None
        )
        + ".",
        "Transactions committed in the bench database during each HTTP phase (a small group "
        "commit is one; a large one also counts its look-up of stored messageIds and the "
        "preparation of that statement): "
        + "; ".join(
            f"{p.name}: {p.commits:,}, {p.events / p.commits:.1f} events per transaction"
            for p in report.phases
            if p.commits
        )
        + ".",
        "",
        f"Verification: {report.stored:,} events stored for the bench workspace, "
        f"{report.acknowledged:,} acknowledged (2xx), at most {report.sent_upper_bound:,} sent; "
        f"the {report.stored - report.acknowledged:,} extra are the requests in flight when wrk "
        f"stopped (at most {in_flight:,}: connections x events per request), stored but never "
        "answered to wrk.",
    ]
    lines += verdict_lines(report.targets, report.warnings, report.failures)
    return "\n".join(lines) + "\n"
