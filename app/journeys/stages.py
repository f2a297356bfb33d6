"""The stage engine: a configurable journey model and a customer's stage history.

Pure: standard library only. A customer's stage is the furthest stage reached in event time;
events are always walked in `sort_key` order, so any permutation gives the same history.

Rule semantics. A stage is entered by an event that matches any of its rules. Within a rule every
criterion that is set must hold (unset ones are ignored, so an empty rule matches any event):
`events` (event name in the set), `types` (event type in the set), `not_events` (event name not in
the set), every `conditions` entry on `properties`, `after_stage` (the customer had reached that
stage or a later one with an earlier event) and `occurrence` (at least the Nth event matching the
rule's other criteria except `after_stage`; occurrences count from the first event).
`Email Opened` and bot events are skipped entirely: they neither match nor count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Generic, TypeVar

from app.journeys.model import StitchEvent, sort_key

T = TypeVar("T")

Scalar = str | int | float | bool | None
ConditionValue = Scalar | tuple[Scalar, ...]

OPS = frozenset({"==", "!=", ">", ">=", "<", "<=", "in", "exists"})
_ORDERING_OPS = frozenset({">", ">=", "<", "<="})
EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
# Stage names appear in URLs (`?stage=`) and comma-separated funnel steps.
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_STAGES = 50
MAX_RULES = 100
# Breakdowns (`trait:NAME` or `property:NAME`) the rollups are kept for; see app/aggregates.
BREAKDOWN = re.compile(r"(trait|property):[A-Za-z0-9_.$-]{1,64}")
MAX_BREAKDOWNS = 5
DEFAULT_BREAKDOWNS = ("trait:persona", "property:variation_name")

_MISSING = object()


class JourneyModelError(ValueError):
    """An invalid journey model; `field` is the offending path, e.g. `stages[1].rules[0].op`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class PropertyCondition:
    """A test on `properties[property]` (dotted paths reach into nested objects)."""

    property: str
    op: str
    value: ConditionValue = None

    def matches(self, properties: Mapping[str, Any]) -> bool:
        """Whether the condition holds; a missing or null property fails every op but
        `exists false`."""
        actual = _lookup(properties, self.property)
        present = actual is not _MISSING and actual is not None
        if self.op == "exists":
            return present == (self.value is not False)
        if not present:
            return False
        if self.op == "==":
            return _equals(actual, self.value)
        if self.op == "!=":
            return not _equals(actual, self.value)
        if self.op == "in":
            choices = self.value if isinstance(self.value, tuple) else (self.value,)
            return any(_equals(actual, choice) for choice in choices)
        left, right = _number(actual), _number(self.value)
        if left is None or right is None:
            return False
        if self.op == ">":
            return left > right
        if self.op == ">=":
            return left >= right
        if self.op == "<":
            return left < right
        return left <= right


@dataclass(frozen=True, slots=True)
class StageRule:
    """One way to enter a stage; see the module docstring for how the criteria combine."""

    events: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    conditions: tuple[PropertyCondition, ...] = ()
    after_stage: str | None = None
    occurrence: int | None = None
    not_events: frozenset[str] = frozenset()

    def matches_event(self, e: StitchEvent) -> bool:
        """The event-local criteria (everything but `after_stage` and `occurrence`)."""
        if self.events and e.event not in self.events:
            return False
        if self.types and e.type not in self.types:
            return False
        if e.event is not None and e.event in self.not_events:
            return False
        return all(condition.matches(e.properties) for condition in self.conditions)


@dataclass(frozen=True, slots=True)
class Stage:
    """A named stage, its entry rules and how long a customer may sit in it before
    counting as dropped off (None: never)."""

    name: str
    rules: tuple[StageRule, ...]
    dropoff_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class JourneyModel:
    """The ordered stages of a workspace's journey, and the breakdowns its aggregates keep;
    validated on construction."""

    stages: tuple[Stage, ...]
    breakdowns: tuple[str, ...] = DEFAULT_BREAKDOWNS
    # Stage names in journey order, and each one's position: derived from `stages` once (the
    # stitcher asks for them for every event it walks).
    stage_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(stage.name for stage in self.stages)
        object.__setattr__(self, "stage_names", names)
        object.__setattr__(self, "_positions", {name: i for i, name in enumerate(names)})
        _validate(self)

    def index_of(self, name: str) -> int:
        """Position of a stage in the journey; ValueError if unknown."""
        try:
            return self._positions[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a stage of this journey model") from None


@dataclass(frozen=True, slots=True)
class StageEntry:
    """The customer entered `stage` with event `message_id` at `entered_at`."""

    stage: str
    entered_at: datetime
    message_id: str


EMAIL_OPENED = "Email Opened"
ORDER_COMPLETED = "Order Completed"


def moves_stage(e: StitchEvent) -> bool:
    """False for events that never move a stage: email opens and bot/scanner traffic."""
    if e.is_bot:
        return False
    return e.event is None or not _is_email_open(e.event)


@lru_cache(maxsize=4096)
def _is_email_open(event: str) -> bool:
    # Email tools spell it "Email Opened", "email_opened" or "email opened".
    return re.sub(r"[\s_]+", " ", event.strip().lower()) == EMAIL_OPENED.lower()


_Candidate = tuple[int, int, StageRule]


@dataclass(frozen=True, slots=True)
class _RuleIndex:
    """A model's rules by the event name they require, so an event is only tested against
    rules that could match it (rules without an event filter are tested on every event)."""

    # Per event name: its own rules, then the unfiltered ones (joined once, not per event).
    by_event: dict[str, tuple[_Candidate, ...]]
    unfiltered: tuple[_Candidate, ...]

    def candidates(self, event: str | None) -> tuple[_Candidate, ...]:
        if event is None:
            return self.unfiltered
        return self.by_event.get(event, self.unfiltered)


class PerModel(Generic[T]):
    """A value derived from a journey model, computed once per model object. Keyed by the
    model's id with the model kept alive beside its value (so the id stays its own); models
    are few, and a process that has seen many clears the cache rather than pile them up."""

    def __init__(self, build: Callable[[JourneyModel], T]) -> None:
        self._build = build
        self._cache: dict[int, tuple[JourneyModel, T]] = {}

    def __call__(self, model: JourneyModel) -> T:
        hit = self._cache.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        value = self._build(model)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[id(model)] = (model, value)
        return value


def _build_rule_index(model: JourneyModel) -> _RuleIndex:
    by_event: dict[str, list[_Candidate]] = {}
    unfiltered: list[_Candidate] = []
    for i, stage in enumerate(model.stages):
        for j, rule in enumerate(stage.rules):
            if rule.events:
                for name in rule.events:
                    by_event.setdefault(name, []).append((i, j, rule))
            else:
                unfiltered.append((i, j, rule))
    return _RuleIndex({k: (*v, *unfiltered) for k, v in by_event.items()}, tuple(unfiltered))


_rule_index = PerModel(_build_rule_index)


class StageWalk:
    """`stage_history` one event at a time, so that a walk can stop after a customer's stored
    events and resume, from its saved state, with later ones (`app.journeys.fold`)."""

    __slots__ = ("_index", "_model", "_rules", "counts", "furthest", "history")

    def __init__(
        self,
        model: JourneyModel,
        *,
        counts: dict[tuple[int, int], int] | None = None,
        history: list[StageEntry] | None = None,
    ) -> None:
        self._model = model
        self._index = {name: i for i, name in enumerate(model.stage_names)}
        self._rules = _rule_index(model)
        # Matches counted per (stage, rule) with an `occurrence`, and the entries so far.
        self.counts: dict[tuple[int, int], int] = counts if counts is not None else {}
        self.history: list[StageEntry] = history if history is not None else []
        self.furthest = self._index[self.history[-1].stage] if self.history else -1

    def add(self, e: StitchEvent) -> None:
        """The next event in `sort_key` order."""
        if not moves_stage(e):
            return
        best = -1
        counts = self.counts
        # Every rule that could match; the outcome does not depend on the order they are tried.
        for i, j, rule in self._rules.candidates(e.event):
            if i <= best and rule.occurrence is None:
                continue  # cannot raise `best`, and counts nothing
            if not rule.matches_event(e):
                continue
            if rule.occurrence is not None:
                counts[i, j] = counts.get((i, j), 0) + 1
                if counts[i, j] < rule.occurrence:
                    continue
            if rule.after_stage is not None and self.furthest < self._index[rule.after_stage]:
                continue
            best = max(best, i)
        if best > self.furthest:
            self.furthest = best
            self.history.append(
                StageEntry(self._model.stages[best].name, e.timestamp, e.message_id)
            )


def stage_history(
    events: Iterable[StitchEvent], model: JourneyModel, *, ordered: bool = False
) -> list[StageEntry]:
    """Each time the customer's furthest stage increased, walking events in event time
    (`ordered`: they already come in `sort_key` order, which saves sorting them again)."""
    walk = StageWalk(model)
    for e in events if ordered else sorted(events, key=sort_key):
        walk.add(e)
    return walk.history


def current_stage(history: Sequence[StageEntry]) -> str | None:
    """The furthest stage reached, or None for a customer with no stage-moving event."""
    return history[-1].stage if history else None


def stage_at(
    history: Sequence[StageEntry], at: datetime, *, message_id: str | None = None
) -> str | None:
    """The stage at instant `at`; with `message_id`, the stage as of that event (inclusive)."""
    current: str | None = None
    for entry in history:
        if message_id is None:
            reached = entry.entered_at <= at
        else:
            reached = (entry.entered_at, entry.message_id) <= (at, message_id)
        if not reached:
            break
        current = entry.stage
    return current


def is_stalled(history: Sequence[StageEntry], *, model: JourneyModel, now: datetime) -> bool:
    """Whether the customer has sat in its current stage longer than its drop-off threshold."""
    if not history:
        return False
    last = history[-1]
    threshold = model.stages[model.index_of(last.stage)].dropoff_after
    return threshold is not None and now - last.entered_at > threshold


def model_to_dict(m: JourneyModel) -> dict[str, Any]:
    """The JSON form of a model (the body of `PUT /v1/settings/journey-model`)."""
    return {
        "stages": [
            {
                "name": stage.name,
                "dropoff_after_seconds": (
                    None
                    if stage.dropoff_after is None
                    else int(stage.dropoff_after.total_seconds())
                ),
                "rules": [_rule_to_dict(rule) for rule in stage.rules],
            }
            for stage in m.stages
        ],
        "breakdowns": list(m.breakdowns),
    }


def model_from_dict(d: object) -> JourneyModel:
    """Parse and validate the JSON form; raises `JourneyModelError` naming the bad field."""
    if not isinstance(d, Mapping):
        raise JourneyModelError("$", "must be an object")
    _no_unknown_keys(d, {"stages", "breakdowns"}, "$")
    raw_stages = _list(d.get("stages"), "stages")
    stages: list[Stage] = []
    for i, raw in enumerate(raw_stages):
        path = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            raise JourneyModelError(path, "must be an object")
        _no_unknown_keys(raw, {"name", "rules", "dropoff_after_seconds"}, path)
        name = raw.get("name")
        if not isinstance(name, str):
            raise JourneyModelError(f"{path}.name", "must be a string")
        rules = tuple(
            _rule_from_dict(rule, f"{path}.rules[{j}]")
            for j, rule in enumerate(_list(raw.get("rules"), f"{path}.rules"))
        )
        seconds = raw.get("dropoff_after_seconds")
        dropoff: timedelta | None = None
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise JourneyModelError(f"{path}.dropoff_after_seconds", "must be a number")
            if not math.isfinite(seconds) or not 0 < seconds <= 3650 * 86400:
                raise JourneyModelError(
                    f"{path}.dropoff_after_seconds", "must be between 1 second and 10 years"
                )
            dropoff = timedelta(seconds=seconds)
        stages.append(Stage(name=name, rules=rules, dropoff_after=dropoff))
    raw_breakdowns = d.get("breakdowns")
    breakdowns = (
        DEFAULT_BREAKDOWNS
        if raw_breakdowns is None
        else tuple(_list(raw_breakdowns, "breakdowns", empty_ok=True))
    )
    return JourneyModel(stages=tuple(stages), breakdowns=breakdowns)


def _rule_to_dict(rule: StageRule) -> dict[str, Any]:
    return {
        "events": sorted(rule.events),
        "types": sorted(rule.types),
        "not_events": sorted(rule.not_events),
        "conditions": [
            {
                "property": c.property,
                "op": c.op,
                "value": list(c.value) if isinstance(c.value, tuple) else c.value,
            }
            for c in rule.conditions
        ],
        "after_stage": rule.after_stage,
        "occurrence": rule.occurrence,
    }


_RULE_KEYS = frozenset({"events", "types", "not_events", "conditions", "after_stage", "occurrence"})


def _rule_from_dict(raw: object, path: str) -> StageRule:
    if not isinstance(raw, Mapping):
        raise JourneyModelError(path, "must be an object")
    _no_unknown_keys(raw, _RULE_KEYS, path)
    conditions: list[PropertyCondition] = []
    raw_conditions = raw.get("conditions")
    if raw_conditions is not None:
        for k, item in enumerate(_list(raw_conditions, f"{path}.conditions", empty_ok=True)):
            conditions.append(_condition_from_dict(item, f"{path}.conditions[{k}]"))
    after_stage = raw.get("after_stage")
    if after_stage is not None and not isinstance(after_stage, str):
        raise JourneyModelError(f"{path}.after_stage", "must be a stage name or null")
    occurrence = raw.get("occurrence")
    if occurrence is not None and (isinstance(occurrence, bool) or not isinstance(occurrence, int)):
        raise JourneyModelError(f"{path}.occurrence", "must be a positive integer or null")
    return StageRule(
        events=_names(raw.get("events"), f"{path}.events"),
        types=_names(raw.get("types"), f"{path}.types"),
        not_events=_names(raw.get("not_events"), f"{path}.not_events"),
        conditions=tuple(conditions),
        after_stage=after_stage,
        occurrence=occurrence,
    )


def _condition_from_dict(raw: object, path: str) -> PropertyCondition:
    if not isinstance(raw, Mapping):
        raise JourneyModelError(path, "must be an object")
    _no_unknown_keys(raw, {"property", "op", "value"}, path)
    prop, op, value = raw.get("property"), raw.get("op"), raw.get("value")
    if not isinstance(prop, str):
        raise JourneyModelError(f"{path}.property", "must be a string")
    if not isinstance(op, str):
        raise JourneyModelError(f"{path}.op", "must be a string")
    parsed: ConditionValue
    if isinstance(value, list):
        if not all(_is_scalar(v) for v in value):
            raise JourneyModelError(f"{path}.value", "list items must be strings or numbers")
        parsed = tuple(value)
    elif _is_scalar(value):
        parsed = value
    else:
        raise JourneyModelError(f"{path}.value", "must be a string, number, boolean or list")
    return PropertyCondition(property=prop, op=op, value=parsed)


def _validate(m: JourneyModel) -> None:
    if len(m.breakdowns) > MAX_BREAKDOWNS:
        raise JourneyModelError("breakdowns", f"at most {MAX_BREAKDOWNS} breakdowns")
    for i, breakdown in enumerate(m.breakdowns):
        if not isinstance(breakdown, str) or not BREAKDOWN.fullmatch(breakdown):
            raise JourneyModelError(
                f"breakdowns[{i}]",
                "must be trait:NAME or property:NAME (NAME: 1-64 of A-Z a-z 0-9 _ . $ -)",
            )
    if len(set(m.breakdowns)) != len(m.breakdowns):
        raise JourneyModelError("breakdowns", "must not repeat a breakdown")
    if not m.stages:
        raise JourneyModelError("stages", "at least one stage is required")
    if len(m.stages) > MAX_STAGES:
        raise JourneyModelError("stages", f"at most {MAX_STAGES} stages")
    seen: dict[str, int] = {}
    for i, stage in enumerate(m.stages):
        path = f"stages[{i}]"
        if not _STAGE_NAME.fullmatch(stage.name):
            raise JourneyModelError(
                f"{path}.name", "must be 1-64 of a-z, 0-9 and _, starting with a letter"
            )
        if stage.name in seen:
            raise JourneyModelError(
                f"{path}.name", f"duplicate of stages[{seen[stage.name]}].name {stage.name!r}"
            )
        seen[stage.name] = i
        if stage.dropoff_after is not None and stage.dropoff_after <= timedelta(0):
            raise JourneyModelError(f"{path}.dropoff_after_seconds", "must be positive")
        if not stage.rules:
            raise JourneyModelError(f"{path}.rules", "at least one rule is required")
        if len(stage.rules) > MAX_RULES:
            raise JourneyModelError(f"{path}.rules", f"at most {MAX_RULES} rules")
        for j, rule in enumerate(stage.rules):
            _validate_rule(rule, f"{path}.rules[{j}]", earlier=seen, own_index=i, model=m)


def _validate_rule(
    rule: StageRule, path: str, *, earlier: Mapping[str, int], own_index: int, model: JourneyModel
) -> None:
    if rule.after_stage is not None:
        if rule.after_stage not in model.stage_names:
            raise JourneyModelError(f"{path}.after_stage", f"unknown stage {rule.after_stage!r}")
        if earlier.get(rule.after_stage, own_index) >= own_index:
            raise JourneyModelError(
                f"{path}.after_stage", f"{rule.after_stage!r} must be an earlier stage"
            )
    if rule.occurrence is not None and rule.occurrence < 1:
        raise JourneyModelError(f"{path}.occurrence", "must be a positive integer")
    for key, values in (("events", rule.events), ("not_events", rule.not_events)):
        for value in values:
            if not value.strip():
                raise JourneyModelError(f"{path}.{key}", "event names must not be empty")
    unknown = sorted(rule.types - EVENT_TYPES)
    if unknown:
        raise JourneyModelError(
            f"{path}.types", f"unknown type {unknown[0]!r}; one of {', '.join(sorted(EVENT_TYPES))}"
        )
    if rule.events and rule.events <= rule.not_events:
        raise JourneyModelError(f"{path}.not_events", "excludes every event in `events`")
    for k, condition in enumerate(rule.conditions):
        _validate_condition(condition, f"{path}.conditions[{k}]")


def _validate_condition(c: PropertyCondition, path: str) -> None:
    if not c.property.strip():
        raise JourneyModelError(f"{path}.property", "must not be empty")
    if c.op not in OPS:
        raise JourneyModelError(
            f"{path}.op", f"unknown op {c.op!r}; one of {', '.join(sorted(OPS))}"
        )
    if c.op == "exists":
        if c.value is not None and not isinstance(c.value, bool):
            raise JourneyModelError(f"{path}.value", "exists takes true, false or no value")
    elif c.op == "in":
        if not isinstance(c.value, tuple) or not c.value:
            raise JourneyModelError(f"{path}.value", "in takes a non-empty list")
    elif isinstance(c.value, tuple):
        raise JourneyModelError(f"{path}.value", f"{c.op} takes a single value, not a list")
    elif c.op in _ORDERING_OPS:
        if _number(c.value) is None or isinstance(c.value, str):
            raise JourneyModelError(f"{path}.value", f"{c.op} takes a number")
    elif c.value is None:
        raise JourneyModelError(f"{path}.value", f"{c.op} needs a value (use exists for null)")


def _no_unknown_keys(raw: Mapping[Any, Any], allowed: Iterable[str], path: str) -> None:
    permitted = set(allowed)
    unknown = sorted(str(key) for key in raw if key not in permitted)
    if unknown:
        raise JourneyModelError(f"{path}.{unknown[0]}", "unknown field")


def _list(value: object, path: str, *, empty_ok: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise JourneyModelError(path, "must be a list")
    if not value and not empty_ok:
        raise JourneyModelError(path, "must not be empty")
    return value


def _names(value: object, path: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = _list(value, path, empty_ok=True)
    if not all(isinstance(item, str) for item in items):
        raise JourneyModelError(path, "must be a list of strings")
    return frozenset(items)


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _lookup(properties: Mapping[str, Any], path: str) -> object:
    if path in properties:
        return properties[path]
    current: object = properties
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _number(value: object) -> float | None:
    """A finite number, accepting numeric strings (SDKs often quote scores and prices)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _equals(actual: object, expected: object) -> bool:
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        number = _number(actual)
        return number is not None and number == expected
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    return actual == expected


# The contract's default. Drop-off: a browsing customer who has not bought within 14 days, or a
# first-time buyer who has shown no further activity within 30 days, is stalled; the other
# stages have no natural deadline.
DEFAULT_MODEL = JourneyModel(
    stages=(
        Stage("awareness", (StageRule(),)),
        Stage(
            "consideration",
            (
                StageRule(
                    events=frozenset(
                        {
                            "Products Searched",
                            "Product List Viewed",
                            "Product Viewed",
                            "Product Added",
                            "Cart Viewed",
                            "Checkout Started",
                            "Signed Up",
                            "Email Link Clicked",
                        }
                    )
                ),
            ),
            dropoff_after=timedelta(days=14),
        ),
        Stage(
            "purchase",
            (StageRule(events=frozenset({ORDER_COMPLETED}), occurrence=1),),
            dropoff_after=timedelta(days=30),
        ),
        Stage(
            "retention",
            (StageRule(after_stage="purchase", not_events=frozenset({ORDER_COMPLETED})),),
        ),
        Stage("loyalty", (StageRule(events=frozenset({ORDER_COMPLETED}), occurrence=2),)),
        Stage(
            "advocacy",
            (
                StageRule(
                    events=frozenset({"Product Reviewed", "Product Shared", "Referral Sent"})
                ),
                StageRule(
                    events=frozenset({"Survey Responded"}),
                    conditions=(PropertyCondition("score", ">=", 9),),
                ),
            ),
        ),
    )
)
