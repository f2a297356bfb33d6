"""Browser tests: headless Chromium (Debian's, driven by Playwright's Python package) loads local
test pages that send events to a real `journeys serve`.

Three processes talk over 127.0.0.1 only: the service (LiveServer), a page server (another
origin, so every call to the service is cross-origin as on a real site) and a recording proxy
in front of the service that sees every request the browser makes, CORS preflights included
(Playwright does not report preflights, and its request interception would answer them itself).
Chromium cannot resolve any other host name, so nothing leaves the machine.

`make test-browser` installs Chromium (apt) and the npm packages, then runs these tests.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import mimetypes
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import pytest_asyncio

from tests.conftest import LiveServer, free_port

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
NODE_MODULES = HERE / "node_modules"
ANALYTICS_NEXT_UMD = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"

T = TypeVar("T")


# --------------------------------------------------------------------------- prerequisites


def _chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        message = "Chromium is not installed: `make test-browser` installs it (apt-get)"
        if os.environ.get("JOURNEYS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser builds are never downloaded)."""
    return _chromium()


@pytest.fixture(scope="session")
def analytics_next_umd() -> Path:
    """@segment/analytics-next's UMD build, installed from npm into tests/browser/node_modules."""
    if not (ANALYTICS_NEXT_UMD / "index.js").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install @segment/analytics-next (make test-browser)")
        command = "ci" if (HERE / "package-lock.json").exists() else "install"
        subprocess.run(
            [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=300,
        )
    return ANALYTICS_NEXT_UMD


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def service(database_url: str) -> Iterator[LiveServer]:
    """A real `journeys serve` (stitcher in-process) on the test database."""
    server = LiveServer(database_url)
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as it reached the proxy."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
)


class RecordingProxy:
    """Forwards every request to `upstream` unchanged and records it (OPTIONS included)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = proxy._client.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                with proxy._lock:
                    proxy.seen.append(
                        Seen(
                            method=self.command,
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            status=upstream.status_code,
                            at=time.monotonic(),
                        )
                    )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.multi_items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(upstream.content)

            do_GET = do_POST = do_OPTIONS = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, write_key: str | None = None) -> list[Seen]:
        """What reached the proxy so far (only requests carrying `write_key`, if given)."""
        with self._lock:
            seen = list(self.seen)
        if write_key is None:
            return seen
        return [s for s in seen if write_key.encode() in s.body or _basic_user(s) == write_key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
        self._client.close()


def _basic_user(seen: Seen) -> str | None:
    import base64

    scheme, _, token = seen.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    return base64.b64decode(token).decode().partition(":")[0]


@pytest.fixture(scope="session")
def proxy(service: LiveServer) -> Iterator[RecordingProxy]:
    """The recording proxy in front of the service."""
    recorder = RecordingProxy(service.url)
    try:
        yield recorder
    finally:
        recorder.close()


class PageServer:
    """Serves test pages (registered by the tests) and the npm packages, on its own origin."""

    def __init__(self, static: dict[str, Path]) -> None:
        self.pages: dict[str, bytes] = {}
        self.static = static
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                body, kind = site.lookup(path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body or b"")))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def lookup(self, path: str) -> tuple[bytes | None, str]:
        if path == "/favicon.ico":  # asked for by every page; a 404 would log a console error
            return b"", "image/x-icon"
        if path in self.pages:
            return self.pages[path], "text/html; charset=utf-8"
        for prefix, directory in self.static.items():
            if path.startswith(prefix):
                target = (directory / path[len(prefix) :]).resolve()
                if target.is_relative_to(directory.resolve()) and target.is_file():
                    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                    return target.read_bytes(), kind
        return None, "text/plain"

    def add(self, path: str, html: str) -> str:
        """Serve `html` at `path`; returns its URL."""
        self.pages[path] = html.encode()
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture(scope="session")
def site(analytics_next_umd: Path) -> Iterator[PageServer]:
    """The test pages' origin; analytics-next's bundles are under /analytics-next/bundles/."""
    server = PageServer({"/analytics-next/bundles/": analytics_next_umd})
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- the browser


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    """Headless Chromium; host names other than 127.0.0.1 do not resolve."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class BrowserPage:
    """A page in a fresh browser context, with its console errors and screenshots."""

    page: Any
    context: Any
    name: str
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    shots: int = 0

    async def screenshot(self, label: str) -> Path:
        """Save a screenshot under tests/browser/artifacts/ (git-ignored)."""
        ARTIFACTS.mkdir(exist_ok=True)
        self.shots += 1
        path = ARTIFACTS / f"{self.name}-{self.shots:02d}-{label}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def cookie(self, name: str) -> str | None:
        for cookie in await self.context.cookies():
            if cookie["name"] == name:
                return str(cookie["value"])
        return None

    async def local(self, key: str) -> str | None:
        value = await self.page.evaluate("k => localStorage.getItem(k)", key)
        return None if value is None else str(value)


@pytest_asyncio.fixture(loop_scope="session")
async def browser_page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[BrowserPage]:
    """A fresh context (no cookies, no storage) and page; console errors are collected."""
    context = await browser.new_context(viewport={"width": 900, "height": 500})
    page = await context.new_page()
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    wrapped = BrowserPage(page=page, context=context, name=name)
    page.on(
        "console",
        lambda msg: wrapped.errors.append(msg.text) if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: wrapped.errors.append(f"pageerror: {exc}"))
    # Which URL a "Failed to load resource" was about (the console message does not say).
    page.on(
        "response",
        lambda r: wrapped.failed.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
    )
    try:
        yield wrapped
    finally:
        await context.close()


# --------------------------------------------------------------------------- waiting


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    what: str = "condition",
) -> T:
    """Call `probe` until `done(result)`; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.1)


async def stored_events(db: asyncpg.Connection, workspace_id: int) -> list[dict[str, Any]]:
    """The workspace's stored events, oldest first, with their payloads parsed."""
    rows = await db.fetch(
        "SELECT message_id, type, event, user_id, anonymous_id, payload FROM events"
        " WHERE workspace_id = $1 ORDER BY timestamp, message_id",
        workspace_id,
    )
    return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]
