"""The demo generator, checked against the real code: every event goes through the ingest parser
(`app/ingest/segment.py`), the identity resolver, the stage engine and the channel grouping, so
the demo's promises (every stage, every channel, one customer per generated journey, a working
A/B test) are facts of the service, not of the generator's own bookkeeping."""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.demo import generator
from app.demo.generator import (
    EXPERIMENT,
    PERSONA_NAMES,
    STAGES,
    DemoCustomer,
    DemoDataset,
    generate,
)
from app.demo.send import make_batches
from app.identity.graph import assign, resolve
from app.ingest.segment import MAX_BATCH_BYTES, MAX_BATCH_ITEMS, RequestMeta, parse_batch
from app.journeys.channels import CHANNELS, UNASSIGNED, channel_of, session_channels
from app.journeys.model import StitchEvent, from_payload
from app.journeys.sessions import assign_sessions
from app.journeys.stages import DEFAULT_MODEL, current_stage, stage_at, stage_history

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CUSTOMERS = 400
DAYS = 30
SEED = 2024


@dataclass(frozen=True, slots=True)
class Stitched:
    """The dataset as the service sees it: parsed, resolved and grouped per customer."""

    dataset: DemoDataset
    events: list[StitchEvent]
    by_customer: dict[str, list[StitchEvent]]
    customer_of: dict[int, str]  # demo customer index -> resolved customer key


def ingest(events: list[dict[str, Any]]) -> list[StitchEvent]:
    """Parse the demo's request bodies exactly as `/v1/batch` does; fail on any rejection."""
    parsed: list[StitchEvent] = []
    for batch in make_batches(events, sent_at=NOW):
        accepted, rejected, _ = parse_batch(batch.body, meta=RequestMeta(received_at=NOW))
        assert rejected == []
        assert len(accepted) == batch.events
        parsed += [
            from_payload(orjson.loads(e.payload), timestamp=e.timestamp, is_bot=False)
            for e in accepted
        ]
    return parsed


@pytest.fixture(scope="module")
def stitched() -> Stitched:
    dataset = generate(customers=CUSTOMERS, days=DAYS, seed=SEED, now=NOW)
    events = ingest(dataset.events())
    resolution = resolve(events)
    by_customer: dict[str, list[StitchEvent]] = defaultdict(list)
    owner: dict[str, str] = {}
    for e in events:
        customer = assign(e, resolution)
        assert customer is not None, e
        by_customer[customer].append(e)
        owner[e.message_id] = customer
    customer_of: dict[int, str] = {}
    for c in dataset.customers:
        owners = {owner[e["messageId"]] for e in c.events}
        assert len(owners) == 1, f"customer {c.index} split into {owners}"
        customer_of[c.index] = owners.pop()
    return Stitched(dataset, events, dict(by_customer), customer_of)


def stage_of(events: list[StitchEvent]) -> str | None:
    return current_stage(stage_history(events, DEFAULT_MODEL))


def named(c: DemoCustomer, name: str) -> list[dict[str, Any]]:
    return [e for e in c.events if e.get("event") == name]


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    first = generate(customers=50, days=DAYS, seed=7, now=NOW)
    again = generate(customers=50, days=DAYS, seed=7, now=NOW)
    other = generate(customers=50, days=DAYS, seed=8, now=NOW)
    assert orjson.dumps(first.events()) == orjson.dumps(again.events())
    assert {e["messageId"] for e in first.events()}.isdisjoint(
        e["messageId"] for e in other.events()
    )
    assert [c.user_id for c in first.customers] != [c.user_id for c in other.customers]


def test_a_smaller_run_is_a_prefix_of_a_larger_one() -> None:
    small = generate(customers=10, days=DAYS, seed=7, now=NOW)
    large = generate(customers=40, days=DAYS, seed=7, now=NOW)
    assert small.customers == large.customers[:10]


def test_later_now_shifts_times_but_keeps_everything_else() -> None:
    a = generate(customers=20, days=DAYS, seed=3, now=NOW)
    b = generate(customers=20, days=DAYS, seed=3, now=NOW + timedelta(hours=5))
    for ca, cb in zip(a.customers, b.customers, strict=True):
        assert [e["messageId"] for e in ca.events] == [e["messageId"] for e in cb.events]
        assert ca.planned_stage == cb.planned_stage


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="customers"):
        generate(customers=0, days=DAYS, seed=1, now=NOW)
    with pytest.raises(ValueError, match="days"):
        generate(customers=1, days=0, seed=1, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        generate(customers=1, days=1, seed=1, now=datetime(2025, 1, 1))


def test_the_generator_is_pure() -> None:
    """Standard library only: no HTTP, no database, nothing of the service."""
    tree = ast.parse(Path(generator.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --------------------------------------------------------------------------- valid payloads


def test_every_event_is_accepted_by_the_ingest_parser(stitched: Stitched) -> None:
    dataset = stitched.dataset
    assert len(stitched.events) == dataset.event_count
    ids = [e["messageId"] for e in dataset.events()]
    assert len(set(ids)) == len(ids)
    for batch in make_batches(dataset.events(), sent_at=NOW):
        assert len(batch.body) <= MAX_BATCH_BYTES
        assert batch.events <= MAX_BATCH_ITEMS


def test_batches_respect_the_byte_limit() -> None:
    events = generate(customers=20, days=DAYS, seed=1, now=NOW).events()
    batches = make_batches(events, sent_at=NOW, max_events=1_000, max_bytes=20_000)
    assert len(batches) > 1
    assert all(len(b.body) <= 20_000 for b in batches)
    assert sum(b.events for b in batches) == len(events)
    assert [e for b in batches for e in orjson.loads(b.body)["batch"]] == events


def test_events_are_spread_over_the_window_and_in_the_past(stitched: Stitched) -> None:
    times = [e.timestamp for e in stitched.events]
    assert min(times) >= NOW - timedelta(days=DAYS)
    assert max(times) < NOW
    # Spread out: every one of the window's weeks has events.
    weeks = Counter((NOW - t).days // 7 for t in times)
    assert set(weeks) >= set(range(DAYS // 7))


def test_a_one_day_window_still_fits() -> None:
    dataset = generate(customers=60, days=1, seed=5, now=NOW)
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in dataset.events()]
    assert min(stamps) >= NOW - timedelta(days=1)
    assert max(stamps) < NOW
    events = ingest(dataset.events())
    resolution = resolve(events)
    assert len(resolution.components()) == 60


# --------------------------------------------------------------------------- customers and stages


def test_every_journey_stitches_into_exactly_one_customer(stitched: Stitched) -> None:
    assert len(stitched.by_customer) == CUSTOMERS
    assert len(set(stitched.customer_of.values())) == CUSTOMERS


def test_the_planned_stage_is_what_the_stage_engine_derives(stitched: Stitched) -> None:
    derived = {
        c.index: stage_of(stitched.by_customer[stitched.customer_of[c.index]])
        for c in stitched.dataset.customers
    }
    planned = {c.index: c.planned_stage for c in stitched.dataset.customers}
    assert derived == planned
    counts = Counter(derived.values())
    assert set(counts) == set(STAGES) == set(DEFAULT_MODEL.stage_names)
    # Spread across the journey, not piled up in one stage.
    assert all(counts[stage] >= CUSTOMERS * 0.04 for stage in STAGES), counts


def test_personas_are_sent_as_identify_traits(stitched: Stitched) -> None:
    seen: Counter[str] = Counter()
    for c in stitched.dataset.customers:
        identifies = [e for e in c.events if e["type"] == "identify"]
        if c.user_id is None:
            assert identifies == []
            continue
        assert identifies, c.index
        for e in identifies:
            assert e["userId"] == c.user_id
            assert e["traits"]["persona"] == c.persona
            assert e["traits"]["email"] == c.email
        seen[c.persona] += 1
    assert set(seen) == set(PERSONA_NAMES)


def test_anonymous_browsing_is_identified_later_and_across_devices(stitched: Stitched) -> None:
    cross_device = 0
    for c in stitched.dataset.customers:
        if c.user_id is None:
            continue
        first = min(c.events, key=lambda e: e["timestamp"])
        if first["type"] in ("page", "track") and "userId" not in first:
            # Browsed anonymously before signing up: that history joins the customer.
            assert first["anonymousId"] == c.anonymous_ids[0]
        if len(c.anonymous_ids) == 2:
            mobile = c.anonymous_ids[1]
            libraries = {
                e["context"]["library"]["name"] for e in c.events if e.get("anonymousId") == mobile
            }
            assert libraries <= {"analytics-ios", "analytics-android"}
            assert any(
                e["type"] == "identify" and e["anonymousId"] == mobile and e["userId"] == c.user_id
                for e in c.events
            )
            cross_device += 1
    assert cross_device >= CUSTOMERS * 0.05


def test_abandoned_carts_and_repeat_buyers_are_there(stitched: Stitched) -> None:
    abandoned = repeat = 0
    for c in stitched.dataset.customers:
        orders = len(named(c, "Order Completed"))
        if (named(c, "Product Added") or named(c, "Checkout Started")) and not orders:
            abandoned += 1
            assert c.planned_stage == "consideration"
        if orders >= 2:
            repeat += 1
            assert c.planned_stage in ("loyalty", "advocacy")
    assert abandoned >= CUSTOMERS * 0.05
    assert repeat >= CUSTOMERS * 0.05


def test_emails_carry_their_campaign(stitched: Stitched) -> None:
    emails = [
        e
        for c in stitched.dataset.customers
        for e in c.events
        if e.get("event") in ("Email Opened", "Email Link Clicked")
    ]
    assert {e["event"] for e in emails} == {"Email Opened", "Email Link Clicked"}
    for e in emails:
        assert e["context"]["campaign"]["medium"] == "email"
        assert e["context"]["campaign"]["name"]
        assert e["userId"]


def test_feedback_properties_are_in_range(stitched: Stitched) -> None:
    found: Counter[str] = Counter()
    for c in stitched.dataset.customers:
        for e in c.events:
            props = e.get("properties") or {}
            if e.get("event") == "Survey Responded":
                assert 0 <= props["score"] <= 10
                # Only a promoter's answer moves a customer to advocacy.
                assert props["score"] < 9 or c.planned_stage == "advocacy"
                found["nps"] += 1
            if e.get("event") == "CSAT Submitted":
                assert 1 <= props["score"] <= 5
                found["csat"] += 1
            if "effort" in props:
                assert props["effort"] in range(1, 8)
                found["effort"] += 1
            if "success" in props:
                assert isinstance(props["success"], bool)
                found["success"] += 1
            if "sentiment" in props:
                assert -1 <= props["sentiment"] <= 1
                found["sentiment"] += 1
    assert set(found) == {"nps", "csat", "effort", "success", "sentiment"}
    assert min(found.values()) >= 20, found


def test_feedback_reaches_most_stages(stitched: Stitched) -> None:
    """Feedback events happen while customers are in most stages (the journey map's feedback)."""
    stages_with_feedback: set[str] = set()
    for events in stitched.by_customer.values():
        history = stage_history(events, DEFAULT_MODEL)
        for e in events:
            if {"effort", "success", "sentiment", "score"} & set(e.properties):
                stage = stage_at(history, e.timestamp, message_id=e.message_id)
                assert stage is not None
                stages_with_feedback.add(stage)
    assert stages_with_feedback >= {"consideration", "purchase", "retention", "loyalty", "advocacy"}


# --------------------------------------------------------------------------- channels


def test_every_channel_is_produced(stitched: Stitched) -> None:
    own = Counter(channel_of(e) for e in stitched.events)
    attributed: Counter[str] = Counter()
    for events in stitched.by_customer.values():
        sessions = assign_sessions(events)
        attributed.update(session_channels(events, sessions=sessions).values())
    expected = set(CHANNELS) - {UNASSIGNED}
    assert set(own) == expected, own
    assert set(attributed) == expected, attributed
    assert all(own[channel] >= 20 for channel in expected), own


def test_first_touches_follow_the_persona(stitched: Stitched) -> None:
    """Where customers first come from depends on their persona (social for impulse buyers,
    search engines and review sites for researchers)."""
    first: dict[str, Counter[str]] = defaultdict(Counter)
    by_id = {e.message_id: e for e in stitched.events}
    for c in stitched.dataset.customers:
        opening = min(c.events, key=lambda e: (e["timestamp"], e["messageId"]))
        first[c.persona][channel_of(by_id[opening["messageId"]])] += 1
    impulse, researcher = first["impulse buyer"], first["researcher"]
    social = ("Organic Social", "Paid Social")
    assert sum(impulse[ch] for ch in social) > impulse.total() / 2
    assert sum(researcher[ch] for ch in ("Organic Search", "Referral")) > researcher.total() / 2


# --------------------------------------------------------------------------- the A/B test


def test_the_checkout_experiment_treatment_converts_better(stitched: Stitched) -> None:
    """Measured from the events alone: customers who viewed the experiment, per variation, and
    how many of them completed an order afterwards."""
    viewed: dict[str, set[str]] = defaultdict(set)
    first_view: dict[str, datetime] = {}
    for customer, events in stitched.by_customer.items():
        for e in sorted(events, key=lambda e: (e.timestamp, e.message_id)):
            if e.event == "Experiment Viewed" and e.properties["experiment_name"] == EXPERIMENT:
                viewed[e.properties["variation_name"]].add(customer)
                first_view.setdefault(customer, e.timestamp)
    assert set(viewed) == {"control", "treatment"}
    assert viewed["control"].isdisjoint(viewed["treatment"])

    def conversion(group: set[str]) -> float:
        bought = sum(
            1
            for customer in group
            if any(
                e.event == "Order Completed" and e.timestamp > first_view[customer]
                for e in stitched.by_customer[customer]
            )
        )
        return bought / len(group)

    assert len(viewed["control"]) >= 50 and len(viewed["treatment"]) >= 50
    assert conversion(viewed["treatment"]) - conversion(viewed["control"]) >= 0.1
