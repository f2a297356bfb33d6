"""Privacy routes (server key): delete and export a customer, follow a deletion, and the
workspace's privacy settings (`GET/PUT /v1/settings/privacy`)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.core.auth import ServerWorkspace
from app.core.deps import runtime
from app.core.errors import PROBLEM_SCHEMA, ProblemError, problem_responses
from app.core.security import basic_auth_user, bearer_token, hash_key
from app.db.engine import raw_connection
from app.privacy import deletion
from app.privacy import repository as privacy
from app.privacy.consent import MAX_CATEGORY_LENGTH
from app.privacy.export import export_customer

router = APIRouter(tags=["privacy"])

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_NULLABLE_OBJECT = {"type": ["object", "null"]}
_STATUS = {"enum": ["pending", "running", "done", "failed"]}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    required = sorted(k for k in properties if k not in optional)
    return {"type": "object", "required": required, "properties": properties}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _answer(
    description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = headers
    return out


_SHARED_DEVICE = {
    **PROBLEM_SCHEMA,
    "required": [*PROBLEM_SCHEMA["required"], "customer_ids"],
    "properties": {**PROBLEM_SCHEMA["properties"], "customer_ids": _array({"type": "string"})},
}
_AUTH_ERRORS = {
    401: "Missing or unknown server key",
    403: "A key of another kind",
    503: "The database is unavailable; honour Retry-After",
}
_PROFILE_ERRORS = problem_responses(
    {
        400: "Not an identifier `kind:value`",
        404: "No customer has this identifier",
        409: "A shared device: the body lists `customer_ids`; ask by their own identifiers",
        **_AUTH_ERRORS,
    },
    schemas={409: _SHARED_DEVICE},
)
_DELETION_BODY = _object(
    {
        "job_id": {"type": "integer"},
        "status": _STATUS,
        "deleted_events": {"type": "integer", "minimum": 0},
        "identifiers": {"type": "integer", "minimum": 0},
        "identifier_hashes": _array({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "requested_at": _TIME,
        "finished_at": _NULLABLE_TIME,
        "error": _NULLABLE_TEXT,
    }
)
_QUEUED = _answer(
    "The deletion job, queued; the identifiers are already suppressed",
    _object({"job_id": {"type": "integer"}, "status": _STATUS}),
    headers={
        "Location": {
            "description": "where to follow the job: `/v1/deletions/{job_id}`",
            "required": True,
            "schema": {"type": "string"},
        }
    },
)
_EXPORT = _answer(
    "Everything held about the customer",
    _object(
        {
            "export_version": {"type": "integer"},
            "exported_at": _TIME,
            "customer_id": {"type": "string"},
            "profile": _object(
                {
                    "customer_id": {"type": "string"},
                    "stage": _NULLABLE_TEXT,
                    "stage_entered_at": _NULLABLE_TIME,
                    "stage_history": {"type": ["array", "null"]},
                    "traits": _NULLABLE_OBJECT,
                    "breakdowns": _NULLABLE_OBJECT,
                    "first_seen": _TIME,
                    "last_seen": _TIME,
                    "event_count": {"type": "integer", "minimum": 0},
                    "updated_at": _TIME,
                }
            ),
            "identifiers": _array(
                _object(
                    {
                        "kind": {"type": "string"},
                        "value": {"type": "string"},
                        "first_seen": _TIME,
                        "first_message_id": _NULLABLE_TEXT,
                        "shared_device": {"type": "boolean"},
                    }
                )
            ),
            "ledger": _array({"type": "object"}),
            "timeline": _array(
                _object(
                    {
                        "message_id": {"type": "string"},
                        "type": {"type": "string"},
                        "event": _NULLABLE_TEXT,
                        "timestamp": _TIME,
                        "received_at": _TIME,
                        "user_id": _NULLABLE_TEXT,
                        "anonymous_id": _NULLABLE_TEXT,
                        "trait_identifier": _NULLABLE_TEXT,
                        "channel": _NULLABLE_TEXT,
                        "source_channel": _NULLABLE_TEXT,
                        "session_id": _NULLABLE_TEXT,
                        "stage": _NULLABLE_TEXT,
                        "flags": {"type": "integer"},
                        "properties": _NULLABLE_OBJECT,
                        "traits": _NULLABLE_OBJECT,
                        "campaign": _NULLABLE_OBJECT,
                    }
                )
            ),
            "raw_events": _array(
                _object(
                    {
                        "message_id": {"type": "string"},
                        "received_at": _TIME,
                        "received_week": {"type": "string", "format": "date"},
                        "payload": {"type": "object"},
                    }
                )
            ),
        }
    ),
    headers={
        "Content-Disposition": {
            "description": "an attachment named after the customer",
            "required": True,
            "schema": {"type": "string"},
        }
    },
)
_SETTINGS = _answer(
    "The privacy settings in force",
    _object({"require_consent_category": _NULLABLE_TEXT}),
)
IdParam = Annotated[
    str,
    Path(
        description="Any identifier `kind:value` of the customer",
        json_schema_extra={"pattern": "^[^:]+:.+$"},
    ),
]
JobIdParam = Annotated[int, Path(ge=1, le=2**63 - 1, description="The deletion's job id")]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


@router.delete(
    "/v1/profiles/{id}",
    summary="Delete a customer and suppress its identifiers (server key)",
    status_code=202,
    responses={202: _QUEUED, **_PROFILE_ERRORS},
)
async def delete_profile(id: IdParam, request: Request, workspace_id: ServerWorkspace) -> Response:
    """Queues the deletion of the whole stitched customer `{id}` belongs to: every event and
    identifier. Its identifiers are suppressed at once: later events carrying one are accepted
    and dropped. Follow the job at `GET /v1/deletions/{job_id}` (also in `Location`)."""
    async with raw_connection(runtime(request).engine) as conn:
        key_id = await privacy.api_key_id(conn, workspace_id, _key_hash(request))
        job = await deletion.request_deletion(conn, workspace_id, id, key_id=key_id)
    return _json(
        {"job_id": job["id"], "status": job["status"]},
        202,
        headers={"Location": f"/v1/deletions/{job['id']}"},
    )


def _key_hash(request: Request) -> str:
    header = request.headers.get("authorization")
    return hash_key(bearer_token(header) or basic_auth_user(header) or "")


@router.get(
    "/v1/deletions/{job_id}",
    summary="A deletion's status and counts (server key)",
    responses={
        200: _answer("The deletion's status and counts", _DELETION_BODY),
        **problem_responses(
            {
                400: "Not a job id",
                404: "No deletion job of this workspace has this id",
                **_AUTH_ERRORS,
            }
        ),
    },
)
async def get_deletion(
    job_id: JobIdParam, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """`{job_id, status: pending|running|done|failed, deleted_events, identifiers}`;
    `identifiers` counts the identifiers deleted, `identifier_hashes` lists their SHA-256."""
    async with runtime(request).read_connection() as conn:
        row = await privacy.deletion(conn, workspace_id, job_id)
    if row is None:
        raise ProblemError(404, "deletion_not_found", f"no deletion job {job_id}")
    return _json(deletion.deletion_json(row))


@router.get(
    "/v1/profiles/{id}/export",
    summary="Everything held about a customer, as JSON (server key)",
    responses={200: _EXPORT, **_PROFILE_ERRORS},
)
async def get_export(id: IdParam, request: Request, workspace_id: ServerWorkspace) -> Response:
    """`{customer_id, profile, identifiers, ledger, timeline, raw_events}`: the summary, every
    identifier, the identity ledger, every event as stitched (properties, traits, campaign,
    session, channel, stage) and as received."""
    async with (
        runtime(request).read_connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        body = await export_customer(conn, workspace_id, id)
    name = str(body["customer_id"])
    return _json(
        body, headers={"Content-Disposition": f'attachment; filename="journeys-{name}.json"'}
    )


class PrivacySettings(BaseModel):
    """A workspace's privacy settings."""

    model_config = ConfigDict(extra="forbid")

    require_consent_category: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CATEGORY_LENGTH,
        description="Events whose `context.consent.categoryPreferences` set this category to "
        "false are accepted and dropped (case-insensitive); null stores every event.",
        examples=["Analytics"],
    )


@router.get(
    "/v1/settings/privacy",
    summary="The workspace's privacy settings (server key)",
    responses={200: _SETTINGS, **problem_responses(_AUTH_ERRORS)},
)
async def get_privacy_settings(request: Request, workspace_id: ServerWorkspace) -> Response:
    """`{require_consent_category}`."""
    async with runtime(request).read_connection() as conn:
        stored = await privacy.privacy_settings(conn, workspace_id)
    return _json(PrivacySettings(**_known(stored)).model_dump())


@router.put(
    "/v1/settings/privacy",
    summary="Replace the workspace's privacy settings (server key)",
    responses={
        200: _SETTINGS,
        **problem_responses(
            {400: "Invalid settings; `field` names the offending part", **_AUTH_ERRORS}
        ),
    },
)
async def put_privacy_settings(
    body: PrivacySettings, request: Request, workspace_id: ServerWorkspace
) -> Response:
    """Takes effect for events stitched from now on (normally within a second of ingest)."""
    async with raw_connection(runtime(request).engine) as conn, conn.transaction():
        await privacy.store_privacy_settings(conn, workspace_id, body.model_dump())
    return _json(body.model_dump())


def _known(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k in PrivacySettings.model_fields}
