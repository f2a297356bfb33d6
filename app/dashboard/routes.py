"""The dashboard: `GET /` (journey map) and `/dashboard/…`, server-rendered with Jinja2.

The read key lives in a session cookie (see session.py); every page resolves it with the API's
own key resolver and calls the aggregate and profile services in-process for that workspace.
Templates autoescape everything: customer data (traits, event names, identifiers) is
attacker-controlled. Every answer carries the security headers, error pages included.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jinja2
import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.aggregates import service
from app.aggregates.facts import ATTRIBUTION_MODELS, TOTAL
from app.core.deps import runtime
from app.core.errors import ProblemError, unexpected_error_response
from app.core.security import KeyKind
from app.dashboard import queries, views
from app.dashboard.session import (
    clear_session,
    read_form,
    safe_next,
    same_origin,
    secure_headers,
    session_key,
    set_session,
)
from app.journeys.stages import JourneyModel
from app.journeys.stitcher import model_for
from app.profiles import service as profiles

HERE = Path(__file__).resolve().parent
STATIC_PREFIX = "/dashboard/static/"
TIMELINE_LIMIT = 500
EVENT_ROWS = 25

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# --------------------------------------------------------------------------- static files


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    version: str


def _load_assets(root: Path) -> dict[str, Asset]:
    """Every file under static/, read once: the URL carries a content hash, so browsers may
    keep them for a year."""
    assets = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        body = path.read_bytes()
        kind = {
            ".js": "text/javascript; charset=utf-8",
            ".css": "text/css; charset=utf-8",
            ".svg": "image/svg+xml",
            ".md": "text/plain; charset=utf-8",
        }.get(path.suffix) or (mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        version = hashlib.sha256(body).hexdigest()[:12]
        assets[path.relative_to(root).as_posix()] = Asset(body, kind, version)
    return assets


ASSETS = _load_assets(HERE / "static")


def static_url(name: str) -> str:
    """The versioned URL of a static file."""
    return f"{STATIC_PREFIX}{name}?v={ASSETS[name].version}"


_TICKS = re.compile(r"`([^`]+)`")


def _ticks(text: str) -> list[tuple[bool, str]]:
    """A definition split into plain and `code` parts (the template escapes both)."""
    parts = _TICKS.split(text)
    return [(i % 2 == 1, part) for i, part in enumerate(parts) if part]


_templates.filters["ticks"] = _ticks
_templates.globals.update(
    static=static_url,
    count=views.count,
    percent=views.percent,
    duration=views.duration,
    signed=views.signed,
    timestamp=views.timestamp,
    value_label=views.value_label,
    stage_colour=views.stage_colour,
    channel_colour=views.channel_colour,
    model_labels=views.MODEL_LABELS,
)


# --------------------------------------------------------------------------- plumbing


class LoginRequired(Exception):
    """No valid session: show the login form (at `/`) or go there."""

    def __init__(self, message: str | None = None, *, stale: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.stale = stale


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def _login_page(*, message: str | None, status: int = 200, next_path: str | None) -> HTMLResponse:
    return _render("login.html", status, message=message, next_path=safe_next(next_path))


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return _render(
        "error.html",
        status,
        code=status,
        message=message,
        signed_in=session_key(request) is not None,
    )


class DashboardRoute(APIRoute):
    """Adds the security headers to every answer and renders errors as pages, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            static = request.url.path.startswith(STATIC_PREFIX)
            try:
                response = await handler(request)
            except LoginRequired as exc:
                if request.url.path == "/":
                    response = _login_page(
                        message=exc.message, next_path=request.query_params.get("next")
                    )
                else:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    response = RedirectResponse("/?" + urlencode({"next": target}), 303)
                if exc.stale:
                    clear_session(response, request)
            except ProblemError as exc:
                response = _error_page(request, exc.status, exc.detail)
                if "Retry-After" in exc.headers:  # 503: the database is away
                    response.headers["Retry-After"] = exc.headers["Retry-After"]
            except Exception as exc:
                fallback = unexpected_error_response(exc)  # logs it; 503 if the db is away
                message = (
                    "The database is unavailable right now; this page will work again shortly."
                    if fallback.status_code == 503
                    else "Something went wrong while building this page."
                )
                response = _error_page(request, fallback.status_code, message)
                if "retry-after" in fallback.headers:
                    response.headers["Retry-After"] = fallback.headers["retry-after"]
            return secure_headers(response, cache=static and response.status_code == 200)

        return guarded


router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


async def _workspace(request: Request) -> int:
    """The workspace of the session's read key (LoginRequired without one)."""
    key = session_key(request)
    if key is None:
        raise LoginRequired()
    record = await runtime(request).keys.resolve(key)
    if record is None or record.kind is not KeyKind.READ:
        raise LoginRequired(
            "Your session has ended: the read key was rotated or revoked. Log in again.",
            stale=True,
        )
    return record.workspace_id


@dataclass(frozen=True, slots=True)
class Filters:
    """The window and breakdown every page shares (kept in the query string)."""

    win: service.Window
    breakdown: str | None
    dim: str  # the breakdown's rollup `dim` ("" without one)
    value: str | None
    params: dict[str, str]

    def link(self, path: str, **changes: str | None) -> str:
        """`path` with these filters, changed by `changes` (None drops a parameter)."""
        merged: dict[str, str] = dict(self.params)
        for name, new in changes.items():
            if new is None:
                merged.pop(name, None)
            else:
                merged[name] = new
        return path + ("?" + urlencode(merged) if merged else "")


def _filters(request: Request, model: JourneyModel) -> Filters:
    q = request.query_params
    win = service.window(q.get("from") or None, q.get("to") or None)
    breakdown = q.get("breakdown") or None
    dim = service.breakdown_dim(model, breakdown)  # 400 for a breakdown the model does not keep
    value = q.get("value") if breakdown else None
    params = {"from": win.start.isoformat(), "to": win.end.isoformat()}
    if breakdown:
        params["breakdown"] = breakdown
        if value is not None:
            params["value"] = value
    return Filters(win=win, breakdown=breakdown, dim=dim, value=value, params=params)


@asynccontextmanager
async def _analysis(
    request: Request,
) -> AsyncIterator[tuple[int, asyncpg.Connection, JourneyModel, Filters]]:
    """What every analysis page starts with: the session's workspace, a read connection, the
    journey model and the page's filters."""
    ws = await _workspace(request)
    async with runtime(request).read_connection() as conn:
        model = await model_for(conn, ws)
        yield ws, conn, model, _filters(request, model)


NAV = (
    ("map", "/", "Journey map"),
    ("funnel", "/dashboard/funnel", "Funnel"),
    ("trends", "/dashboard/trends", "Trends"),
    ("channels", "/dashboard/channels", "Channels"),
    ("attribution", "/dashboard/attribution", "Attribution"),
    ("profiles", "/dashboard/profiles", "Profiles"),
)
PRESET_DAYS = (7, 30, 90)


async def _page_context(
    conn: asyncpg.Connection, ws: int, model: JourneyModel, f: Filters, page: str
) -> dict[str, Any]:
    path = next(p for name, p, _ in NAV if name == page)
    today = datetime.now(UTC).date()
    presets = [
        (
            f"{days} days",
            f.link(
                path,
                **{"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat()},
            ),
            f.win.end == today and (f.win.end - f.win.start).days == days - 1,
        )
        for days in PRESET_DAYS
    ]
    return {
        "page": page,
        "path": path,
        "nav": [(name, f.link(p, value=None), label) for name, p, label in NAV],
        "presets": presets,
        "workspace": await queries.workspace_name(conn, ws),
        "f": f,
        "model": model,
        "stage_names": list(model.stage_names),
        "breakdowns": list(model.breakdowns),
        "definitions": service.DEFINITIONS,
        "signed_in": True,
    }


def _thresholds(model: JourneyModel) -> dict[str, float | None]:
    return {
        s.name: None if s.dropoff_after is None else s.dropoff_after.total_seconds()
        for s in model.stages
    }


def _empty_map(model: JourneyModel) -> dict[str, Any]:
    return {
        "stages": [
            {
                "stage": s,
                "customers": 0,
                "entered": 0,
                "conversion_rate": None,
                "median_seconds_in_stage": None,
                "dropoff": None,
                "feedback": None,
                "channels": [],
            }
            for s in model.stage_names
        ]
    }


# --------------------------------------------------------------------------- log in / out


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    """Check a read key and keep it in the session cookie."""
    if not same_origin(request):
        return _error_page(request, 403, "This form can only be sent from the dashboard itself.")
    form = await read_form(request)
    if form is None:
        return _error_page(request, 400, "The login form was not sent as a form.")
    next_path = safe_next(form.get("next"))
    key = (form.get("key") or "").strip()
    if not key:
        return _login_page(
            message="Enter your workspace's read key.", status=400, next_path=next_path
        )
    record = await runtime(request).keys.resolve(key)
    if record is None:
        return _login_page(
            message="That key is unknown, revoked or expired.",
            status=401,
            next_path=next_path,
        )
    if record.kind is not KeyKind.READ:
        why = {
            KeyKind.WRITE: "That is a write key (jw_…): it is public and only sends events.",
            KeyKind.SERVER: "That is a server key (js_…): it can delete data and change "
            "settings, so it must never be kept in a browser.",
        }[record.kind]
        return _login_page(
            message=f"{why} The dashboard needs the workspace's read key (jr_…).",
            status=403,
            next_path=next_path,
        )
    response = RedirectResponse(next_path, 303)
    set_session(response, request, key)
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    """Forget the session."""
    if not same_origin(request):
        return _error_page(request, 403, "This form can only be sent from the dashboard itself.")
    response = RedirectResponse("/", 303)
    clear_session(response, request)
    return response


@router.get("/dashboard/static/{name:path}")
async def static_file(name: str) -> Response:
    """A file of static/ (CSS, JS, the vendored Chart.js and its licence)."""
    asset = ASSETS.get(name)
    if asset is None:
        raise ProblemError(404, "not_found", "No such file.")
    return Response(
        asset.body,
        media_type=asset.media_type,
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "ETag": f'"{asset.version}"',
        },
    )


# --------------------------------------------------------------------------- journey map


@router.get("/")
async def journey_map_page(request: Request) -> Response:
    """Home: the journey map."""
    async with _analysis(request) as (ws, conn, model, f):
        dim = f.dim
        answer = await service.journey_map(conn, ws, model, dim=dim, win=f.win)
        groups = views.pick_group(answer, f.value, _empty_map(model))
        if dim != TOTAL and f.value is None:  # the "All" tab: the whole workspace
            groups = replace(
                groups, body=await service.journey_map(conn, ws, model, dim=TOTAL, win=f.win)
            )
        context = await _page_context(conn, ws, model, f, "map")
    cards = views.stage_cards(groups.body["stages"], _thresholds(model))
    return _render(
        "journey_map.html",
        **context,
        groups=groups,
        values=groups.values,
        selected=groups.selected,
        cards=cards,
        compare=views.compare_rows(groups.all) if f.breakdown else [],
        totals={
            "customers": sum(c.customers for c in cards),
            "new": cards[0].entered if cards else 0,
            "stalled": sum(c.dropoff or 0 for c in cards),
            "responses": sum(c.responses for c in cards),
        },
    )


# --------------------------------------------------------------------------- funnel


@router.get("/dashboard/funnel")
async def funnel_page(request: Request) -> Response:
    """An ordered funnel of stages (default) or events."""
    async with _analysis(request) as (ws, conn, model, f):
        default_steps = ",".join(model.stage_names[: service.MAX_FUNNEL_STEPS])
        raw_steps = request.query_params.get("steps") or default_steps
        raw_window = request.query_params.get("window") or "14d"
        steps = service.funnel_steps(model, raw_steps)
        span = service.funnel_window(raw_window)
        answer = await service.funnel(conn, ws, model, dim=f.dim, win=f.win, steps=steps, span=span)
        context = await _page_context(conn, ws, model, f, "funnel")
    groups = views.pick_group(answer, None, {"steps": []})
    series = groups.all or [(None, {"steps": []})]
    labels = [s.name for s in steps]
    datasets = []
    order = {name: i for i, name in enumerate(model.stage_names)}
    for i, (value, body) in enumerate(series):
        dataset: dict[str, Any] = {
            "label": views.value_label(value) if f.breakdown else "Customers",
            "data": [s["customers"] for s in body["steps"]] or [0] * len(labels),
            "colour": views.stage_colour(i),
        }
        if not f.breakdown:  # one series: each bar in its stage's colour (events in grey)
            dataset["colours"] = [
                views.stage_colour(order[s.name]) if s.kind == "stage" else "#64748b" for s in steps
            ]
        datasets.append(dataset)
    chart = views.chart("bar", labels, datasets, yTitle="customers")
    return _render(
        "funnel.html",
        **context,
        steps_text=raw_steps,
        window_text=raw_window,
        series=series,
        step_names=labels,
        charts=views.chart_json({"funnel": chart}),
    )


# --------------------------------------------------------------------------- trends


@router.get("/dashboard/trends")
async def trends_page(request: Request) -> Response:
    """Stage entries per day."""
    async with _analysis(request) as (ws, conn, model, f):
        dim = f.dim
        values: list[str | None] = []
        dval = None
        if dim != TOTAL:
            stages = await service.stages(conn, ws, model, dim=dim, win=f.win)
            values = [g["value"] for g in stages["groups"]]
            dval = f.value  # None: every group, the whole workspace
        days = await queries.stage_days(conn, ws, dim=dim, dval=dval, win=f.win)
        context = await _page_context(conn, ws, model, f, "trends")
    labels = [d.isoformat() for d in queries.window_days(f.win)]
    datasets = [
        {"label": name, "data": days.get(name, [0] * len(labels)), "colour": views.stage_colour(i)}
        for i, name in enumerate(model.stage_names)
    ]
    rows = []
    for i, name in enumerate(model.stage_names):
        series = days.get(name, [0] * len(labels))
        total = sum(series)
        peak = max(range(len(series)), key=lambda k: series[k]) if total else None
        rows.append(
            {
                "stage": name,
                "colour_index": i,
                "total": total,
                "per_day": total / max(1, len(labels)),
                "peak_day": labels[peak] if peak is not None else None,
                "peak": series[peak] if peak is not None else 0,
            }
        )
    chart = views.chart("bar", labels, datasets, stacked=True, yTitle="customers entering")
    return _render(
        "trends.html",
        **context,
        values=values,
        selected=None if dval is None else (dval or None),
        rows=rows,
        charts=views.chart_json({"trends": chart}),
    )


# --------------------------------------------------------------------------- channels


@router.get("/dashboard/channels")
async def channels_page(request: Request) -> Response:
    """Channel mix: over the whole journey, and in each stage."""
    async with _analysis(request) as (ws, conn, model, f):
        dim = f.dim
        values: list[str | None] = []
        if dim != TOTAL:
            grouped = await service.channels(conn, ws, model, dim=dim, win=f.win, stage=None)
            values = [g["value"] for g in grouped["groups"]]
        shown = dim if f.value is not None else TOTAL
        overall_answer = await service.channels(conn, ws, model, dim=shown, win=f.win, stage=None)
        map_answer = await service.journey_map(conn, ws, model, dim=shown, win=f.win)
        context = await _page_context(conn, ws, model, f, "channels")
    overall = views.pick_group(overall_answer, f.value, {"channels": []})
    by_stage = views.pick_group(map_answer, f.value, _empty_map(model))
    channels = overall.body["channels"]
    total_touches = sum(c["touches"] for c in channels) or 1
    stage_rows = by_stage.body["stages"]
    names: list[str] = [c["channel"] for c in channels]
    for s in stage_rows:
        for c in s["channels"]:
            if c["channel"] not in names:
                names.append(c["channel"])
    mix = views.chart(
        "bar",
        list(model.stage_names),
        [
            {
                "label": name,
                "data": [
                    next((c["touches"] for c in s["channels"] if c["channel"] == name), 0)
                    for s in stage_rows
                ],
                "colour": views.channel_colour(name),
            }
            for name in names
        ],
        stacked=True,
        horizontal=True,
        xTitle="touches",
    )
    share = views.chart(
        "doughnut",
        [c["channel"] for c in channels],
        [
            {
                "label": "touches",
                "data": [c["touches"] for c in channels],
                "colours": [views.channel_colour(c["channel"]) for c in channels],
            }
        ],
    )
    totals = {c["channel"]: {**c, "share": c["touches"] / total_touches} for c in channels}
    matrix = [
        {
            "channel": name,
            "overall": totals.get(name),
            "cells": [
                next(
                    (
                        (
                            c["touches"],
                            views.percent(c["conversion_rate"]),
                            views.heat(c["conversion_rate"]),
                        )
                        for c in s["channels"]
                        if c["channel"] == name
                    ),
                    None,
                )
                for s in stage_rows
            ],
        }
        for name in names
    ]
    return _render(
        "channels.html",
        **context,
        values=values,
        selected=overall.selected,
        matrix=matrix,
        charts=views.chart_json({"share": share, "mix": mix}),
    )


# --------------------------------------------------------------------------- attribution


@router.get("/dashboard/attribution")
async def attribution_page(request: Request) -> Response:
    """The five attribution models side by side for one conversion stage."""
    async with _analysis(request) as (ws, conn, model, f):
        dim = f.dim
        default = "purchase" if "purchase" in model.stage_names else model.stage_names[-1]
        conversion = request.query_params.get("conversion") or default
        values: list[str | None] = []
        if dim != TOTAL:
            grouped = await service.attribution(
                conn, ws, model, dim=dim, win=f.win, model_name="last", conversion=conversion
            )
            values = [g["value"] for g in grouped["groups"]]
        shown = dim if f.value is not None else TOTAL
        answers: dict[str, views.Groups] = {}
        for name in ATTRIBUTION_MODELS:
            answer = await service.attribution(
                conn, ws, model, dim=shown, win=f.win, model_name=name, conversion=conversion
            )
            answers[name] = views.pick_group(answer, f.value, {"conversions": 0, "channels": []})
        context = await _page_context(conn, ws, model, f, "attribution")
    credit: dict[str, dict[str, float]] = {}
    for name, groups in answers.items():
        for c in groups.body["channels"]:
            credit.setdefault(c["channel"], {})[name] = c["credit"]
    order = sorted(credit, key=lambda ch: (-credit[ch].get("last", 0.0), ch))
    conversions = answers[ATTRIBUTION_MODELS[0]].body["conversions"]
    chart = views.chart(
        "bar",
        order,
        [
            {
                "label": views.MODEL_LABELS[name],
                "data": [round(credit[ch].get(name, 0.0), 2) for ch in order],
                "colour": views.MODEL_COLOURS[name],
            }
            for name in ATTRIBUTION_MODELS
        ],
        yTitle="conversions credited",
    )
    first = answers[ATTRIBUTION_MODELS[0]]
    return _render(
        "attribution.html",
        **context,
        conversion=conversion,
        conversions=conversions,
        models=list(ATTRIBUTION_MODELS),
        values=values,
        selected=first.selected,
        rows=[
            {
                "channel": ch,
                "colour": views.channel_colour(ch),
                "credit": [credit[ch].get(name, 0.0) for name in ATTRIBUTION_MODELS],
                "share": [
                    credit[ch].get(name, 0.0) / conversions if conversions else None
                    for name in ATTRIBUTION_MODELS
                ],
            }
            for ch in order
        ],
        charts=views.chart_json({"attribution": chart}),
    )


# --------------------------------------------------------------------------- profiles


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """An answer of the profile service as plain JSON values (stored JSON fragments decoded,
    times as ISO text)."""
    plain: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return plain


@router.get("/dashboard/profiles")
async def profiles_page(request: Request) -> Response:
    """Find a customer by any identifier; their profile, timeline and identity ledger."""
    ws = await _workspace(request)
    query = (request.query_params.get("q") or "").strip()[:500]
    found: dict[str, Any] | None = None
    shared: dict[str, Any] | None = None
    tried = views.identifier_candidates(query)
    async with runtime(request).read_connection() as conn:
        model = await model_for(conn, ws)
        f = _filters(request, model)
        for candidate in tried:
            try:
                profile = await profiles.profile(conn, ws, candidate)
            except ProblemError as exc:
                if exc.status == 409:
                    shared = {"identifier": candidate, "customer_ids": exc.extra["customer_ids"]}
                    break
                if exc.status in (400, 404):
                    continue
                raise
            by_id = f"customer_id:{profile['customer_id']}"
            stage = await profiles.stage(conn, ws, by_id)
            timeline = await profiles.timeline(
                conn,
                ws,
                by_id,
                limit=TIMELINE_LIMIT,
                cursor=None,
                since=None,
                until=None,
                order="desc",
            )
            identities = await profiles.identities(conn, ws, by_id)
            found = {
                "matched": candidate,
                "profile": _plain(profile),
                "stage": _plain(stage),
                "timeline": _plain(timeline),
                "identities": _plain(identities),
            }
            break
        context = await _page_context(conn, ws, model, f, "profiles")
    extra: dict[str, Any] = {}
    if found is not None:
        events = list(reversed(found["timeline"]["events"]))
        history = found["stage"]["stage_history"] or []
        raw_traits = found["profile"]["traits"]
        traits: dict[str, Any] = raw_traits if isinstance(raw_traits, dict) else {}
        extra = {
            "chart": views.timeline_chart(history, events, model.stage_names),
            "stage_index": {name: i for i, name in enumerate(model.stage_names)},
            "traits": sorted(traits.items()),
            "title": next(
                (
                    v.strip()
                    for v in (traits.get("name"), traits.get("email"))
                    if isinstance(v, str) and v.strip()
                ),
                found["profile"]["customer_id"],
            ),
            "compact": views.compact_json,
            "truncated": found["profile"]["event_count"] > len(events),
            "event_rows": (
                found["timeline"]["events"]
                if request.query_params.get("events") == "all"
                else found["timeline"]["events"][:EVENT_ROWS]
            ),
        }
    return _render(
        "profiles.html",
        **context,
        query=query,
        tried=tried,
        found=found,
        shared=shared,
        **extra,
    )
