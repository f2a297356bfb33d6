"""A customer's contribution to the stage-level rollups, and the difference between two of them.

Pure: standard library only. The stitcher derives each touched customer's `Facts` from its whole
timeline, stores them with the customer, and adds `new - old` to the rollup tables. Because a
customer's contribution is always replaced as a whole, merges, unmerges, late events, model
changes and deletions keep the rollups exact: a merged customer is counted once.

Every figure is cohort-based: it is filed under the UTC day the customer *entered the stage*
(for `stage=""`, the day of the customer's first event), so summing days gives exact figures for
any window without distinct counting at query time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from app.journeys.channels import DIRECT, UNASSIGNED
from app.journeys.model import StitchEvent
from app.journeys.stages import StageEntry

ANY_STAGE = ""  # touch rows over the whole journey, filed under the first event's day
TOTAL = ""  # the `dim` of rows without a breakdown (and the `dval` of those rows)
NONE_VALUE = ""  # a customer without a value for a breakdown

# Touch counters, in the order of the rollup table's value columns.
TOUCH_FIELDS = (
    "touches",
    "customers",
    "converted",
    "responses",
    "nps_n",
    "nps_promoters",
    "nps_detractors",
    "csat_n",
    "csat_sum",
    "effort_n",
    "effort_sum",
    "success_n",
    "success_yes",
    "sentiment_n",
    "sentiment_sum",
)
_T = {name: i for i, name in enumerate(TOUCH_FIELDS)}
_TOUCHES, _CUSTOMERS, _CONVERTED, _RESPONSES = (
    _T["touches"],
    _T["customers"],
    _T["converted"],
    _T["responses"],
)
_FEEDBACK_PROPERTIES = ("effort", "success", "sentiment")
ATTRIBUTION_MODELS = ("first", "last", "linear", "position", "time_decay")
TIME_DECAY_HALF_LIFE_SECONDS = 7 * 86400.0
TOUCH_TYPES = frozenset({"track", "page", "screen"})
NPS_EVENT = "Survey Responded"
CSAT_EVENT = "CSAT Submitted"

# Durations are kept as counts in log buckets: bucket b holds [GROWTH**(b-1), GROWTH**b) seconds
# (bucket 0: under one second), so a median read off them is within 5% of the exact one.
GROWTH = 1.1
MAX_BUCKET = 250


def duration_bucket(seconds: float) -> int:
    """The log bucket of a duration."""
    if seconds < 1:
        return 0
    return min(MAX_BUCKET, 1 + math.floor(math.log(seconds) / math.log(GROWTH)))


def bucket_seconds(bucket: int) -> float:
    """A representative duration of a bucket (its geometric middle)."""
    if bucket <= 0:
        return 0.0
    return GROWTH ** (bucket - 1) * math.sqrt(GROWTH)


def median_of_buckets(counts: Mapping[int, float]) -> float | None:
    """The median duration of a histogram of buckets (None when empty)."""
    total = sum(n for n in counts.values() if n > 0)
    if total <= 0:
        return None
    half = total / 2
    running = 0.0
    for bucket in sorted(counts):
        n = counts[bucket]
        if n <= 0:
            continue
        running += n
        if running >= half:
            return round(bucket_seconds(bucket), 1)
    return None  # pragma: no cover - unreachable: running reaches total


def day_of(at: datetime) -> int:
    """The UTC day of an instant, as a proleptic ordinal (compact in stored facts)."""
    return at.astimezone(UTC).date().toordinal()


def ordinal_date(day: int) -> date:
    """Inverse of `day_of`."""
    return date.fromordinal(day)


@dataclass(slots=True)
class Facts:
    """One customer's contribution. Keys are plain tuples so they serialise compactly.

    `stages`: (stage, entered_at epoch µs, converted 0|1, duration bucket to the next stage or -1);
    `touches`: (stage, channel, day) -> TOUCH_FIELDS counters;
    `attribution`: (conversion stage, channel, day) -> credit per ATTRIBUTION_MODELS.
    """

    dims: dict[str, str] = field(default_factory=dict)
    stages: list[tuple[str, int, int, int]] = field(default_factory=list)
    touches: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    attribution: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    # Not part of the contribution: the stitcher's state for resuming the customer's walk
    # (`app.journeys.fold`), stored alongside it under "k" (no rollup reads it).
    walk: dict[str, Any] | None = field(default=None, compare=False)
    # Not part of the contribution either: when set, this contribution was resumed from
    # `since` (`FactsWalk(base=...)`) and differs from it only in the touches at the keys of
    # `touched` (same stages, same attribution objects), so `add_change` reads only those.
    since: Facts | None = field(default=None, compare=False, repr=False)
    touched: set[tuple[str, str, int]] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The stored form (see `from_json`)."""
        stored = {
            "d": self.dims,
            "s": self.stages,
            "t": [[*key, *values] for key, values in self.touches.items()],
            "a": [[*key, *values] for key, values in self.attribution.items()],
        }
        if self.walk is not None:
            stored["k"] = self.walk
        return stored

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Facts:
        """Read facts written by `to_json`."""
        return cls(
            dims=dict(raw.get("d", {})),
            stages=[(s[0], s[1], s[2], s[3]) for s in raw.get("s", [])],
            touches={(t[0], t[1], t[2]): t[3:] for t in raw.get("t", [])},
            attribution={(a[0], a[1], a[2]): a[3:] for a in raw.get("a", [])},
            walk=raw.get("k"),
        )


@dataclass(slots=True)
class TimelineItem:
    """What the facts need of one event, with the values the stitcher derived for it.

    Treat it as immutable; not declared frozen for the same reason as `StitchEvent` (the
    stitcher builds one per event of every customer it re-derives)."""

    event: StitchEvent
    channel: str
    session_id: str | None
    stage: str | None


def breakdown_value(raw: object) -> str:
    """A breakdown group's name: strings as they are, other JSON values as JSON-ish text."""
    if raw is None:
        return NONE_VALUE
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw.strip()[:200]
    if isinstance(raw, int | float):
        return repr(raw)[:200]
    return str(raw)[:200]


def customer_dims(
    breakdowns: Sequence[str], *, traits: Mapping[str, Any], items: Sequence[TimelineItem]
) -> dict[str, str]:
    """The customer's group for each breakdown: the current trait, or the property's value on
    the customer's latest event that carries it (so `property:variation_name` splits customers
    by the A/B variant they last saw)."""
    dims: dict[str, str] = {}
    for breakdown in breakdowns:
        kind, _, name = breakdown.partition(":")
        value: object = None
        if kind == "trait":
            value = traits.get(name)
        else:
            for item in reversed(items):
                if item.event.properties.get(name) is not None:
                    value = item.event.properties[name]
                    break
        dims[breakdown] = breakdown_value(value)
    return dims


def _number(value: object, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and low <= number <= high else None


def feedback_of(e: StitchEvent) -> list[float] | None:
    """The feedback counters one event carries (None when it carries none)."""
    props = e.properties
    if e.event not in (NPS_EVENT, CSAT_EVENT) and not any(
        name in props for name in _FEEDBACK_PROPERTIES
    ):
        return None  # the usual case: no feedback, nothing to allocate
    counters = [0.0] * len(TOUCH_FIELDS)
    found = False
    if e.event == NPS_EVENT:
        score = _number(props.get("score"), 0, 10)
        if score is not None:
            found = True
            counters[_T["nps_n"]] = 1
            counters[_T["nps_promoters"]] = 1 if score >= 9 else 0
            counters[_T["nps_detractors"]] = 1 if score <= 6 else 0
    elif e.event == CSAT_EVENT:
        score = _number(props.get("score"), 1, 5)
        if score is not None:
            found = True
            counters[_T["csat_n"]] = 1
            counters[_T["csat_sum"]] = score
    effort = _number(props.get("effort"), 1, 7)
    if effort is not None:
        found = True
        counters[_T["effort_n"]] = 1
        counters[_T["effort_sum"]] = effort
    success = props.get("success")
    if isinstance(success, bool):
        found = True
        counters[_T["success_n"]] = 1
        counters[_T["success_yes"]] = 1 if success else 0
    sentiment = _number(props.get("sentiment"), -1, 1)
    if sentiment is not None:
        found = True
        counters[_T["sentiment_n"]] = 1
        counters[_T["sentiment_sum"]] = sentiment
    if not found:
        return None
    counters[_T["responses"]] = 1
    return counters


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_us(at: datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND


def attribution_credits(
    touches: Sequence[tuple[str, int]], *, converted_us: int
) -> dict[str, list[float]]:
    """Credit per channel for one conversion under each model; every model's credits sum to 1.

    `touches` are the sessions that started up to the conversion, in time order, as (channel,
    session start), instants in epoch µs like `converted_us`. position: 40% first, 40% last,
    20% shared by the middle (one touch: 100%, two: 50/50); time_decay: weight halves every 7
    days before the conversion.
    """
    n = len(touches)
    credits: dict[str, list[float]] = {}

    def add(channel: str, model: int, credit: float) -> None:
        credits.setdefault(channel, [0.0] * len(ATTRIBUTION_MODELS))[model] += credit

    if n == 0:
        return credits
    add(touches[0][0], 0, 1.0)
    add(touches[-1][0], 1, 1.0)
    for channel, _ in touches:
        add(channel, 2, 1.0 / n)
    if n == 1:
        add(touches[0][0], 3, 1.0)
    elif n == 2:
        add(touches[0][0], 3, 0.5)
        add(touches[1][0], 3, 0.5)
    else:
        add(touches[0][0], 3, 0.4)
        add(touches[-1][0], 3, 0.4)
        for channel, _ in touches[1:-1]:
            add(channel, 3, 0.2 / (n - 2))
    weights = [
        # (µs / 10**6: the same float as timedelta.total_seconds(), both exact divisions)
        0.5 ** (max(0.0, (converted_us - start) / 1_000_000) / TIME_DECAY_HALF_LIFE_SECONDS)
        for _, start in touches
    ]
    total = sum(weights)
    for (channel, _), weight in zip(touches, weights, strict=True):
        add(channel, 4, weight / total)
    return credits


class FactsWalk:
    """A customer's contribution built one event at a time (in `sort_key` order), resumable
    from a stored contribution plus the customer's sessions (`app.journeys.fold`).

    Each event adds to its touch keys at once; which keys it counts under depends only on the
    stage it happened in (entered earlier) and its own channel. What later events can still
    change, the `converted` flags, the stage list and the attribution, is computed by `facts`
    from the final history."""

    __slots__ = (
        "_base",
        "_base_sessions",
        "_entered_day",
        "_touched",
        "first_day",
        "sessions",
        "touches",
    )

    def __init__(
        self,
        *,
        first_day: int | None = None,
        touches: dict[tuple[str, str, int], list[float]] | None = None,
        sessions: list[list[Any]] | None = None,
        entered_day: dict[str, int] | None = None,
        base: Facts | None = None,
    ) -> None:
        """A new walk, or (`touches`, `sessions`) one resumed from the stored contribution
        `base` (whose touches `touches` copies)."""
        self.first_day = first_day
        self.touches: dict[tuple[str, str, int], list[float]] = (
            touches if touches is not None else {}
        )
        # [session id, start (epoch µs), first message id, channel] of each session with a
        # non-bot event,
        # in time order. A session's channel is its first real source (not Direct or
        # Unassigned), else its first event's channel.
        self.sessions: list[list[Any]] = sessions if sessions is not None else []
        self._entered_day: dict[str, int] = entered_day if entered_day is not None else {}
        # While the walk resumed from `base` has not changed anything but touch counters (no
        # new stage entry, no earlier session's channel), `facts` keeps base's stages and
        # attribution instead of computing them again: they depend only on the stage entries
        # and on the sessions before each, and events added after the stored ones only start
        # sessions later than every entry.
        self._base = base
        self._base_sessions = len(self.sessions)
        self._touched: set[tuple[str, str, int]] = set()

    def add(
        self,
        e: StitchEvent,
        channel: str,
        session_id: str | None,
        stage: str | None,
        history: Sequence[StageEntry],
    ) -> None:
        """The next event with its derived channel, session and stage; `history` holds the
        stage entries up to and including it."""
        if self.first_day is None:
            self.first_day = day_of(e.timestamp)
        if e.is_bot:
            return
        if session_id is not None:
            last = self.sessions[-1] if self.sessions else None
            if last is None or last[0] != session_id:
                self.sessions.append([session_id, _epoch_us(e.timestamp), e.message_id, channel])
            elif last[3] in (DIRECT, UNASSIGNED) and channel not in (DIRECT, UNASSIGNED):
                last[3] = channel
                if len(self.sessions) <= self._base_sessions:
                    self._base = None  # a stored session's channel: attribution may change
        if e.type not in TOUCH_TYPES:
            return
        feedback = feedback_of(e)
        self._count((ANY_STAGE, channel, self.first_day), feedback)
        if stage is not None:
            day = self._entered_day.get(stage)
            if day is None:
                entry = next((h for h in reversed(history) if h.stage == stage), None)
                if entry is None:
                    return
                day = self._entered_day[stage] = day_of(entry.entered_at)
            self._count((stage, channel, day), feedback)

    def _count(self, key: tuple[str, str, int], feedback: list[float] | None) -> None:
        self._touched.add(key)
        counters = self.touches.get(key)
        if counters is None:
            counters = self.touches[key] = [0.0] * len(TOUCH_FIELDS)
            counters[_CUSTOMERS] = 1
        counters[_TOUCHES] += 1
        if feedback is not None:
            for i in range(_RESPONSES, len(TOUCH_FIELDS)):
                counters[i] += feedback[i]

    def facts(self, history: Sequence[StageEntry], *, dims: dict[str, str]) -> Facts:
        """The contribution of the events added so far, `history` their stage entries."""
        base = self._base
        if base is not None and len(history) == len(base.stages):
            return self._resumed_facts(base, history, dims)
        facts = Facts(dims=dims)
        if self.first_day is None:
            return facts
        converted: dict[str, int] = {}
        for i, entry in enumerate(history):
            nxt = history[i + 1] if i + 1 < len(history) else None
            bucket = (
                -1
                if nxt is None
                else duration_bucket((nxt.entered_at - entry.entered_at).total_seconds())
            )
            facts.stages.append(
                (entry.stage, _epoch_us(entry.entered_at), 0 if nxt is None else 1, bucket)
            )
            converted[entry.stage] = 0 if nxt is None else 1
        ever_converted = 1 if len(history) > 1 else 0
        for key, counters in self.touches.items():
            counters[_CONVERTED] = ever_converted if key[0] == ANY_STAGE else converted[key[0]]
        facts.touches = self.touches
        sessions = sorted(self.sessions, key=lambda s: (s[1], s[2]))
        for entry in history:
            entered_us = _epoch_us(entry.entered_at)
            moment = (entered_us, entry.message_id)
            before = [
                (channel, start) for _, start, mid, channel in sessions if (start, mid) <= moment
            ]
            day = day_of(entry.entered_at)
            for channel, credits in attribution_credits(before, converted_us=entered_us).items():
                facts.attribution[(entry.stage, channel, day)] = credits
        return facts

    def _resumed_facts(
        self, base: Facts, history: Sequence[StageEntry], dims: dict[str, str]
    ) -> Facts:
        """`facts` when no stage was entered since `base` (whose stages were computed from
        the same entries): its stages and attribution as they are, its touches with the
        walk's new counts (the `converted` flags of keys already there are unchanged)."""
        converted = {stage: flag for stage, _, flag, _ in base.stages}
        ever_converted = 1 if len(history) > 1 else 0
        for key in self._touched:
            self.touches[key][_CONVERTED] = (
                ever_converted if key[0] == ANY_STAGE else converted[key[0]]
            )
        return Facts(
            dims=dims,
            stages=base.stages,
            touches=self.touches,
            attribution=base.attribution,
            since=base,
            touched=self._touched,
        )


def customer_facts(
    items: Sequence[TimelineItem],
    history: Sequence[StageEntry],
    *,
    dims: dict[str, str],
) -> Facts:
    """The customer's contribution; `items` in `sort_key` order, `history` its stage entries."""
    walk = FactsWalk()
    for item in items:
        walk.add(item.event, item.channel, item.session_id, item.stage, history)
    return walk.facts(history, dims=dims)


@dataclass(slots=True)
class Deltas:
    """What to add to each rollup table, keyed like the tables' primary keys."""

    # (dim, dval, stage, day) -> [entered, converted]
    stages: dict[tuple[str, str, str, int], list[int]] = field(default_factory=dict)
    # (dim, dval, stage, day, bucket) -> n
    durations: dict[tuple[str, str, str, int, int], int] = field(default_factory=dict)
    # (dim, dval, stage, channel, day) -> TOUCH_FIELDS
    touches: dict[tuple[str, str, str, str, int], list[float]] = field(default_factory=dict)
    # (dim, dval, stage, channel, day) -> ATTRIBUTION_MODELS
    attribution: dict[tuple[str, str, str, str, int], list[float]] = field(default_factory=dict)
    # stage entries to write: (customer, stage) -> entered_at epoch µs, or None to delete
    entries: dict[tuple[str, str], int | None] = field(default_factory=dict)

    def empty(self) -> bool:
        """Nothing to write."""
        return not (
            self.stages or self.durations or self.touches or self.attribution or self.entries
        )


def _groups(facts: Facts) -> list[tuple[str, str]]:
    """The rollup groups a contribution is filed under: the totals, and each breakdown's group
    when the customer has a value for it. The no-value group of a breakdown is never stored:
    readers derive it as the totals minus the breakdown's named groups
    (`app.aggregates.service.grouped_rows`), which is exact for these additive tables and
    spares the stitcher writing most of its rows twice (most customers of a workspace are
    anonymous, with no trait and no experiment)."""
    return [(TOTAL, TOTAL), *((d, v) for d, v in facts.dims.items() if v != NONE_VALUE)]


def _add(target: dict[Any, list[Any]], key: Any, values: Sequence[float], sign: int) -> None:
    current = target.get(key)
    if current is None:
        # Always a new list: `values` belongs to a customer's facts.
        target[key] = list(values) if sign == 1 else [-v for v in values]
    elif sign == 1:
        for i, v in enumerate(values):
            current[i] += v
    else:
        for i, v in enumerate(values):
            current[i] -= v


def add_facts(deltas: Deltas, facts: Facts, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) one customer's contribution."""
    _expand(
        deltas,
        _groups(facts),
        [(entry, sign) for entry in facts.stages],
        facts.touches,
        facts.attribution,
        sign=sign,
    )


def add_change(deltas: Deltas, old: Facts | None, new: Facts | None) -> None:
    """Add `new - old`. When the customer's groups did not change (the usual case: a few new
    events), only the keys whose figures changed are expanded over the groups."""
    if old is not None and new is not None and new.since is old and old.dims == new.dims:
        assert new.touched is not None  # (set with `since`)
        _expand(deltas, _groups(new), [], _difference_at(old.touches, new.touches, new.touched), {})
        return
    if old is None or new is None or old.dims != new.dims:
        if old is not None:
            add_facts(deltas, old, -1)
        if new is not None:
            add_facts(deltas, new, 1)
        return
    stages: list[tuple[tuple[str, int, int, int], int]] = []
    if old.stages != new.stages:
        before, after = set(old.stages), set(new.stages)
        stages = [(e, -1) for e in old.stages if e not in after]
        stages += [(e, 1) for e in new.stages if e not in before]
    _expand(
        deltas,
        _groups(new),
        stages,
        _difference(old.touches, new.touches),
        _difference(old.attribution, new.attribution),
    )


def _difference(
    old: dict[tuple[str, str, int], list[float]], new: dict[tuple[str, str, int], list[float]]
) -> dict[tuple[str, str, int], list[float]]:
    changed = _difference_at(old, new, new)
    for key, values in old.items():
        if key not in new:
            changed[key] = [-v for v in values]
    return changed


def _difference_at(
    old: dict[tuple[str, str, int], list[float]],
    new: dict[tuple[str, str, int], list[float]],
    keys: Iterable[tuple[str, str, int]],
) -> dict[tuple[str, str, int], list[float]]:
    """`_difference` when only `keys` can differ (all of them in `new`)."""
    changed: dict[tuple[str, str, int], list[float]] = {}
    for key in keys:
        values = new[key]
        before = old.get(key)
        if before is None:
            changed[key] = values
        elif before != values:
            changed[key] = [a - b for a, b in zip(values, before, strict=True)]
    return changed


def _expand(
    deltas: Deltas,
    groups: list[tuple[str, str]],
    stages: list[tuple[tuple[str, int, int, int], int]],
    touches: dict[tuple[str, str, int], list[float]],
    attribution: dict[tuple[str, str, int], list[float]],
    *,
    sign: int = 1,
) -> None:
    """File signed stage entries, and touch / attribution deltas times `sign`, under every
    group."""
    entries = [
        (stage, day_of(epoch_us_to_datetime(entered_us)), did_convert, bucket, entry_sign)
        for (stage, entered_us, did_convert, bucket), entry_sign in stages
    ]
    for dim, dval in groups:
        for stage, day, did_convert, bucket, entry_sign in entries:
            _add(deltas.stages, (dim, dval, stage, day), (1, did_convert), entry_sign)
            if bucket >= 0:
                key = (dim, dval, stage, day, bucket)
                deltas.durations[key] = deltas.durations.get(key, 0) + entry_sign
        for (stage, channel, day), counters in touches.items():
            _add(deltas.touches, (dim, dval, stage, channel, day), counters, sign)
        for (stage, channel, day), credits in attribution.items():
            _add(deltas.attribution, (dim, dval, stage, channel, day), credits, sign)


def diff_entries(deltas: Deltas, customer_id: str, old: Facts | None, new: Facts | None) -> None:
    """Record the stage entries that changed between two versions of a customer's facts."""
    before = {s[0]: s[1] for s in old.stages} if old is not None else {}
    after = {s[0]: s[1] for s in new.stages} if new is not None else {}
    for stage in before.keys() - after.keys():
        deltas.entries[(customer_id, stage)] = None
    for stage, at in after.items():
        if before.get(stage) != at:
            deltas.entries[(customer_id, stage)] = at


def prune(deltas: Deltas) -> None:
    """Drop keys whose delta is zero (a customer recomputed to the same contribution)."""
    tables: list[dict[Any, list[Any]]] = [deltas.stages, deltas.touches, deltas.attribution]
    for table in tables:
        for key in [k for k, values in table.items() if max(map(abs, values)) < 1e-12]:
            del table[key]
    for duration in [k for k, n in deltas.durations.items() if n == 0]:
        del deltas.durations[duration]


def epoch_us_to_datetime(value: int) -> datetime:
    """Stored entry instants back to datetimes."""
    return _EPOCH + timedelta(microseconds=value)


__all__ = [
    "ANY_STAGE",
    "ATTRIBUTION_MODELS",
    "NONE_VALUE",
    "TOTAL",
    "TOUCH_FIELDS",
    "Deltas",
    "Facts",
    "TimelineItem",
    "add_change",
    "add_facts",
    "attribution_credits",
    "bucket_seconds",
    "customer_dims",
    "customer_facts",
    "day_of",
    "diff_entries",
    "duration_bucket",
    "epoch_us_to_datetime",
    "feedback_of",
    "median_of_buckets",
    "ordinal_date",
    "prune",
]
