"""Profile routes (read key) and unmerge (server key). `{id}` is `kind:value`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from app.core.auth import ReadWorkspace, ServerWorkspace, read_workspace
from app.core.deps import runtime
from app.core.errors import ProblemError, problem_response, unexpected_error_response
from app.db.engine import raw_connection
from app.profiles import service
from app.profiles.unmerge import unmerge

router = APIRouter(prefix="/v1/profiles", tags=["profiles"])

_ID_DOC = (
    "An identifier `kind:value`: user_id, anonymous_id, email, customer_id or external id type"
)
IdPath = Annotated[str, "identifier"]


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown read key"},
    403: {"description": "A key of another kind"},
    404: {"description": "No customer has this identifier"},
    409: {"description": "A shared device: the body lists `customer_ids`"},
}


@router.get("/{id}", summary="A customer's profile", responses=_ERRORS)
async def get_profile(id: str, request: Request, workspace_id: ReadWorkspace) -> Response:
    """`{customer_id, identifiers, traits, stage, first_seen, last_seen, event_count}`."""
    async with runtime(request).read_connection() as conn:
        return _json(await service.profile(conn, workspace_id, id))


@router.get("/{id}/stage", summary="A customer's current stage", responses=_ERRORS)
async def get_stage(id: str, request: Request, workspace_id: ReadWorkspace) -> Response:
    """`{customer_id, stage, entered_at, stage_history: [{stage, entered_at, message_id}]}`."""
    async with runtime(request).read_connection() as conn:
        return _json(await service.stage(conn, workspace_id, id))


@router.get("/{id}/timeline", summary="A customer's events", responses=_ERRORS)
async def get_timeline(
    id: str,
    request: Request,
    workspace_id: ReadWorkspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    """Events in event-time order with session, channel and stage; `next_cursor` pages on."""
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


@router.get("/{id}/identities", summary="Identifiers and the identity ledger", responses=_ERRORS)
async def get_identities(id: str, request: Request, workspace_id: ReadWorkspace) -> Response:
    """Every identifier with its first sighting, and each ledger decision that concerns them."""
    async with runtime(request).read_connection() as conn:
        return _json(await service.identities(conn, workspace_id, id))


_PREFIX = "/v1/profiles/"
_STAGE = "/stage"


def stage_identifier(scope: Scope) -> str | None:
    """The `{id}` of a `GET /v1/profiles/{id}/stage`, else None."""
    path: str = scope["path"]
    if scope["method"] != "GET" or not path.startswith(_PREFIX) or not path.endswith(_STAGE):
        return None
    identifier = path[len(_PREFIX) : -len(_STAGE)]
    return identifier if identifier and "/" not in identifier else None


async def stage_asgi(scope: Scope, receive: Receive, send: Send, identifier: str) -> None:
    """`GET …/stage` straight from ASGI (app.core.http): marketing tools call it per message,
    so it skips FastAPI's routing and dependency machinery; same answers as `get_stage`."""
    request = Request(scope, receive)
    try:
        workspace_id = await read_workspace(request)
        async with runtime(request).read_connection() as conn:
            response = _json(await service.stage(conn, workspace_id, identifier))
    except ProblemError as exc:
        response = problem_response(exc)
    except Exception as exc:
        response = unexpected_error_response(exc)
    await response(scope, receive, send)


class UnmergeRequest(BaseModel):
    """Which link to undo: the two identifiers it joined, or the event that joined them."""

    identifiers: list[str] | None = Field(
        default=None, min_length=2, max_length=2, examples=[["user_id:u1", "anonymous_id:a1"]]
    )
    message_id: str | None = Field(default=None, max_length=100)


@router.post("/{id}/unmerge", summary="Undo a merge (server key)", responses=_ERRORS)
async def post_unmerge(
    id: str, body: UnmergeRequest, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """Blocks the link and replays the customer's identity evidence without it."""
    rt = runtime(request)
    async with raw_connection(rt.engine) as conn:
        result = await unmerge(
            conn, workspace_id, id, identifiers=body.identifiers, message_id=body.message_id
        )
    return _json(result)
