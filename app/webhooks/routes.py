"""Webhook routes (server key): subscribe, list, delete, and read a webhook's delivery log."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.core.auth import ServerWorkspace
from app.core.deps import runtime
from app.core.errors import ProblemError, problem_responses
from app.db.engine import raw_connection
from app.webhooks import outbox
from app.webhooks import repository as webhooks
from app.webhooks.destinations import DestinationError, check_url
from app.webhooks.protocol import EVENT_TYPES, event_id, new_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

EventType = Literal["stage.changed", "identity.merged", "customer.deleted"]
assert set(get_args(EventType)) == set(EVENT_TYPES)

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_EVENTS = {"type": "array", "items": {"enum": list(EVENT_TYPES)}}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_WEBHOOK_FIELDS: dict[str, Any] = {
    "id": {"type": "integer"},
    "url": {"type": "string"},
    "events": _EVENTS,
    "created_at": _TIME,
}
_WEBHOOK = _object(_WEBHOOK_FIELDS)
_CREATED = _object({**_WEBHOOK_FIELDS, "secret": {"type": "string"}})
_DELIVERY = _object(
    {
        "event_id": {"type": "string"},
        "type": {"enum": list(EVENT_TYPES)},
        "customer_id": {"type": "string"},
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status_code": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "next_attempt_at": _NULLABLE_TIME,
        "delivered_at": _NULLABLE_TIME,
        "created_at": _TIME,
    }
)
_AUTH_ERRORS = {
    401: "Missing or unknown server key",
    403: "A key of another kind",
    503: "The database is unavailable; honour Retry-After",
}
_NOT_FOUND = {404: "This workspace has no webhook with this id"}

WebhookId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The webhook's id")]


class NewWebhook(BaseModel):
    """A subscription: where to POST which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL that receives the events as signed POSTs; private and "
        "loopback addresses are refused unless JOURNEYS_WEBHOOKS_ALLOW_PRIVATE=true",
        examples=["https://hooks.example.com/journeys"],
    )
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        pattern=r"^[\x21-\x7e]+$",
        description="The signing secret (printable ASCII); generated when absent",
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _webhook_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "events": list(row["events"]),
        "created_at": row["created_at"],
    }


@router.post(
    "",
    summary="Subscribe a URL to events (server key)",
    status_code=201,
    responses={
        201: _answer("The webhook, with its signing secret: shown this once", _CREATED),
        **problem_responses(
            {
                400: "An invalid or refused URL, or an unknown event type; `field` names it",
                409: f"The workspace has {webhooks.MAX_WEBHOOKS_PER_WORKSPACE} webhooks already",
                **_AUTH_ERRORS,
            }
        ),
    },
)
async def create_webhook(
    body: NewWebhook, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """Events of the subscribed types are POSTed to `url`, signed with the secret
    (`Journeys-Signature: t=…,v1=…`, see docs/webhooks.md). Keep the secret: it is never
    shown again."""
    rt = runtime(request)
    try:
        url = check_url(body.url, allow_private=rt.settings.webhooks_allow_private)
    except DestinationError as exc:
        raise ProblemError(400, "invalid_url", str(exc), field="url") from None
    secret = body.secret or new_secret()
    events = [t for t in EVENT_TYPES if t in body.events]
    async with raw_connection(rt.engine) as conn:
        row = await webhooks.create_webhook(
            conn, workspace_id, url=url, events=events, secret=secret
        )
    if row is None:
        raise ProblemError(
            409,
            "too_many_webhooks",
            f"a workspace has at most {webhooks.MAX_WEBHOOKS_PER_WORKSPACE} webhooks; "
            "delete one first",
        )
    outbox.forget(workspace_id)
    return _json({**_webhook_json(row), "secret": secret}, 201)


@router.get(
    "",
    summary="The workspace's webhooks (server key)",
    responses={
        200: _answer(
            "Every webhook of the workspace (secrets are never shown again)",
            _object({"webhooks": {"type": "array", "items": _WEBHOOK}}),
        ),
        **problem_responses(_AUTH_ERRORS),
    },
)
async def list_webhooks(request: Request, workspace_id: ServerWorkspace) -> Response:
    """`{webhooks: [{id, url, events, created_at}]}`, oldest first."""
    async with runtime(request).read_connection() as conn:
        rows = await webhooks.list_webhooks(conn, workspace_id)
    return _json({"webhooks": [_webhook_json(r) for r in rows]})


@router.delete(
    "/{webhook_id}",
    summary="Delete a webhook (server key)",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted; its pending deliveries are dropped"},
        **problem_responses({400: "Not a webhook id", **_NOT_FOUND, **_AUTH_ERRORS}),
    },
)
async def delete_webhook(
    webhook_id: WebhookId, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """Stops all deliveries to it at once (one in flight may still arrive)."""
    async with raw_connection(runtime(request).engine) as conn, conn.transaction():
        found = await webhooks.delete_webhook(conn, workspace_id, webhook_id)
    if not found:
        raise _not_found(webhook_id)
    outbox.forget(workspace_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="A webhook's delivery log (server key)",
    responses={
        200: _answer(
            "A page of deliveries, newest event first; `next_cursor` (null on the last page) "
            "fetches the next",
            _object(
                {
                    "deliveries": {"type": "array", "items": _DELIVERY},
                    "next_cursor": {"type": ["string", "null"]},
                }
            ),
        ),
        **problem_responses(
            {400: "An invalid parameter; `field` names it", **_NOT_FOUND, **_AUTH_ERRORS}
        ),
    },
)
async def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    workspace_id: ServerWorkspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of a page")
    ] = None,
    status: Annotated[
        Literal["pending", "delivered", "failed"] | None, Query(description="Only these")
    ] = None,
) -> Response:
    """`{deliveries: [{event_id, type, customer_id, status, attempts, last_status_code,
    last_error, next_attempt_at, delivered_at, created_at}], next_cursor}`; `next_attempt_at`
    is set while the delivery is pending."""
    async with runtime(request).read_connection() as conn:
        if not await webhooks.webhook_exists(conn, workspace_id, webhook_id):
            raise _not_found(webhook_id)
        rows = await webhooks.deliveries(
            conn,
            workspace_id,
            webhook_id,
            limit=limit,
            before=int(cursor) if cursor else None,
            status=status,
        )
    items = [
        {
            "event_id": event_id(r["event_id"]),
            "type": r["type"],
            "customer_id": r["customer_id"],
            "status": r["status"],
            "attempts": r["attempts"],
            "last_status_code": r["last_status_code"],
            "last_error": r["last_error"],
            "next_attempt_at": r["next_attempt_at"] if r["status"] == "pending" else None,
            "delivered_at": r["delivered_at"],
            "created_at": r["created_at"],
        }
        for r in rows
    ]
    next_cursor = str(rows[-1]["event_id"]) if len(rows) == limit else None
    return _json({"deliveries": items, "next_cursor": next_cursor})


def _not_found(webhook_id: int) -> ProblemError:
    return ProblemError(404, "webhook_not_found", f"no webhook {webhook_id} in this workspace")
