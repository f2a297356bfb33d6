"""Stage-level aggregates read from the rollups (and, for funnels and drop-off lists, from the
stage entries and timelines). Every figure's definition is in `DEFINITIONS`, which the OpenAPI
docs and the README show.

Windows are UTC days, `from` and `to` inclusive. Cohorts: a customer's stage figures (entered,
converted, time to next stage, its touches and feedback while in the stage) are filed under the
day it entered the stage; `customers` (now in the stage) and drop-off are snapshots of now.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import orjson

from app.aggregates.facts import (
    ANY_STAGE,
    ATTRIBUTION_MODELS,
    NONE_VALUE,
    TOTAL,
    TOUCH_FIELDS,
    bucket_seconds,
)
from app.aggregates.repository import BLOCK_SPANS
from app.core.errors import ProblemError
from app.ingest.segment import FLAG_BOT
from app.journeys.stages import JourneyModel

DEFAULT_DAYS = 30
MAX_DAYS = 3 * 366
MAX_FUNNEL_STEPS = 10
MAX_FUNNEL_WINDOW = timedelta(days=365)

DEFINITIONS: dict[str, str] = {
    "window": "`from` and `to` are UTC dates, both included (default: the last 30 days). "
    "Stage figures are cohorts: a customer counts on the day it entered the stage.",
    "customers": "stages: customers whose current (furthest) stage is this one, now, whatever "
    "the window. channels: customers of the cohort with at least one touch on the channel.",
    "entered": "customers who entered the stage in the window (each customer enters a stage "
    "at most once).",
    "converted": "of those who entered in the window, how many have reached a later stage by now.",
    "conversion_rate": "converted / entered (null when nobody entered).",
    "median_seconds_to_next": "median time from entering the stage to entering the next stage "
    "reached, over the converted; read off log buckets, within 5% of the exact median.",
    "touches": "events (page, screen, track; not bot traffic) of the cohort while in the stage, "
    "by the channel of their session.",
    "feedback": "responses: events carrying feedback; nps: % promoters (9-10) minus % detractors "
    "(0-6) of `Survey Responded` properties.score; csat: mean `CSAT Submitted` properties.score "
    "(1-5); effort: mean properties.effort (CES 1-7); success_rate: share of "
    "properties.success = true; sentiment: mean properties.sentiment (-1..1). Null where no "
    "event carries it.",
    "attribution": "each customer who entered the conversion stage in the window is one "
    "conversion; its credit goes to the channels of its sessions up to the converting event: "
    "first, last, linear (equal shares), position (40% first, 40% last, 20% shared by the "
    "middle) or time_decay (weight halves every 7 days before the conversion). Credits sum to "
    "conversions.",
    "dropoff": "stalled: customers now in the stage for longer than its drop-off threshold "
    "(journey model `dropoff_after_seconds`); with from/to, only those who entered the stage in "
    "the window.",
    "funnel": "a customer enters the funnel the first time it does step 1 in the window; each "
    "next step counts when done, in order, within `window` of that first step. Steps are stage "
    "names (the stage was entered) or event names (prefix `event:` to force an event).",
    "breakdown": "`trait:NAME` groups customers by the trait's current value, `property:NAME` "
    "by the value on the customer's latest event that carries it. Only the journey model's "
    "`breakdowns` are kept (default: trait:persona, property:variation_name).",
}


@dataclass(frozen=True, slots=True)
class Window:
    """Inclusive UTC days."""

    start: date
    end: date

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time(0), UTC)

    @property
    def end_at(self) -> datetime:
        """The instant just after the window."""
        return datetime.combine(self.end + timedelta(days=1), time(0), UTC)

    def body(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def _day(raw: str | None, field: str) -> date | None:
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ProblemError(
            400, "invalid_window", f"`{field}` must be a date YYYY-MM-DD", field=field
        ) from exc


def window(
    start_raw: str | date | None, end_raw: str | date | None, *, today: date | None = None
) -> Window:
    """The window of a request (ISO dates); 400 when one is invalid, inverted or too long."""
    start = start_raw if isinstance(start_raw, date) else _day(start_raw, "from")
    end = end_raw if isinstance(end_raw, date) else _day(end_raw, "to")
    end = end or today or datetime.now(UTC).date()
    if start is None:
        try:
            start = end - timedelta(days=DEFAULT_DAYS - 1)
        except OverflowError:
            start = date.min
    if end >= date.max - timedelta(days=1):
        raise ProblemError(400, "invalid_window", "`to` is out of range", field="to")
    if start > end:
        raise ProblemError(400, "invalid_window", "`from` is after `to`", field="from")
    if (end - start).days >= MAX_DAYS:
        raise ProblemError(
            400, "invalid_window", f"the window is longer than {MAX_DAYS} days", field="from"
        )
    return Window(start, end)


def breakdown_dim(model: JourneyModel, breakdown: str | None) -> str:
    """The rollup `dim` of a breakdown, which must be one the journey model keeps."""
    if breakdown is None:
        return TOTAL
    if breakdown not in model.breakdowns:
        kept = ", ".join(model.breakdowns) or "none"
        raise ProblemError(
            400,
            "unknown_breakdown",
            f"breakdown {breakdown!r} is not kept by this workspace's journey model (kept: "
            f"{kept}); add it to `breakdowns` with PUT /v1/settings/journey-model",
            field="breakdown",
        )
    return breakdown


def _stage(model: JourneyModel, stage: str, field: str) -> str:
    if stage not in model.stage_names:
        raise ProblemError(
            400,
            "unknown_stage",
            f"unknown stage {stage!r}; stages: {', '.join(model.stage_names)}",
            field=field,
        )
    return stage


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _count(value: float | None) -> int:
    return round(value or 0)


def _grouped(
    dim: str,
    win: Window | None,
    groups: Mapping[str, dict[str, Any]],
    *,
    extra: Mapping[str, Any],
    empty: dict[str, Any],
) -> dict[str, Any]:
    """The answer: one body, or with a breakdown `{breakdown, groups: [{value, ...body}]}`."""
    head = {**(win.body() if win else {}), **extra}
    if dim == TOTAL:
        return {**head, **groups.get(TOTAL, empty)}
    ordered = sorted(groups.items(), key=lambda kv: (kv[0] == NONE_VALUE, kv[0]))
    return {
        **head,
        "breakdown": dim,
        "groups": [
            {"value": None if value == NONE_VALUE else value, **body} for value, body in ordered
        ],
    }


# --------------------------------------------------------------------------- stages


_EPOCH_DAY = date(1970, 1, 1)
# The first parameter after a covered window's ($1 workspace, $2 dim, $3 days, then the starts
# of each span's blocks).
_AFTER_COVER = 4 + len(BLOCK_SPANS)


def cover(win: Window) -> tuple[list[date], dict[int, list[date]]]:
    """The window as single days and aligned blocks (a block of `span` days starts on a day
    whose number since 1970-01-01 is a multiple of `span`), largest blocks first: a 90-day
    window is 6-14 parts (`BLOCK_SPANS` 32, 8, 2), a year ~20."""
    days: list[date] = []
    blocks: dict[int, list[date]] = {span: [] for span in BLOCK_SPANS}
    pos, last = (win.start - _EPOCH_DAY).days, (win.end - _EPOCH_DAY).days
    while pos <= last:
        for span in BLOCK_SPANS:
            if pos % span == 0 and pos + span - 1 <= last:
                blocks[span].append(_EPOCH_DAY + timedelta(days=pos))
                pos += span
                break
        else:
            days.append(_EPOCH_DAY + timedelta(days=pos))
            pos += 1
    return days, blocks


def _cover_args(win: Window) -> list[list[date]]:
    """The parameters $3 ... of `_covered` for a window."""
    days, blocks = cover(win)
    return [days, *(blocks[span] for span in BLOCK_SPANS)]


def grouped_rows(table: str, keys: str, values: Sequence[str], where: str = "TRUE") -> str:
    """`SELECT dval, <keys>, <values>` over the rows of `table` matching `where` in workspace $1
    and breakdown $2 (`TOTAL` for none). The rollups store no rows for a breakdown's no-value
    group (`facts._groups`): here it is the totals minus the breakdown's named groups, one
    added and one subtracted copy of each row, which callers sum per `dval` (every rollup
    column is additive; groups summing to zero are dropped by the callers' HAVING)."""
    plain = ", ".join(values)
    negated = ", ".join(f"-{v} AS {v}" for v in values)
    return (
        f"SELECT CASE WHEN dim = '' THEN ''::text ELSE dval END AS dval, {keys}, {plain} "
        f"FROM {table} WHERE workspace_id = $1 AND dim IN ($2, '') AND {where} "
        f"UNION ALL SELECT ''::text, {keys}, {negated} "
        f"FROM {table} WHERE workspace_id = $1 AND dim = $2 AND $2 <> '' AND {where}"
    )


def _covered(
    day_table: str, block_table: str, keys: str, values: Sequence[str], extra: str = ""
) -> str:
    """Rows (`dval, <keys>, <values>`) of a window from a day rollup and its blocks:
    parameters $1 workspace, $2 dim, $3 days, then the starts of the blocks of each of
    `BLOCK_SPANS` (`_cover_args`)."""
    parts = [grouped_rows(day_table, keys, values, f"day = ANY($3::date[]){extra}")]
    for i, span in enumerate(BLOCK_SPANS):
        parts.append(
            grouped_rows(
                block_table, keys, values, f"span = {span} AND start = ANY(${4 + i}::date[]){extra}"
            )
        )
    return " UNION ALL ".join(parts)


_STAGE_FIGURES_SQL = (
    """
    WITH c AS (
        SELECT dval, stage, sum((entered - converted)::float8)::int8 AS now,
            coalesce(sum(entered::float8) FILTER (WHERE day BETWEEN $%(lo)d AND $%(hi)d), 0)
                ::int8 AS entered,
            coalesce(sum(converted::float8) FILTER (WHERE day BETWEEN $%(lo)d AND $%(hi)d), 0)
                ::int8 AS converted
        FROM ("""
    + grouped_rows("agg_stage_days", "stage, day", ("entered", "converted"))
    + """) d
        GROUP BY dval, stage HAVING sum(entered::float8) > 0
    ),
    h AS (
        SELECT dval, stage, bucket, sum(n::float8) AS n FROM ("""
    + _covered("agg_stage_durations", "agg_stage_duration_blocks", "stage, bucket", ("n",))
    + """) x GROUP BY dval, stage, bucket HAVING sum(n::float8) > 0
    ),
    m AS (
        SELECT dval, stage, min(bucket) FILTER (WHERE 2 * running >= total) AS bucket
        FROM (
            SELECT dval, stage, bucket,
                sum(n) OVER (PARTITION BY dval, stage ORDER BY bucket) AS running,
                sum(n) OVER (PARTITION BY dval, stage) AS total
            FROM h
        ) r
        GROUP BY dval, stage
    )
    SELECT dval, stage, coalesce(c.now, 0) AS now, coalesce(c.entered, 0) AS entered,
        coalesce(c.converted, 0) AS converted, m.bucket
    FROM c FULL JOIN m USING (dval, stage)
    """
) % {"lo": _AFTER_COVER, "hi": _AFTER_COVER + 1}


@dataclass(frozen=True, slots=True)
class StageFigures:
    """One group's figures of one stage: customers now, entered and converted in the window,
    and the median time to the next stage (None when nobody converted)."""

    now: int = 0
    entered: int = 0
    converted: int = 0
    median: float | None = None


async def _stage_figures(
    conn: asyncpg.Connection, ws: int, dim: str, win: Window
) -> dict[str, dict[str, StageFigures]]:
    """dval -> stage -> figures, in one statement: the counts from the day rollup (all days
    for `now`), the median's bucket found in SQL over the window's duration histogram (the
    first bucket where the running count reaches half the total, as `median_of_buckets`)."""
    rows = await conn.fetch(_STAGE_FIGURES_SQL, ws, dim, *_cover_args(win), win.start, win.end)
    out: dict[str, dict[str, StageFigures]] = defaultdict(dict)
    for r in rows:
        bucket = r["bucket"]
        out[r["dval"]][r["stage"]] = StageFigures(
            r["now"],
            r["entered"],
            r["converted"],
            None if bucket is None else round(bucket_seconds(bucket), 1),
        )
    return out


_NO_FIGURES = StageFigures()


async def stages(
    conn: asyncpg.Connection, ws: int, model: JourneyModel, *, dim: str, win: Window
) -> dict[str, Any]:
    """`GET /v1/aggregates/stages`."""
    figures = await _stage_figures(conn, ws, dim, win)
    groups: dict[str, dict[str, Any]] = {}
    for dval in sorted(figures):
        body = []
        for stage in model.stage_names:
            f = figures[dval].get(stage) or _NO_FIGURES
            body.append(
                {
                    "stage": stage,
                    "customers": f.now,
                    "entered": f.entered,
                    "converted": f.converted,
                    "conversion_rate": _rate(f.converted, f.entered),
                    "median_seconds_to_next": f.median,
                }
            )
        groups[dval] = {"stages": body}
    empty = {"stages": [_empty_stage(s) for s in model.stage_names]}
    return _grouped(dim, win, groups, extra={}, empty=empty)


def _empty_stage(stage: str) -> dict[str, Any]:
    return {
        "stage": stage,
        "customers": 0,
        "entered": 0,
        "converted": 0,
        "conversion_rate": None,
        "median_seconds_to_next": None,
    }


# --------------------------------------------------------------------------- channels


_TOUCH_SUMS = ", ".join(f"sum({name}) AS {name}" for name in TOUCH_FIELDS)
_TOUCH_SQL = (
    f"SELECT dval, stage, channel, {_TOUCH_SUMS} FROM ("
    + _covered(
        "agg_touch_days",
        "agg_touch_blocks",
        "stage, channel",
        TOUCH_FIELDS,
        f" AND (stage = ${_AFTER_COVER} OR (${_AFTER_COVER}::text IS NULL AND stage <> ''))",
    )
    + ") x GROUP BY dval, stage, channel HAVING sum(touches) > 0.5"
)


async def _touch_rows(
    conn: asyncpg.Connection, ws: int, dim: str, win: Window, stage: str | None = None
) -> list[asyncpg.Record]:
    """Summed touch counters per (dval, stage, channel) in the window (one stage, or all
    stages but the whole-journey rows)."""
    rows: list[asyncpg.Record] = await conn.fetch(_TOUCH_SQL, ws, dim, *_cover_args(win), stage)
    return rows


async def channels(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window,
    stage: str | None,
) -> dict[str, Any]:
    """`GET /v1/aggregates/channels`."""
    key = ANY_STAGE if stage is None else _stage(model, stage, "stage")
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"channels": []})
    for r in await _touch_rows(conn, ws, dim, win, key):
        groups[r["dval"]]["channels"].append(
            {
                "channel": r["channel"],
                "touches": _count(r["touches"]),
                "customers": _count(r["customers"]),
            }
        )
    for body in groups.values():
        body["channels"].sort(key=lambda c: (-c["touches"], c["channel"]))
    return _grouped(dim, win, groups, extra={"stage": stage}, empty={"channels": []})


# --------------------------------------------------------------------------- attribution


async def attribution(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window,
    model_name: str,
    conversion: str,
) -> dict[str, Any]:
    """`GET /v1/aggregates/attribution`."""
    stage = _stage(model, conversion, "conversion")
    if model_name not in ATTRIBUTION_MODELS:
        raise ProblemError(
            400,
            "unknown_model",
            f"unknown attribution model {model_name!r}; models: {', '.join(ATTRIBUTION_MODELS)}",
            field="model",
        )
    column = model_name  # one of ATTRIBUTION_MODELS: safe to name in SQL
    rows = await conn.fetch(
        f"SELECT dval, channel, sum({column}) AS credit FROM ("
        + grouped_rows(
            "agg_attribution_days", "channel", (column,), "day BETWEEN $3 AND $4 AND stage = $5"
        )
        + ") x GROUP BY dval, channel",
        ws,
        dim,
        win.start,
        win.end,
        stage,
    )
    conversions = await conn.fetch(
        "SELECT dval, sum(entered)::int8 AS n FROM ("
        + grouped_rows(
            "agg_stage_days", "stage", ("entered",), "day BETWEEN $3 AND $4 AND stage = $5"
        )
        + ") x GROUP BY dval",
        ws,
        dim,
        win.start,
        win.end,
        stage,
    )
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"conversions": 0, "channels": []})
    for r in conversions:
        if r["n"]:
            groups[r["dval"]]["conversions"] = r["n"]
    for r in rows:
        if r["credit"] > 1e-9:
            groups[r["dval"]]["channels"].append(
                {"channel": r["channel"], "credit": round(r["credit"], 4)}
            )
    for body in groups.values():
        body["channels"].sort(key=lambda c: (-c["credit"], c["channel"]))
    return _grouped(
        dim,
        win,
        groups,
        extra={"model": model_name, "conversion": stage},
        empty={"conversions": 0, "channels": []},
    )


# --------------------------------------------------------------------------- feedback, map


def feedback(counters: Mapping[str, float]) -> dict[str, Any]:
    """The feedback summary of summed touch counters."""

    def mean(total: str, n: str, digits: int) -> float | None:
        return round(counters[total] / counters[n], digits) if counters[n] > 0.5 else None

    nps = None
    if counters["nps_n"] > 0.5:
        nps = round(
            100 * (counters["nps_promoters"] - counters["nps_detractors"]) / counters["nps_n"], 1
        )
    return {
        "responses": _count(counters["responses"]),
        "nps": nps,
        "csat": mean("csat_sum", "csat_n", 2),
        "effort": mean("effort_sum", "effort_n", 2),
        "success_rate": mean("success_yes", "success_n", 4),
        "sentiment": mean("sentiment_sum", "sentiment_n", 3),
    }


async def journey_map(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`GET /v1/aggregates/journey-map`."""
    base = await journey_map_rollups(conn, ws, model, dim=dim, win=win)
    return await with_dropoff(conn, ws, model, base, dim=dim, now=now)


async def with_dropoff(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    base: dict[str, Any],
    *,
    dim: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The journey map: its rollup part (`journey_map_rollups`, which a cache may hold) with
    the drop-off counts of now (which depend on the clock)."""
    answer: dict[str, Any] = base["answer"]
    if not base["present"]:
        return answer
    stalled = await _stalled_counts(conn, ws, model, dim=dim, win=None, now=now)

    def filled(dval: str, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**st, "dropoff": stalled.get(dval, {}).get(st["stage"])} for st in stages]

    if dim == TOTAL:
        return {**answer, "stages": filled(TOTAL, answer["stages"])}
    return {
        **answer,
        "groups": [
            {**g, "stages": filled(NONE_VALUE if g["value"] is None else g["value"], g["stages"])}
            for g in answer["groups"]
        ],
    }


async def journey_map_rollups(
    conn: asyncpg.Connection, ws: int, model: JourneyModel, *, dim: str, win: Window
) -> dict[str, Any]:
    """The journey map's figures that depend on the data alone (`dropoff` left None):
    `{"answer": …, "present": whether any group has data}`."""
    figures = await _stage_figures(conn, ws, dim, win)
    touch: dict[str, dict[str, list[asyncpg.Record]]] = defaultdict(lambda: defaultdict(list))
    for r in await _touch_rows(conn, ws, dim, win):
        touch[r["dval"]][r["stage"]].append(r)
    groups: dict[str, dict[str, Any]] = {}
    for dval in sorted(figures.keys() | touch.keys()):
        body = []
        for stage in model.stage_names:
            f = figures.get(dval, {}).get(stage) or _NO_FIGURES
            stage_totals = dict.fromkeys(TOUCH_FIELDS, 0.0)
            channel_rows = []
            for r in sorted(touch[dval][stage], key=lambda r: (-r["touches"], r["channel"])):
                for name in TOUCH_FIELDS:
                    stage_totals[name] += r[name]
                channel_rows.append(
                    {
                        "channel": r["channel"],
                        "touches": _count(r["touches"]),
                        "customers": _count(r["customers"]),
                        "conversion_rate": _rate(r["converted"], r["customers"]),
                        "feedback": feedback(r),
                    }
                )
            body.append(
                {
                    "stage": stage,
                    "customers": f.now,
                    "entered": f.entered,
                    "conversion_rate": _rate(f.converted, f.entered),
                    "median_seconds_in_stage": f.median,
                    "dropoff": None,
                    "feedback": feedback(stage_totals),
                    "channels": channel_rows,
                }
            )
        groups[dval] = {"stages": body}
    empty_fb = feedback(dict.fromkeys(TOUCH_FIELDS, 0.0))
    empty: dict[str, Any] = {
        "stages": [
            {
                "stage": s.name,
                "customers": 0,
                "entered": 0,
                "conversion_rate": None,
                "median_seconds_in_stage": None,
                "dropoff": 0 if s.dropoff_after is not None else None,
                "feedback": empty_fb,
                "channels": [],
            }
            for s in model.stages
        ]
    }
    present = bool(groups) if dim != TOTAL else TOTAL in groups
    return {"answer": _grouped(dim, win, groups, extra={}, empty=empty), "present": present}


# --------------------------------------------------------------------------- drop-off


def _cutoff(threshold: timedelta, now: datetime) -> datetime:
    return now - threshold


_STALLED_SQL = (
    """
    SELECT s.stage, d.dval, sum(d.entered - d.converted)::int8 AS n
    FROM unnest($3::text[], $4::date[], $5::date[]) AS s(stage, low, high)
    JOIN ("""
    + grouped_rows("agg_stage_days", "stage, day", ("entered", "converted"))
    + """) d ON d.stage = s.stage AND d.day BETWEEN s.low AND s.high
    GROUP BY s.stage, d.dval HAVING sum(d.entered - d.converted) <> 0
    UNION ALL
    SELECT s.stage, CASE WHEN $2 = '' THEN '' ELSE coalesce(c.dims ->> $2, '') END,
        count(*) * min(s.sign)
    FROM unnest($6::text[], $7::timestamptz[], $8::timestamptz[], $9::int8[])
        AS s(stage, low, high, sign)
    JOIN customers c ON c.workspace_id = $1 AND c.stage = s.stage
     AND c.stage_entered_at >= s.low AND c.stage_entered_at < s.high
    GROUP BY 1, 2
"""
)


async def _stalled_counts(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window | None,
    now: datetime | None,
) -> dict[str, dict[str, int]]:
    """dval -> stage -> customers stalled now, in one statement. Whole days before the
    cutoff's day come from the rollup (customers still in the stage = entered - converted); the
    cutoff's own day from the customers themselves, so the count is exact to the microsecond:
    those who entered before the cutoff, or, when the cutoff is past noon (fewer customers
    after it), the day's rollup minus those who entered after the cutoff."""
    now = now or datetime.now(UTC)
    rollup: tuple[list[str], list[date], list[date]] = ([], [], [])
    current: tuple[list[str], list[datetime], list[datetime], list[int]] = ([], [], [], [])
    stalling = [s for s in model.stages if s.dropoff_after is not None]
    for stage in stalling:
        assert stage.dropoff_after is not None
        cutoff = _cutoff(stage.dropoff_after, now)
        cutoff_day = cutoff.astimezone(UTC).date()
        day_start = datetime.combine(cutoff_day, time(0), UTC)
        next_day = day_start + timedelta(days=1)
        low = win.start if win else date.min
        high = cutoff_day - timedelta(days=1)
        if win is None or win.start <= cutoff_day <= win.end:
            if cutoff - day_start <= next_day - cutoff:
                current[0].append(stage.name)
                current[1].append(day_start)
                current[2].append(cutoff)
                current[3].append(1)
            else:
                high = cutoff_day
                current[0].append(stage.name)
                current[1].append(cutoff)
                current[2].append(next_day)
                current[3].append(-1)
        if win is not None:
            high = min(high, win.end)
        if low <= high:
            rollup[0].append(stage.name)
            rollup[1].append(low)
            rollup[2].append(high)
    found: dict[tuple[str, str], int] = defaultdict(int)
    if stalling:
        for r in await conn.fetch(_STALLED_SQL, ws, dim, *rollup, *current):
            found[r["dval"], r["stage"]] += r["n"]
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (dval, stage_name), n in found.items():
        if n:
            out[dval][stage_name] = n
    if dim == TOTAL:
        out.setdefault(TOTAL, {})
    for counts in out.values():
        for stage in stalling:
            counts.setdefault(stage.name, 0)
    return out


def _encode_cursor(entered_at: datetime, customer_id: str) -> str:
    raw = orjson.dumps([entered_at.isoformat(), customer_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, customer_id = orjson.loads(raw)
        return datetime.fromisoformat(at), str(customer_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ProblemError(400, "invalid_cursor", "malformed cursor", field="cursor") from exc


async def dropoff(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window | None,
    with_customers: bool = False,
    stage: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`GET /v1/aggregates/dropoff`; with `customers=true`, one stage's stalled customers."""
    now = now or datetime.now(UTC)
    if with_customers:
        if stage is None:
            raise ProblemError(400, "stage_required", "customers=true needs a stage", field="stage")
        return await _stalled_customers(
            conn, ws, model, stage=stage, win=win, limit=limit, cursor=cursor, now=now
        )
    counts = await _stalled_counts(conn, ws, model, dim=dim, win=win, now=now)
    groups: dict[str, dict[str, Any]] = {}
    for dval, by_stage in counts.items():
        groups[dval] = {
            "stages": [
                {
                    "stage": s.name,
                    "threshold_seconds": int(s.dropoff_after.total_seconds()),
                    "stalled": by_stage.get(s.name, 0),
                }
                for s in model.stages
                if s.dropoff_after is not None
            ]
        }
    empty: dict[str, Any] = {"stages": []}
    return _grouped(dim, win, groups, extra={}, empty=empty)


async def _stalled_customers(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    stage: str,
    win: Window | None,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> dict[str, Any]:
    threshold = model.stages[model.index_of(_stage(model, stage, "stage"))].dropoff_after
    if threshold is None:
        return {"stage": stage, "threshold_seconds": None, "customers": [], "next_cursor": None}
    cutoff = _cutoff(threshold, now)
    after_at, after_id = (
        _decode_cursor(cursor) if cursor else (datetime.min.replace(tzinfo=UTC), "")
    )
    low = win.start_at if win else datetime.min.replace(tzinfo=UTC)
    high = min(cutoff, win.end_at) if win else cutoff
    rows = await conn.fetch(
        """
        SELECT customer_id, stage_entered_at, last_seen, traits ->> 'email' AS email
        FROM customers
        WHERE workspace_id = $1 AND stage = $2 AND stage_entered_at < $3
          AND stage_entered_at >= $4 AND (stage_entered_at, customer_id) > ($5, $6)
        ORDER BY stage_entered_at, customer_id
        LIMIT $7
        """,
        ws,
        stage,
        high,
        low,
        after_at,
        after_id,
        limit + 1,
    )
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "stage": stage,
        "threshold_seconds": int(threshold.total_seconds()),
        "customers": [
            {
                "customer_id": r["customer_id"],
                "entered_at": r["stage_entered_at"],
                "stalled_seconds": int((now - r["stage_entered_at"]).total_seconds()),
                "last_seen": r["last_seen"],
                "email": r["email"],
            }
            for r in page
        ],
        "next_cursor": (
            _encode_cursor(page[-1]["stage_entered_at"], page[-1]["customer_id"])
            if more and page
            else None
        ),
    }


# --------------------------------------------------------------------------- funnel

_WINDOW = re.compile(r"(\d{1,6})([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def funnel_window(raw: str) -> timedelta:
    """`14d`, `24h`, `30m`, `3600s` → a duration (at most 365 days)."""
    match = _WINDOW.fullmatch(raw.strip())
    if match is None:
        raise ProblemError(
            400, "invalid_window", "window must look like 14d, 24h, 30m or 3600s", field="window"
        )
    span = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if not timedelta(0) < span <= MAX_FUNNEL_WINDOW:
        raise ProblemError(
            400, "invalid_window", "window must be between 1 second and 365 days", field="window"
        )
    return span


@dataclass(frozen=True, slots=True)
class FunnelStep:
    name: str
    kind: str  # "stage" | "event"


def funnel_steps(model: JourneyModel, raw: str) -> list[FunnelStep]:
    """Parse `steps=a,b,c`: stage names, or event names (`event:` forces an event)."""
    names = [part.strip() for part in raw.split(",")]
    if len(names) < 2 or len(names) > MAX_FUNNEL_STEPS or not all(names):
        raise ProblemError(
            400,
            "invalid_steps",
            f"steps must be 2 to {MAX_FUNNEL_STEPS} comma-separated stage or event names",
            field="steps",
        )
    steps = []
    for name in names:
        if name.startswith("event:"):
            steps.append(FunnelStep(name.removeprefix("event:"), "event"))
        elif name in model.stage_names:
            steps.append(FunnelStep(name, "stage"))
        else:
            steps.append(FunnelStep(name, "event"))
    return steps


def _funnel_sql(steps: Sequence[FunnelStep]) -> str:
    parts = [
        f"""
        WITH occ AS MATERIALIZED (
            SELECT e.customer_id, s.step, e.timestamp AS ts
            FROM unnest($2::text[], $3::int[]) AS s(name, step)
            JOIN journey_events e ON e.workspace_id = $1 AND e.event = s.name
             AND e.timestamp >= $4 AND e.timestamp < $5 AND e.customer_id IS NOT NULL
             AND e.flags & {FLAG_BOT} = 0
            UNION ALL
            SELECT se.customer_id, s.step, se.entered_at
            FROM unnest($6::text[], $7::int[]) AS s(name, step)
            JOIN stage_entries se ON se.workspace_id = $1 AND se.stage = s.name
             AND se.entered_at >= $4 AND se.entered_at < $5
        ),
        s1 AS (
            SELECT o.customer_id, min(o.ts) AS t1, min(o.ts) AS t FROM occ o
            WHERE o.step = 1 AND o.ts < $8 GROUP BY o.customer_id
        ),
        g AS (
            SELECT s1.customer_id, coalesce(c.dims ->> $10, '') AS dval FROM s1
            LEFT JOIN customers c ON c.workspace_id = $1 AND c.customer_id = s1.customer_id
        )"""
    ]
    for k in range(2, len(steps) + 1):
        op = ">" if steps[k - 1] == steps[k - 2] else ">="
        parts.append(
            f""",
        s{k} AS (
            SELECT p.customer_id, p.t1, min(o.ts) AS t FROM s{k - 1} p
            JOIN occ o ON o.customer_id = p.customer_id AND o.step = {k}
             AND o.ts {op} p.t AND o.ts <= p.t1 + $9::interval
            GROUP BY p.customer_id, p.t1
        )"""
        )
    selects = ["SELECT 1 AS step, g.dval, NULL::float8 AS secs FROM s1 JOIN g USING (customer_id)"]
    for k in range(2, len(steps) + 1):
        selects.append(
            f"SELECT {k}, g.dval, extract(epoch FROM s{k}.t - s{k - 1}.t)::float8 "
            f"FROM s{k} JOIN s{k - 1} USING (customer_id) JOIN g USING (customer_id)"
        )
    parts.append(
        "\nSELECT step, dval, count(*) AS n, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY secs) AS median FROM ("
        + "\nUNION ALL ".join(selects)
        + ") x GROUP BY step, dval"
    )
    return "".join(parts)


def _stage_funnel_sql(count: int) -> str:
    """A funnel of distinct stages in one pass: a customer enters each stage at most once, so
    its step times are its stage entries and the ordered match needs no join chain."""
    picks = ",\n".join(
        f"min(entered_at) FILTER (WHERE stage = ($2::text[])[{k}]) AS t{k}"
        for k in range(1, count + 1)
    )
    reached = ["t1 IS NOT NULL AND t1 < $5"]
    for k in range(2, count + 1):
        reached.append(f"{reached[-1]} AND t{k} >= t{k - 1} AND t{k} <= t1 + $6::interval")
    selects = [
        f"count(*) FILTER (WHERE {cond}) AS n{k}" for k, cond in enumerate(reached, start=1)
    ] + [
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t{k} - t{k - 1})) "
        f"FILTER (WHERE {reached[k - 1]}) AS m{k}"
        for k in range(2, count + 1)
    ]
    return f"""
        WITH p AS (
            SELECT customer_id, {picks}
            FROM stage_entries
            WHERE workspace_id = $1 AND stage = ANY($2::text[])
              AND entered_at >= $3 AND entered_at < $4
            GROUP BY customer_id
        )
        SELECT coalesce(c.dims ->> $7, '') AS dval, {", ".join(selects)}
        FROM p LEFT JOIN customers c
          ON $7 <> '' AND c.workspace_id = $1 AND c.customer_id = p.customer_id
        WHERE p.t1 IS NOT NULL AND p.t1 < $5
        GROUP BY 1
    """


async def funnel(
    conn: asyncpg.Connection,
    ws: int,
    model: JourneyModel,
    *,
    dim: str,
    win: Window,
    steps: Sequence[FunnelStep],
    span: timedelta,
) -> dict[str, Any]:
    """`GET /v1/aggregates/funnel`."""
    found: dict[str, dict[int, tuple[int, float | None]]] = defaultdict(dict)
    names = [s.name for s in steps]
    if all(s.kind == "stage" for s in steps) and len(set(names)) == len(names):
        for r in await conn.fetch(
            _stage_funnel_sql(len(steps)),
            ws,
            names,
            win.start_at,
            win.end_at + span,
            win.end_at,
            span,
            dim if dim != TOTAL else "",
        ):
            dval = TOTAL if dim == TOTAL else r["dval"]
            for k in range(1, len(steps) + 1):
                found[dval][k] = (r[f"n{k}"], r[f"m{k}"] if k > 1 else None)
        return funnel_answer(dim, win, steps, span, found)
    events = [(s.name, i + 1) for i, s in enumerate(steps) if s.kind == "event"]
    stage_steps = [(s.name, i + 1) for i, s in enumerate(steps) if s.kind == "stage"]
    async with conn.transaction(readonly=True):
        # The step chain joins CTEs the planner cannot estimate (it guesses one row each, and a
        # cached generic plan keeps the guess): nested loops over them are quadratic in the
        # customers of the window. Hash joins are linear, so the funnel asks for them.
        await conn.execute("SET LOCAL enable_nestloop = off")
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = await conn.fetch(
            _funnel_sql(steps),
            ws,
            [n for n, _ in events],
            [i for _, i in events],
            win.start_at,
            win.end_at + span,
            [n for n, _ in stage_steps],
            [i for _, i in stage_steps],
            win.end_at,
            span,
            dim if dim != TOTAL else "",
        )
    for r in rows:
        dval = TOTAL if dim == TOTAL else r["dval"]
        found[dval][r["step"]] = (r["n"], r["median"])
    return funnel_answer(dim, win, steps, span, found)


def funnel_answer(
    dim: str,
    win: Window,
    steps: Sequence[FunnelStep],
    span: timedelta,
    found: Mapping[str, Mapping[int, tuple[int, float | None]]],
) -> dict[str, Any]:
    """The funnel's answer from dval -> step -> (customers, median seconds from previous)."""
    groups: dict[str, dict[str, Any]] = {}
    for dval, by_step in found.items():
        groups[dval] = {"steps": _funnel_body(steps, by_step)}
    return _grouped(
        dim,
        win,
        groups,
        extra={"window_seconds": int(span.total_seconds())},
        empty={"steps": _funnel_body(steps, {})},
    )


def _funnel_body(
    steps: Sequence[FunnelStep], by_step: Mapping[int, tuple[int, float | None]]
) -> list[dict[str, Any]]:
    body = []
    first = by_step.get(1, (0, None))[0]
    previous = first
    for i, step in enumerate(steps, start=1):
        n, median = by_step.get(i, (0, None))
        body.append(
            {
                "step": step.name,
                "kind": step.kind,
                "customers": n,
                "conversion_rate": _rate(n, previous) if i > 1 else (1.0 if n else None),
                "conversion_rate_from_first": _rate(n, first),
                "median_seconds_from_previous": None if median is None else round(median, 1),
            }
        )
        previous = n
    return body


__all__ = [
    "DEFINITIONS",
    "Window",
    "attribution",
    "breakdown_dim",
    "channels",
    "cover",
    "dropoff",
    "funnel",
    "funnel_answer",
    "funnel_steps",
    "funnel_window",
    "journey_map",
    "journey_map_rollups",
    "stages",
    "window",
    "with_dropoff",
]
