"""The funnel index's vectorised evaluation equals a straightforward reference, for generated
stage and event histories, windows, breakdowns, repeated steps, ties and both parities of the
median; and customers replaced one by one (the change feed) equal an index built afresh."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
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
    steps = draw(st.lists(STEP, min_size=2, max_size=5))
    if draw(st.booleans()):  # a repeated step
        steps.insert(1, steps[0])
    start = draw(INSTANTS)
    end = start + draw(st.integers(1, 40)) * 1_500_000
    span = draw(st.sampled_from((1, 1_500_000, 3_000_000, 15_000_000, 60_000_000)))
    dim = draw(st.sampled_from(("", *DIMS)))
    return steps, start, end, span, dim


@contextmanager
def blocks(block: int, ahead: int = funnel_index.AHEAD) -> Iterator[None]:
    """Evaluations in blocks of `block` customers, prefetching `ahead` survivors ahead."""
    saved = funnel_index.BLOCK, funnel_index.AHEAD
    funnel_index.BLOCK, funnel_index.AHEAD = block, ahead
    try:
        yield
    finally:
        funnel_index.BLOCK, funnel_index.AHEAD = saved


# Small blocks: survivors, searches and groups straddle the blocks' boundaries; small prefetch
# distances: the hints run to the end of a block's survivors.
BLOCKS = st.sampled_from((1, 2, 3, 5, 8192))
AHEADS = st.sampled_from((0, 1, 2, 32))


@settings(max_examples=300, deadline=None)
@given(people=st.lists(customers(), max_size=30), data=st.data())
def test_evaluation_equals_the_reference(people: list[Customer], data: st.DataObject) -> None:
    steps, start, end, span, dim = query(data.draw)
    with blocks(data.draw(BLOCKS), data.draw(AHEADS)):
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
    with blocks(data.draw(BLOCKS)):
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


# Edge cases of the compiled kernels (`_enter`, `_advance`, `_search`), each against the
# reference.

STAGE_A, STAGE_B, EV_X, EV_Y = S("a", "stage"), S("b", "stage"), S("X", "event"), S("Y", "event")


def check(people: list[Customer], steps: list[S], **kw: int | str) -> Found:
    got = build(people).evaluate(steps, **kw)  # type: ignore[arg-type]
    assert got == reference(people, steps, **kw)  # type: ignore[arg-type]
    return got


def test_nobody_in_the_window_gives_nothing() -> None:
    people = [Customer({"a": 5_000_000}, [("X", 5_000_000)], {"trait:plan": "pro"})]
    for first in (STAGE_A, EV_X):
        for dim in ("", "trait:plan"):
            kw = {"start": 6_000_000, "end": 9_000_000, "span": 10**9, "dim": dim}
            assert check(people, [first, STAGE_B], **kw) == {}
    assert build([]).evaluate([STAGE_A, EV_X], start=0, end=10, span=10, dim="") == {}


def test_survivors_running_out_keep_zero_counts_for_later_steps() -> None:
    people = [Customer({"a": 1_000_000}, [], {}) for _ in range(3)]
    got = check(people, [STAGE_A, STAGE_B, EV_X], start=0, end=10**9, span=10**9, dim="")
    assert got == {"": {1: (3, None), 2: (0, None), 3: (0, None)}}


def test_ties_at_the_window_and_span_bounds() -> None:
    start, end, span = 10_000_000, 20_000_000, 3_000_000
    people = [
        Customer({"a": start, "b": start + span}, [("X", start), ("Y", start + span)], {}),
        Customer({"a": end, "b": end}, [("X", end)], {}),  # end: outside
        Customer({"a": start - 1, "b": start}, [("X", start - 1)], {}),  # before: outside
        Customer({"a": start + 1, "b": start + 1 + span + 1}, [("X", start + 1)], {}),
        # an earlier instant before the window, one inside: the inside one is step 1
        Customer({}, [("X", start - 5), ("X", start + 2), ("Y", start + 2)], {}),
    ]
    for steps in ([STAGE_A, STAGE_B], [EV_X, EV_Y], [EV_X, STAGE_B], [STAGE_A, EV_Y]):
        check(people, steps, start=start, end=end, span=span, dim="")


def test_repeated_event_steps_need_later_instants() -> None:
    people = [
        Customer({}, [("X", 1_000_000), ("X", 1_000_000), ("X", 4_000_000)], {}),
        Customer({}, [("X", 1_000_000), ("X", 2_000_000), ("X", 3_000_000)], {}),
        Customer({}, [("X", 1_000_000), ("X", 1_000_000)], {}),
    ]
    got = check(people, [EV_X, EV_X, EV_X], start=0, end=10**9, span=10**9, dim="")
    assert got[""][2] == (2, 2.0)  # (3 s and 1 s)
    assert got[""][3] == (1, 1.0)
    check(people, [STAGE_A, STAGE_A], start=0, end=10**9, span=10**9, dim="")


def test_a_single_customer() -> None:
    person = Customer(
        {"a": 1_000_000, "b": 2_500_000},
        [("X", 500_000), ("X", 3_000_000), ("Y", 2_000_000), ("Y", 9_000_000)],
        {"trait:plan": "team"},
    )
    for dim in ("", "trait:plan", "property:v"):
        got = check([person], [STAGE_A, EV_X, EV_Y], start=0, end=10**7, span=10**8, dim=dim)
        assert next(iter(got.values())) == {1: (1, None), 2: (1, 2.0), 3: (1, 6.0)}


def test_breakdown_groups_of_one_member_and_groups_running_out() -> None:
    people = [
        Customer({"a": 0, "b": 1_000_000}, [], {"trait:plan": "free"}),
        Customer({"a": 0, "b": 3_000_000}, [], {"trait:plan": "pro"}),
        Customer({"a": 0, "b": 5_000_000}, [], {"trait:plan": "pro"}),
        Customer({"a": 0}, [], {"trait:plan": "team"}),
        Customer({"a": 0, "b": 7_000_000}, [], {}),
    ]
    got = check(people, [STAGE_A, STAGE_B], start=0, end=1, span=10**9, dim="trait:plan")
    assert got == {
        "": {1: (1, None), 2: (1, 7.0)},
        "free": {1: (1, None), 2: (1, 1.0)},
        "pro": {1: (2, None), 2: (2, 4.0)},
        "team": {1: (1, None), 2: (0, None)},
    }


def test_searches_in_replaced_customers() -> None:
    """Customers re-read (the overlay) with instants on both sides of the bound."""
    before = [Customer({}, [("X", 1_000_000), ("Y", 2_000_000)], {}) for _ in range(4)]
    after = [
        Customer({}, [("X", 1_000_000), ("X", 6_000_000), ("Y", 2_000_000), ("Y", 7_000_000)], {}),
        before[1],
        Customer({}, [], {}),
        Customer({}, [("X", 2_000_000), ("X", 8_000_000), ("Y", 9_000_000)], {}),
    ]
    index = build(before)
    changed = [0, 2, 3]
    index.replace(
        changed,
        entries=[],
        values={c: after[c].values for c in changed},
        events=[(c, e, at) for c in changed for e, at in after[c].events],
    )
    for steps in ([EV_X, EV_Y], [EV_X, EV_X, EV_Y], [EV_Y, EV_X]):
        kw = {"start": 5_000_000, "end": 10**8, "span": 10**8, "dim": ""}
        assert index.evaluate(steps, **kw) == reference(after, steps, **kw)  # type: ignore[arg-type]


def test_large_medians_of_both_parities() -> None:
    rng = np.random.default_rng(7)
    for size in (10_000, 10_001):
        values = rng.integers(0, 50, size) * 1_000_003  # many ties
        assert median_seconds(values) == percentile_cont(values.tolist())


def test_warm_up_is_idempotent() -> None:
    funnel_index.warm_up()
    funnel_index.warm_up()


def test_blocks_of_one_two_and_many_customers_give_the_same_answer() -> None:
    """Many customers (several blocks of each size), every kind of step, searches on both
    sides of every bound, a breakdown: the same answer whatever the block and the prefetch
    distance, equal to the reference."""
    rng = np.random.default_rng(11)
    people = []
    for c in range(400):
        t0 = int(rng.integers(0, 30)) * 1_000_000
        entries = {
            s: t0 + int(rng.integers(0, 8)) * 1_000_000 for s in STAGES if rng.random() < 0.7
        }
        events = [
            (str(rng.choice(EVENTS)), t0 + int(rng.integers(-5, 12)) * 1_000_000)
            for _ in range(int(rng.integers(0, 9)))
        ]
        people.append(Customer(entries, events, {"trait:plan": VALUES[c % 4]}))
    index = build(people)
    steps = [EV_X, S("Y", "event"), STAGE_B, S("Z", "event"), S("Z", "event")]
    for dim in ("", "trait:plan"):
        kw = {"start": 10_000_000, "end": 25_000_000, "span": 9_000_000, "dim": dim}
        expected = reference(people, steps, **kw)  # type: ignore[arg-type]
        assert expected[""][3][0] > 0  # (not trivially empty)
        for block, ahead in ((1, 0), (2, 1), (7, 3), (64, 32), (8192, 32)):
            with blocks(block, ahead):
                assert index.evaluate(steps, **kw) == expected  # type: ignore[arg-type]


def test_by_group_makes_each_groups_differences_contiguous() -> None:
    diffs = np.asarray([5, 1, 7, 3, 2, 9, 4, -1], np.int64)  # (the last: past `top`)
    groups = np.asarray([2, 0, 2, 0, 3, 2, 0, 1], np.uint32)
    counts = np.zeros(4, np.int64)
    starts = np.full(4, -1, np.int64)
    out = np.full(7, -1, np.int64)
    funnel_index._by_group(diffs, groups, 7, counts, starts, out)
    assert counts.tolist() == [3, 0, 3, 1]
    assert starts.tolist() == [0, 3, 3, 6]
    assert out.tolist() == [1, 3, 4, 5, 7, 9, 2]


def test_first_and_last_instants_interleaved_follow_replacements() -> None:
    events = StepEvents(np.asarray([0, 0, 2]), np.asarray([9, 4, 6], np.int64), 3)
    assert events.first_at.tolist() == [4, NEVER, 6]
    assert events.last_at.tolist() == [9, funnel_index._BEFORE_ALL, 6]
    events.replace({1: [8, 3], 2: [], 4: [5]}, 5)  # (4: a new customer, room grows)
    assert events.first_at[:5].tolist() == [4, 3, NEVER, NEVER, 5]
    assert events.last_at[:5].tolist() == [9, 8, funnel_index._BEFORE_ALL] * 1 + [
        funnel_index._BEFORE_ALL,
        5,
    ]
    assert events.bounds.size >= 10


def test_a_step_shorter_than_the_index_is_refused_not_read_past() -> None:
    index = build([Customer({"a": 1_000_000}, [("X", 2_000_000)], {})])
    index.grow(5000)  # (stages grow with the index; this event's arrays do not)
    with pytest.raises(IndexError):
        index.evaluate([STAGE_A, EV_X], start=0, end=10**9, span=10**9, dim="")
