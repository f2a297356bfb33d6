"""Segment HTTP tracking API routes (and analytics.js short paths)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from app.core.deps import ingest_service
from app.core.errors import (
    ProblemError,
    json_bytes,
    problem_response,
    problem_responses,
    unexpected_error_response,
)
from app.core.settings import get_settings
from app.ingest.segment import SHORT_PATHS, Rejection
from app.ingest.service import IngestRequest, IngestService, body_limit, receive_body

router = APIRouter(prefix="/v1", tags=["ingest"])

_OK = orjson.dumps({"success": True})

_EXAMPLE = {
    "track": {"userId": "u1", "event": "Product Viewed", "properties": {"sku": "A-1"}},
    "identify": {"userId": "u1", "anonymousId": "a1", "traits": {"email": "ann@example.com"}},
    "page": {"anonymousId": "a1", "name": "Home", "properties": {"url": "https://shop.example/"}},
    "screen": {"userId": "u1", "name": "Cart"},
    "group": {"userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}},
    "alias": {"previousId": "a1", "userId": "u1"},
    "batch": {"batch": [{"type": "track", "userId": "u1", "event": "Order Completed"}]},
}

_ID = {
    "type": ["string", "number", "null"],
    "description": "a string (a number is taken as its text); null means absent",
}
_OBJECT = {"type": ["object", "null"]}
_TIME = {"type": ["string", "null"], "description": "ISO-8601 date-time"}
_COMMON: dict[str, Any] = {
    "type": {"description": "ignored on single-event routes: the route says the type"},
    "userId": _ID,
    "anonymousId": _ID,
    "messageId": {"type": ["string", "number", "null"], "maxLength": 100},
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": _TIME,
    "properties": _OBJECT,
    "traits": _OBJECT,
    "context": _OBJECT,
    "integrations": _OBJECT,
    "writeKey": {"description": "the write key, when not sent as HTTP Basic (which wins)"},
}
# The fields a route reads besides the common ones; any other field is kept as it is.
_ROUTE_FIELDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "track": ({"event": {"type": "string", "minLength": 1, "maxLength": 512}}, ["event"]),
    "page": ({"name": {"type": ["string", "null"]}}, []),
    "screen": ({"name": {"type": ["string", "null"]}}, []),
    "alias": ({"previousId": _ID}, ["previousId"]),
    "group": ({"groupId": _ID}, ["groupId"]),
    "identify": ({}, []),
}


def _event_schema(route_type: str) -> dict[str, Any]:
    """One Segment event as a single-event route accepts it."""
    fields, required = _ROUTE_FIELDS[route_type]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {**_COMMON, **fields},
        "anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}],
    }
    if required:
        schema["required"] = required
    return schema


_BATCH_SCHEMA = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {
            "type": "array",
            "description": "at most 2,500 events (else 413); each item is checked on its own, "
            "and an invalid one is listed in `rejected` without costing the others",
            "items": {"description": "an event, with its `type`"},
        },
        "context": _OBJECT,
        "integrations": _OBJECT,
        "sentAt": _TIME,
        "writeKey": _COMMON["writeKey"],
    },
}
_REJECTED = {
    "type": "array",
    "description": "batch items refused (the others are stored)",
    "items": {
        "type": "object",
        "required": ["index", "code", "detail"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": ["string", "null"]},
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored durably (committed). Batches list refused items in `rejected`.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["success"],
                    "properties": {"success": {"const": True}, "rejected": _REJECTED},
                }
            }
        },
    },
    **problem_responses(
        {
            400: "Invalid event (problem+json naming the field)",
            401: "Missing or unknown write key",
            403: "A key of another kind",
            413: "Event > 32 KB, batch > 500 KB or > 2,500 events",
            415: "Unsupported Content-Type or Content-Encoding",
            429: "Workspace rate limit; honour Retry-After",
            503: "Database unavailable; honour Retry-After",
        }
    ),
}


async def _ingest(request: Request, route_type: str) -> Response:
    settings = get_settings()
    body = await receive_body(
        request.receive, limit=body_limit(route_type), timeout=settings.request_timeout_seconds
    )
    result = await ingest_service(request).ingest(
        IngestRequest(
            route_type=route_type,
            body=body,
            content_type=request.headers.get("content-type"),
            content_encoding=request.headers.get("content-encoding"),
            authorization=request.headers.get("authorization"),
            client_ip=request.client.host if request.client else None,
        )
    )
    answer = _OK if not result.rejected else _rejected_body(result.rejected)
    return Response(answer, media_type="application/json")


def _rejected_body(rejected: list[Rejection]) -> bytes:
    return json_bytes(
        {
            "success": True,
            "rejected": [
                {"index": r.index, "code": r.code, "detail": r.detail, "field": r.field}
                for r in rejected
            ],
        }
    )


# POST path → route type, for the ASGI fast path (app.core.http) that answers ingest without
# FastAPI's routing and dependency machinery: half the CPU per request on /v1/track. The
# FastAPI routes below stay for the OpenAPI document and describe the same behaviour.
FAST_ROUTES: dict[str, str] = {
    **{f"/v1/{name}": name for name in _EXAMPLE},
    **{f"/v1/{short}": name for short, name in SHORT_PATHS.items()},
}


async def ingest_asgi(scope: Scope, receive: Receive, send: Send, route_type: str) -> None:
    """Serve one ingest request directly from ASGI, with the same errors as the app: the
    headers it needs are read from the scope and the body from `receive`, without building
    Starlette's Request, Headers and Response objects for every request."""
    try:
        body = await receive_body(
            receive, limit=body_limit(route_type), timeout=get_settings().request_timeout_seconds
        )
        content_type = content_encoding = authorization = None
        for name, value in scope["headers"]:
            # The first of repeated headers, as Starlette's `headers.get` answers.
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-encoding" and content_encoding is None:
                content_encoding = value.decode("latin-1")
        client = scope.get("client")
        service: IngestService = scope["app"].state.runtime.ingest
        result = await service.ingest(
            IngestRequest(
                route_type=route_type,
                body=body,
                content_type=content_type,
                content_encoding=content_encoding,
                authorization=authorization,
                client_ip=client[0] if client else None,
            )
        )
    except ProblemError as exc:
        await problem_response(exc)(scope, receive, send)
        return
    except Exception as exc:
        await unexpected_error_response(exc)(scope, receive, send)
        return
    answer = _OK if not result.rejected else _rejected_body(result.rejected)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def _make_endpoint(route_type: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return await _ingest(request, route_type)

    endpoint.__name__ = f"ingest_{route_type}"
    return endpoint


def _register(path: str, route_type: str, *, in_schema: bool) -> None:
    router.add_api_route(
        path,
        _make_endpoint(route_type),
        methods=["POST"],
        summary=f"Segment `{route_type}`" if in_schema else None,
        responses=_RESPONSES,
        include_in_schema=in_schema,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "JSON, or the same JSON as `text/plain` (browser beacons); "
                "`Content-Encoding: gzip` is accepted",
                "content": {
                    "application/json": {
                        "schema": _BATCH_SCHEMA
                        if route_type == "batch"
                        else _event_schema(route_type),
                        "example": _EXAMPLE[route_type],
                    },
                    "text/plain": {
                        "schema": {"type": "string", "description": "the same JSON, as text"}
                    },
                },
            }
        },
    )


for _type in _EXAMPLE:
    _register(f"/{_type}", _type, in_schema=True)
for _short, _type in SHORT_PATHS.items():
    _register(f"/{_short}", _type, in_schema=False)


@router.post("/m", include_in_schema=False)
async def client_metrics() -> Response:
    """analytics.js client metrics: acknowledged, not stored."""
    return Response(_OK, media_type="application/json")
