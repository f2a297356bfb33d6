"""`GET/PUT /v1/settings/journey-model` (server key)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.core.auth import ServerWorkspace
from app.core.deps import runtime
from app.core.errors import ProblemError, problem_responses
from app.db.engine import raw_connection
from app.journeys import jobs
from app.journeys.stages import JourneyModelError, model_from_dict, model_to_dict
from app.journeys.stitcher import model_for

router = APIRouter(prefix="/v1/settings", tags=["settings"])

_EXAMPLE = {
    "stages": [
        {"name": "awareness", "rules": [{}]},
        {
            "name": "consideration",
            "rules": [{"events": ["Product Viewed", "Signed Up"]}],
            "dropoff_after_seconds": 1209600,
        },
        {"name": "purchase", "rules": [{"events": ["Order Completed"], "occurrence": 1}]},
        {
            "name": "advocacy",
            "rules": [
                {
                    "events": ["Survey Responded"],
                    "conditions": [{"property": "score", "op": ">=", "value": 9}],
                }
            ],
        },
    ]
}


_NULLABLE_TEXT = {"type": ["string", "null"]}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "events": {"type": ["array", "null"], "items": {"type": "string"}},
        "types": {"type": ["array", "null"], "items": {"type": "string"}},
        "not_events": {"type": ["array", "null"], "items": {"type": "string"}},
        "conditions": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["property", "op"],
                "additionalProperties": False,
                "properties": {
                    "property": {"type": "string"},
                    "op": {"enum": ["==", "!=", ">", ">=", "<", "<=", "in", "exists"]},
                    "value": {},
                },
            },
        },
        "after_stage": _NULLABLE_TEXT,
        "occurrence": {"type": ["integer", "null"], "minimum": 1},
    },
}
# The request body; the validator checks more than a schema can say (order, references), and
# names the offending field in its 400.
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "JourneyModel",
    "required": ["stages"],
    "additionalProperties": False,
    "properties": {
        "stages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                    "rules": {"type": "array", "minItems": 1, "items": _RULE},
                    "dropoff_after_seconds": {"type": ["integer", "null"], "minimum": 1},
                },
            },
        },
        "breakdowns": {
            "type": ["array", "null"],
            "items": {"type": "string", "pattern": "^(trait|property):[A-Za-z0-9_.$-]{1,64}$"},
        },
    },
}
_JOB = {
    "type": ["object", "null"],
    "description": "the latest re-derivation of every customer's stage (null: none yet)",
    "required": ["job_id", "kind", "status", "done", "total"],
    "properties": {
        "job_id": {"type": "integer"},
        "kind": {"type": "string"},
        "status": {"enum": ["pending", "running", "done", "failed"]},
        "done": {"type": "integer", "minimum": 0},
        "total": {"type": "integer", "minimum": 0},
        "created_at": {"type": ["string", "null"], "format": "date-time"},
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
        "error": _NULLABLE_TEXT,
    },
}
_MODEL_AND_JOB = {
    "type": "object",
    "required": ["model", "rederive"],
    "properties": {
        "model": {
            "type": "object",
            "required": ["stages"],
            "properties": {
                "stages": MODEL_SCHEMA["properties"]["stages"],
                "breakdowns": {"type": "array", "items": {"type": "string"}},
            },
        },
        "rederive": _JOB,
    },
}
_ERRORS = problem_responses(
    {
        401: "Missing or unknown server key",
        403: "A key of another kind",
        503: "The database is unavailable; honour Retry-After",
    }
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get(
    "/journey-model",
    summary="The workspace's journey model",
    responses={
        200: {
            "description": "The model in force and the latest re-derivation job",
            "content": {"application/json": {"schema": _MODEL_AND_JOB}},
        },
        **_ERRORS,
    },
)
async def get_model(request: Request, workspace_id: ServerWorkspace) -> Response:
    """`{model, rederive}`: the stages and rules in force, and the latest re-derivation job."""
    async with runtime(request).read_connection() as conn:
        model = await model_for(conn, workspace_id)
        job = await jobs.latest(conn, workspace_id, jobs.REDERIVE)
    return _json({"model": model_to_dict(model), "rederive": jobs.job_json(job)})


@router.put(
    "/journey-model",
    summary="Replace the journey model (re-derives every customer's stage in the background)",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MODEL_SCHEMA, "example": _EXAMPLE}},
        }
    },
    responses={
        200: {
            "description": "The model in force already: nothing to re-derive (`rederive` is "
            "the latest job, or null)",
            "content": {"application/json": {"schema": _MODEL_AND_JOB}},
        },
        202: {
            "description": "Stored; the re-derivation job is queued (`rederive`)",
            "content": {"application/json": {"schema": _MODEL_AND_JOB}},
        },
        **problem_responses({400: "Invalid model; `field` names the offending part"}),
        **_ERRORS,
    },
)
async def put_model(request: Request, workspace_id: ServerWorkspace) -> Response:
    """Validate and store the model; a job re-derives every customer (see `rederive`)."""
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    try:
        model = model_from_dict(raw)
    except JourneyModelError as exc:
        raise ProblemError(400, "invalid_journey_model", str(exc), field=exc.field) from None
    stored = model_to_dict(model)
    rt = runtime(request)
    async with raw_connection(rt.engine) as conn, conn.transaction():
        # The model in force already (the same stages and rules, however spelled): nothing to
        # re-derive, so configuration tools may PUT it again and again.
        unchanged = model_to_dict(await model_for(conn, workspace_id)) == stored
        await conn.execute(
            "UPDATE workspaces SET settings = jsonb_set(settings, '{journey_model}', $2::jsonb) "
            "WHERE id = $1",
            workspace_id,
            orjson.dumps(stored).decode(),
        )
        if unchanged:
            job = await jobs.latest(conn, workspace_id, jobs.REDERIVE)
        else:
            job = await jobs.enqueue(conn, workspace_id, jobs.REDERIVE)
    if unchanged:
        return _json({"model": stored, "rederive": jobs.job_json(job)})
    rt.stitcher.forget_model(workspace_id)
    return _json({"model": stored, "rederive": jobs.job_json(job)}, 202)
