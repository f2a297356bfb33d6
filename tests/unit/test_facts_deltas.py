"""Rollup deltas between two versions of a customer's contribution."""

from __future__ import annotations

from app.aggregates.facts import TOUCH_FIELDS, Deltas, Facts, add_change, add_facts, prune

DAY = 739_890
AT = 1_790_845_200_000_000
DIMS = {"trait:plan": "pro"}
CONVERTED = TOUCH_FIELDS.index("converted")


def _touch(converted: int) -> list[float]:
    counters = [0.0] * len(TOUCH_FIELDS)
    counters[0], counters[1], counters[CONVERTED] = 1.0, 1, converted
    return counters


def test_a_lost_stage_entry_subtracts_its_conversion_from_the_touches() -> None:
    """An unmerge takes an event away: the customer loses its first stage entry, so it no
    longer converted. The touch rows' `converted` goes down by one (a stage entry removed
    before the touches are filed must not flip their sign)."""
    old = Facts(
        dims=DIMS,
        stages=[("awareness", AT, 1, 0), ("consideration", AT, 0, -1)],
        touches={
            ("", "Unassigned", DAY): _touch(1),
            ("consideration", "Unassigned", DAY): _touch(0),
        },
    )
    new = Facts(
        dims=DIMS,
        stages=[("consideration", AT, 0, -1)],
        touches={
            ("", "Unassigned", DAY): _touch(0),
            ("consideration", "Unassigned", DAY): _touch(0),
        },
    )
    deltas = Deltas()
    add_change(deltas, old, new)
    prune(deltas)
    for group in (("", ""), ("trait:plan", "pro")):
        assert deltas.touches[(*group, "", "Unassigned", DAY)][CONVERTED] == -1
        assert (*group, "consideration", "Unassigned", DAY) not in deltas.touches
        assert deltas.stages[(*group, "awareness", DAY)] == [-1, -1]


def test_adding_and_removing_a_contribution_cancels_out() -> None:
    facts = Facts(
        dims=DIMS,
        stages=[("awareness", AT, 1, 3), ("consideration", AT + 5, 0, -1)],
        touches={("", "Email", DAY): _touch(1)},
        attribution={("consideration", "Email", DAY): [1.0, 1.0, 1.0, 1.0, 1.0]},
    )
    deltas = Deltas()
    add_facts(deltas, facts, 1)
    assert deltas.touches[("", "", "", "Email", DAY)] == facts.touches[("", "Email", DAY)]
    assert deltas.touches[("", "", "", "Email", DAY)] is not facts.touches[("", "Email", DAY)]
    add_facts(deltas, facts, -1)
    prune(deltas)
    assert deltas.empty()


def test_no_value_groups_are_not_written() -> None:
    """A customer without a value for a breakdown is filed under the totals and its named
    groups only: readers derive the no-value group as totals minus named groups."""
    facts = Facts(
        dims={"trait:plan": "", "property:variation_name": "B"},
        stages=[("awareness", AT, 0, -1)],
        touches={("", "Email", DAY): _touch(0)},
    )
    deltas = Deltas()
    add_facts(deltas, facts, 1)
    assert {key[:2] for key in deltas.touches} == {("", ""), ("property:variation_name", "B")}
    assert {key[:2] for key in deltas.stages} == {("", ""), ("property:variation_name", "B")}
    # The same customer losing its plan value moves out of the named group only.
    before = Facts(dims={"trait:plan": "pro", "property:variation_name": "B"},
                   stages=facts.stages, touches=facts.touches)  # fmt: skip
    change = Deltas()
    add_change(change, before, facts)
    prune(change)
    assert {key[:2] for key in change.touches} == {("trait:plan", "pro")}
    assert change.touches[("trait:plan", "pro", "", "Email", DAY)][0] == -1
