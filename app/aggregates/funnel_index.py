"""The funnel index of one workspace: exact funnels evaluated on numpy arrays (pure: no I/O).

Customers are dense ordinals. Per stage, an `int64` array of entry instants (microseconds since
2000-01-01 UTC, PostgreSQL's own binary epoch; `NEVER` when the customer never entered it); per
breakdown, an `int32` array of group codes; per event name used as a step, the step events as
a CSR layout (`off[c]:off[c+1]` are customer `c`'s instants, sorted) plus an overlay for the
customers re-read since (`StepEvents`). A funnel is a few array passes per step over the
survivors of the previous step (`FunnelIndex.evaluate`), and gives exactly what the SQL of
`app.aggregates.service.funnel` gives: the same greedy earliest match, the same counts, and the
same medians (`percentile_cont(0.5)` over float8 seconds, reproduced in the same float
arithmetic by `median_seconds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

NEVER = np.iinfo(np.int64).max  # an instant after every real one: "not reached"
NONE_CODE = 0  # the group code of "" (no value), in every breakdown
_BEFORE_ALL = np.iinfo(np.int64).min
# (Unused since every event step is one gather from the dense first/last instants plus a
# binary search for the few customers with instants on both sides of the bound; kept because
# tests/unit/test_funnel_index.py toggles it.)
_SEARCH_SHARE = 16
_SMALL_GROUPS = 8  # up to this many groups, medians by one mask per group


class Step(Protocol):
    """A funnel step: a stage name or an event name."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...  # "stage" | "event"


def median_seconds(diffs: I64) -> float | None:
    """`percentile_cont(0.5)` of `diffs` (microseconds) taken as float8 seconds: the middle
    value, or `lo + 0.5 * (hi - lo)` of the two middle ones, in PostgreSQL's arithmetic."""
    n = int(diffs.size)
    if n == 0:
        return None
    mid = n // 2
    # One k (a partition with two is several times slower), then the largest below it.
    part = np.partition(diffs, mid)
    hi = int(part[mid]) / 1_000_000
    if n % 2:
        return hi
    lo = int(part[:mid].max()) / 1_000_000
    return lo + 0.5 * (hi - lo)


def _lower_bound(values: I64, lo: I64, hi: I64, target: I64, *, strict: bool) -> I64:
    """Per row, the first position in `values[lo:hi]` (sorted) holding a value >= `target`
    (> when `strict`), or `hi`: a binary search vectorised over the rows still searching."""
    lo = lo.copy()
    hi = hi.copy()
    active = np.flatnonzero(lo < hi)
    while active.size:
        a, b = lo[active], hi[active]
        mid = (a + b) >> 1
        seen = values[mid]
        goal = target[active]
        right = seen <= goal if strict else seen < goal
        lo[active] = np.where(right, mid + 1, a)
        hi[active] = np.where(right, b, mid)
        active = active[lo[active] < hi[active]]
    return lo


def _first_per_run(cust: npt.NDArray[np.integer], at: I64) -> tuple[I64, I64]:
    """The first row of each run of equal `cust` (rows sorted by customer, then instant)."""
    if cust.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first = np.empty(cust.size, np.bool_)
    first[0] = True
    np.not_equal(cust[1:], cust[:-1], out=first[1:])
    rows = np.flatnonzero(first)
    return cust[rows].astype(np.int64), at[rows]


class Scratch:
    """Work arrays kept between evaluations: a fresh multi-megabyte array costs its page
    faults at every request (about 1 ms per million int64 on the machine measured), a kept
    one does not. `never(size)` is all `NEVER` between uses (users restore what they set)."""

    def __init__(self) -> None:
        self._arrays: dict[str, npt.NDArray[Any]] = {}

    def get(self, name: str, size: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A work array of at least `size` items (contents arbitrary), as a view of `size`."""
        found = self._arrays.get(name)
        if found is None or found.size < size:
            found = np.empty(max(size, 1024), dtype)
            self._arrays[name] = found
        return found[:size]

    def never(self, size: int) -> I64:
        """A work array that is all `NEVER`: restore every item you set before returning."""
        found = self._arrays.get("never")
        if found is None or found.size < size:
            found = np.full(max(size, 1024), NEVER, np.int64)
            self._arrays["never"] = found
        return found[:size]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())


class StepEvents:
    """The instants of one event name per customer: a base CSR layout, and an overlay holding
    the current instants of every customer re-read since the base was built (their base rows
    are ignored: `replaced`). The overlay is folded into the base when it grows. Per customer
    also its first and last instant, wherever they are (`first_at`, `last_at`: dense), so that
    "the first instant at or after t" is one gather for most customers, and a binary search
    in its rows only for those with instants on both sides of t."""

    def __init__(self, cust: npt.NDArray[np.integer], at: I64, customers: int) -> None:
        self._build(np.asarray(cust, np.int64), np.asarray(at, np.int64), customers)

    def _build(self, cust: I64, at: I64, customers: int) -> None:
        order = np.lexsort((at, cust))
        cust, at = cust[order], at[order]
        self.base_n = customers
        self.base_at = at
        self.base_off = np.zeros(customers + 1, np.int64)
        np.cumsum(np.bincount(cust, minlength=customers)[:customers], out=self.base_off[1:])
        self.first_at = np.full(customers, NEVER, np.int64)
        self.last_at = np.full(customers, _BEFORE_ALL, np.int64)
        has = np.flatnonzero(self.base_off[1:] > self.base_off[:-1])
        self.first_at[has] = at[self.base_off[has]]
        self.last_at[has] = at[self.base_off[has + 1] - 1]
        # The same rows in time order, each with the instant of its customer's previous row
        # (`_BEFORE_ALL` for its first): a row in [start, end) is its customer's first there
        # iff that previous instant is before `start`, so a step 1 is one slice and one mask.
        previous = np.full(at.size, _BEFORE_ALL, np.int64)
        if at.size > 1:
            same = cust[1:] == cust[:-1]
            previous[1:][same] = at[:-1][same]
        by_time = np.argsort(at, kind="stable")
        self.time_at = at[by_time]
        self.time_cust = cust[by_time].astype(np.int32)
        self.time_previous = previous[by_time]
        self.replaced = np.zeros(customers, np.bool_)
        self.overlay: dict[int, I64] = {}
        self._ov_cust = np.empty(0, np.int64)
        self._ov_off = np.zeros(1, np.int64)
        self._ov_at = np.empty(0, np.int64)
        self._ov_rows = 0

    @property
    def nbytes(self) -> int:
        return int(
            self.base_at.nbytes
            + self.time_at.nbytes * 2
            + self.time_cust.nbytes
            + self.base_off.nbytes
            + self.first_at.nbytes * 2
            + self.replaced.nbytes
            + self._ov_rows * 24
        )

    def _room(self, size: int) -> None:
        if size > self.replaced.size:
            extra = max(size, 2 * self.replaced.size) - self.replaced.size
            self.replaced = np.concatenate([self.replaced, np.zeros(extra, np.bool_)])
            self.first_at = np.concatenate([self.first_at, np.full(extra, NEVER, np.int64)])
            self.last_at = np.concatenate([self.last_at, np.full(extra, _BEFORE_ALL, np.int64)])

    def replace(self, customers: Mapping[int, Sequence[int]], size: int) -> None:
        """Set the instants of these customers (all of them; empty: none any more)."""
        self._room(size)
        for c, instants in customers.items():
            old = self.overlay.get(c)
            if old is not None:
                self._ov_rows -= old.size
            arr = np.sort(np.asarray(instants, np.int64))
            self.overlay[c] = arr
            self._ov_rows += arr.size
            self.replaced[c] = True
            self.first_at[c] = arr[0] if arr.size else NEVER
            self.last_at[c] = arr[-1] if arr.size else _BEFORE_ALL
        if len(self.overlay) > max(4096, self.base_n // 16):
            self.fold(size)
        else:
            self._overlay()

    def fold(self, size: int) -> None:
        """Rebuild the base with the overlay in it."""
        owner = np.repeat(np.arange(self.base_n, dtype=np.int64), np.diff(self.base_off))
        keep = ~self.replaced[owner]
        parts_c = [owner[keep]]
        parts_t = [self.base_at[keep]]
        for c, arr in self.overlay.items():
            parts_c.append(np.full(arr.size, c, np.int64))
            parts_t.append(arr)
        self._build(np.concatenate(parts_c), np.concatenate(parts_t), max(size, self.base_n))

    def _overlay(self) -> None:
        """The overlay as arrays (built when it changes: evaluations only read them)."""
        custs = sorted(self.overlay)
        self._ov_cust = np.asarray(custs, np.int64)
        lengths = np.asarray([self.overlay[c].size for c in custs], np.int64)
        self._ov_off = np.zeros(len(custs) + 1, np.int64)
        np.cumsum(lengths, out=self._ov_off[1:])
        self._ov_at = (
            np.concatenate([self.overlay[c] for c in custs]) if custs else np.empty(0, np.int64)
        )

    def firsts_in(self, start: int, end: int, scratch: Scratch) -> tuple[I64, I64]:
        """Each customer's first instant in [start, end): (customers, instants), in the order
        of those instants (not of customers)."""
        lo, hi = np.searchsorted(self.time_at, (start, end))
        first = scratch.get("first", int(hi - lo), np.bool_)
        np.less(self.time_previous[lo:hi], start, out=first)
        if self.overlay:
            first &= ~self.replaced[self.time_cust[lo:hi]]
        rows = np.flatnonzero(first)
        rows += lo
        cust = self.time_cust[rows].astype(np.int64)
        at = self.time_at[rows]
        if not self.overlay:
            return cust, at
        ov_rows = np.flatnonzero((self._ov_at >= start) & (self._ov_at < end))
        owners = np.repeat(self._ov_cust, np.diff(self._ov_off))[ov_rows]
        more_c, more_t = _first_per_run(owners, self._ov_at[ov_rows])
        return np.concatenate([cust, more_c]), np.concatenate([at, more_t])

    def first_from(self, cust: I64, lower: I64, *, strict: bool) -> I64:
        """Each customer's first instant >= `lower` (> when `strict`), else `NEVER` (any
        order of customers)."""
        if strict:
            lower = lower + 1
        t = self.first_at[cust]
        miss = np.flatnonzero(t < lower)
        if miss.size == 0:
            return t
        t[miss] = NEVER
        mc = cust[miss]
        ml = lower[miss]
        look = np.flatnonzero(self.last_at[mc] >= ml)
        if look.size == 0:
            return t
        # Instants on both sides of `lower`: a binary search in the customer's rows (its
        # first row is before `lower`, its last one at or after it: always found).
        rows, c, low = miss[look], mc[look], ml[look]
        if self.overlay:
            over = self.replaced[c]
            at_over = np.flatnonzero(over)
            if at_over.size:
                oc = c[at_over]
                j = np.searchsorted(self._ov_cust, oc)
                olo, ohi = self._ov_off[j], self._ov_off[j + 1]
                opos = _lower_bound(self._ov_at, olo, ohi, low[at_over], strict=False)
                t[rows[at_over]] = self._ov_at[opos]
                at_base = np.flatnonzero(~over)
                rows, c, low = rows[at_base], c[at_base], low[at_base]
        if rows.size:
            pos = _lower_bound(
                self.base_at, self.base_off[c] + 1, self.base_off[c + 1], low, strict=False
            )
            t[rows] = self.base_at[pos]
        return t


@dataclass(slots=True)
class Breakdown:
    """Group codes of one breakdown: `values[code]`; code 0 is "" (no value)."""

    codes: I32
    values: list[str]
    lookup: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.values or self.values[0] != "":
            raise ValueError("code 0 must be the empty value")
        self.lookup = {v: i for i, v in enumerate(self.values)}

    def code(self, value: str) -> int:
        found = self.lookup.get(value)
        if found is None:
            found = len(self.values)
            self.values.append(value)
            self.lookup[value] = found
        return found


# dval -> step number (1-based) -> (customers, median seconds from the previous step)
Found = dict[str, dict[int, tuple[int, float | None]]]


class FunnelIndex:
    """Stage entries, breakdown codes and step events of one workspace's customers."""

    def __init__(
        self,
        *,
        customers: int,
        stages: Mapping[str, I64],
        breakdowns: Mapping[str, Breakdown],
        events: Mapping[str, StepEvents],
    ) -> None:
        self.size = customers
        self.capacity = customers
        self.stages: dict[str, I64] = dict(stages)
        self.breakdowns: dict[str, Breakdown] = dict(breakdowns)
        self.events: dict[str, StepEvents] = dict(events)
        # Work arrays, one set per evaluation in flight (evaluations run concurrently).
        self._scratch: list[Scratch] = []

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (approximate for the overlays)."""
        return int(
            sum(a.nbytes for a in self.stages.values())
            + sum(b.codes.nbytes for b in self.breakdowns.values())
            + sum(e.nbytes for e in self.events.values())
            + sum(s.nbytes for s in list(self._scratch))
        )

    def covers(
        self, stages: Iterable[str], breakdowns: Iterable[str], events: Iterable[str]
    ) -> bool:
        """Whether the index holds these stages, breakdowns and event names."""
        return (
            all(s in self.stages for s in stages)
            and all(b in self.breakdowns for b in breakdowns)
            and all(e in self.events for e in events)
        )

    def grow(self, size: int) -> None:
        """Room for customers `0 .. size-1` (new customers: no entry, no value, no event)."""
        if size <= self.size:
            return
        if size > self.capacity:
            capacity = max(size, self.capacity * 2, 1024)
            extra = capacity - self.capacity
            for name, arr in self.stages.items():
                self.stages[name] = np.concatenate([arr, np.full(extra, NEVER, np.int64)])
            for b in self.breakdowns.values():
                b.codes = np.concatenate([b.codes, np.full(extra, NONE_CODE, np.int32)])
            self.capacity = capacity
        self.size = size

    def replace(
        self,
        customers: Sequence[int],
        *,
        entries: Iterable[tuple[int, str, int]],
        values: Mapping[int, Mapping[str, str]],
        events: Iterable[tuple[int, str, int]],
    ) -> None:
        """Set everything about these customers to what was read: (customer, stage, instant)
        entries, breakdown values per customer (absent: ""), (customer, event, instant)."""
        if not customers:
            return
        self.grow(max(customers) + 1)
        idx = np.asarray(customers, np.int64)
        for arr in self.stages.values():
            arr[idx] = NEVER
        for c, stage, at in entries:
            found = self.stages.get(stage)
            if found is not None:
                found[c] = at
        for dim, b in self.breakdowns.items():
            b.codes[idx] = NONE_CODE
            for c, by_dim in values.items():
                b.codes[c] = b.code(by_dim.get(dim, ""))
        per_event: dict[str, dict[int, list[int]]] = {
            name: {c: [] for c in customers} for name in self.events
        }
        for c, name, at in events:
            target = per_event.get(name)
            if target is not None:
                target[c].append(at)
        for name, step in self.events.items():
            step.replace(per_event[name], self.size)

    def evaluate(
        self, steps: Sequence[Step], *, start: int, end: int, span: int, dim: str
    ) -> Found:
        """The funnel: customers whose first step-1 instant is in [start, end), then each
        next step's first instant at or after the previous one (after, when the same step
        repeats) and at most `span` after step 1; per group of `dim` ("" = no breakdown).
        Reads the index only: evaluations may run concurrently (each with its own work
        arrays), but not while the index is changed."""
        try:
            scratch = self._scratch.pop()
        except IndexError:
            scratch = Scratch()
        found = self._evaluate(steps, start=start, end=end, span=span, dim=dim, scratch=scratch)
        # (not on an exception: its `never` array may not have been restored)
        self._scratch.append(scratch)
        return found

    def _evaluate(
        self, steps: Sequence[Step], *, start: int, end: int, span: int, dim: str, scratch: Scratch
    ) -> Found:
        first = steps[0]
        if first.kind == "stage":
            t = self.stages[first.name][: self.size]
            inside = scratch.get("inside", self.size, np.bool_)
            also = scratch.get("also_n", self.size, np.bool_)
            np.greater_equal(t, start, out=inside)
            np.less(t, end, out=also)
            inside &= also
            surv = np.flatnonzero(inside)
            prev = t[surv]
        else:
            # Survivors in the order of their first instants: later steps gather from them in
            # any order (ordering them by customer would cost more than it saves).
            surv, prev = self.events[first.name].firsts_in(start, end, scratch)
        if dim == "":
            codes = None
            values = [""]
            found: Found = {"": {1: (int(surv.size), None)}} if surv.size else {}
            present = [0]
        else:
            codes = self.breakdowns[dim].codes[surv]
            values = self.breakdowns[dim].values
            counts = np.bincount(codes, minlength=len(values))
            present = [g for g in range(len(values)) if counts[g] > 0]
            found = {values[g]: {1: (int(counts[g]), None)} for g in present}
        if not found:
            return found
        # `slack`: how much later than the previous step the next one may be (the span left).
        slack = np.full(surv.size, span, np.int64)
        for k in range(2, len(steps) + 1):
            step = steps[k - 1]
            strict = step.name == steps[k - 2].name and step.kind == steps[k - 2].kind
            if step.kind == "stage":
                t = self.stages[step.name][surv]
                diffs = t - prev
                # Unsigned: a negative difference (before the previous step, or a wrapped
                # `NEVER`) is huge, so one comparison checks both bounds.
                if strict:
                    diffs -= 1
                    ok = diffs.view(np.uint64) < slack.view(np.uint64)
                    diffs += 1
                else:
                    ok = diffs.view(np.uint64) <= slack.view(np.uint64)
            else:
                t = self.events[step.name].first_from(surv, prev, strict=strict)
                diffs = t - prev  # (`NEVER` - prev: huge, or negative, so huge unsigned)
                ok = diffs.view(np.uint64) <= slack.view(np.uint64)
            # (flatnonzero + take: a few times faster than a boolean index on random masks)
            keep = np.flatnonzero(ok)
            if keep.size < surv.size:
                surv, prev, diffs, slack = surv[keep], t[keep], diffs[keep], slack[keep]
                if codes is not None:
                    codes = codes[keep]
            else:
                prev = t
            slack -= diffs
            if codes is None:
                found[""][k] = (int(diffs.size), median_seconds(diffs))
                continue
            for g, (n, median) in _group_figures(codes, diffs, len(values), present).items():
                found[values[g]][k] = (n, median)
        return found


def _group_figures(
    codes: I32, diffs: I64, ngroups: int, present: Sequence[int]
) -> dict[int, tuple[int, float | None]]:
    """Per group present at step 1: the count and the median of `diffs`."""
    counts = np.bincount(codes, minlength=ngroups)
    out: dict[int, tuple[int, float | None]] = {}
    if len(present) == 1:
        g = present[0]
        out[g] = (int(counts[g]), median_seconds(diffs))
        return out
    if len(present) <= _SMALL_GROUPS:
        for g in present:
            n = int(counts[g])
            if n == 0:
                out[g] = (0, None)
            elif n == diffs.size:
                out[g] = (n, median_seconds(diffs))
            else:
                out[g] = (n, median_seconds(diffs[np.flatnonzero(codes == g)]))
        return out
    order = np.argsort(codes, kind="stable")
    ordered = diffs[order]
    ends = np.cumsum(counts)
    for g in present:
        n = int(counts[g])
        out[g] = (n, median_seconds(ordered[ends[g] - n : ends[g]]) if n else None)
    return out


__all__ = [
    "NEVER",
    "NONE_CODE",
    "Breakdown",
    "Found",
    "FunnelIndex",
    "StepEvents",
    "median_seconds",
]
