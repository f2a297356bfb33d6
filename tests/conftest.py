"""Shared fixtures: a real PostgreSQL (embedded, or JOURNEYS_TEST_DATABASE_URL), a database
built by the real migrations per test process, the app over ASGI, and a live uvicorn server.

Isolation: each test that writes creates its own workspace, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio

from app.core.settings import Settings
from app.db.engine import asyncpg_dsn, connect, make_engine
from app.db.migrate import upgrade_head
from app.db.partitions import week_of
from app.main import create_app
from app.workspaces.repository import NewWorkspace, create_workspace

ROOT = Path(__file__).resolve().parents[1]


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of a real PostgreSQL server for the whole session."""
    external = os.environ.get("JOURNEYS_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from app.db.embedded import start_embedded

    # A short path: unix socket paths are limited to ~100 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="jt-"))
    handle = start_embedded(data_dir)
    try:
        yield handle.url("postgres")
    finally:
        handle.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_url: str, worker_id: str) -> Iterator[str]:
    """A fresh database for this test process, built by the real migrations."""
    import asyncio

    name = f"journeys_test_{worker_id}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _with_database(server_url, name)
    upgrade_head(url)
    try:
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    """Settings of the app under test."""
    # The stitcher runs when a test drains it (`stitch` fixture), so tests are deterministic.
    return Settings(
        database_url=database_url,
        log_level="warning",
        key_cache_seconds=0.5,
        inprocess_worker=False,
        # Every workspace's funnels through the in-memory index (the SQL path is compared
        # with it in tests/integration/test_aggregates_exact.py).
        funnel_index_min_customers=0,
    )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def app(settings: Settings) -> AsyncIterator[object]:
    """The application with its lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def stitch(app: Any) -> Callable[..., Awaitable[int]]:
    """Stitch everything committed so far; returns the number of events consumed."""

    async def drain(*, settle: bool = True) -> int:
        return int(await app.state.runtime.stitcher.drain(settle=settle))

    return drain


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for assertions on stored rows."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection with the app's JSON codecs (what rebuilds and state snapshots need)."""
    c = await connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def new_workspace(database_url: str, prefix: str = "ws") -> NewWorkspace:
    """Create a workspace with a unique name."""
    engine = make_engine(database_url, pooled=False)
    try:
        async with engine.begin() as conn:
            return await create_workspace(conn, f"{prefix}-{uuid.uuid4().hex[:10]}")
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def workspace(database_url: str) -> NewWorkspace:
    """A workspace of this test's own."""
    return await new_workspace(database_url)


def stop_process(process: subprocess.Popen[bytes], *, grace: float) -> int:
    """SIGTERM, wait up to `grace` seconds for a graceful exit, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """`journeys serve` in a subprocess on 127.0.0.1 (for SDKs and kill tests)."""

    def __init__(self, database_url: str, *, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "JOURNEYS_DATABASE_URL": database_url,
            "JOURNEYS_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
        fd, self.log_path = tempfile.mkstemp(prefix="journeys-serve-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until /readyz answers 200 (or fail with the server's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, no chance to flush anything."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for a graceful exit."""
        stop_process(self.process, grace=40)


@pytest.fixture
def live_server(database_url: str) -> Iterator[LiveServer]:
    """A real uvicorn serving the test database."""
    server = LiveServer(database_url)
    try:
        yield server
    finally:
        server.stop()


async def insert_raw_event(
    conn: asyncpg.Connection, workspace_id: int, message_id: str, payload: dict[str, Any]
) -> None:
    """A raw `events` row written straight into the table, as a bulk load or an old version
    might (not through ingest: nothing checks the payload); its week's partition must exist."""
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO events (workspace_id, received_week, message_id, type, user_id, timestamp,"
        " received_at, payload) VALUES ($1, $2, $3, 'track', $4, $5, $5, $6::jsonb)",
        workspace_id,
        week_of(now),
        message_id,
        payload.get("userId"),
        now,
        orjson.dumps(payload).decode(),
    )
