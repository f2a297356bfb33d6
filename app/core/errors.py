"""RFC 9457 problem details, with the stable `code` and `message` that SDKs read."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.core.logging import get_logger

log = get_logger(__name__)

PROBLEM_TYPE_BASE = "https://journeys.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ProblemError(Exception):
    """An error that becomes an `application/problem+json` answer."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}


def problem_body(
    status: int, code: str, detail: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem+json document for an error."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "message": detail,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    return body


def json_bytes(body: Any) -> bytes:
    """JSON for an answer that may echo client input, with `<`, `>` and `&` escaped so none of
    it can be taken for markup (outside strings JSON never contains these characters)."""
    return (
        orjson.dumps(body)
        .replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
    )


def problem_response(exc: ProblemError) -> Response:
    """Render a ProblemError."""
    body = problem_body(exc.status, exc.code, exc.detail, field=exc.field, **exc.extra)
    return Response(
        json_bytes(body),
        status_code=exc.status,
        media_type="application/problem+json",
        headers=exc.headers,
    )


def unexpected_error_response(exc: Exception) -> Response:
    """503 when the database is away (clients retry), else a logged 500."""
    from app.db.engine import is_unavailable

    if is_unavailable(exc):
        return problem_response(
            ProblemError(
                503,
                "database_unavailable",
                "the database is unavailable; retry later",
                headers={"Retry-After": "5"},
            )
        )
    log.exception("unhandled_error", error=repr(exc))
    return problem_response(ProblemError(500, "internal_error", "an unexpected error occurred"))


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, a problem+json answer."""

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(exc)

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(
            ProblemError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
        )

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        detail = f"{loc}: {first.get('msg', 'invalid value')}" if loc else "invalid request"
        return problem_response(ProblemError(400, "invalid_field", detail, field=loc or None))

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        return unexpected_error_response(exc)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
