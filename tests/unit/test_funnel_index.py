"""The funnel index's vectorised evaluation equals a straightforward reference, for generated
stage and event histories, windows, breakdowns, repeated steps, ties and both parities of the
median; and customers replaced one by one (the change feed) equal an index built afresh."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.aggregates import funnel_index
from app.aggregates.funnel_index import (
    NEVER,
    Breakdown,
    Found,
    FunnelIndex,
    StepEvents,
    median_seconds,
)


@pytest.fixture(autouse=True)
def _restore_search_share() -> object:
    saved = funnel_index._SEARCH_SHARE
    yield
    funnel_index._SEARCH_SHARE = saved


STAGES = ("a", "b", "c", "d")
EVENTS = ("X", "Y", "Z")
DIMS = ("trait:plan", "property:v")
VALUES = ("", "free", "pro", "team")


@dataclass(frozen=True)
class S:
    name: str
    kind: str


@dataclass
class Customer:
    entries: dict[str, int]
    events: list[tuple[str, int]]
    values: dict[str, str]


# Instants on a coarse grid so that ties (equal instants, equal durations) are frequent.
INSTANTS = st.integers(0, 40).map(lambda i: i * 1_500_000)


@st.composite
def customers(draw: st.DrawFn) -> Customer:
    entries = {
        s: draw(INSTANTS) for s in draw(st.lists(st.sampled_from(STAGES), unique=True, max_size=4))
    }
    events = draw(st.lists(st.tuples(st.sampled_from(EVENTS), INSTANTS), max_size=8))
    values = {d: draw(st.sampled_from(VALUES)) for d in DIMS if draw(st.booleans())}
    return Customer(entries, events, values)


STEP = st.one_of(
    st.sampled_from(STAGES).map(lambda n: S(n, "stage")),
    st.sampled_from(EVENTS).map(lambda n: S(n, "event")),
)


def build(people: list[Customer]) -> FunnelIndex:
    n = len(people)
    stages = {s: np.full(n, NEVER, np.int64) for s in STAGES}
    for c, p in enumerate(people):
        for s, at in p.entries.items():
            stages[s][c] = at
    breakdowns = {}
    for d in DIMS:
        b = Breakdown(np.zeros(n, np.int32), [""])
        for c, p in enumerate(people):
            b.codes[c] = b.code(p.values.get(d, ""))
        breakdowns[d] = b
    events = {}
    for name in EVENTS:
        pairs = [(c, at) for c, p in enumerate(people) for e, at in p.events if e == name]
        cust = np.asarray([c for c, _ in pairs], np.int64)
        at = np.asarray([t for _, t in pairs], np.int64)
        events[name] = StepEvents(cust, at, n)
    return FunnelIndex(customers=n, stages=stages, breakdowns=breakdowns, events=events)


def percentile_cont(values: list[int]) -> float | None:
    """PostgreSQL's percentile_cont(0.5) over float8 seconds."""
    if not values:
        return None
    seconds = sorted(v / 1_000_000 for v in values)
    row = 0.5 * (len(seconds) - 1)
    lo, hi = math.floor(row), math.ceil(row)
    if lo == hi:
        return seconds[lo]
    return seconds[lo] + (row - lo) * (seconds[hi] - seconds[lo])


def reference(
    people: list[Customer], steps: list[S], *, start: int, end: int, span: int, dim: str
) -> Found:
    """Customer by customer: the first step-1 instant in the window, then greedily the first
    instant of each next step at/after the previous one (after, for a repeated step) and at
    most `span` after step 1."""

    def instants(p: Customer, step: S) -> list[int]:
        if step.kind == "stage":
            return [p.entries[step.name]] if step.name in p.entries else []
        return [at for e, at in p.events if e == step.name]

    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    diffs: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for p in people:
        firsts = [t for t in instants(p, steps[0]) if start <= t < end]
        if not firsts:
            continue
        group = p.values.get(dim, "") if dim else ""
        t1 = prev = min(firsts)
        counts[group][1] += 1
        for k in range(2, len(steps) + 1):
            strict = steps[k - 1] == steps[k - 2]
            later = [
                t
                for t in instants(p, steps[k - 1])
                if (t > prev if strict else t >= prev) and t <= t1 + span
            ]
            if not later:
                break
            t = min(later)
            counts[group][k] += 1
            diffs[group][k].append(t - prev)
            prev = t
    out: Found = {}
    for group, by_step in counts.items():
        out[group] = {1: (by_step[1], None)}
        for k in range(2, len(steps) + 1):
            out[group][k] = (by_step.get(k, 0), percentile_cont(diffs[group].get(k, [])))
    return out


def query(draw: st.DrawFn) -> tuple[list[S], int, int, int, str]:
    # Later event steps by a binary search per survivor, or by one scan of the rows.
    funnel_index._SEARCH_SHARE = draw(st.sampled_from((0, 10**9)))
    steps = draw(st.lists(STEP, min_size=2, max_size=5))
    if draw(st.booleans()):  # a repeated step
        steps.insert(1, steps[0])
    start = draw(INSTANTS)
    end = start + draw(st.integers(1, 40)) * 1_500_000
    span = draw(st.sampled_from((1, 1_500_000, 3_000_000, 15_000_000, 60_000_000)))
    dim = draw(st.sampled_from(("", *DIMS)))
    return steps, start, end, span, dim


@settings(max_examples=300, deadline=None)
@given(people=st.lists(customers(), max_size=30), data=st.data())
def test_evaluation_equals_the_reference(people: list[Customer], data: st.DataObject) -> None:
    steps, start, end, span, dim = query(data.draw)
    got = build(people).evaluate(steps, start=start, end=end, span=span, dim=dim)
    assert got == reference(people, steps, start=start, end=end, span=span, dim=dim)


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(customers(), max_size=20),
    after=st.lists(customers(), max_size=25),
    fold=st.booleans(),
    data=st.data(),
)
def test_replaced_customers_equal_an_index_built_afresh(
    before: list[Customer], after: list[Customer], fold: bool, data: st.DataObject
) -> None:
    """Customers re-read after a change (some changed, some new, some gone: empty) give what
    an index built from the new state gives, before and after the overlay is folded in."""
    index = build(before)
    # `after` is the new state: customers past `before` are new; customers of `before` past
    # `after` are gone (nothing left).
    while len(after) < len(before):
        after.append(Customer({}, [], {}))
    changed = data.draw(
        st.lists(st.integers(0, max(0, len(after) - 1)), unique=True, max_size=len(after))
        if after
        else st.just([])
    )
    # Customers not re-read keep their old state: they must not have changed.
    for c in range(len(before)):
        if c not in changed:
            after[c] = before[c]
    changed += [c for c in range(len(before), len(after)) if c not in changed]
    for chunk in (changed[: len(changed) // 2], changed[len(changed) // 2 :]):
        index.replace(
            chunk,
            entries=[(c, s, at) for c in chunk for s, at in after[c].entries.items()],
            values={c: after[c].values for c in chunk},
            events=[(c, e, at) for c in chunk for e, at in after[c].events],
        )
    if fold:
        for step_events in index.events.values():
            step_events.fold(index.size)
    steps, start, end, span, dim = query(data.draw)
    got = index.evaluate(steps, start=start, end=end, span=span, dim=dim)
    assert got == reference(after, steps, start=start, end=end, span=span, dim=dim)
    assert got == build(after).evaluate(steps, start=start, end=end, span=span, dim=dim)


@given(st.lists(st.integers(0, 10**13), max_size=40))
def test_median_is_percentile_cont(values: list[int]) -> None:
    assert median_seconds(np.asarray(values, np.int64)) == percentile_cont(values)


def test_median_of_two_is_the_midpoint_and_of_three_the_middle() -> None:
    assert median_seconds(np.asarray([1_000_000, 4_000_000], np.int64)) == 2.5
    assert median_seconds(np.asarray([9, 1_000_000, 4_000_000], np.int64)) == 1.0
    assert median_seconds(np.asarray([], np.int64)) is None


def test_many_groups_take_the_sorted_path() -> None:
    """More than a handful of breakdown values: medians per group from one sort."""
    people = [
        Customer({"a": 0, "b": (c % 7 + 1) * 1_000_000}, [], {"trait:plan": f"g{c % 11}"})
        for c in range(200)
    ]
    steps = [S("a", "stage"), S("b", "stage")]
    kw = {"start": 0, "end": 10, "span": 10**9, "dim": "trait:plan"}
    assert build(people).evaluate(steps, **kw) == reference(people, steps, **kw)  # type: ignore[arg-type]
