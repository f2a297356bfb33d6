"""The funnel index of one workspace: exact funnels evaluated on arrays (pure: no I/O).

Customers are dense ordinals. Per stage, an `int64` array of entry instants (microseconds since
2000-01-01 UTC, PostgreSQL's own binary epoch; `NEVER` when the customer never entered it); per
breakdown, an `int32` array of group codes; per event name used as a step, the step events as
a CSR layout (`off[c]:off[c+1]` are customer `c`'s instants, sorted) plus an overlay for the
customers re-read since (`StepEvents`). A funnel is one compiled pass per step over the
survivors of the previous step, in customer order (`FunnelIndex.evaluate`, `_enter`,
`_advance`), and gives exactly what the SQL of `app.aggregates.service.funnel` gives: the same
greedy earliest match, the same counts, and the same medians (`percentile_cont(0.5)` over
float8 seconds, reproduced in the same float arithmetic by `_seconds`).

The loops are compiled by numba (`_kernel`: no GIL, so evaluations in the thread pool of
`app.aggregates.funnel_store` run in parallel). Machine code is cached on disk next to this
file (`__pycache__`), or in `NUMBA_CACHE_DIR` when set; where neither is writable the kernels
are compiled in memory once per process. Either way the first call per process compiles or
loads them (seconds, or ~0.1 s from the cache): `warm_up` does it on tiny arrays, at startup.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
Flags = npt.NDArray[np.bool_]

NEVER = np.iinfo(np.int64).max  # an instant after every real one: "not reached"
NONE_CODE = 0  # the group code of "" (no value), in every breakdown
_BEFORE_ALL = np.iinfo(np.int64).min
_NEVER = int(NEVER)  # (plain ints: compiled in as constants)

_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel(fn: _F) -> _F:
    """Compiled without the GIL, machine code cached on disk when a cache directory is
    writable (next to this file, or `NUMBA_CACHE_DIR`); else compiled once per process."""
    try:
        return cast(_F, numba.njit(cache=True, nogil=True)(fn))
    except RuntimeError:  # "cannot cache function …: no locator available"
        warnings.warn(
            "no writable numba cache directory: the funnel kernels are compiled once per "
            "process (set NUMBA_CACHE_DIR)",
            RuntimeWarning,
            stacklevel=2,
        )
        return cast(_F, numba.njit(nogil=True)(fn))


class Step(Protocol):
    """A funnel step: a stage name or an event name."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...  # "stage" | "event"


# --- compiled kernels -------------------------------------------------------------------------
#
# Each step reads "the instants of customer c" through the same eight arrays (`Rows`): for an
# event, its dense first and last instants, its CSR rows and its overlay (`StepEvents`); for a
# stage, the entry instants as both first and last (so no search is ever needed) and no rows.
# The first instant at or after `lower` is `first[c]` when that is not before `lower`, none
# when `last[c]` is before it, else found by a binary search in the customer's rows.
#
# Measured on this kind of machine, what matters: a branch on the data mispredicted per
# customer costs more than the rest of the pass, so the passes write every candidate at the
# next free place and only advance past those that pass (`m += ok`); and a call passing many
# arrays per customer costs several times the search it makes, so the customers needing a
# search are set aside during the pass and searched afterwards, in one loop (`_search`).


@_kernel
def _at_or_after(values: I64, lo: int, hi: int, lower: int) -> int:
    """The first position in `values[lo:hi]` (sorted) holding an instant >= `lower`, or `hi`."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < lower:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_kernel
def _search(
    off: I64,
    at: I64,
    replaced: Flags,
    ov_cust: I64,
    ov_off: I64,
    ov_at: I64,
    custs: I32,
    lowers: I64,
    q: int,
    out: I64,
) -> None:
    """`out[k]`: customer `custs[k]`'s first instant at or after `lowers[k]` in its rows (the
    overlay's, if re-read), or `NEVER`; for `k < q`. (`_at_or_after` takes one array and
    three numbers and is inlined: as fast as the search written out here, measured; a call
    taking all the rows made this loop three times slower.)"""
    for k in range(q):
        c = custs[k]
        lower = lowers[k]
        t = _NEVER
        if replaced[c]:
            j = np.searchsorted(ov_cust, c)
            hi = ov_off[j + 1]
            lo = _at_or_after(ov_at, ov_off[j], hi, lower)
            if lo < hi:
                t = ov_at[lo]
        else:
            hi = off[c + 1]
            lo = _at_or_after(at, off[c], hi, lower)
            if lo < hi:
                t = at[lo]
        out[k] = t


@_kernel
def _enter(
    first_at: I64,
    last_at: I64,
    off: I64,
    at: I64,
    replaced: Flags,
    ov_cust: I64,
    ov_off: I64,
    ov_at: I64,
    n: int,
    start: int,
    end: int,
    codes: I32,
    grouped: bool,
    surv: I32,
    prev: I64,
    grp: I32,
    counts: I64,
    pend: I32,
    lowers: I64,
    found: I64,
) -> int:
    """Step 1: customers `0 .. n-1` with a first instant in [start, end), into `surv`
    (customer), `prev` (that instant) and, when `grouped`, `grp` (group code): in customer
    order, those found by a search after the others. `counts` (zeros) gets the number per
    group; `pend`, `lowers` and `found` are work arrays of `n`. Returns how many."""
    ngroups = counts.size
    m = 0
    q = 0
    for c in range(min(n, first_at.size)):
        t = first_at[c]
        pend[q] = c
        q += (t < start) & (last_at[c] >= start)
        ok = (t >= start) & (t < end)  # (`NEVER` is not before `end`)
        surv[m] = c
        prev[m] = t
        if grouped:
            g = codes[c]
            if g < 0 or g >= ngroups:
                raise IndexError("breakdown code out of range")
            grp[m] = g
            counts[g] += ok
        m += ok
    lowers[:q] = start
    _search(off, at, replaced, ov_cust, ov_off, ov_at, pend, lowers, q, found)
    for k in range(q):
        c = pend[k]
        t = found[k]
        ok = t < end
        surv[m] = c
        prev[m] = t
        if grouped:
            g = codes[c]
            grp[m] = g
            counts[g] += ok
        m += ok
    if not grouped:
        counts[0] = m
    return m


@_kernel
def _advance(
    first_at: I64,
    last_at: I64,
    off: I64,
    at: I64,
    replaced: Flags,
    ov_cust: I64,
    ov_off: I64,
    ov_at: I64,
    m: int,
    span: int,
    strict: bool,
    grouped: bool,
    surv: I32,
    prev: I64,
    first_in: I64,
    first: I64,
    grp: I32,
    counts: I64,
    diffs: I64,
    starts: I64,
    pend: I32,
    pend_prev: I64,
    pend_first: I64,
    pend_grp: I32,
    lowers: I64,
    found: I64,
) -> int:
    """A later step over the `m` survivors of the previous one (`surv`, `prev`, `grp`, as
    the previous step left them; their step-1 instants in `first_in`: `prev` at step 2,
    else `first`): each one's first instant at or after `prev` (after, when `strict`) and at
    most `span` after step 1's. Those who pass are written over them, in the order read,
    those found by a search after the others (their step-1 instants to `first`). `counts`:
    in, per group at the previous step; out, at this one. Per group, the differences from
    `prev` go to `diffs[starts[g] : starts[g] + counts[g]]`, `starts[g]` being the previous
    step's count of the groups before `g`, plus `g` (a spare place per group: every
    candidate is written, only the places of those who pass are kept). `pend*`, `lowers`,
    `found`: work arrays of `m`. Returns how many pass."""
    total = 0
    for g in range(counts.size):
        starts[g] = total
        total += counts[g] + 1
        counts[g] = 0
    after = 1 if strict else 0
    j = 0
    q = 0
    g = 0
    for i in range(m):
        c = surv[i]
        p = prev[i]
        f = first_in[i]
        if grouped:
            g = grp[i]
        t = first_at[c]
        # (kept aside, for a search: the place `i` may be written over before then)
        pend[q] = c
        pend_prev[q] = p
        pend_first[q] = f
        pend_grp[q] = g
        q += (t < p + after) & (last_at[c] >= p + after)
        # (`t - f` cannot overflow unless `t` is `NEVER`: real instants are far from it)
        ok = (t >= p + after) & (t != _NEVER) & (t - f <= span)
        surv[j] = c
        prev[j] = t
        first[j] = f
        if grouped:
            grp[j] = g
            place = starts[g] + counts[g]
            counts[g] += ok
        else:
            place = j
        diffs[place] = t - p
        j += ok
    for k in range(q):
        lowers[k] = pend_prev[k] + after
    _search(off, at, replaced, ov_cust, ov_off, ov_at, pend, lowers, q, found)
    for k in range(q):
        t = found[k]
        f = pend_first[k]
        ok = (t != _NEVER) & (t - f <= span)
        surv[j] = pend[k]
        prev[j] = t
        first[j] = f
        if grouped:
            g = pend_grp[k]
            grp[j] = g
            place = starts[g] + counts[g]
            counts[g] += ok
        else:
            place = j
        diffs[place] = t - pend_prev[k]
        j += ok
    if not grouped:
        counts[0] = j
    return j


def _middle(a: I64) -> tuple[int, int]:
    """The two middle values of `a` (not empty; the same one twice for an odd size),
    reordering it (numpy's partition: vectorised, several times faster than a compiled
    quickselect)."""
    k = a.size // 2
    a.partition(k)
    high = int(a[k])
    return (int(a[:k].max()) if a.size % 2 == 0 else high), high


def _seconds(n: int, low: int, high: int) -> float | None:
    """`percentile_cont(0.5)` of `n` microsecond values as float8 seconds, from their two middle
    values: the middle one, or `lo + 0.5 * (hi - lo)`, in PostgreSQL's arithmetic."""
    if n == 0:
        return None
    hi = high / 1_000_000
    if n % 2:
        return hi
    lo = low / 1_000_000
    return lo + 0.5 * (hi - lo)


def median_seconds(diffs: I64) -> float | None:
    """`percentile_cont(0.5)` of `diffs` (microseconds) taken as float8 seconds."""
    if diffs.size == 0:
        return None
    low, high = _middle(np.array(diffs, np.int64))  # (a copy: `_middle` reorders it)
    return _seconds(int(diffs.size), low, high)


class Scratch:
    """Work arrays kept between evaluations: a fresh multi-megabyte array costs its page
    faults at every request (about 1 ms per million int64 on the machine measured), a kept
    one does not."""

    def __init__(self) -> None:
        self._arrays: dict[str, npt.NDArray[Any]] = {}

    def get(self, name: str, size: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A work array of at least `size` items (contents arbitrary), as a view of `size`."""
        found = self._arrays.get(name)
        if found is None or found.size < size:
            found = np.empty(max(size, 1024), dtype)
            self._arrays[name] = found
        return found[:size]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())


# What the kernels read for a step (see the kernels' comment): first, last, off, at, replaced,
# overlay customers, overlay offsets, overlay instants.
Rows = tuple[I64, I64, I64, I64, Flags, I64, I64, I64]
_NO_OFF = np.zeros(1, np.int64)
_NO_AT = np.empty(0, np.int64)
_NO_FLAGS = np.zeros(0, np.bool_)
_NO_CODES = np.zeros(0, np.int32)


class StepEvents:
    """The instants of one event name per customer: a base CSR layout, and an overlay holding
    the current instants of every customer re-read since the base was built (their base rows
    are ignored: `replaced`). The overlay is folded into the base when it grows. Per customer
    also its first and last instant, wherever they are (`first_at`, `last_at`: dense), so that
    "the first instant at or after t" is one read for most customers, and a binary search in
    its rows only for those with instants on both sides of t (`_search`)."""

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
            + self.base_off.nbytes
            + self.first_at.nbytes * 2
            + self.replaced.nbytes
            + self._ov_rows * 24
        )

    def rows(self) -> Rows:
        """The arrays the kernels read."""
        return (
            self.first_at,
            self.last_at,
            self.base_off,
            self.base_at,
            self.replaced,
            self._ov_cust,
            self._ov_off,
            self._ov_at,
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
        try:
            return self._evaluate(steps, start=start, end=end, span=span, dim=dim, scratch=scratch)
        finally:
            self._scratch.append(scratch)

    def _rows(self, step: Step) -> Rows:
        if step.kind == "stage":
            t = self.stages[step.name]
            return (t, t, _NO_OFF, _NO_AT, _NO_FLAGS, _NO_AT, _NO_OFF, _NO_AT)
        return self.events[step.name].rows()

    def _evaluate(
        self, steps: Sequence[Step], *, start: int, end: int, span: int, dim: str, scratch: Scratch
    ) -> Found:
        n = self.size
        if dim:
            codes, values = self.breakdowns[dim].codes, self.breakdowns[dim].values
        else:
            codes, values = _NO_CODES, [""]
        # The survivors: customer, previous step's instant, step 1's instant, group; each
        # step writes those who pass over them. In customer order but for those found by a
        # search, appended after the others at each step: each step's reads move forward,
        # in a run or two per earlier step.
        surv = scratch.get("surv", n, np.int32)
        prev = scratch.get("prev", n, np.int64)
        first = scratch.get("first", n, np.int64)
        grp = scratch.get("grp", n, np.int32)
        pend = scratch.get("pend", n, np.int32)
        lowers = scratch.get("lowers", n, np.int64)
        found_at = scratch.get("found", n, np.int64)
        counts = np.zeros(len(values), np.int64)
        rows = self._rows(steps[0])
        grouped = bool(dim)
        m = _enter(
            *rows, n, start, end, codes, grouped, surv, prev, grp, counts, pend, lowers, found_at
        )
        if m == 0:
            return {}
        present = np.flatnonzero(counts).tolist()
        found: Found = {values[g]: {1: (int(counts[g]), None)} for g in present}
        diffs = scratch.get("diffs", m + len(values), np.int64)
        starts = np.empty(len(values), np.int64)
        pend_prev = scratch.get("pend_prev", m, np.int64)
        pend_first = scratch.get("pend_first", m, np.int64)
        pend_grp = scratch.get("pend_grp", m, np.int32)
        first_in = prev  # (step 1's instants: `prev` until step 2 has copied them)
        for k in range(2, len(steps) + 1):
            step, before = steps[k - 1], steps[k - 2]
            strict = step.name == before.name and step.kind == before.kind
            rows = self._rows(step)
            m = _advance(
                *rows,
                m,
                span,
                strict,
                grouped,
                surv,
                prev,
                first_in,
                first,
                grp,
                counts,
                diffs,
                starts,
                pend,
                pend_prev,
                pend_first,
                pend_grp,
                lowers,
                found_at,
            )
            first_in = first
            for g in present:
                size, at = int(counts[g]), int(starts[g])
                if size:
                    low, high = _middle(diffs[at : at + size])
                    found[values[g]][k] = (size, _seconds(size, low, high))
                else:
                    found[values[g]][k] = (0, None)
        return found


@dataclass(frozen=True)
class _Step:
    name: str
    kind: str


_warm = threading.Lock()
_warmed = False


def warm_up() -> None:
    """Compile every kernel (or load it from the disk cache) on a tiny index, so that the
    first funnel of a process does not pay for it (seconds uncached). Cheap once done."""
    global _warmed
    with _warm:
        if _warmed:
            return
        index = FunnelIndex(
            customers=3,
            stages={"a": np.asarray([0, 5, NEVER], np.int64)},
            breakdowns={"d": Breakdown(np.asarray([0, 1, 1], np.int32), ["", "x"])},
            events={"e": StepEvents(np.asarray([0, 0, 1]), np.asarray([1, 7, 6]), 3)},
        )
        steps = [_Step("a", "stage"), _Step("e", "event"), _Step("e", "event")]
        for dim in ("", "d"):
            index.evaluate(steps, start=0, end=10, span=100, dim=dim)
        median_seconds(np.arange(40, dtype=np.int64))
        _warmed = True


__all__ = [
    "NEVER",
    "NONE_CODE",
    "Breakdown",
    "Found",
    "FunnelIndex",
    "StepEvents",
    "median_seconds",
    "warm_up",
]
