"""The aggregate reports as one flat table: the answers of the aggregate API (app/aggregates/
service.py computes them; nothing here queries the rollups itself), a row per figure group.

`report` tells the rows apart:
- `stages`: one row per stage (GET /v1/aggregates/stages)
- `channels`: one row per (stage, channel) (GET /v1/aggregates/channels?stage=)
- `attribution`: one row per (model, channel) (GET /v1/aggregates/attribution?model=)
- `journey_map`: per stage, a row without channel (the stage) and one per channel
  (GET /v1/aggregates/journey-map)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg

from app.aggregates import service
from app.aggregates.facts import ATTRIBUTION_MODELS, TOTAL
from app.export.tables import Column, Kind
from app.journeys.stages import JourneyModel

COLUMNS = (
    Column("report", Kind.TEXT),
    Column("from", Kind.DATE),
    Column("to", Kind.DATE),
    Column("stage", Kind.TEXT),
    Column("channel", Kind.TEXT),
    Column("model", Kind.TEXT),
    Column("conversion", Kind.TEXT),
    Column("customers", Kind.INT),
    Column("entered", Kind.INT),
    Column("converted", Kind.INT),
    Column("conversion_rate", Kind.FLOAT),
    Column("median_seconds_to_next", Kind.FLOAT),
    Column("median_seconds_in_stage", Kind.FLOAT),
    Column("dropoff", Kind.INT),
    Column("touches", Kind.INT),
    Column("conversions", Kind.INT),
    Column("credit", Kind.FLOAT),
    Column("feedback_responses", Kind.INT),
    Column("feedback_nps", Kind.FLOAT),
    Column("feedback_csat", Kind.FLOAT),
    Column("feedback_effort", Kind.FLOAT),
    Column("feedback_success_rate", Kind.FLOAT),
    Column("feedback_sentiment", Kind.FLOAT),
)

_FEEDBACK = ("responses", "nps", "csat", "effort", "success_rate", "sentiment")


def default_conversion(model: JourneyModel) -> str:
    """The attribution conversion stage: `purchase`, or the model's last stage without one."""
    names = model.stage_names
    return "purchase" if "purchase" in names else names[-1]


def _feedback(body: Mapping[str, Any]) -> dict[str, Any]:
    fb = body.get("feedback") or {}
    return {f"feedback_{name}": fb.get(name) for name in _FEEDBACK}


async def aggregate_rows(
    conn: asyncpg.Connection,
    workspace_id: int,
    model: JourneyModel,
    *,
    win: service.Window,
    conversion: str,
) -> list[dict[str, Any]]:
    """Every row of the aggregates export (a few hundred at most: no chunking needed)."""
    head = {"from": win.start, "to": win.end}
    rows: list[dict[str, Any]] = []
    stages = await service.stages(conn, workspace_id, model, dim=TOTAL, win=win)
    rows += ({"report": "stages", **head, **s} for s in stages["stages"])
    for stage in model.stage_names:
        body = await service.channels(conn, workspace_id, model, dim=TOTAL, win=win, stage=stage)
        rows += ({"report": "channels", **head, "stage": stage, **c} for c in body["channels"])
    for name in ATTRIBUTION_MODELS:
        body = await service.attribution(
            conn, workspace_id, model, dim=TOTAL, win=win, model_name=name, conversion=conversion
        )
        common = {
            "report": "attribution",
            **head,
            "model": name,
            "conversion": conversion,
            "conversions": body["conversions"],
        }
        # A model without credited channels still has its row (its conversions count).
        rows += ({**common, **c} for c in body["channels"] or [{"channel": None}])
    journey_map = await service.journey_map(conn, workspace_id, model, dim=TOTAL, win=win)
    rows += _journey_map_rows(journey_map["stages"], head)
    return rows


def _journey_map_rows(
    stages: list[dict[str, Any]], head: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    for s in stages:
        yield {
            "report": "journey_map",
            **head,
            "stage": s["stage"],
            "channel": None,
            "customers": s["customers"],
            "entered": s["entered"],
            "conversion_rate": s["conversion_rate"],
            "median_seconds_in_stage": s["median_seconds_in_stage"],
            "dropoff": s["dropoff"],
            **_feedback(s),
        }
        for c in s["channels"]:
            yield {
                "report": "journey_map",
                **head,
                "stage": s["stage"],
                "channel": c["channel"],
                "touches": c["touches"],
                "customers": c["customers"],
                "conversion_rate": c["conversion_rate"],
                **_feedback(c),
            }
