"""SQL of the ingest hot path: one deduplicated write per group commit.

Rows land in the week of receipt. The primary key (workspace_id, message_id, received_week)
deduplicates inside that week; a look at the previous week's partition extends the window to at
least 7 days.

A small commit (/v1/track) is one INSERT … SELECT unnest … WHERE NOT EXISTS (previous week)
ON CONFLICT DO NOTHING: one round trip. A large one (thousands of rows under load) asks which of
its messageIds either week already holds (`_stored_sql`: one primary-key probe per row and
week) and COPYs the others straight into the week's partition: COPY inserts rows in groups per
heap page, runs no executor per row and no speculative insertion, so PostgreSQL spends ~25 %
less CPU per row (measured on 10,000-row statements: 14 µs per row for the COPY plus 2 to 4 for
the look-up, against 20 to 23 for the INSERT). The look-up is planned for each commit with the
partition's current size (a fresh prepared statement: its first executions get custom plans);
a plan cached while the week's partition was empty would scan the whole, growing partition per
row.

The look-up can't see a row that a concurrent commit is inserting: the COPY then fails with a
unique violation (nothing of it is stored: the COPY is its own transaction, or inside the
commit's one) and the commit runs again as the INSERT … ON CONFLICT DO NOTHING, which waits for
the other commit and skips its rows. Duplicates inside one commit are removed first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import attrgetter
from typing import Any, Final

import asyncpg

from app.db.engine import copies_jsonb
from app.db.partitions import ensure_week_partition, partition_name, week_of
from app.ingest.metrics import COMMIT_RACES
from app.ingest.segment import NormalisedEvent

# Below this many rows a commit is one INSERT (one round trip); from it on, the look-up of
# stored messageIds and a COPY (three round trips, less PostgreSQL CPU per row).
COPY_MIN_ROWS: Final = 64

# The payloads travel as one text, one per line: orjson never writes a raw newline (JSON
# escapes it inside strings), and one string costs asyncpg a fifth of what 5,000 array
# elements cost. Were a line ever split, the arrays would differ in length, unnest would pad
# them with NULLs and the NOT NULL key would refuse the whole statement: loud, never a shift.
_SELECT_ROWS = """(workspace_id, received_week, message_id, type, event, user_id, anonymous_id,
     timestamp, received_at, flags, payload)
SELECT n.workspace_id, $1::date, n.message_id, n.type, n.event, n.user_id, n.anonymous_id,
       n.ts, n.received_at, n.flags, n.payload::jsonb
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::int2[],
            string_to_array($12::text, E'\\n'))
     AS n(workspace_id, message_id, type, event, user_id, anonymous_id, ts, received_at,
          flags, payload)
WHERE NOT EXISTS (
    SELECT 1 FROM events p
    WHERE p.received_week = $2::date
      AND p.workspace_id = n.workspace_id AND p.message_id = n.message_id)"""

# A small commit's statement, and a large one's after a race. ON CONFLICT probes this week's
# rows through the primary key whatever the statistics say.
_INSERT_ON_CONFLICT: Final = (
    f"INSERT INTO events {_SELECT_ROWS}\n"
    "ON CONFLICT (workspace_id, message_id, received_week) DO NOTHING"
)
# The columns of `events` a COPY writes (the ingest bench copies the same ones).
COPY_COLUMNS: Final = (
    "workspace_id",
    "received_week",
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "timestamp",
    "received_at",
    "flags",
    "payload",
)


_BY_MESSAGE_ID = attrgetter("message_id")


def _stored_sql(week: date) -> str:
    """Which of a large commit's messageIds either week already holds. The whole primary key in
    the probe of this week's partition tells the planner that each probe finds at most one row
    (its estimate stays far below JIT compilation's threshold whatever the commit's size)."""
    partition = partition_name(week)
    return (
        "SELECT i.workspace_id, i.message_id\n"
        "FROM unnest($1::bigint[], $2::text[]) AS i(workspace_id, message_id)\n"
        f"WHERE EXISTS (SELECT 1 FROM {partition} c\n"
        "               WHERE c.workspace_id = i.workspace_id AND c.message_id = i.message_id\n"
        "                 AND c.received_week = $3::date)\n"
        "   OR EXISTS (SELECT 1 FROM events p\n"
        "              WHERE p.received_week = $4::date\n"
        "                AND p.workspace_id = i.workspace_id AND p.message_id = i.message_id)"
    )


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One request's events, bound to its workspace."""

    workspace_id: int
    events: Sequence[NormalisedEvent]


@dataclass(slots=True)
class _WeekRows:
    """A commit's rows received in one week, sorted by (workspace, messageId), no repeats."""

    week: date
    workspace_ids: list[int]
    events: list[NormalisedEvent]


class EventWriter:
    """Inserts rows; remembers which weekly partitions exist so it only checks once."""

    def __init__(self) -> None:
        self._known_weeks: set[date] = set()

    async def insert(self, conn: asyncpg.Connection, batches: Sequence[EventBatch]) -> int:
        """Insert in one transaction; returns rows newly stored (duplicates are skipped)."""
        # week → workspace → events; a request's events share their receipt time, so the week
        # is computed once per distinct receivedAt, not per event.
        by_week: dict[date, dict[int, list[NormalisedEvent]]] = {}
        weeks: dict[datetime, date] = {}
        for batch in batches:
            for event in batch.events:
                week = weeks.get(event.received_at)
                if week is None:
                    week = weeks[event.received_at] = week_of(event.received_at)
                by_week.setdefault(week, {}).setdefault(batch.workspace_id, []).append(event)
        for week in by_week:
            if week not in self._known_weeks:
                await ensure_week_partition(conn, week)
                await ensure_week_partition(conn, week + timedelta(days=7))
                self._known_weeks.add(week)
        plans: list[_WeekRows] = []
        rows = 0
        for week, workspaces in sorted(by_week.items()):
            # A stable order (workspace, messageId) makes concurrent commits take index locks
            # in the same order, and puts the duplicates of a commit next to each other.
            workspace_ids: list[int] = []
            events: list[NormalisedEvent] = []
            for workspace_id, group in sorted(workspaces.items()):
                group.sort(key=_BY_MESSAGE_ID)
                group = _first_of_each(group)
                workspace_ids += [workspace_id] * len(group)
                events += group
            plans.append(_WeekRows(week, workspace_ids, events))
            rows += len(events)
        try:
            if rows >= COPY_MIN_ROWS and copies_jsonb(conn):
                return await _in_one_transaction(conn, plans, _copy_new)
            return await _in_one_transaction(conn, plans, _insert_on_conflict)
        except asyncpg.UniqueViolationError:
            # A concurrent commit stored one of these messageIds after we looked; nothing of
            # ours was stored. Again, skipping whatever is there now.
            COMMIT_RACES.inc()
            return await _in_one_transaction(conn, plans, _insert_on_conflict)

    def forget_partitions(self) -> None:
        """Re-check partitions on the next insert (after retention dropped some)."""
        self._known_weeks.clear()


async def _in_one_transaction(
    conn: asyncpg.Connection,
    plans: list[_WeekRows],
    write: Callable[[asyncpg.Connection, _WeekRows], Awaitable[int]],
) -> int:
    """Write each week's rows; rows newly stored. One statement is its own transaction: it has
    committed (durably, with synchronous_commit) when it returns, without the BEGIN and COMMIT
    round trips, which cost about a third of a small commit's CPU."""
    if len(plans) == 1:
        return await write(conn, plans[0])
    stored = 0
    async with conn.transaction():
        for plan in plans:
            stored += await write(conn, plan)
    return stored


def _array_args(plan: _WeekRows) -> tuple[Any, ...]:
    events = plan.events
    return (
        plan.week,
        plan.week - timedelta(days=7),
        plan.workspace_ids,
        [e.message_id for e in events],
        [e.type for e in events],
        [e.event for e in events],
        [e.user_id for e in events],
        [e.anonymous_id for e in events],
        [e.timestamp for e in events],
        [e.received_at for e in events],
        [e.flags for e in events],
        "\n".join([e.payload for e in events]),
    )


async def _insert_on_conflict(conn: asyncpg.Connection, plan: _WeekRows) -> int:
    return _count(await conn.execute(_INSERT_ON_CONFLICT, *_array_args(plan)))


async def _copy_new(conn: asyncpg.Connection, plan: _WeekRows) -> int:
    # Both statements run outside a transaction when the commit has one week: a row stored by
    # another commit between them makes the COPY fail whole (unique violation), never twice.
    week = plan.week
    workspace_ids = plan.workspace_ids
    events = plan.events
    # A statement of its own each time, never a cached generic plan (see the module's doc);
    # asyncpg closes it once it is garbage.
    lookup = await conn.prepare(_stored_sql(week))
    known = await lookup.fetch(
        workspace_ids,
        [e.message_id for e in events],
        week,
        week - timedelta(days=7),
    )
    pairs: Any = zip(workspace_ids, events, strict=True)
    if known:
        stored = {(r["workspace_id"], r["message_id"]) for r in known}
        pairs = [(w, e) for w, e in pairs if (w, e.message_id) not in stored]
    records = [
        (
            workspace_id,
            week,
            e.message_id,
            e.type,
            e.event,
            e.user_id,
            e.anonymous_id,
            e.timestamp,
            e.received_at,
            e.flags,
            e.payload,
        )
        for workspace_id, e in pairs
    ]
    if not records:
        return 0
    status = await conn.copy_records_to_table(
        partition_name(week), records=records, columns=COPY_COLUMNS
    )
    return _count(status)


def _first_of_each(group: list[NormalisedEvent]) -> list[NormalisedEvent]:
    """A list sorted by messageId without its repeats (the first of each stays, as it does
    with ON CONFLICT): the look-up before a COPY doesn't see the rows of the COPY."""
    previous: str | None = None
    for event in group:
        if event.message_id == previous:
            break
        previous = event.message_id
    else:
        return group  # the usual case: no repeat, no copy
    kept: list[NormalisedEvent] = []
    previous = None
    for event in group:
        if event.message_id != previous:
            kept.append(event)
            previous = event.message_id
    return kept


def _count(status: str) -> int:
    """Rows of an `INSERT 0 n` or `COPY n` status."""
    return int(status.rsplit(" ", 1)[-1])
