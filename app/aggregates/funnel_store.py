"""Funnel indexes of large workspaces, one per workspace and API process (docs/scaling.md §7).

An index (`app.aggregates.funnel_index`) is loaded lazily, inside the REPEATABLE READ snapshot
of the request that first needs it, and remembers that snapshot (`pg_current_snapshot()`).
Each later request, in its own snapshot, reads the change feed of migration 0011: the customers
touched by every transaction its snapshot sees and the index's did not. It re-reads exactly
those customers (stage entries, breakdown values, step events) and answers from the index, so
the answer is exactly its snapshot's, as the SQL path's would be. Requests of one workspace take
the index's gate *before* their snapshot, so the snapshots an index moves through only grow;
once the index is at a request's snapshot the request lets the gate go and evaluates
concurrently with others, and the index is changed in place only when no evaluation is in
flight (`Gate`).

An index reloads when it lacks a stage, breakdown or event name a funnel asks for, when its
snapshot is older than what the maintenance task trimmed from the feed, or when the feed names
more customers than a reload costs. Indexes are evicted least recently used beyond a memory
bound. Small workspaces keep the SQL path (`funnel_index_min_customers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import numpy as np
import numpy.typing as npt

from app.aggregates.funnel_index import (
    NEVER,
    Breakdown,
    Found,
    FunnelIndex,
    Step,
    StepEvents,
    warm_up,
)
from app.core.logging import get_logger
from app.ingest.segment import FLAG_BOT

log = get_logger(__name__)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary timestamptz: microseconds since then
_MICROSECOND = timedelta(microseconds=1)
SIZE_TTL_SECONDS = 600.0  # how long a workspace's size decision is kept
MAX_INDEXES = 64
# Workspaces this large are (re)loaded in the background (seconds), smaller ones in the request.
BACKGROUND_MIN_CUSTOMERS = 100_000
T = TypeVar("T")
Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
# Funnel evaluations of every workspace: numpy releases the GIL in its large passes, so as
# many run in parallel as there are cores.
_EVALUATIONS = ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="funnel-eval"
)


def warm_kernels() -> None:
    """Compile (or load from numba's disk cache) the evaluation kernels in an evaluation
    thread, without waiting: at startup, so that the first funnel does not pay for it (an
    evaluation that comes first waits for the compilation, not longer)."""
    _EVALUATIONS.submit(warm_up)


def instant(at: datetime) -> int:
    """Microseconds since 2000-01-01 UTC (PostgreSQL's binary timestamptz)."""
    return (at - PG_EPOCH) // _MICROSECOND


class IndexUnusable(Exception):
    """The workspace cannot be indexed (the caller answers with SQL)."""


class IndexLoading(IndexUnusable):
    """The index is being (re)loaded in the background (the caller answers with SQL)."""


# ------------------------------------------------------------------------------- reading


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


async def _copy_int8(conn: asyncpg.Connection, query: str, *args: Any, columns: int) -> list[Any]:
    """The rows of a query whose columns are all 8-byte integers or timestamps, never NULL,
    through binary COPY: one int64 array per column (no Python object per row)."""
    buf = io.BytesIO()
    await conn.copy_from_query(query, *args, output=buf, format="binary")
    data = buf.getbuffer()
    if bytes(data[:11]) != _COPY_SIGNATURE:
        raise IndexUnusable("unexpected COPY header")
    ext = int.from_bytes(data[15:19], "big")
    start = 19 + ext
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i in range(columns):
        fields += [(f"l{i}", ">i4"), (f"f{i}", ">i8")]
    dtype = np.dtype(fields)
    body = len(data) - start - 2
    if body % dtype.itemsize or int.from_bytes(data[-2:], "big", signed=True) != -1:
        raise IndexUnusable("unexpected COPY layout (a NULL?)")
    rows = np.frombuffer(data, dtype, body // dtype.itemsize, start)
    if rows.size and (
        (rows["n"] != columns).any() or any((rows[f"l{i}"] != 8).any() for i in range(columns))
    ):
        raise IndexUnusable("unexpected COPY layout")
    out = [rows[f"f{i}"].astype(np.int64) for i in range(columns)]
    del rows
    data.release()
    return out


_ORDINALS = (
    'WITH c AS (SELECT customer_id, row_number() OVER (ORDER BY customer_id COLLATE "C") - 1 '
    "AS ord FROM customers WHERE workspace_id = $1) "
)
_IDS_SQL = (
    "SELECT count(*) AS n, coalesce(string_agg(customer_id, E'\\n' ORDER BY customer_id "
    "COLLATE \"C\"), '') AS ids FROM customers WHERE workspace_id = $1"
)
_ENTRIES_COPY = (
    _ORDINALS + "SELECT coalesce(c.ord, -1), array_position($2::text[], s.stage)::int8, "
    "s.entered_at FROM stage_entries s LEFT JOIN c ON c.customer_id = s.customer_id "
    "WHERE s.workspace_id = $1 AND s.stage = ANY($2::text[]) AND s.entered_at IS NOT NULL"
)
_EVENTS_COPY = (
    _ORDINALS + "SELECT coalesce(c.ord, -1), array_position($2::text[], e.event)::int8, "
    "e.timestamp FROM journey_events e LEFT JOIN c ON c.customer_id = e.customer_id "
    "WHERE e.workspace_id = $1 AND e.event = ANY($2::text[]) AND e.customer_id IS NOT NULL "
    f"AND e.flags & {FLAG_BOT} = 0"
)
_VALUES_SQL = (
    'SELECT array_agg(v ORDER BY v COLLATE "C") FROM (SELECT DISTINCT coalesce(dims ->> $2, '
    "'') AS v FROM customers WHERE workspace_id = $1) x"
)
_ORPHANS_SQL = f"""
    SELECT customer_id FROM stage_entries s WHERE workspace_id = $1 AND stage = ANY($2::text[])
      AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.workspace_id = $1
                      AND c.customer_id = s.customer_id)
    UNION
    SELECT customer_id FROM journey_events e WHERE workspace_id = $1 AND event = ANY($3::text[])
      AND customer_id IS NOT NULL AND flags & {FLAG_BOT} = 0
      AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.workspace_id = $1
                      AND c.customer_id = e.customer_id)
"""
_CUSTOMER_VALUES_SQL = (
    "SELECT customer_id, ARRAY(SELECT coalesce(dims ->> d, '') FROM unnest($3::text[]) "
    "WITH ORDINALITY AS u(d, i) ORDER BY i) AS vals FROM customers "
    "WHERE workspace_id = $1 AND customer_id = ANY($2::text[])"
)
_CUSTOMER_ENTRIES_SQL = (
    "SELECT customer_id, stage, entered_at FROM stage_entries WHERE workspace_id = $1 "
    "AND customer_id = ANY($2::text[]) AND stage = ANY($3::text[]) AND entered_at IS NOT NULL"
)
_CUSTOMER_EVENTS_SQL = (
    "SELECT customer_id, event, timestamp FROM journey_events WHERE workspace_id = $1 "
    f"AND customer_id = ANY($2::text[]) AND event = ANY($3::text[]) AND flags & {FLAG_BOT} = 0"
)
# The current snapshot, whether the feed was trimmed past the index's, and the customers
# changed by the transactions the current snapshot sees and the index's ($2) did not.
_FEED_SQL = """
    SELECT pg_current_snapshot()::text AS snapshot,
        coalesce((SELECT trimmed_through >= pg_snapshot_xmin($2::text::pg_snapshot)
                  FROM funnel_change_horizons WHERE workspace_id = $1), false) AS behind,
        ARRAY(SELECT DISTINCT u.id FROM funnel_changes f, unnest(f.customer_ids) AS u(id)
              WHERE f.workspace_id = $1 AND f.xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                AND NOT pg_visible_in_snapshot(f.xid, $2::text::pg_snapshot)) AS changed
"""
_SIZE_SQL = (
    "SELECT coalesce(max(n), 0) FROM (SELECT sum(entered) AS n FROM agg_stage_days "
    "WHERE workspace_id = $1 AND dim = '' GROUP BY stage) x"
)
_TRIM_SQL = """
    WITH gone AS (
        DELETE FROM funnel_changes WHERE at < now() - $1::interval RETURNING workspace_id, xid
    ), top AS (
        SELECT workspace_id, max(xid) AS xid FROM gone GROUP BY workspace_id
    ), saved AS (
        INSERT INTO funnel_change_horizons (workspace_id, trimmed_through)
        SELECT workspace_id, xid FROM top ORDER BY workspace_id
        ON CONFLICT (workspace_id) DO UPDATE
        SET trimmed_through = greatest(funnel_change_horizons.trimmed_through,
                                       excluded.trimmed_through)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS n, (SELECT count(*) FROM saved) AS workspaces
"""


async def trim_changes(conn: asyncpg.Connection, *, older_than: timedelta) -> int:
    """Delete feed rows older than `older_than` (the maintenance task); an index whose
    snapshot could miss one of them reloads. Returns the rows deleted."""
    row = await conn.fetchrow(_TRIM_SQL, older_than)
    return int(row["n"]) if row else 0


@dataclass(slots=True)
class Entry:
    """A workspace's index, its customer ids and the snapshot it is exact for."""

    index: FunnelIndex
    ids: npt.NDArray[np.bytes_]  # sorted (C order): the ordinal is the position
    extra: dict[str, int] = field(default_factory=dict)  # customers added since the load
    snapshot: str = ""
    loaded_in: float = 0.0

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + int(self.ids.nbytes) + 100 * len(self.extra)

    def ordinals(self, customer_ids: Sequence[str]) -> list[int]:
        """The ordinals of these customers (new ones get the next free ordinals)."""
        out: list[int] = []
        keys = np.asarray([c.encode() for c in customer_ids], dtype=np.bytes_)
        pos = np.searchsorted(self.ids, keys) if self.ids.size else np.zeros(len(keys), np.int64)
        n = self.ids.size
        for cid, key, p in zip(customer_ids, keys, pos.tolist(), strict=True):
            if p < n and self.ids[p] == key:
                out.append(p)
                continue
            found = self.extra.get(cid)
            if found is None:
                found = n + len(self.extra)
                self.extra[cid] = found
            out.append(found)
        return out


async def _read_customers(
    conn: asyncpg.Connection,
    ws: int,
    entry: Entry,
    customer_ids: Sequence[str],
    *,
    gate: Gate | None = None,
) -> None:
    """Re-read everything the index holds about these customers, in the current snapshot, and
    set it; with `gate`, after the evaluations in flight have ended (they read the index)."""
    index = entry.index
    ords = entry.ordinals(customer_ids)  # (`extra` only: no evaluation reads it)
    of = dict(zip(customer_ids, ords, strict=True))
    dims = list(index.breakdowns)
    values: dict[int, dict[str, str]] = {}
    if dims:
        for r in await conn.fetch(_CUSTOMER_VALUES_SQL, ws, list(customer_ids), dims):
            values[of[r["customer_id"]]] = dict(zip(dims, r["vals"], strict=True))
    entries = [
        (of[r["customer_id"]], r["stage"], instant(r["entered_at"]))
        for r in await conn.fetch(_CUSTOMER_ENTRIES_SQL, ws, list(customer_ids), list(index.stages))
    ]
    events: list[tuple[int, str, int]] = []
    if index.events:
        events = [
            (of[r["customer_id"]], r["event"], instant(r["timestamp"]))
            for r in await conn.fetch(
                _CUSTOMER_EVENTS_SQL, ws, list(customer_ids), list(index.events)
            )
        ]
    if gate is not None:
        await gate.drained()
    index.replace(ords, entries=entries, values=values, events=events)


async def load(
    conn: asyncpg.Connection,
    ws: int,
    *,
    stages: Sequence[str],
    breakdowns: Sequence[str],
    events: Sequence[str],
) -> Entry:
    """The index of a workspace as the current snapshot sees it."""
    # Each name once (rows are told apart by the name's first position in the list).
    stages, breakdowns, events = _union(stages, ()), _union(breakdowns, ()), _union(events, ())
    started = time.perf_counter()
    snapshot = str(await conn.fetchval("SELECT pg_current_snapshot()::text"))
    row = await conn.fetchrow(_IDS_SQL, ws)
    count = int(row["n"])
    text = str(row["ids"])
    ids = (
        np.asarray(text.encode().split(b"\n"), dtype=np.bytes_)
        if count
        else np.empty(0, dtype="S1")
    )
    if ids.size != count:
        raise IndexUnusable("a customer id holds a newline")
    n = count
    stage_arrays = {name: np.full(n, NEVER, np.int64) for name in stages}
    if stages:
        cust, which, at = await _copy_int8(conn, _ENTRIES_COPY, ws, list(stages), columns=3)
        known = cust >= 0
        for i, name in enumerate(stages, start=1):
            pick = known & (which == i)
            stage_arrays[name][cust[pick]] = at[pick]
        orphans = bool((~known).any())
    else:
        orphans = False
    kept: dict[str, Breakdown] = {}
    if breakdowns:
        ranks = ", ".join(
            f"dense_rank() OVER (ORDER BY coalesce(dims ->> ${i + 2}, '') COLLATE \"C\") - 1"
            for i in range(len(breakdowns))
        )
        columns = await _copy_int8(
            conn,
            'SELECT row_number() OVER (ORDER BY customer_id COLLATE "C") - 1, '
            f"{ranks} FROM customers WHERE workspace_id = $1",
            ws,
            *breakdowns,
            columns=1 + len(breakdowns),
        )
        for i, dim in enumerate(breakdowns):
            values = list(await conn.fetchval(_VALUES_SQL, ws, dim) or [])
            shift = 0 if values and values[0] == "" else 1
            if shift:
                values.insert(0, "")
            codes = np.zeros(n, np.int32)
            codes[columns[0]] = (columns[i + 1] + shift).astype(np.int32)
            kept[dim] = Breakdown(codes, values)
    steps: dict[str, StepEvents] = {}
    if events:
        cust, which, at = await _copy_int8(conn, _EVENTS_COPY, ws, list(events), columns=3)
        known = cust >= 0
        orphans = orphans or bool((~known).any())
        for i, name in enumerate(events, start=1):
            pick = known & (which == i)
            # Sorting a few million rows: off the event loop (numpy releases the GIL).
            steps[name] = await asyncio.to_thread(StepEvents, cust[pick], at[pick], n)
    entry = Entry(
        FunnelIndex(customers=n, stages=stage_arrays, breakdowns=kept, events=steps),
        ids,
        snapshot=snapshot,
    )
    if orphans:
        # Rows of customers without a `customers` row (not written by the stitcher; kept exact
        # anyway): read one by one, as changed customers are.
        lost = [r["customer_id"] for r in await conn.fetch(_ORPHANS_SQL, ws, stages, events)]
        await _read_customers(conn, ws, entry, lost)
    entry.loaded_in = time.perf_counter() - started
    log.info(
        "funnel_index_loaded",
        workspace_id=ws,
        customers=n,
        events=sum(e.base_at.size for e in steps.values()),
        mb=round(entry.nbytes / 1e6, 1),
        seconds=round(entry.loaded_in, 2),
    )
    return entry


# ------------------------------------------------------------------------------- registry


class Gate:
    """The concurrency rule of one workspace's index: a readers-writer scheme in which the
    snapshots the index moves through only grow.

    * `async with gate` (the *order*, exclusive) is held from before a request's REPEATABLE
      READ snapshot until the index is exactly at that snapshot (feed read, changed customers
      re-read and applied, or a (re)load). Requests therefore take their snapshots one after
      the other, each seeing everything the index has applied.
    * Still holding it, the request registers as a reader (`run`) and lets the order go
      (`release`): its evaluation runs in a thread, concurrently with other evaluations and with
      the next request's snapshot and feed read.
    * The index is changed in place only with the order held and no reader registered
      (`drained`): a request whose snapshot sees changes the index has not applied waits for
      the evaluations in flight, which are at older snapshots, to end. A request that sees no
      change only moves the index's snapshot forward and evaluates at once, alongside them.
    * A (re)load builds a new index; evaluations in flight keep the one they started on.
    """

    def __init__(self) -> None:
        self._order = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._readers = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False  # a change waits for the evaluations in flight (tests look)

    async def __aenter__(self) -> Gate:
        await self._order.acquire()
        self._owner = asyncio.current_task()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the current task holds the order."""
        return self._owner is not None and self._owner is asyncio.current_task()

    def release(self) -> None:
        """Let the order go, if the current task holds it (idempotent)."""
        if self.held():
            self._owner = None
            self._order.release()

    @property
    def readers(self) -> int:
        return self._readers

    async def drained(self) -> None:
        """Wait until no evaluation is in flight (the order held: none can start meanwhile)."""
        while self._readers:
            self.draining = True
            try:
                await self._idle.wait()
            finally:
                self.draining = False

    def run(self, fn: Callable[[], T]) -> Awaitable[T]:
        """Run `fn` (an evaluation) in the evaluation threads as a reader: registered now (call
        holding the order), unregistered when the thread has finished with it, even if the
        awaiting request is cancelled first."""
        loop = asyncio.get_running_loop()
        self._readers += 1
        self._idle.clear()

        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody waits)
                loop.call_soon_threadsafe(self._leave)

        try:
            work = _EVALUATIONS.submit(fn)
        except BaseException:
            self._leave()
            raise
        work.add_done_callback(done)
        return asyncio.wrap_future(work)

    def _leave(self) -> None:
        self._readers -= 1
        if not self._readers:
            self._idle.set()


class FunnelIndexes:
    """The indexes of one process: LRU, bounded in memory; one lock per workspace."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._gates: dict[int, Gate] = {}
        self._sizes: dict[int, tuple[float, int]] = {}
        self._unusable: set[int] = set()
        self._loading: dict[int, asyncio.Task[None]] = {}
        self.background_min_customers = BACKGROUND_MIN_CUSTOMERS
        self.loads = 0
        self.refreshes = 0

    def lock(self, ws: int) -> Gate:
        """The workspace's gate: entered (`async with`) from before a request's snapshot;
        `funnel_found` lets it go once its evaluation is registered (see `Gate`)."""
        found = self._gates.get(ws)
        if found is None:
            found = self._gates[ws] = Gate()
        return found

    def entry(self, ws: int) -> Entry | None:
        return self._entries.get(ws)

    async def chosen(self, conn: asyncpg.Connection, ws: int, *, min_customers: int) -> bool:
        """Whether this workspace's funnels are answered from an index."""
        if ws in self._unusable:
            return False
        if min_customers <= 0 or ws in self._entries:
            return True
        return await self._size(conn, ws) >= min_customers

    async def _size(self, conn: asyncpg.Connection, ws: int) -> int:
        """Customers of the workspace's most-entered stage (from the rollups; kept a while)."""
        now = time.monotonic()
        cached = self._sizes.get(ws)
        if cached is None or now - cached[0] > SIZE_TTL_SECONDS:
            cached = (now, int(await conn.fetchval(_SIZE_SQL, ws)))
            self._sizes[ws] = cached
        return cached[1]

    def loading(self, ws: int) -> asyncio.Task[None] | None:
        """The workspace's load running in the background, if any."""
        return self._loading.get(ws)

    async def current(
        self,
        conn: asyncpg.Connection,
        ws: int,
        *,
        stages: Iterable[str],
        breakdowns: Iterable[str],
        events: Iterable[str],
        max_bytes: int,
        also_breakdowns: Iterable[str] = (),
        connect: Connect | None = None,
    ) -> FunnelIndex:
        """The workspace's index, exact for the current transaction's snapshot (call with
        `lock(ws)` held, in a REPEATABLE READ transaction begun under it). A (re)load also
        reads `also_breakdowns` (the journey model's), so they never cost a reload. With
        `connect` (a connection factory), a workspace of `background_min_customers` or more
        is (re)loaded in the background instead: `IndexLoading` meanwhile."""
        # Each name once: a funnel repeating an event step names it twice.
        stages, breakdowns, events = _union(stages, ()), _union(breakdowns, ()), _union(events, ())
        entry = self._entries.get(ws)
        covered = entry is not None and entry.index.covers(stages, breakdowns, events)
        breakdowns = _union(breakdowns, also_breakdowns)
        if entry is not None and not covered:
            stages = _union(entry.index.stages, stages)
            breakdowns = _union(entry.index.breakdowns, breakdowns)
            events = _union(entry.index.events, events)
            entry = None
        if entry is not None:
            row = await conn.fetchrow(_FEED_SQL, ws, entry.snapshot)
            changed: list[str] = row["changed"]
            if row["behind"] or len(changed) > max(50_000, entry.index.size // 4):
                stages = _union(entry.index.stages, stages)
                breakdowns = _union(entry.index.breakdowns, breakdowns)
                events = _union(entry.index.events, events)
                entry = None
            else:
                if changed:
                    await _read_customers(conn, ws, entry, changed, gate=self.lock(ws))
                    self.refreshes += 1
                entry.snapshot = row["snapshot"]
        if entry is None:
            if connect is not None and (
                ws in self._loading or await self._size(conn, ws) >= self.background_min_customers
            ):
                if ws not in self._loading:
                    task = asyncio.create_task(
                        self._load_in_background(
                            connect,
                            ws,
                            stages=stages,
                            breakdowns=breakdowns,
                            events=events,
                            max_bytes=max_bytes,
                        )
                    )
                    self._loading[ws] = task
                raise IndexLoading("loading in the background")
            self._entries.pop(ws, None)
            entry = await self._load(conn, ws, stages=stages, breakdowns=breakdowns, events=events)
        self._install(ws, entry, max_bytes)
        return entry.index

    async def _load(
        self,
        conn: asyncpg.Connection,
        ws: int,
        *,
        stages: Sequence[str],
        breakdowns: Sequence[str],
        events: Sequence[str],
    ) -> Entry:
        try:
            entry = await load(conn, ws, stages=stages, breakdowns=breakdowns, events=events)
        except IndexUnusable as exc:
            self._unusable.add(ws)
            log.warning("funnel_index_unusable", workspace_id=ws, reason=str(exc))
            raise
        except MemoryError as exc:
            # Too large for this process: this workspace keeps the SQL path (a 200, late)
            # rather than every funnel request failing with a 500.
            self._unusable.add(ws)
            log.warning("funnel_index_unusable", workspace_id=ws, reason="out of memory")
            raise IndexUnusable("out of memory") from exc
        self.loads += 1
        return entry

    def _install(self, ws: int, entry: Entry, max_bytes: int) -> None:
        # (set again: another workspace's request may have evicted it while this one awaited)
        self._entries[ws] = entry
        self._entries.move_to_end(ws)
        self._evict(ws, max_bytes)

    async def _load_in_background(
        self,
        connect: Connect,
        ws: int,
        *,
        stages: Sequence[str],
        breakdowns: Sequence[str],
        events: Sequence[str],
        max_bytes: int,
    ) -> None:
        """Load in a snapshot of its own, without the gate (requests meanwhile keep the index
        they have, or the SQL path), then install the index under the gate. Exact: a request
        takes its snapshot after entering the gate, so after the install, so after the load's
        snapshot was taken: it sees all the load saw, and the feed brings the index from the
        load's snapshot to the request's (an index it replaces may have been further on; the
        feed covers that too)."""
        try:
            async with (
                connect() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                entry = await self._load(
                    conn, ws, stages=stages, breakdowns=breakdowns, events=events
                )
            async with self.lock(ws):
                self._install(ws, entry, max_bytes)
        except IndexUnusable:
            pass  # logged; this workspace keeps the SQL path
        except Exception as exc:  # a later request tries again
            log.warning("funnel_index_load_failed", workspace_id=ws, error=repr(exc))
        finally:
            self._loading.pop(ws, None)

    def _evict(self, keep: int, max_bytes: int) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for ws in list(self._entries):
            if total <= max_bytes and len(self._entries) <= MAX_INDEXES:
                break
            if ws == keep:
                continue
            total -= self._entries.pop(ws).nbytes
            log.info("funnel_index_evicted", workspace_id=ws)

    def clear(self) -> None:
        """Forget every index (tests)."""
        self._entries.clear()
        self._sizes.clear()
        self._unusable.clear()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())


def _union(have: Iterable[str], want: Iterable[str]) -> list[str]:
    """The names of both, each once (a name twice would load an empty event: see `load`)."""
    return list(dict.fromkeys([*have, *want]))


async def funnel_found(
    indexes: FunnelIndexes,
    conn: asyncpg.Connection,
    ws: int,
    *,
    stages: Sequence[str],
    breakdowns: Sequence[str] = (),
    dim: str,
    steps: Sequence[Step],
    start: datetime,
    end: datetime,
    span: timedelta,
    max_bytes: int,
    connect: Connect | None = None,
) -> Found:
    """A funnel's figures from the workspace's index (see `FunnelIndex.evaluate`);
    `breakdowns`: the journey model's, loaded with the index. With `connect`, a large
    workspace's index is (re)loaded in the background (`IndexLoading` meanwhile). The gate
    (`indexes.lock(ws)`), if the caller holds it, is let go before this returns or raises."""
    gate = indexes.lock(ws)
    try:
        index = await indexes.current(
            conn,
            ws,
            stages=stages,
            breakdowns=[dim] if dim else [],
            events=[s.name for s in steps if s.kind == "event"],
            max_bytes=max_bytes,
            also_breakdowns=breakdowns,
            connect=connect,
        )
    except BaseException:
        gate.release()  # (the SQL path answers without holding it)
        raise
    # In a thread (numpy releases the GIL), concurrently with other evaluations; registered
    # as a reader before the gate is let go, so the index cannot change under it (`Gate`).
    evaluation = gate.run(
        functools.partial(
            index.evaluate,
            steps,
            start=instant(start),
            end=instant(end),
            span=span // _MICROSECOND,
            dim=dim,
        )
    )
    gate.release()
    return await evaluation


FUNNELS = FunnelIndexes()

__all__ = [
    "FUNNELS",
    "Entry",
    "FunnelIndexes",
    "Gate",
    "IndexLoading",
    "IndexUnusable",
    "funnel_found",
    "instant",
    "load",
    "trim_changes",
    "warm_kernels",
]
