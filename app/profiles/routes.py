"""Profile routes (read key) and unmerge (server key). `{id}` is `kind:value`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote

import asyncpg
import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.core.auth import ReadWorkspace, ServerWorkspace, read_workspace
from app.core.deps import runtime
from app.core.errors import (
    PROBLEM_SCHEMA,
    ProblemError,
    problem_response,
    problem_responses,
    unexpected_error_response,
)
from app.db.engine import raw_connection
from app.profiles import service
from app.profiles.unmerge import unmerge

router = APIRouter(prefix="/v1/profiles", tags=["profiles"])

_ID_DOC = (
    "An identifier `kind:value`: user_id, anonymous_id, email, customer_id or external id type"
)


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}


def _body(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A documented 200 answer: a JSON object with exactly these keys."""
    schema = {"type": "object", "required": sorted(properties), "properties": properties}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


_SHARED_DEVICE = {
    **PROBLEM_SCHEMA,
    "required": [*PROBLEM_SCHEMA["required"], "customer_ids"],
    "properties": {**PROBLEM_SCHEMA["properties"], "customer_ids": _array({"type": "string"})},
}
_ERRORS = problem_responses(
    {
        400: "Not an identifier `kind:value`, or an invalid parameter",
        401: "Missing or unknown read key",
        403: "A key of another kind",
        404: "No customer has this identifier",
        409: "A shared device: the body lists `customer_ids`",
        503: "The database is unavailable; honour Retry-After",
    },
    schemas={409: _SHARED_DEVICE},
)
_SERVER_ERRORS = problem_responses(
    {
        400: "Neither two `identifiers` nor a `message_id`, or an invalid identifier",
        401: "Missing or unknown server key",
        403: "A key of another kind",
        404: "No such customer, or no link of its ledger matches",
        409: "A shared device: the body lists `customer_ids`",
        503: "The database is unavailable; honour Retry-After",
    },
    schemas={409: _SHARED_DEVICE},
)
_IDENTIFIER = _object({"kind": {"type": "string"}, "value": {"type": "string"}})
_STAGE_HISTORY = {
    "type": ["array", "null"],
    "items": _object(
        {"stage": {"type": "string"}, "entered_at": _TIME, "message_id": _NULLABLE_TEXT}
    ),
}
_PROFILE = _body(
    "The customer's summary",
    {
        "customer_id": {"type": "string"},
        "identifiers": _array(_IDENTIFIER),
        "traits": {"type": ["object", "null"]},
        "stage": _NULLABLE_TEXT,
        "first_seen": _TIME,
        "last_seen": _TIME,
        "event_count": {"type": "integer", "minimum": 0},
    },
)
_STAGE_BODY = _body(
    "The current stage and the history of stages entered",
    {
        "customer_id": {"type": "string"},
        "stage": _NULLABLE_TEXT,
        "entered_at": _TIME,
        "stage_history": _STAGE_HISTORY,
    },
)
_TIMELINE = _body(
    "A page of events; `next_cursor` (null on the last page) fetches the next",
    {
        "customer_id": {"type": "string"},
        "events": _array(
            {
                "type": "object",
                "required": ["message_id", "type", "timestamp", "received_at"],
                "properties": {
                    "message_id": {"type": "string"},
                    "type": {"type": "string"},
                    "event": _NULLABLE_TEXT,
                    "timestamp": {"type": "string", "format": "date-time"},
                    "received_at": {"type": "string", "format": "date-time"},
                    "channel": _NULLABLE_TEXT,
                    "session_id": _NULLABLE_TEXT,
                    "stage": _NULLABLE_TEXT,
                    "properties": {"type": ["object", "null"]},
                },
            }
        ),
        "next_cursor": _NULLABLE_TEXT,
    },
)
_IDENTITIES = _body(
    "Identifiers with their first sighting, and the ledger decisions about them",
    {
        "customer_id": {"type": "string"},
        "identifiers": _array(
            _object({"kind": {"type": "string"}, "value": {"type": "string"}, "first_seen": _TIME})
        ),
        "ledger": _array(
            {
                "type": "object",
                "required": ["at", "message_id", "action", "rule", "identifiers", "into", "reason"],
                "properties": {
                    "at": _TIME,
                    "message_id": _NULLABLE_TEXT,
                    "action": {"enum": ["linked", "merged", "refused", "unmerged"]},
                    "rule": _NULLABLE_TEXT,
                    "identifiers": _array({"type": "string"}),
                    "into": _NULLABLE_TEXT,
                    "reason": _NULLABLE_TEXT,
                },
            }
        ),
    },
)
_UNMERGED = _body(
    "The links undone and the customers the replay produced",
    {
        "customer_id": {"type": "string"},
        "unmerged": _array(_array({"type": "string"})),
        "customers": _array({"type": "string"}),
    },
)
# `{id}` is validated by the service (a 400 naming it); the pattern documents the form.
IdParam = Annotated[str, Path(description=_ID_DOC, json_schema_extra={"pattern": "^[^:]+:.+$"})]

_PREFIX = "/v1/profiles/"


def _client_segments(scope: Scope) -> list[str] | None:
    """The path after `/v1/profiles/` split at the slashes the client sent, each segment
    percent-decoded; None without a `raw_path` (or one that doesn't start so).

    Routing matches the decoded path, where `user_id:google%2F123` has become two segments: a
    value holding a `/` can only be told from a path separator in the raw path."""
    raw = scope.get("raw_path")
    if not raw:
        return None
    text = raw.decode("latin-1")
    root: str = scope.get("root_path", "")
    if root and text.startswith(root):
        text = text[len(root) :]
    if not text.startswith(_PREFIX):
        return None
    return [unquote(segment) for segment in text[len(_PREFIX) :].split("/")]


def _one_segment(request: Request, id: str) -> str:
    """`id` of a `/{id:path}/…` route, if the client sent it as one path segment (a `/` in a
    value encoded as `%2F`); anything else is a path no route serves: 404."""
    segments = _client_segments(request.scope)
    if not id or (segments is not None and segments[:-1] != [id]):
        raise StarletteHTTPException(404)
    return id


@router.get("/{id}", summary="A customer's profile", responses={200: _PROFILE, **_ERRORS})
async def get_profile(id: IdParam, request: Request, workspace_id: ReadWorkspace) -> Response:
    """`{customer_id, identifiers, traits, stage, first_seen, last_seen, event_count}`."""
    async with runtime(request).read_connection() as conn:
        return _json(await service.profile(conn, workspace_id, id))


@router.get(
    "/{id:path}/stage",
    summary="A customer's current stage",
    responses={200: _STAGE_BODY, **_ERRORS},
)
async def get_stage(id: IdParam, request: Request, workspace_id: ReadWorkspace) -> Response:
    """`{customer_id, stage, entered_at, stage_history: [{stage, entered_at, message_id}]}`."""
    id = _one_segment(request, id)
    async with runtime(request).read_connection() as conn:
        return _json(await service.stage(conn, workspace_id, id))


@router.get(
    "/{id:path}/timeline", summary="A customer's events", responses={200: _TIMELINE, **_ERRORS}
)
async def get_timeline(
    id: IdParam,
    request: Request,
    workspace_id: ReadWorkspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    """Events in event-time order with session, channel and stage; `next_cursor` pages on."""
    id = _one_segment(request, id)
    async with runtime(request).read_connection() as conn:
        return _json(
            await service.timeline(
                conn,
                workspace_id,
                id,
                limit=limit,
                cursor=cursor,
                since=since,
                until=until,
                order=order,
            )
        )


@router.get(
    "/{id:path}/identities",
    summary="Identifiers and the identity ledger",
    responses={200: _IDENTITIES, **_ERRORS},
)
async def get_identities(id: IdParam, request: Request, workspace_id: ReadWorkspace) -> Response:
    """Every identifier with its first sighting, and each ledger decision that concerns them."""
    id = _one_segment(request, id)
    async with runtime(request).read_connection() as conn:
        return _json(await service.identities(conn, workspace_id, id))


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_FAST_ROUTES = frozenset({"stage", "timeline"})
_ORDERS = frozenset({"asc", "desc"})
_DEFAULT_LIMIT = 100

# Marketing tools call `…/stage` per message and dashboards page timelines: these two skip
# FastAPI's routing, dependency and validation machinery (app.core.http sends them here) and
# answer exactly as `get_stage` and `get_timeline` do. Anything a fast path does not parse
# itself (since/until, a repeated or invalid parameter) goes to the FastAPI route instead, so
# validation errors have one implementation.
# `GET …/{id}` with an encoded `/` in `{id}` comes here too: routing sees the decoded path, in
# which it is no `/{id}` (and would take `user_id:a%2Fstage` for the stage of `user_id:a`).
FastAnswer = Callable[[asyncpg.Connection, int], Awaitable[dict[str, Any]]]


def _target(scope: Scope) -> tuple[str, str] | None:
    """(identifier, route: "" or a fast route's name) of a GET this module answers itself."""
    path: str = scope["path"]
    if scope["method"] != "GET" or not path.startswith(_PREFIX):
        return None
    segments = _client_segments(scope)
    if segments is None:  # no raw path: the decoded one, where `{id}` has no `/`
        segments = path[len(_PREFIX) :].split("/")
    if len(segments) == 2 and segments[0] and segments[1] in _FAST_ROUTES:
        return segments[0], segments[1]
    if len(segments) == 1 and "/" in segments[0]:
        return segments[0], ""
    return None


def _timeline_answer(scope: Scope, identifier: str) -> FastAnswer | None:
    limit, cursor, order = _DEFAULT_LIMIT, None, "asc"
    seen: set[str] = set()
    # Starlette reads the query string the same way (latin-1, blank values kept).
    for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if key in seen:
            return None
        seen.add(key)
        if key == "limit":
            if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 1000):
                return None
            limit = int(value)
        elif key == "cursor":
            cursor = value
        elif key == "order":
            if value not in _ORDERS:
                return None
            order = value
        elif key in ("since", "until"):
            return None

    async def answer(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
        return await service.timeline(
            conn,
            workspace_id,
            identifier,
            limit=limit,
            cursor=cursor,
            since=None,
            until=None,
            order=order,
        )

    return answer


def _stage_answer(identifier: str) -> FastAnswer:
    async def answer(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
        return await service.stage(conn, workspace_id, identifier)

    return answer


def _profile_answer(identifier: str) -> FastAnswer:
    async def answer(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
        return await service.profile(conn, workspace_id, identifier)

    return answer


def fast_answer(scope: Scope) -> FastAnswer | None:
    """The answer of a `GET …/{id}/stage`, a plain `GET …/{id}/timeline`, or a `GET …/{id}`
    whose `{id}` holds an encoded `/`; else None (FastAPI routes the request)."""
    target = _target(scope)
    if target is None:
        return None
    identifier, route = target
    if route == "stage":
        return _stage_answer(identifier)
    if route == "timeline":
        return _timeline_answer(scope, identifier)
    return _profile_answer(identifier)


async def fast_asgi(scope: Scope, receive: Receive, send: Send, answer: FastAnswer) -> None:
    """Authenticate with the read key and send `answer`'s body as `_json` would."""
    request = Request(scope, receive)
    try:
        workspace_id = await read_workspace(request)
        async with runtime(request).read_connection() as conn:
            body = orjson.dumps(await answer(conn, workspace_id))
    except ProblemError as exc:
        await problem_response(exc)(scope, receive, send)
        return
    except Exception as exc:
        await unexpected_error_response(exc)(scope, receive, send)
        return
    # The messages `_json`'s Response sends (same headers, same order), without the object.
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode()), _JSON_CONTENT_TYPE],
        }
    )
    await send({"type": "http.response.body", "body": body})


class UnmergeRequest(BaseModel):
    """Which link to undo: the two identifiers it joined, or the event that joined them."""

    identifiers: list[str] | None = Field(
        default=None, min_length=2, max_length=2, examples=[["user_id:u1", "anonymous_id:a1"]]
    )
    message_id: str | None = Field(default=None, max_length=100)


@router.post(
    "/{id:path}/unmerge",
    summary="Undo a merge (server key)",
    responses={200: _UNMERGED, **_SERVER_ERRORS},
)
async def post_unmerge(
    id: IdParam, body: UnmergeRequest, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """Blocks the link and replays the customer's identity evidence without it."""
    id = _one_segment(request, id)
    rt = runtime(request)
    async with raw_connection(rt.engine) as conn:
        result = await unmerge(
            conn, workspace_id, id, identifiers=body.identifiers, message_id=body.message_id
        )
    return _json(result)
