"""The funnel index of one workspace: exact funnels evaluated on arrays (pure: no I/O).

Customers are dense ordinals. Per stage, an `int64` array of entry instants (microseconds since
2000-01-01 UTC, PostgreSQL's own binary epoch; `NEVER` when the customer never entered it); per
breakdown, an `int32` array of group codes; per event name used as a step, the step events as a
CSR layout (`off[c]:off[c+1]` are customer `c`'s instants, sorted) plus an overlay for the
customers re-read since (`StepEvents`). A funnel is one compiled call (`_funnel`) taking blocks
of customers through every step in turn, the survivors of a block kept in the core's cache
(`FunnelIndex.evaluate`), and gives exactly what the SQL of `app.aggregates.service.funnel`
gives: the same greedy earliest match, the same counts, and the same medians
(`percentile_cont(0.5)` over float8 seconds, reproduced in the same float arithmetic by
`_seconds`).

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
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import intrinsic
from numba.typed import List as TypedList

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U32 = npt.NDArray[np.uint32]
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
# A funnel is evaluated in one call (`_funnel`), block by block of customers: all its steps for
# customers `b0 .. b0 + block - 1`, then the next block. The survivors of a block (customer,
# previous step's instant, step 1's instant, group) stay in small work arrays in the core's
# cache from step to step; what reaches memory is only the index's arrays, read once per step
# in customer order, and each step's differences (`diffs`, with their groups in `dgrp`).
#
# Each step reads "the instants of customer c" through the same seven arrays: for a stage, its
# entry instants (`bounds[c]`); for an event, its first and last instants interleaved (`bounds[2c]`,
# `bounds[2c + 1]`: one cache line for both), its CSR rows and its overlay (`StepEvents`). The
# first instant at or after `lower` is the first one when that is not before `lower`, none
# when the last one is before it, else found by a binary search in the customer's rows.
#
# Measured on this kind of machine (2 cores, AMD EPYC), what matters: the passes are bound by
# the latency of their gathers, not by memory bandwidth (a sequential pass reads 40 GB/s; a
# gather of 5 % of an 8 MB array costs ~15 ns per item): so each gather is prefetched a few
# dozen survivors ahead (`_prefetch`), the binary searches' rows too. A branch on the data
# mispredicted per customer costs more than the rest of the pass, so the passes write every
# candidate at the next free place and only advance past those that pass (`m += ok`); and a
# call passing many arrays per customer costs several times the search it makes, so the
# customers needing a search are set aside during the pass and searched afterwards, in one
# loop (`_search`). numpy's partition is fast with one `kth` (vectorised) and ~20x slower with
# several: medians per group are taken on each group's differences made contiguous first
# (`_by_group`).

AHEAD = 32  # prefetch distance of the gathers, in survivors
_SHORT = 16  # rows of up to this many instants: counted through, not searched
BLOCK = 8192  # customers per block of `_funnel` (its survivors stay in the core's cache)


def _prefetch_intrinsic(typingctx: Any, arr: Any, idx: Any) -> Any:
    """A hint that `arr[idx]` is read soon (LLVM's prefetch: no fault, no effect on results)."""
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.globals.get("llvm.prefetch.p0i8")
        if fn is None:
            fn = ir.Function(builder.module, fnty, name="llvm.prefetch.p0i8")
        # (read, high locality, data cache)
        builder.call(
            fn,
            [
                builder.bitcast(ptr, i8p),
                ir.Constant(i32, 0),
                ir.Constant(i32, 3),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


# (typed for mypy as what it is in compiled code: a function of an array and an index)
_prefetch = cast(Callable[[Any, Any], None], intrinsic(_prefetch_intrinsic))


@_kernel
def _at_or_after(values: I64, lo: int, hi: int, lower: int) -> int:
    """The first position in `values[lo:hi]` (sorted) holding an instant >= `lower`, or `hi`."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[np.uint64(mid)] < lower:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_kernel
def _first_at_or_after(values: I64, lo: int, hi: int, lower: int) -> int:
    """The first instant >= `lower` in `values[lo:hi]` (sorted), or `NEVER`. A row of up to
    `_SHORT` instants is counted through without a branch (`values` holds `_SHORT` more
    items past every row: `_pad`), a longer one searched."""
    size = hi - lo
    if size <= _SHORT:
        base = np.uint64(lo)
        before = 0
        for i in range(_SHORT):
            before += (i < size) & (values[base + np.uint64(i)] < lower)
        return values[base + np.uint64(before)] if before < size else _NEVER
    at = _at_or_after(values, lo, hi, lower)
    return values[np.uint64(at)] if at < hi else _NEVER


@_kernel
def _search(
    off: I64,
    at: I64,
    replaced: Flags,
    ov_cust: I64,
    ov_off: I64,
    ov_at: I64,
    custs: U32,
    lowers: I64,
    q: Any,
    out: I64,
    ahead: int,
) -> None:
    """`out[k]`: customer `custs[k]`'s first instant at or after `lowers[k]` in its rows (the
    overlay's, if re-read), or `NEVER`; for `k < q`. (`_first_at_or_after` takes one array
    and three numbers and is inlined: as fast as the search written out here, measured; a
    call taking all the rows made this loop three times slower.) The offsets are prefetched
    two distances ahead, the rows they point to one distance ahead."""
    one = np.uint32(1)
    for k in range(q):
        if k + 2 * ahead < q:
            c2 = custs[k + 2 * ahead]
            _prefetch(off, c2)
            _prefetch(replaced, c2)
        if k + ahead < q:
            c1 = custs[k + ahead]
            if not replaced[c1]:
                _prefetch(at, np.uint64(off[c1]))
        c = custs[k]
        if replaced[c]:
            j = np.uint64(np.searchsorted(ov_cust, c))
            out[k] = _first_at_or_after(ov_at, ov_off[j], ov_off[j + one], lowers[k])
        else:
            out[k] = _first_at_or_after(at, off[c], off[c + one], lowers[k])


@_kernel
def _funnel(
    bounds: Any,
    offs: Any,
    ats: Any,
    repls: Any,
    ovcs: Any,
    ovos: Any,
    ovas: Any,
    stage: Flags,
    strict: Flags,
    n: int,
    start: int,
    end: int,
    span: int,
    codes: I32,
    grouped: bool,
    block: int,
    ahead: int,
    sc: U32,
    sp: I64,
    sf: I64,
    sg: U32,
    pend: U32,
    pprev: I64,
    pfirst: I64,
    pgrp: U32,
    found: I64,
    counts: I64,
    diffs: I64,
    dgrp: U32,
    tops: I64,
) -> None:
    """The funnel over customers `0 .. n-1` (see `FunnelIndex.evaluate`). Step `k`'s arrays are
    item `k` of the typed lists `bounds` … `ovas` (`stage[k]`: a stage's entries, else an
    event's); `strict[k]`: the same step as `k - 1` (later instants only). Out: `counts[0, g]`,
    step 1's customers per group; per later step `k`, `tops[k]` customers and their
    differences from the previous step in `diffs[k, :tops[k]]` and, when `grouped`, their
    groups in `dgrp[k, :tops[k]]` (their counts per group are left to `_by_group`). `sc` …
    `found`: work arrays of `block` items.

    Indices are unsigned (`np.uint64`, `U32` arrays): numba checks a signed index for a
    negative value (wrapping around) at every access; measured, 20 % of a pass."""
    u = np.uint64
    one = u(1)
    steps = stage.size
    ngroups = counts.shape[1]
    n = min(n, bounds[0].size if stage[0] else bounds[0].size // 2)
    for k in range(1, steps):
        if (bounds[k].size if stage[k] else bounds[k].size // 2) < n:
            raise IndexError("a step's arrays are shorter than the index")
    if grouped and codes.size < n:
        raise IndexError("breakdown codes shorter than the index")
    for k in range(steps):
        tops[k] = 0
    # Counts per group in four lanes: consecutive increments of one counter wait for each
    # other (through memory), increments of four interleaved ones do not.
    lanes = np.zeros((4, ngroups), np.int64)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        # Step 1: the customers of the block with a first instant in [start, end).
        f1 = bounds[0]
        m = u(0)
        if stage[0]:
            for c in range(u(b0), u(b1)):
                t = f1[c]
                sc[m] = c
                sp[m] = t
                m += u((t >= start) & (t < end))  # (`NEVER` is not before `end`)
        else:
            q = u(0)
            for c in range(u(b0), u(b1)):
                t = f1[c + c]
                pend[q] = c
                q += u((t < start) & (f1[c + c + one] >= start))
                sc[m] = c
                sp[m] = t
                m += u((t >= start) & (t < end))
            if q:
                pprev[:q] = start
                _search(
                    offs[0],
                    ats[0],
                    repls[0],
                    ovcs[0],
                    ovos[0],
                    ovas[0],
                    pend,
                    pprev,
                    q,
                    found,
                    ahead,
                )
                for i in range(q):
                    t = found[i]
                    sc[m] = pend[i]
                    sp[m] = t
                    m += u(t < end)
        if m == 0:
            continue
        if grouped:
            for i in range(m):
                g = codes[sc[i]]
                if g < 0 or g >= ngroups:
                    raise IndexError("breakdown code out of range")
                sg[i] = g
                lanes[i & 3, u(g)] += 1
        else:
            counts[0, 0] += m
        sf[:m] = sp[:m]
        # Later steps: each survivor's first instant at or after the previous one (after, when
        # strict) and at most `span` after step 1's; written over the survivors, those found
        # by a search after the others.
        for k in range(1, steps):
            fk = bounds[k]
            after = 1 if strict[k] else 0
            out = diffs[k]
            out_g = dgrp[k]
            top = u(tops[k])
            j = u(0)
            g = np.uint32(0)
            if stage[k]:
                for i in range(m):
                    if i + ahead < m:
                        _prefetch(fk, sc[i + ahead])
                    c = sc[i]
                    p = sp[i]
                    f = sf[i]
                    t = fk[c]
                    # (`t - f` cannot overflow unless `t` is `NEVER`: real instants are far
                    # from it)
                    ok = u((t >= p + after) & (t != _NEVER) & (t - f <= span))
                    if grouped:
                        g = sg[i]
                        sg[j] = g
                        out_g[top] = g
                    sc[j] = c
                    sp[j] = t
                    sf[j] = f
                    out[top] = t - p
                    top += ok
                    j += ok
            else:
                q = u(0)
                for i in range(m):
                    if i + ahead < m:
                        ca = sc[i + ahead]
                        _prefetch(fk, ca + ca)
                    c = sc[i]
                    p = sp[i]
                    f = sf[i]
                    t = fk[c + c]
                    if grouped:
                        g = sg[i]
                    # (kept aside, for a search: the place `i` may be written over before then)
                    pend[q] = c
                    pprev[q] = p + after
                    pfirst[q] = f
                    pgrp[q] = g
                    q += u((t < p + after) & (fk[c + c + one] >= p + after))
                    ok = u((t >= p + after) & (t != _NEVER) & (t - f <= span))
                    if grouped:
                        sg[j] = g
                        out_g[top] = g
                    sc[j] = c
                    sp[j] = t
                    sf[j] = f
                    out[top] = t - p
                    top += ok
                    j += ok
                if q:
                    _search(
                        offs[k],
                        ats[k],
                        repls[k],
                        ovcs[k],
                        ovos[k],
                        ovas[k],
                        pend,
                        pprev,
                        q,
                        found,
                        ahead,
                    )
                    for i in range(q):
                        t = found[i]
                        f = pfirst[i]
                        ok = u((t != _NEVER) & (t - f <= span))
                        g = pgrp[i]
                        if grouped:
                            sg[j] = g
                            out_g[top] = g
                        sc[j] = pend[i]
                        sp[j] = t
                        sf[j] = f
                        out[top] = t - pprev[i] + after
                        top += ok
                        j += ok
            tops[k] = top
            m = j
            if m == 0:
                break
    if grouped:
        for g in range(ngroups):
            counts[0, g] += lanes[0, g] + lanes[1, g] + lanes[2, g] + lanes[3, g]
    else:
        for k in range(1, steps):
            counts[k, 0] = tops[k]


@_kernel
def _by_group(diffs: I64, groups: U32, top: int, counts: I64, starts: I64, out: I64) -> None:
    """The differences `diffs[:top]` regrouped by `groups[:top]`: group `g`'s at
    `out[starts[g] : starts[g] + counts[g]]` (`counts`, zeros, gets the sizes)."""
    lanes = np.zeros((4, counts.size), np.int64)  # (see `_funnel`)
    for i in range(top):
        lanes[i & 3, groups[i]] += 1
    for g in range(counts.size):
        counts[g] += lanes[0, g] + lanes[1, g] + lanes[2, g] + lanes[3, g]
    total = 0
    for g in range(counts.size):
        starts[g] = total
        total += counts[g]
    place = starts.copy()
    for i in range(top):
        g = groups[i]
        out[np.uint64(place[g])] = diffs[i]
        place[g] += 1


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


# What the kernels read for a step (see the kernels' comment): bounds, off, at, replaced,
# overlay customers, overlay offsets, overlay instants.
Rows = tuple[I64, I64, I64, Flags, I64, I64, I64]
_NO_OFF = np.zeros(1, np.int64)
_NO_AT = np.empty(0, np.int64)
_NO_FLAGS = np.zeros(0, np.bool_)
_NO_CODES = np.zeros(0, np.int32)
# The item types of `_funnel`'s typed lists, in the order of `Rows`.
_ARRAY_TYPES = (
    types.int64[::1],
    types.int64[::1],
    types.int64[::1],
    types.bool_[::1],
    types.int64[::1],
    types.int64[::1],
    types.int64[::1],
)


def _pad(at: I64) -> I64:
    """Rows of instants with `_SHORT` more items after them (`_first_at_or_after` reads them,
    and ignores them)."""
    out = np.empty(at.size + _SHORT, np.int64)
    out[: at.size] = at
    out[at.size :] = NEVER
    return out


def _empty_bounds(customers: int) -> I64:
    """First and last instants, interleaved, of customers with none."""
    bounds = np.empty(2 * customers, np.int64)
    bounds[0::2] = NEVER
    bounds[1::2] = _BEFORE_ALL
    return bounds


class StepEvents:
    """The instants of one event name per customer: a base CSR layout, and an overlay holding
    the current instants of every customer re-read since the base was built (their base rows
    are ignored: `replaced`). The overlay is folded into the base when it grows. Per customer
    also its first and last instant, wherever they are (`bounds[2c]`, `bounds[2c + 1]`: dense,
    interleaved so that one cache line holds both; `first_at`, `last_at` are views), so that
    "the first instant at or after t" is one read for most customers, and a binary search in
    its rows only for those with instants on both sides of t (`_search`). The rows are kept
    with `_SHORT` spare items after them (`_pad`)."""

    def __init__(self, cust: npt.NDArray[np.integer], at: I64, customers: int) -> None:
        self._build(np.asarray(cust, np.int64), np.asarray(at, np.int64), customers)

    def _build(self, cust: I64, at: I64, customers: int) -> None:
        order = np.lexsort((at, cust))
        cust, at = cust[order], at[order]
        self.base_n = customers
        self._at = _pad(at)
        self.base_at = self._at[: at.size]
        self.base_off = np.zeros(customers + 1, np.int64)
        np.cumsum(np.bincount(cust, minlength=customers)[:customers], out=self.base_off[1:])
        self.bounds = _empty_bounds(customers)
        has = np.flatnonzero(self.base_off[1:] > self.base_off[:-1])
        self.bounds[2 * has] = at[self.base_off[has]]
        self.bounds[2 * has + 1] = at[self.base_off[has + 1] - 1]
        self.replaced = np.zeros(customers, np.bool_)
        self.overlay: dict[int, I64] = {}
        self._ov_cust = np.empty(0, np.int64)
        self._ov_off = np.zeros(1, np.int64)
        self._ov_at = _pad(np.empty(0, np.int64))
        self._ov_rows = 0

    @property
    def first_at(self) -> I64:
        """Each customer's first instant (`NEVER`: none); a view."""
        return self.bounds[0::2]

    @property
    def last_at(self) -> I64:
        """Each customer's last instant (before all: none); a view."""
        return self.bounds[1::2]

    @property
    def nbytes(self) -> int:
        return int(
            self.base_at.nbytes
            + self.base_off.nbytes
            + self.bounds.nbytes
            + self.replaced.nbytes
            + self._ov_rows * 24
        )

    def rows(self) -> Rows:
        """The arrays the kernels read."""
        return (
            self.bounds,
            self.base_off,
            self._at,
            self.replaced,
            self._ov_cust,
            self._ov_off,
            self._ov_at,
        )

    def _room(self, size: int) -> None:
        if size > self.replaced.size:
            extra = max(size, 2 * self.replaced.size) - self.replaced.size
            self.replaced = np.concatenate([self.replaced, np.zeros(extra, np.bool_)])
            self.bounds = np.concatenate([self.bounds, _empty_bounds(extra)])

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
            self.bounds[2 * c] = arr[0] if arr.size else NEVER
            self.bounds[2 * c + 1] = arr[-1] if arr.size else _BEFORE_ALL
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
        self._ov_at = _pad(
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
            return (t, _NO_OFF, _NO_AT, _NO_FLAGS, _NO_AT, _NO_OFF, _NO_AT)
        return self.events[step.name].rows()

    def _evaluate(
        self, steps: Sequence[Step], *, start: int, end: int, span: int, dim: str, scratch: Scratch
    ) -> Found:
        n = self.size
        if dim:
            codes, values = self.breakdowns[dim].codes, self.breakdowns[dim].values
        else:
            codes, values = _NO_CODES, [""]
        ngroups = len(values)
        count = len(steps)
        # Each step's arrays, by kind of array (typed lists: one compiled call for all steps).
        lists = [TypedList.empty_list(item) for item in _ARRAY_TYPES]
        stage = np.zeros(count, np.bool_)
        strict = np.zeros(count, np.bool_)
        for k, step in enumerate(steps):
            for lst, arr in zip(lists, self._rows(step), strict=True):
                lst.append(arr)
            stage[k] = step.kind == "stage"
            if k:
                before = steps[k - 1]
                strict[k] = step.name == before.name and step.kind == before.kind
        block = BLOCK
        sc = scratch.get("sc", block, np.uint32)
        sp = scratch.get("sp", block, np.int64)
        sf = scratch.get("sf", block, np.int64)
        sg = scratch.get("sg", block, np.uint32)
        pend = scratch.get("pend", block, np.uint32)
        pprev = scratch.get("pprev", block, np.int64)
        pfirst = scratch.get("pfirst", block, np.int64)
        pgrp = scratch.get("pgrp", block, np.uint32)
        found_at = scratch.get("found", block, np.int64)
        diffs = scratch.get("diffs", count * (n + 1), np.int64).reshape(count, n + 1)
        size = count * (n + 1) if dim else count
        dgrp = scratch.get("dgrp", size, np.uint32).reshape(count, size // count)
        counts = np.zeros((count, ngroups), np.int64)
        tops = np.zeros(count, np.int64)
        _funnel(
            lists[0],
            lists[1],
            lists[2],
            lists[3],
            lists[4],
            lists[5],
            lists[6],
            stage,
            strict,
            n,
            start,
            end,
            span,
            codes,
            bool(dim),
            block,
            AHEAD,
            sc,
            sp,
            sf,
            sg,
            pend,
            pprev,
            pfirst,
            pgrp,
            found_at,
            counts,
            diffs,
            dgrp,
            tops,
        )
        present = np.flatnonzero(counts[0]).tolist()
        if not present:
            return {}
        found: Found = {values[g]: {1: (int(counts[0, g]), None)} for g in present}
        starts = np.zeros(ngroups, np.int64)
        for k in range(1, count):
            top = int(tops[k])
            step_diffs = diffs[k, :top]
            if dim:
                step_diffs = scratch.get("by_group", top, np.int64)
                _by_group(diffs[k], dgrp[k], top, counts[k], starts, step_diffs)
            for g in present:
                size, at = int(counts[k, g]), int(starts[g])
                if size:
                    low, high = _middle(step_diffs[at : at + size])
                    found[values[g]][k + 1] = (size, _seconds(size, low, high))
                else:
                    found[values[g]][k + 1] = (0, None)
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
