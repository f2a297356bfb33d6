"""RFC 9457 problem details, with the stable `code` and `message` that SDKs read."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import asyncpg
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


# The OpenAPI schema of every error answer.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details, with a stable `code` and `message` (= `detail`)",
    "required": ["type", "title", "status", "detail", "code", "message"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable machine-readable reason"},
        "message": {"type": "string", "description": "the same as `detail`"},
        "field": {"type": "string", "description": "the offending field, when there is one"},
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_CHALLENGE = {
    "WWW-Authenticate": {
        "description": "the scheme the key goes in (`Basic` for write keys, else `Bearer`)",
        "required": True,
        "schema": {"type": "string"},
    }
}


def problem_responses(
    descriptions: Mapping[int, str], *, schemas: Mapping[int, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for error answers: problem+json, with the headers each
    status always carries (`Retry-After` on 429/503). `schemas` replaces the body schema of a
    status whose problem carries more fields (409 `customer_ids`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in descriptions.items():
        schema = (schemas or {}).get(status, PROBLEM_SCHEMA)
        entry: dict[str, Any] = {
            "description": description,
            "content": {"application/problem+json": {"schema": schema}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        elif status == 401:
            entry["headers"] = _CHALLENGE
        out[status] = entry
    return out


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


# Values the database can't store: a NUL byte or an invalid Unicode escape in text or jsonb.
_UNSTORABLE_TEXT = (
    asyncpg.exceptions.UntranslatableCharacterError,
    asyncpg.exceptions.CharacterNotInRepertoireError,
)


def _bad_request_value(exc: BaseException) -> str | None:
    """Why the database refused a value that came with the request, or None. asyncpg refuses
    before sending the query a value that doesn't fit its parameter (an id beyond int64);
    PostgreSQL refuses text it can't store. Either way the request is at fault, not us."""
    for cause in (exc, getattr(exc, "orig", None), exc.__cause__):
        if type(cause) is asyncpg.exceptions.DataError and str(cause).startswith(
            "invalid input for query argument"
        ):
            detail = str(cause).split(":", 1)[-1].strip()[:200]
            return f"a value of the request is out of range: {detail}"
        if isinstance(cause, _UNSTORABLE_TEXT):
            return "a value of the request holds a character that can't be stored (a NUL byte?)"
    return None


def unexpected_error_response(exc: Exception) -> Response:
    """503 when the database is away (clients retry), 400 for a request value the database
    can't take, else a logged 500."""
    from app.db.engine import is_unavailable

    bad_value = _bad_request_value(exc)
    if bad_value is not None:
        return problem_response(ProblemError(400, "invalid_field", bad_value))
    if is_unavailable(exc):
        return problem_response(
            ProblemError(
                503,
                "database_unavailable",
                "the database is unavailable; retry later",
                headers={"Retry-After": "5"},
            )
        )
    # A plain traceback, not the console renderer's rich one: that one prints every frame's
    # locals (the request scope, with its Authorization header: keys would reach the logs)
    # and costs seconds of CPU per error, which a client able to cause 500s could repeat.
    log.error(
        "unhandled_error",
        error=repr(exc),
        traceback="".join(traceback.format_exception(exc)),
    )
    return problem_response(ProblemError(500, "internal_error", "an unexpected error occurred"))


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route it matched, so `GET` and `PUT` of one resource would each hide the other)."""
    try:
        from fastapi.routing import iter_route_contexts

        routes: Any = iter_route_contexts(request.app.routes)
    except ImportError:  # pragma: no cover - FastAPI without nested route contexts
        routes = request.app.routes
    path = request.scope["path"]
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _document_problems(app: FastAPI) -> None:
    """The OpenAPI document says what `on_validation` does: invalid parameters and bodies are
    400 problem+json, not FastAPI's default 422 (which this app never answers)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in orjson.dumps(responses.get("422", {})).decode():
                    del responses["422"]
                    default = problem_responses({400: "An invalid parameter or body field"})
                    responses.setdefault("400", default[400])
        components = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" not in orjson.dumps(schema.get("paths", {})).decode():
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, a problem+json answer."""
    _document_problems(app)

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        return problem_response(
            ProblemError(exc.status_code, code, str(exc.detail), headers=headers)
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
    # Handled here, not by the catch-all below, so a 400 is not re-raised as a server error.
    app.add_exception_handler(asyncpg.exceptions.DataError, on_unexpected)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
