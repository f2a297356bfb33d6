"""ASGI middleware: request id, one log line per request, CORS for the ingest routes only."""

from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Any

import orjson
import structlog
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_body
from app.core.logging import get_logger
from app.ingest.routes import FAST_ROUTES, ingest_asgi
from app.profiles.routes import fast_answer, fast_asgi

log = get_logger("journeys.request")

# Request ids: a per-process random prefix and a counter (uuid4 reads the OS entropy source on
# every request, which shows in profiles).
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)

# Browsers call these cross-origin (analytics.js, our tracker); nothing else gets CORS headers.
INGEST_PATHS = frozenset(
    f"/v1/{name}"
    for name in (
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
        "batch",
        "t",
        "i",
        "p",
        "s",
        "g",
        "a",
        "b",
        "m",
    )
)
_PREFLIGHT_MAX_AGE = b"86400"


async def _too_large_headers(send: Send, limit: int) -> None:
    body = orjson.dumps(
        problem_body(431, "headers_too_large", f"request headers exceed {limit} bytes")
    )
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Requests by area of the API (not by path: ids in paths would explode the label set).
REQUESTS = Counter("journeys_http_requests_total", "HTTP requests answered", ["area", "status"])
_AREAS = (
    ("/v1/profiles", "profiles"),
    ("/v1/aggregates", "aggregates"),
    ("/v1/settings", "settings"),
    ("/v1/webhooks", "webhooks"),
    ("/v1/deletions", "privacy"),
    ("/v1/links", "links"),
    ("/v1/", "ingest"),
    ("/l/", "links"),
    ("/js/", "tracker"),
    ("/dashboard", "dashboard"),
)


@functools.cache
def _requests_counter(area: str, status: int) -> Any:
    """The counter of one (area, status): `labels()` costs ~3 µs per call (a lock, a tuple
    of strings), paid on every request; the pairs are few (areas by statuses answered)."""
    return REQUESTS.labels(area=area, status=str(status))


def _area(path: str) -> str:
    for prefix, area in _AREAS:
        if path.startswith(prefix):
            return area
    return "dashboard" if path == "/" else "ops"


class RequestMiddleware:
    """Binds a request id, logs one line per request, answers CORS for ingest routes."""

    def __init__(self, app: ASGIApp, max_header_bytes: int = 16_384) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope["headers"]
        if sum(len(k) + len(v) for k, v in raw_headers) > self.max_header_bytes:
            await _too_large_headers(send, self.max_header_bytes)
            return
        headers = dict(raw_headers)
        request_id = (
            headers.get(b"x-request-id", b"").decode("latin-1")[:64]
            or f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"
        )
        path: str = scope["path"]
        origin = headers.get(b"origin") if path in INGEST_PATHS else None
        started = time.perf_counter()
        status = 500

        if origin is not None and scope["method"] == "OPTIONS":
            requested = headers.get(b"access-control-request-headers", b"content-type")
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", origin),
                        (b"access-control-allow-methods", b"POST, OPTIONS"),
                        (b"access-control-allow-headers", requested),
                        (b"access-control-allow-credentials", b"true"),
                        (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
                        (b"vary", b"Origin"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            self._log(scope, 204, started, request_id)
            return

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if origin is not None:
                    extra += [
                        (b"access-control-allow-origin", origin),
                        (b"access-control-allow-credentials", b"true"),
                        # Browser SDKs (journeys.js) honour Retry-After on 429 and 503.
                        (b"access-control-expose-headers", b"Retry-After"),
                        (b"vary", b"Origin"),
                    ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        route_type = FAST_ROUTES.get(path) if scope["method"] == "POST" else None
        answer = None if route_type else fast_answer(scope)
        try:
            if route_type is not None:
                await ingest_asgi(scope, receive, send_wrapper, route_type)
            elif answer is not None:
                await fast_asgi(scope, receive, send_wrapper, answer)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self._log(scope, status, started, request_id)
            structlog.contextvars.clear_contextvars()

    @staticmethod
    def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
        _requests_counter(_area(scope["path"]), status).inc()
        log.info(
            "request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 2),
            request_id=request_id,
        )
