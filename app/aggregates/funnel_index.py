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
# Below this many survivors per step event, a binary search per survivor; above, one scan of
# the event's rows in customer order (sequential reads instead of random ones).
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
    if n % 2:
        mid = n // 2
        return int(np.partition(diffs, mid)[mid]) / 1_000_000
    part = np.partition(diffs, (n // 2 - 1, n // 2))
    lo = int(part[n // 2 - 1]) / 1_000_000
    hi = int(part[n // 2]) / 1_000_000
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
    are ignored: `replaced`). The overlay is folded into the base when it grows."""

    def __init__(self, cust: npt.NDArray[np.integer], at: I64, customers: int) -> None:
        self._build(np.asarray(cust, np.int64), np.asarray(at, np.int64), customers)

    def _build(self, cust: I64, at: I64, customers: int) -> None:
        order = np.lexsort((at, cust))
        cust, at = cust[order], at[order]
        self.base_n = customers
        self.base_cust = cust.astype(np.int32)
        self.base_at = at
        self.base_off = np.zeros(customers + 1, np.int64)
        np.cumsum(np.bincount(cust, minlength=customers)[:customers], out=self.base_off[1:])
        # The same rows in time order, each with the instant of its customer's previous row
        # (`_BEFORE_ALL` for its first): a row in [start, end) is its customer's first there
        # iff that previous instant is before `start`, so a step 1 is one slice and one mask.
        previous = np.full(at.size, _BEFORE_ALL, np.int64)
        if at.size > 1:
            same = cust[1:] == cust[:-1]
            previous[1:][same] = at[:-1][same]
        by_time = np.argsort(at, kind="stable")
        self.time_at = at[by_time]
        self.time_cust = self.base_cust[by_time]
        self.time_previous = previous[by_time]
        self.replaced = np.zeros(customers, np.bool_)
        self.overlay: dict[int, I64] = {}
        self._ov_ready = True
        self._ov_cust = np.empty(0, np.int64)
        self._ov_off = np.zeros(1, np.int64)
        self._ov_at = np.empty(0, np.int64)
        self._ov_rows = 0

    @property
    def nbytes(self) -> int:
        return int(
            self.base_cust.nbytes * 2
            + self.base_at.nbytes * 3
            + self.base_off.nbytes
            + self.replaced.nbytes
            + self._ov_rows * 24
        )

    def replace(self, customers: Mapping[int, Sequence[int]], size: int) -> None:
        """Set the instants of these customers (all of them; empty: none any more)."""
        if size > self.replaced.size:
            self.replaced = np.concatenate(
                [self.replaced, np.zeros(size - self.replaced.size, np.bool_)]
            )
        for c, instants in customers.items():
            old = self.overlay.get(c)
            if old is not None:
                self._ov_rows -= old.size
            arr = np.sort(np.asarray(instants, np.int64))
            self.overlay[c] = arr
            self._ov_rows += arr.size
            self.replaced[c] = True
        self._ov_ready = False
        if len(self.overlay) > max(4096, self.base_n // 16):
            self.fold(size)

    def fold(self, size: int) -> None:
        """Rebuild the base with the overlay in it."""
        keep = ~self.replaced[self.base_cust]
        parts_c = [self.base_cust[keep].astype(np.int64)]
        parts_t = [self.base_at[keep]]
        for c, arr in self.overlay.items():
            parts_c.append(np.full(arr.size, c, np.int64))
            parts_t.append(arr)
        self._build(np.concatenate(parts_c), np.concatenate(parts_t), max(size, self.base_n))

    def _overlay(self) -> tuple[I64, I64, I64]:
        if not self._ov_ready:
            custs = sorted(self.overlay)
            self._ov_cust = np.asarray(custs, np.int64)
            lengths = np.asarray([self.overlay[c].size for c in custs], np.int64)
            self._ov_off = np.zeros(len(custs) + 1, np.int64)
            np.cumsum(lengths, out=self._ov_off[1:])
            self._ov_at = (
                np.concatenate([self.overlay[c] for c in custs]) if custs else np.empty(0, np.int64)
            )
            self._ov_ready = True
        return self._ov_cust, self._ov_off, self._ov_at

    def firsts_in(self, start: int, end: int, scratch: Scratch) -> tuple[I64, I64]:
        """Each customer's first instant in [start, end): (customers, instants)."""
        lo, hi = np.searchsorted(self.time_at, (start, end))
        first = scratch.get("first", int(hi - lo), np.bool_)
        np.less(self.time_previous[lo:hi], start, out=first)
        if self.overlay:
            first &= ~self.replaced[self.time_cust[lo:hi]]
        rows = np.flatnonzero(first) + lo
        cust = self.time_cust[rows].astype(np.int64)
        at = self.time_at[rows]
        if not self.overlay:
            return cust, at
        ov_cust, ov_off, ov_at = self._overlay()
        ov_rows = np.flatnonzero((ov_at >= start) & (ov_at < end))
        owners = np.repeat(ov_cust, np.diff(ov_off))[ov_rows]
        more_c, more_t = _first_per_run(owners, ov_at[ov_rows])
        return np.concatenate([cust, more_c]), np.concatenate([at, more_t])

    def first_between(
        self, cust: I64, lower: I64, upper: I64, *, strict: bool, scratch: Scratch
    ) -> I64:
        """Each customer's first instant >= `lower` (> when `strict`) if it is <= `upper`,
        else `NEVER`; `cust` ascending."""
        out = np.full(cust.size, NEVER, np.int64)
        if cust.size == 0:
            return out
        replaced = None
        rows: I64 | None = None  # the customers answered by the base (None: all of them)
        if self.overlay or cust[-1] >= self.base_n:
            replaced = np.zeros(cust.size, np.bool_)
            inside = np.flatnonzero(cust < self.replaced.size)
            replaced[inside] = self.replaced[cust[inside]]
            rows = np.flatnonzero(~replaced & (cust < self.base_n))
        base_cust = cust if rows is None else cust[rows]
        base_lower = lower if rows is None else lower[rows]
        base_upper = upper if rows is None else upper[rows]
        if base_cust.size * _SEARCH_SHARE < self.base_at.size:
            lo = self.base_off[base_cust]
            hi = self.base_off[base_cust + 1]
            pos = _lower_bound(self.base_at, lo, hi, base_lower, strict=strict)
            found = pos < hi
            got = np.where(found, self.base_at[np.minimum(pos, self.base_at.size - 1)], NEVER)
        else:
            low = scratch.never(self.base_n)
            high = scratch.get("high", self.base_n, np.int64)
            low[base_cust] = base_lower + 1 if strict else base_lower
            high[base_cust] = base_upper
            at = self.base_at
            owner = self.base_cust
            seen = scratch.get("seen", at.size, np.int64)
            ok = scratch.get("ok", at.size, np.bool_)
            also = scratch.get("also", at.size, np.bool_)
            np.take(low, owner, out=seen, mode="clip")
            np.greater_equal(at, seen, out=ok)
            np.take(high, owner, out=seen, mode="clip")
            np.less_equal(at, seen, out=also)
            ok &= also
            rows_ok = np.flatnonzero(ok)
            first_c, first_t = _first_per_run(owner[rows_ok], at[rows_ok])
            low[base_cust] = NEVER
            high[base_cust] = NEVER
            high[first_c] = first_t
            got = high[base_cust]
        if rows is None:
            out = got
        else:
            out[rows] = got
        if replaced is not None and self.overlay:
            rows = np.flatnonzero(replaced)
            ov_cust, ov_off, ov_at = self._overlay()
            j = np.searchsorted(ov_cust, cust[rows])
            olo, ohi = ov_off[j], ov_off[j + 1]
            opos = _lower_bound(ov_at, olo, ohi, lower[rows], strict=strict)
            ofound = np.flatnonzero(opos < ohi)
            out[rows[ofound]] = ov_at[opos[ofound]]
        out[out > upper] = NEVER
        return out


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
        self.scratch = Scratch()

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (approximate for the overlays)."""
        return int(
            sum(a.nbytes for a in self.stages.values())
            + sum(b.codes.nbytes for b in self.breakdowns.values())
            + sum(e.nbytes for e in self.events.values())
            + self.scratch.nbytes
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
        repeats) and at most `span` after step 1; per group of `dim` ("" = no breakdown)."""
        first = steps[0]
        scratch = self.scratch
        inside = scratch.get("inside", self.size, np.bool_)
        if first.kind == "stage":
            t = self.stages[first.name][: self.size]
            also = scratch.get("also_n", self.size, np.bool_)
            np.greater_equal(t, start, out=inside)
            np.less(t, end, out=also)
            inside &= also
            surv = np.flatnonzero(inside)
            prev = t[surv]
        else:
            # In customer order (as every later step expects): reads stay sequential.
            cust, at = self.events[first.name].firsts_in(start, end, scratch)
            t = scratch.never(self.size)
            t[cust] = at
            np.not_equal(t, NEVER, out=inside)
            surv = np.flatnonzero(inside)
            prev = t[surv]
            t[cust] = NEVER
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
                    ok = (diffs - 1).view(np.uint64) < slack.view(np.uint64)
                else:
                    ok = diffs.view(np.uint64) <= slack.view(np.uint64)
            else:
                t = self.events[step.name].first_between(
                    surv, prev, prev + slack, strict=strict, scratch=scratch
                )
                ok = t != NEVER
                diffs = t - prev
            # (flatnonzero + take: a few times faster than a boolean index on random masks)
            keep = np.flatnonzero(ok)
            surv, prev, diffs = surv[keep], t[keep], diffs[keep]
            slack = slack[keep] - diffs
            if codes is None:
                found[""][k] = (int(diffs.size), median_seconds(diffs))
                continue
            codes = codes[keep]
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
            rows = np.flatnonzero(codes == g)
            out[g] = (int(counts[g]), median_seconds(diffs[rows]) if counts[g] else None)
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
