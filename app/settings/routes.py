"""`GET/PUT /v1/settings/journey-model` (server key)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.core.auth import ServerWorkspace
from app.core.deps import runtime
from app.core.errors import ProblemError
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


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/journey-model", summary="The workspace's journey model")
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
        "requestBody": {"required": True, "content": {"application/json": {"example": _EXAMPLE}}}
    },
    responses={400: {"description": "Invalid model; `field` names the offending part"}},
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
        await conn.execute(
            "UPDATE workspaces SET settings = jsonb_set(settings, '{journey_model}', $2::jsonb) "
            "WHERE id = $1",
            workspace_id,
            orjson.dumps(stored).decode(),
        )
        job = await jobs.enqueue(conn, workspace_id, jobs.REDERIVE)
    rt.stitcher.forget_model(workspace_id)
    return _json({"model": stored, "rederive": jobs.job_json(job)}, 202)
