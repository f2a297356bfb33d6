"""What the dashboard pages show, shaped from the aggregate and profile answers.

Pure: standard library only (no FastAPI, no database). Numbers become display strings here,
charts become small JSON specs that static/dashboard.js hands to Chart.js, and colours are
chosen here so that a stage or a channel has the same colour on every page. Nothing here
escapes: the templates do (Jinja2 autoescape), and chart specs travel as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Stage colours in journey order (a model may have more stages: they cycle).
STAGE_COLOURS = (
    "#3b82f6",
    "#8b5cf6",
    "#f59e0b",
    "#10b981",
    "#0ea5e9",
    "#ec4899",
    "#6366f1",
    "#84cc16",
    "#f97316",
    "#14b8a6",
)
CHANNEL_COLOURS = {
    "Direct": "#64748b",
    "Organic Search": "#22c55e",
    "Paid Search": "#16a34a",
    "Organic Social": "#3b82f6",
    "Paid Social": "#1d4ed8",
    "Email": "#f59e0b",
    "SMS": "#d97706",
    "Referral": "#a855f7",
    "Display": "#ec4899",
    "Affiliates": "#14b8a6",
    "Mobile App": "#0ea5e9",
    "Customer Service": "#ef4444",
    "Store": "#78350f",
    "Unassigned": "#cbd5e1",
}
OTHER_COLOURS = ("#6b7280", "#0891b2", "#be185d", "#4d7c0f", "#7c3aed", "#b45309")
MODEL_COLOURS = {
    "first": "#3b82f6",
    "last": "#f59e0b",
    "linear": "#10b981",
    "position": "#8b5cf6",
    "time_decay": "#ec4899",
}
MODEL_LABELS = {
    "first": "First touch",
    "last": "Last touch",
    "linear": "Linear",
    "position": "Position (40/20/40)",
    "time_decay": "Time decay (7-day half-life)",
}
NONE_LABEL = "(no value)"
MAX_CHANNELS_PER_STAGE = 6


def stage_colour(index: int) -> str:
    """The colour of the stage at `index` in the journey."""
    return STAGE_COLOURS[index % len(STAGE_COLOURS)]


def channel_colour(channel: str) -> str:
    """A stable colour per channel (unknown channels: by a stable hash of the name)."""
    known = CHANNEL_COLOURS.get(channel)
    if known is not None:
        return known
    return OTHER_COLOURS[sum(channel.encode()) % len(OTHER_COLOURS)]


# --------------------------------------------------------------------------- numbers


def count(value: float | None) -> str:
    """12,345 (— for nothing)."""
    if value is None:
        return "—"
    return f"{round(value):,}"


def percent(rate: float | None, digits: int = 0) -> str:
    """A rate 0..1 as a percentage (— when undefined)."""
    if rate is None:
        return "—"
    return f"{rate * 100:.{digits}f}%"


def duration(seconds: float | None) -> str:
    """A median duration, readable at a glance: 45 s, 12 min, 5.2 h, 3.4 d."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    days = seconds / 86400
    return f"{days:.0f} d" if days == round(days) else f"{days:.1f} d"


def signed(value: float | None, digits: int = 0) -> str:
    """+42 / -7 (— for nothing)."""
    if value is None:
        return "—"
    return f"{value:+.{digits}f}"


def timestamp(at: datetime | str | None) -> str:
    """2026-01-05 08:01 UTC."""
    if at is None:
        return "—"
    moment = _as_datetime(at)
    if moment is None:
        return str(at)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def tone(metric: str, value: float | None) -> str:
    """good / ok / bad / none: how a feedback figure is coloured.

    NPS: above 30 good, 0 to 30 fair, below 0 bad. CSAT (1-5): 4+ good, 3+ fair. Success rate:
    80%+ good, 50%+ fair. Sentiment (-1..1): above 0.2 good, above -0.2 fair. Effort (CES) has
    scales that run either way, so it is never judged.
    """
    if value is None:
        return "none"
    bands = {
        "nps": (30.0, 0.0),
        "csat": (4.0, 3.0),
        "success_rate": (0.8, 0.5),
        "sentiment": (0.2, -0.2),
        "conversion": (0.5, 0.2),
    }
    if metric not in bands:
        return "neutral"
    good, fair = bands[metric]
    if value >= good:
        return "good"
    if value >= fair:
        return "ok"
    return "bad"


@dataclass(frozen=True, slots=True)
class Badge:
    """One feedback figure, ready to show."""

    label: str
    text: str
    tone: str
    title: str


def feedback_badges(fb: Mapping[str, Any] | None) -> list[Badge]:
    """The feedback figures that some event carried, as coloured badges."""
    if not fb:
        return []
    badges = []
    if fb.get("nps") is not None:
        badges.append(
            Badge("NPS", signed(fb["nps"]), tone("nps", fb["nps"]), "% promoters - % detractors")
        )
    if fb.get("csat") is not None:
        badges.append(
            Badge("CSAT", f"{fb['csat']:.1f}/5", tone("csat", fb["csat"]), "mean CSAT score")
        )
    if fb.get("effort") is not None:
        badges.append(Badge("CES", f"{fb['effort']:.1f}", "neutral", "mean customer effort"))
    if fb.get("success_rate") is not None:
        badges.append(
            Badge(
                "Success",
                percent(fb["success_rate"]),
                tone("success_rate", fb["success_rate"]),
                "share of success = true",
            )
        )
    if fb.get("sentiment") is not None:
        badges.append(
            Badge(
                "Sentiment",
                signed(fb["sentiment"], 2),
                tone("sentiment", fb["sentiment"]),
                "mean sentiment (-1..1)",
            )
        )
    return badges


def heat(rate: float | None) -> int:
    """A 0..5 shade for a conversion-rate cell (0: no data)."""
    if rate is None:
        return 0
    return 1 + min(4, int(rate * 5))


# --------------------------------------------------------------------------- breakdowns


def value_label(value: str | None) -> str:
    """How a breakdown group's value is shown."""
    return NONE_LABEL if value is None or value == "" else value


@dataclass(frozen=True, slots=True)
class Groups:
    """A breakdown answer split into its groups, one of them selected."""

    values: list[str | None]
    selected: str | None
    body: dict[str, Any]
    all: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)


def pick_group(answer: Mapping[str, Any], wanted: str | None, empty: dict[str, Any]) -> Groups:
    """The selected group of an answer (`wanted` None: the first group; "" the group without a
    value). An answer without groups is its own single group, `wanted` then only names it."""
    if "groups" not in answer:
        selected = None if wanted is None or wanted == "" else wanted
        return Groups(values=[], selected=selected, body=dict(answer), all=[(None, dict(answer))])
    groups = [(g["value"], dict(g)) for g in answer["groups"]]
    values = [v for v, _ in groups]
    if not groups:
        return Groups(values=[], selected=None, body=empty, all=[])
    if wanted is None:
        chosen = groups[0]
    else:
        target = None if wanted == "" else wanted
        chosen = next((g for g in groups if g[0] == target), (target, empty))
    return Groups(values=values, selected=chosen[0], body=chosen[1], all=groups)


# --------------------------------------------------------------------------- charts


def chart(
    kind: str,
    labels: Sequence[str],
    datasets: Iterable[Mapping[str, Any]],
    **options: Any,
) -> dict[str, Any]:
    """A chart spec for dashboard.js: `{kind, labels, datasets: [{label, data, colour}], …}`."""
    return {"kind": kind, "labels": list(labels), "datasets": list(datasets), **options}


def chart_json(specs: Mapping[str, Any]) -> str:
    """Chart specs as JSON text for a `<script type="application/json">` block: `<`, `>` and
    `&` are escaped so customer data can never close the block or open markup."""
    text = json.dumps(specs, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- journey map


@dataclass(frozen=True, slots=True)
class ChannelRow:
    channel: str
    colour: str
    touches: int
    customers: int
    conversion: str
    conversion_tone: str
    bar: float  # 0..100, touches relative to the stage's busiest channel
    badges: list[Badge]


@dataclass(frozen=True, slots=True)
class StageCard:
    index: int
    name: str
    colour: str
    customers: int
    entered: int
    conversion_rate: float | None
    conversion: str
    conversion_tone: str
    next_stage: str | None
    dropoff: int | None
    threshold: str | None
    median_in_stage: str
    badges: list[Badge]
    responses: int
    channels: list[ChannelRow]
    more_channels: int
    entered_bar: float  # 0..100, relative to the stage most entered


def stage_cards(
    stages: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float | None]
) -> list[StageCard]:
    """The journey map's columns from a journey-map body's `stages`."""
    most = max((s["entered"] for s in stages), default=0) or 1
    cards = []
    for i, s in enumerate(stages):
        channels = s.get("channels") or []
        busiest = max((c["touches"] for c in channels), default=0) or 1
        last = i == len(stages) - 1
        rows = [
            ChannelRow(
                channel=c["channel"],
                colour=channel_colour(c["channel"]),
                touches=c["touches"],
                customers=c["customers"],
                # Nobody moves on from the last stage: a rate there would only say 0%.
                conversion="" if last else percent(c["conversion_rate"]),
                conversion_tone="none" if last else tone("conversion", c["conversion_rate"]),
                bar=round(100 * c["touches"] / busiest, 1),
                badges=feedback_badges(c.get("feedback")),
            )
            for c in channels[:MAX_CHANNELS_PER_STAGE]
        ]
        threshold = thresholds.get(s["stage"])
        fb = s.get("feedback") or {}
        cards.append(
            StageCard(
                index=i,
                name=s["stage"],
                colour=stage_colour(i),
                customers=s["customers"],
                entered=s["entered"],
                conversion_rate=None if last else s["conversion_rate"],
                conversion="—" if last else percent(s["conversion_rate"]),
                conversion_tone="none" if last else tone("conversion", s["conversion_rate"]),
                next_stage=None if last else stages[i + 1]["stage"],
                dropoff=s.get("dropoff"),
                threshold=None if threshold is None else duration(threshold),
                median_in_stage=duration(s.get("median_seconds_in_stage")),
                badges=feedback_badges(fb),
                responses=int(fb.get("responses") or 0),
                channels=rows,
                more_channels=max(0, len(channels) - MAX_CHANNELS_PER_STAGE),
                entered_bar=round(100 * s["entered"] / most, 1),
            )
        )
    return cards


@dataclass(frozen=True, slots=True)
class CompareRow:
    value: str | None
    label: str
    cells: list[tuple[int, str, int]]  # entered, conversion text, heat shade


def compare_rows(groups: Sequence[tuple[str | None, Mapping[str, Any]]]) -> list[CompareRow]:
    """One row per breakdown group: entered and conversion per stage."""
    rows = []
    for value, body in groups:
        stages = body.get("stages") or []
        cells = [
            (s["entered"], percent(s["conversion_rate"]), heat(s["conversion_rate"]))
            for s in stages
        ]
        rows.append(CompareRow(value=value, label=value_label(value), cells=cells))
    return rows


# --------------------------------------------------------------------------- profiles


def identifier_candidates(query: str) -> list[str]:
    """What a profile search tries, in order: `kind:value` as typed, then the text as an email,
    then as a user id."""
    text = query.strip()
    if not text:
        return []
    out: list[str] = []
    kind, sep, value = text.partition(":")
    if sep and kind and value and kind == kind.strip() and " " not in kind:
        out.append(text)
    for candidate in (f"email:{text}", f"user_id:{text}"):
        if candidate not in out:
            out.append(candidate)
    return out


@dataclass(frozen=True, slots=True)
class Band:
    stage: str
    colour: str
    x: float
    width: float
    entered_at: str


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Lane:
    channel: str
    y: float
    colour: str


@dataclass(frozen=True, slots=True)
class TimelineChart:
    width: int
    height: int
    top: int
    left: int
    bands: list[Band]
    lanes: list[Lane]
    dots: list[Dot]
    start: str
    end: str


TIMELINE_WIDTH = 1400
TIMELINE_LEFT = 140
LANE_HEIGHT = 26
TIMELINE_TOP = 30


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def timeline_chart(
    history: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    stage_names: Sequence[str],
) -> TimelineChart:
    """An SVG timeline: one band per stage the customer was in (from entering it to entering
    the next), one lane per channel, one dot per event."""
    moments = [t for t in (_as_datetime(e.get("timestamp")) for e in events) if t]
    entries = [
        (str(h.get("stage")), t)
        for h in history
        if (t := _as_datetime(h.get("entered_at"))) is not None
    ]
    moments += [t for _, t in entries]
    if not moments:
        now = datetime.now(UTC)
        moments = [now]
    start, end = min(moments), max(moments)
    span = max((end - start).total_seconds(), 1.0)
    plot = TIMELINE_WIDTH - TIMELINE_LEFT - 10

    def x(at: datetime) -> float:
        return round(TIMELINE_LEFT + plot * (at - start).total_seconds() / span, 1)

    order = {name: i for i, name in enumerate(stage_names)}
    bands = []
    for i, (stage, at) in enumerate(entries):
        until = entries[i + 1][1] if i + 1 < len(entries) else end
        left = x(at)
        right = max(x(until), left + 2.0) if i + 1 < len(entries) else TIMELINE_LEFT + plot
        bands.append(
            Band(
                stage=stage,
                colour=stage_colour(order.get(stage, i)),
                x=left,
                width=round(right - left, 1),
                entered_at=timestamp(at),
            )
        )
    channels: list[str] = []
    for e in events:
        name = e.get("channel") or "Unassigned"
        if name not in channels:
            channels.append(name)
    lanes = [
        Lane(channel=c, y=TIMELINE_TOP + LANE_HEIGHT * (i + 0.5), colour=channel_colour(c))
        for i, c in enumerate(channels)
    ]
    lane_y = {lane.channel: lane.y for lane in lanes}
    dots = []
    for e in events:
        when = _as_datetime(e.get("timestamp"))
        if when is None:
            continue
        name = e.get("channel") or "Unassigned"
        label = e.get("event") or e.get("type") or "event"
        dots.append(
            Dot(
                x=x(when),
                y=lane_y[name],
                colour=channel_colour(name),
                title=f"{timestamp(when)} · {label} · {name}",
            )
        )
    height = TIMELINE_TOP + LANE_HEIGHT * max(1, len(lanes)) + 24
    return TimelineChart(
        width=TIMELINE_WIDTH,
        height=height,
        top=TIMELINE_TOP,
        left=TIMELINE_LEFT,
        bands=bands,
        lanes=lanes,
        dots=dots,
        start=timestamp(start),
        end=timestamp(end),
    )


def compact_json(value: Any, limit: int = 240) -> str:
    """Event properties on one line, cut at `limit` characters."""
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
