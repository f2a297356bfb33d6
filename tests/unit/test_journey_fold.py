"""A customer's walk resumed from its saved state equals the walk over all its events.

The stitcher resumes a customer's walk (`app.journeys.fold`) when a batch only appends later
events to it. Here: any customer history, cut at any point, the first part derived and stored
(through the same JSON forms the database keeps), the rest resumed from what was stored, must
give exactly what deriving all the events at once gives: every event's channel, session and
stage, the summary, the breakdown groups, the contribution and the saved state itself.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.aggregates.facts import Deltas, Facts, add_change, prune
from app.journeys.channels import CHANNELS, DIRECT, UNASSIGNED
from app.journeys.fold import JourneyWalk, model_fingerprint
from app.journeys.stages import DEFAULT_MODEL, JourneyModel, StageEntry, model_from_dict
from app.journeys.stitch import FLAG_BOT, derive_customer, walk_customer

T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)
EVENTS = [
    None,
    "Product Viewed",
    "Order Completed",
    "Survey Responded",
    "Email Opened",
    "Product Reviewed",
    "CSAT Submitted",
    "Referral Sent",
]
CAMPAIGNS = [None, {"source": "google", "medium": "cpc", "name": "x"}, {"source": "news"}]
PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "score": st.integers(0, 10),
        "variation_name": st.sampled_from(["A", "B"]),
        "effort": st.integers(1, 7),
        "success": st.booleans(),
        "sentiment": st.floats(-1, 1, allow_nan=False),
    },
)
# A model with occurrence counters, an after_stage rule and a property breakdown.
COUNTING_MODEL = model_from_dict(
    {
        "stages": [
            {"name": "visitor", "rules": [{}]},
            {"name": "buyer", "rules": [{"events": ["Order Completed"], "occurrence": 1}]},
            {
                "name": "regular",
                "rules": [
                    {"events": ["Order Completed"], "occurrence": 3},
                    {"events": ["Product Viewed"], "occurrence": 4, "after_stage": "buyer"},
                ],
            },
        ],
        "breakdowns": ["trait:plan", "property:variation_name"],
    }
)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One customer's timeline rows in any order, with gaps that cut sessions or not."""
    n = draw(st.integers(1, 14))
    rows: list[dict[str, Any]] = []
    at = T0
    for i in range(n):
        at += timedelta(minutes=draw(st.sampled_from([0, 1, 5, 29, 31, 60 * 25, 60 * 24 * 9])))
        event = draw(st.sampled_from(EVENTS))
        campaign = draw(st.sampled_from(CAMPAIGNS))
        traits = draw(st.sampled_from([None, {"plan": "pro"}, {"plan": "free", "age": 3}]))
        rows.append(
            {
                "message_id": f"m{i:02d}{draw(st.sampled_from('ab'))}",
                "timestamp": at,
                "type": "track" if event else draw(st.sampled_from(["page", "identify"])),
                "event": event,
                "user_id": "u1",
                "anonymous_id": None,
                "flags": draw(st.sampled_from([0, 0, 0, FLAG_BOT])),
                "properties": draw(PROPERTIES) or None,
                "traits": traits,
                "campaign": campaign,
                "source_channel": draw(st.sampled_from([DIRECT, UNASSIGNED, *CHANNELS[:6]])),
                "channel": None,
                "session_id": None,
                "stage": None,
            }
        )
    return rows


def _stored(
    model: JourneyModel, rows: list[dict[str, Any]], *, with_facts: bool
) -> JourneyWalk | None:
    """Derive `rows`, store the result as the database would, and resume from it."""
    return _stored_with_facts(model, rows, with_facts=with_facts)[0]


def _stored_with_facts(
    model: JourneyModel, rows: list[dict[str, Any]], *, with_facts: bool
) -> tuple[JourneyWalk | None, Facts]:
    """`_stored`, and the stored contribution the walk resumed from."""
    result = derive_customer("cus_1", [dict(r) for r in rows], model, with_facts=with_facts)
    summary = result.summary
    facts = Facts.from_json(orjson.loads(summary.facts))
    walk = JourneyWalk.resume(
        model,
        with_facts=with_facts,
        state=facts.walk or {},
        facts=facts,
        history=[
            StageEntry(h["stage"], datetime.fromisoformat(h["entered_at"]), h["message_id"])
            for h in orjson.loads(orjson.dumps(summary.stage_history))
        ],
        traits=orjson.loads(orjson.dumps(summary.traits)),
        first=summary.first_seen,
        count=summary.event_count,
    )
    return walk, facts


def _in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows.sort(key=lambda r: (r["timestamp"], r["message_id"]))
    return [r for i, r in enumerate(rows) if i == 0 or r["message_id"] != rows[i - 1]["message_id"]]


@settings(max_examples=300, deadline=None)
@given(
    rows=histories(),
    cut=st.integers(1, 14),
    model=st.sampled_from([DEFAULT_MODEL, COUNTING_MODEL]),
    with_facts=st.booleans(),
)
def test_a_resumed_walk_equals_the_whole_walk(
    rows: list[dict[str, Any]], cut: int, model: JourneyModel, with_facts: bool
) -> None:
    rows = _in_order(rows)
    cut = min(cut, len(rows))
    whole = derive_customer("cus_1", [dict(r) for r in rows], model, with_facts=with_facts)
    if cut == len(rows):
        return
    walk = _stored(model, rows[:cut], with_facts=with_facts)
    assert walk is not None
    resumed = walk_customer("cus_1", walk, [dict(r) for r in rows[cut:]])

    assert resumed.values == whole.values[cut:]
    a, b = resumed.summary, whole.summary
    assert (a.first_seen, a.last_seen, a.event_count) == (b.first_seen, b.last_seen, b.event_count)
    assert (a.stage, a.stage_entered_at, a.stage_history) == (
        b.stage,
        b.stage_entered_at,
        b.stage_history,
    )
    assert orjson.loads(orjson.dumps(a.traits)) == orjson.loads(orjson.dumps(b.traits))
    assert a.dims == b.dims
    assert resumed.facts == whole.facts
    # The stored bytes, the saved walk included, do not depend on where the walk was cut.
    assert orjson.loads(a.facts) == orjson.loads(b.facts)


def _row(i: int, minutes: int, event: str | None, channel: str) -> dict[str, Any]:
    """A timeline row of customer u1, `minutes` after T0 (a page view when `event` is None)."""
    return {
        "message_id": f"m{i}",
        "timestamp": T0 + timedelta(minutes=minutes),
        "type": "track" if event else "page",
        "event": event,
        "user_id": "u1",
        "anonymous_id": None,
        "flags": 0,
        "properties": None,
        "traits": None,
        "campaign": None,
        "source_channel": channel,
    }


def test_a_walk_saved_under_another_model_or_without_facts_is_not_resumed() -> None:
    rows = [_row(1, 0, "Order Completed", DIRECT)]
    assert model_fingerprint(DEFAULT_MODEL) != model_fingerprint(COUNTING_MODEL)
    result = derive_customer("cus_1", [dict(r) for r in rows], DEFAULT_MODEL, with_facts=True)
    facts = Facts.from_json(orjson.loads(result.summary.facts))
    assert facts.walk is not None
    common: dict[str, Any] = {
        "facts": facts,
        "history": [],
        "traits": {},
        "first": T0,
        "count": 1,
    }
    state = facts.walk
    assert JourneyWalk.resume(DEFAULT_MODEL, with_facts=True, state=state, **common) is not None
    assert JourneyWalk.resume(COUNTING_MODEL, with_facts=True, state=state, **common) is None
    assert JourneyWalk.resume(DEFAULT_MODEL, with_facts=False, state=state, **common) is None


@settings(max_examples=300, deadline=None)
@given(rows=histories(), cut=st.integers(1, 14))
def test_the_rollup_delta_of_a_resumed_walk_equals_the_full_difference(
    rows: list[dict[str, Any]], cut: int
) -> None:
    """A resumed contribution that entered no stage keeps its stored stages and attribution
    and names the touch keys it changed (`Facts.since`, `Facts.touched`); the delta
    `add_change` computes from those keys alone equals the difference of every figure."""
    rows = _in_order(rows)
    cut = min(cut, len(rows))
    if cut == len(rows):
        return
    walk, old = _stored_with_facts(DEFAULT_MODEL, rows[:cut], with_facts=True)
    assert walk is not None
    new = walk_customer("cus_1", walk, [dict(r) for r in rows[cut:]]).facts
    assert new is not None
    fast, full = Deltas(), Deltas()
    add_change(fast, old, new)
    add_change(full, old, replace(new, since=None, touched=None))
    prune(fast)
    prune(full)
    assert fast == full


def test_a_resumed_walk_that_enters_no_stage_keeps_its_stages_and_attribution() -> None:
    """The fast path is taken when it applies, and not when a stage is entered or a stored
    session's channel changes."""

    stored = [_row(1, 0, None, CHANNELS[0]), _row(2, 60 * 24 * 3, None, DIRECT)]
    cases = {
        "a later page view, new session": (_row(3, 60 * 24 * 6, None, DIRECT), True),
        "a purchase (enters a stage)": (_row(3, 60 * 24 * 6, "Order Completed", DIRECT), False),
        "a real source in the stored Direct session": (
            _row(3, 60 * 24 * 3 + 5, None, "Email"),
            False,
        ),
    }
    for name, (later, fast) in cases.items():
        walk, old = _stored_with_facts(DEFAULT_MODEL, stored, with_facts=True)
        assert walk is not None
        new = walk_customer("cus_1", walk, [later]).facts
        assert new is not None
        assert (new.since is old) == fast, name
        # (only the purchase enters a stage: the Email case is refused for its channel)
        assert (new.stages == old.stages) == ("purchase" not in name), name
        whole = derive_customer(
            "cus_1", [dict(r) for r in [*stored, later]], DEFAULT_MODEL, with_facts=True
        )
        assert new == whole.facts, name
