"""Stage engine: the default journey model, rule semantics, validation and order independence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.journeys.model import StitchEvent
from app.journeys.stages import (
    DEFAULT_MODEL,
    JourneyModel,
    JourneyModelError,
    PropertyCondition,
    Stage,
    StageEntry,
    StageRule,
    current_stage,
    is_stalled,
    model_from_dict,
    model_to_dict,
    moves_stage,
    stage_at,
    stage_history,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def ev(
    message_id: str,
    minutes: float,
    event: str | None = None,
    *,
    type: str = "track",
    properties: dict[str, Any] | None = None,
    is_bot: bool = False,
) -> StitchEvent:
    return StitchEvent(
        message_id=message_id,
        type=type,
        event=event,
        timestamp=T0 + timedelta(minutes=minutes),
        anonymous_id="d1",
        properties=properties or {},
        is_bot=is_bot,
    )


def stages_of(
    events: list[StitchEvent], model: JourneyModel = DEFAULT_MODEL
) -> list[tuple[str, str]]:
    return [(entry.stage, entry.message_id) for entry in stage_history(events, model)]


# --- the default model ------------------------------------------------------------------------


def test_default_model_is_the_contracts() -> None:
    assert DEFAULT_MODEL.stage_names == (
        "awareness",
        "consideration",
        "purchase",
        "retention",
        "loyalty",
        "advocacy",
    )
    consideration = DEFAULT_MODEL.stages[1].rules
    assert [rule.events for rule in consideration] == [
        frozenset(
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
    ]
    assert [stage.dropoff_after for stage in DEFAULT_MODEL.stages] == [
        None,
        timedelta(days=14),
        timedelta(days=30),
        None,
        None,
        None,
    ]


def test_a_full_journey_in_order() -> None:
    events = [
        ev("a", 0, type="page"),
        ev("b", 1, "Product Viewed"),
        ev("c", 2, "Order Completed"),
        ev("d", 3, "Product Viewed"),
        ev("e", 4, "Order Completed"),
        ev("f", 5, "Product Reviewed"),
    ]
    assert stages_of(events) == [
        ("awareness", "a"),
        ("consideration", "b"),
        ("purchase", "c"),
        ("retention", "d"),
        ("loyalty", "e"),
        ("advocacy", "f"),
    ]
    assert stage_history(events, DEFAULT_MODEL)[2] == StageEntry(
        "purchase", T0 + timedelta(minutes=2), "c"
    )


@pytest.mark.parametrize(
    "name",
    [
        "Products Searched",
        "Product List Viewed",
        "Product Viewed",
        "Product Added",
        "Cart Viewed",
        "Checkout Started",
        "Signed Up",
        "Email Link Clicked",
    ],
)
def test_each_consideration_event(name: str) -> None:
    assert stages_of([ev("a", 0, name)]) == [("consideration", "a")]


@pytest.mark.parametrize(
    ("name", "properties"),
    [
        ("Product Reviewed", {}),
        ("Product Shared", {}),
        ("Referral Sent", {}),
        ("Survey Responded", {"score": 9}),
        ("Survey Responded", {"score": 10}),
        ("Survey Responded", {"score": "10"}),
    ],
)
def test_advocacy_events(name: str, properties: dict[str, Any]) -> None:
    assert stages_of([ev("a", 0, name, properties=properties)]) == [("advocacy", "a")]


@pytest.mark.parametrize("properties", [{"score": 8}, {"score": "high"}, {}, {"score": None}])
def test_low_or_missing_survey_scores_are_not_advocacy(properties: dict[str, Any]) -> None:
    assert stages_of([ev("a", 0, "Survey Responded", properties=properties)]) == [
        ("awareness", "a")
    ]


def test_second_order_goes_from_purchase_straight_to_loyalty() -> None:
    events = [ev("a", 0, "Order Completed"), ev("b", 60, "Order Completed")]
    assert stages_of(events) == [("purchase", "a"), ("loyalty", "b")]


def test_stages_can_be_skipped_and_never_go_back() -> None:
    events = [
        ev("a", 0, "Product Reviewed"),
        ev("b", 1, "Order Completed"),
        ev("c", 2, "Product Viewed"),
    ]
    assert stages_of(events) == [("advocacy", "a")]


def test_retention_needs_an_earlier_purchase() -> None:
    # Same instant: "a" sorts before "b", so the view is not after the purchase.
    same_time = [ev("b", 0, "Order Completed"), ev("a", 0, "Page Scrolled")]
    assert stages_of(same_time) == [("awareness", "a"), ("purchase", "b")]
    later = [ev("b", 0, "Order Completed"), ev("c", 0, "Page Scrolled")]
    assert stages_of(later) == [("purchase", "b"), ("retention", "c")]


def test_email_opens_never_move_a_stage_nor_count() -> None:
    assert stages_of([ev("a", 0, "Email Opened")]) == []
    assert stages_of(
        [ev("a", 0, "email_opened"), ev("b", 1, "Order Completed"), ev("c", 2, "Email Opened")]
    ) == [("purchase", "b")]
    assert not moves_stage(ev("a", 0, "Email  Opened"))
    assert moves_stage(ev("a", 0, "Email Link Clicked"))


def test_bot_events_never_move_a_stage_nor_count_as_occurrences() -> None:
    events = [
        ev("a", 0, "Order Completed", is_bot=True),
        ev("b", 1, "Order Completed"),
        ev("c", 2, "Product Reviewed", is_bot=True),
    ]
    assert stages_of(events) == [("purchase", "b")]


def test_current_stage_and_stage_at() -> None:
    history = stage_history(
        [ev("a", 0, type="page"), ev("b", 10, "Product Viewed"), ev("c", 10, "Order Completed")],
        DEFAULT_MODEL,
    )
    assert current_stage(history) == "purchase"
    assert current_stage([]) is None
    assert stage_at(history, T0 - timedelta(seconds=1)) is None
    assert stage_at(history, T0) == "awareness"
    assert stage_at(history, T0 + timedelta(minutes=5)) == "awareness"
    assert stage_at(history, T0 + timedelta(minutes=10)) == "purchase"
    # Per event: "b" shares c's instant but happened (in sort order) before it.
    assert stage_at(history, T0 + timedelta(minutes=10), message_id="b") == "consideration"
    assert stage_at(history, T0 + timedelta(minutes=10), message_id="c") == "purchase"


def test_is_stalled_uses_the_current_stage_threshold() -> None:
    history = [StageEntry("consideration", T0, "a")]
    assert not is_stalled(history, model=DEFAULT_MODEL, now=T0 + timedelta(days=14))
    assert is_stalled(history, model=DEFAULT_MODEL, now=T0 + timedelta(days=14, seconds=1))
    awareness = [StageEntry("awareness", T0, "a")]
    assert not is_stalled(awareness, model=DEFAULT_MODEL, now=T0 + timedelta(days=999))
    assert not is_stalled([], model=DEFAULT_MODEL, now=T0)


# --- rule semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "properties", "expected"),
    [
        (PropertyCondition("plan", "==", "pro"), {"plan": "pro"}, True),
        (PropertyCondition("plan", "==", "pro"), {"plan": "free"}, False),
        (PropertyCondition("plan", "!=", "pro"), {"plan": "free"}, True),
        (PropertyCondition("plan", "!=", "pro"), {}, False),
        (PropertyCondition("total", ">", 100), {"total": 100.5}, True),
        (PropertyCondition("total", ">", 100), {"total": 100}, False),
        (PropertyCondition("total", ">=", 100), {"total": "100"}, True),
        (PropertyCondition("total", "<", 100), {"total": 99}, True),
        (PropertyCondition("total", "<=", 100), {"total": 101}, False),
        (PropertyCondition("total", "<", 100), {"total": True}, False),
        (PropertyCondition("total", "==", 3), {"total": 3.0}, True),
        (PropertyCondition("flag", "==", True), {"flag": 1}, False),
        (PropertyCondition("flag", "==", True), {"flag": True}, True),
        (PropertyCondition("tier", "in", ("gold", "platinum")), {"tier": "gold"}, True),
        (PropertyCondition("tier", "in", ("gold", "platinum")), {"tier": "silver"}, False),
        (PropertyCondition("coupon", "exists"), {"coupon": "X"}, True),
        (PropertyCondition("coupon", "exists"), {"coupon": None}, False),
        (PropertyCondition("coupon", "exists", False), {}, True),
        (PropertyCondition("coupon", "exists", False), {"coupon": "X"}, False),
        (PropertyCondition("product.price", ">", 10), {"product": {"price": 20}}, True),
        (PropertyCondition("product.price", ">", 10), {"product": "n/a"}, False),
        (PropertyCondition("a.b", "==", 1), {"a.b": 1}, True),
    ],
)
def test_property_conditions(
    condition: PropertyCondition, properties: dict[str, Any], expected: bool
) -> None:
    assert condition.matches(properties) is expected


def test_rule_criteria_must_all_hold() -> None:
    rule = StageRule(
        events=frozenset({"Plan Upgraded"}),
        types=frozenset({"track"}),
        conditions=(PropertyCondition("plan", "==", "pro"),),
    )
    assert rule.matches_event(ev("a", 0, "Plan Upgraded", properties={"plan": "pro"}))
    assert not rule.matches_event(ev("a", 0, "Plan Upgraded", properties={"plan": "team"}))
    assert not rule.matches_event(
        ev("a", 0, "Plan Upgraded", type="page", properties={"plan": "pro"})
    )
    assert not rule.matches_event(ev("a", 0, "Plan Viewed", properties={"plan": "pro"}))
    assert StageRule().matches_event(ev("a", 0, None, type="identify"))
    assert not StageRule(not_events=frozenset({"X"})).matches_event(ev("a", 0, "X"))


def _custom(*stages: Stage) -> JourneyModel:
    return JourneyModel(stages=stages)


def test_occurrence_counts_before_after_stage_is_reached() -> None:
    model = _custom(
        Stage("visitor", (StageRule(types=frozenset({"page"})),)),
        Stage("trial", (StageRule(events=frozenset({"Trial Started"})),)),
        Stage(
            "engaged",
            (StageRule(events=frozenset({"Report Run"}), occurrence=3, after_stage="trial"),),
        ),
    )
    events = [
        ev("a", 0, type="page"),
        ev("b", 1, "Report Run"),
        ev("c", 2, "Report Run"),
        ev("d", 3, "Trial Started"),
        ev("e", 4, "Report Run"),
    ]
    assert stages_of(events, model) == [("visitor", "a"), ("trial", "d"), ("engaged", "e")]
    assert stages_of(events[:4], model) == [("visitor", "a"), ("trial", "d")]
    # "At least the Nth": the 3rd run also qualifies once the gate opens after the 2nd.
    at_least = _custom(
        *model.stages[:2],
        Stage(
            "engaged",
            (StageRule(events=frozenset({"Report Run"}), occurrence=2, after_stage="trial"),),
        ),
    )
    assert stages_of(events, at_least) == [("visitor", "a"), ("trial", "d"), ("engaged", "e")]


def test_page_type_rule_and_event_name_rule_in_one_stage() -> None:
    model = _custom(
        Stage(
            "seen",
            (
                StageRule(types=frozenset({"page", "screen"})),
                StageRule(events=frozenset({"Opened"})),
            ),
        ),
        Stage("bought", (StageRule(events=frozenset({"Bought"})),)),
    )
    assert stages_of([ev("a", 0, type="screen")], model) == [("seen", "a")]
    assert stages_of([ev("a", 0, "Opened")], model) == [("seen", "a")]
    assert stages_of([ev("a", 0, "Other")], model) == []


# --- the JSON form and its validation ---------------------------------------------------------


def test_default_model_round_trips_through_json() -> None:
    encoded = json.dumps(model_to_dict(DEFAULT_MODEL))
    assert model_from_dict(json.loads(encoded)) == DEFAULT_MODEL
    advocacy = model_to_dict(DEFAULT_MODEL)["stages"][5]
    assert advocacy["rules"][1]["conditions"] == [{"property": "score", "op": ">=", "value": 9}]
    assert model_to_dict(DEFAULT_MODEL)["stages"][1]["dropoff_after_seconds"] == 14 * 86400


def test_model_from_dict_accepts_a_minimal_model() -> None:
    model = model_from_dict(
        {
            "stages": [
                {"name": "lead", "rules": [{}]},
                {
                    "name": "customer",
                    "dropoff_after_seconds": 3600,
                    "rules": [
                        {
                            "events": ["Subscribed"],
                            "conditions": [{"property": "plan", "op": "in", "value": ["a", "b"]}],
                            "after_stage": "lead",
                        }
                    ],
                },
            ]
        }
    )
    assert model.stage_names == ("lead", "customer")
    assert model.stages[1].dropoff_after == timedelta(hours=1)
    assert model.stages[1].rules[0].conditions == (PropertyCondition("plan", "in", ("a", "b")),)


def _model(*stages: dict[str, Any]) -> dict[str, Any]:
    return {"stages": list(stages)}


def _stage(name: str = "a", **rule: Any) -> dict[str, Any]:
    return {"name": name, "rules": [rule]}


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ([], "$", "object"),
        ({"stages": []}, "stages", "empty"),
        ({"stages": "x"}, "stages", "list"),
        ({"stages": [], "extra": 1}, "$.extra", "unknown"),
        (_model({"name": "a"}), "stages[0].rules", "list"),
        (_model({"name": "a", "rules": []}), "stages[0].rules", "empty"),
        (_model({"rules": [{}]}), "stages[0].name", "string"),
        (_model(_stage("Has Space")), "stages[0].name", "a-z"),
        (_model(_stage("a,b")), "stages[0].name", "a-z"),
        (_model(_stage("a"), _stage("a")), "stages[1].name", "duplicate"),
        (_model(_stage(event=["X"])), "stages[0].rules[0].event", "unknown"),
        (_model(_stage(events="X")), "stages[0].rules[0].events", "list"),
        (_model(_stage(events=[1])), "stages[0].rules[0].events", "strings"),
        (_model(_stage(events=[" "])), "stages[0].rules[0].events", "empty"),
        (_model(_stage(types=["click"])), "stages[0].rules[0].types", "unknown type"),
        (_model(_stage(occurrence=0)), "stages[0].rules[0].occurrence", "positive"),
        (_model(_stage(occurrence=-2)), "stages[0].rules[0].occurrence", "positive"),
        (_model(_stage(occurrence=1.5)), "stages[0].rules[0].occurrence", "integer"),
        (_model(_stage(occurrence=True)), "stages[0].rules[0].occurrence", "integer"),
        (_model(_stage(after_stage="nope")), "stages[0].rules[0].after_stage", "unknown stage"),
        (_model(_stage("a", after_stage="a")), "stages[0].rules[0].after_stage", "earlier"),
        (
            _model(_stage("a", after_stage="b"), _stage("b")),
            "stages[0].rules[0].after_stage",
            "earlier",
        ),
        (_model(_stage(events=["X"], not_events=["X"])), "stages[0].rules[0].not_events", "every"),
        (_model(_stage(conditions={})), "stages[0].rules[0].conditions", "list"),
        (
            _model(_stage(conditions=[{"property": "p", "op": "~=", "value": 1}])),
            "stages[0].rules[0].conditions[0].op",
            "unknown op",
        ),
        (
            _model(_stage(conditions=[{"property": "", "op": "==", "value": 1}])),
            "stages[0].rules[0].conditions[0].property",
            "empty",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": ">=", "value": "9"}])),
            "stages[0].rules[0].conditions[0].value",
            "number",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": "in", "value": []}])),
            "stages[0].rules[0].conditions[0].value",
            "non-empty list",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": "==", "value": [1]}])),
            "stages[0].rules[0].conditions[0].value",
            "single value",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": "==", "value": {"a": 1}}])),
            "stages[0].rules[0].conditions[0].value",
            "must be",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": "exists", "value": "yes"}])),
            "stages[0].rules[0].conditions[0].value",
            "exists",
        ),
        (
            _model(_stage(conditions=[{"property": "p", "op": "=="}])),
            "stages[0].rules[0].conditions[0].value",
            "needs a value",
        ),
        (
            _model({"name": "a", "rules": [{}], "dropoff_after_seconds": 0}),
            "stages[0].dropoff_after_seconds",
            "between",
        ),
        (
            _model({"name": "a", "rules": [{}], "dropoff_after_seconds": "1d"}),
            "stages[0].dropoff_after_seconds",
            "number",
        ),
    ],
)
def test_invalid_models_name_the_offending_field(raw: object, field: str, fragment: str) -> None:
    with pytest.raises(JourneyModelError) as caught:
        model_from_dict(raw)
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert str(caught.value) == f"{field}: {caught.value.message}"


def test_invalid_models_cannot_be_constructed_directly() -> None:
    with pytest.raises(JourneyModelError, match="at least one stage"):
        JourneyModel(stages=())
    with pytest.raises(JourneyModelError, match="positive"):
        JourneyModel(stages=(Stage("a", (StageRule(),), dropoff_after=timedelta(0)),))


# --- order independence -----------------------------------------------------------------------

NAMES = st.sampled_from(
    (
        None,
        "Product Viewed",
        "Cart Viewed",
        "Order Completed",
        "Email Opened",
        "Email Link Clicked",
        "Survey Responded",
        "Product Reviewed",
        "Page Scrolled",
    )
)


@st.composite
def customer_events(draw: st.DrawFn) -> list[StitchEvent]:
    count = draw(st.integers(0, 20))
    return [
        ev(
            f"m{i:02d}",
            draw(st.one_of(st.integers(0, 3 * 24 * 60), st.sampled_from((0, 30)))),
            draw(NAMES),
            type=draw(st.sampled_from(("track", "track", "page", "identify"))),
            properties={"score": draw(st.integers(0, 10))},
            is_bot=draw(st.integers(0, 9)) == 0,
        )
        for i in range(count)
    ]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_stage_history_is_the_same_for_any_permutation(data: st.DataObject) -> None:
    events = data.draw(customer_events())
    shuffled = data.draw(st.permutations(events))
    assert stage_history(shuffled, DEFAULT_MODEL) == stage_history(events, DEFAULT_MODEL)


@settings(max_examples=200, deadline=None)
@given(customer_events())
def test_history_only_moves_forward_and_ignores_opens_and_bots(events: list[StitchEvent]) -> None:
    history = stage_history(events, DEFAULT_MODEL)
    positions = [DEFAULT_MODEL.index_of(entry.stage) for entry in history]
    assert positions == sorted(set(positions))
    assert [entry.entered_at for entry in history] == sorted(entry.entered_at for entry in history)
    movers = [e for e in events if moves_stage(e)]
    assert stage_history(movers, DEFAULT_MODEL) == history
    by_id = {e.message_id: e for e in events}
    assert all(moves_stage(by_id[entry.message_id]) for entry in history)
