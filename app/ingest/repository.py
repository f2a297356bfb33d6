"""SQL of the ingest hot path: one multi-row INSERT per group commit, deduplicated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import attrgetter

import asyncpg

from app.db.partitions import ensure_week_partition, week_of
from app.ingest.segment import NormalisedEvent

# The payloads travel as one text, one per line: orjson never writes a raw newline (JSON
# escapes it inside strings), and one string costs asyncpg a fifth of what 5,000 array
# elements cost. Were a line ever split, the arrays would differ in length, unnest would pad
# them with NULLs and the NOT NULL key would refuse the whole statement: loud, never a shift.
#
# Rows land in the week of receipt. The primary key (workspace_id, message_id, received_week)
# deduplicates inside that week; NOT EXISTS against the previous week's partition extends the
# window to at least 7 days. The planner prunes both to a single partition each.
_INSERT = """
INSERT INTO events (workspace_id, received_week, message_id, type, event, user_id,
                    anonymous_id, timestamp, received_at, flags, payload)
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
      AND p.workspace_id = n.workspace_id AND p.message_id = n.message_id)
ON CONFLICT (workspace_id, message_id, received_week) DO NOTHING
"""


_BY_MESSAGE_ID = attrgetter("message_id")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One request's events, bound to its workspace."""

    workspace_id: int
    events: Sequence[NormalisedEvent]


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
        statements = []
        for week, workspaces in sorted(by_week.items()):
            # A stable order (workspace, messageId) makes concurrent commits take index locks
            # in the same order.
            workspace_ids: list[int] = []
            events: list[NormalisedEvent] = []
            for workspace_id, group in sorted(workspaces.items()):
                group.sort(key=_BY_MESSAGE_ID)
                workspace_ids += [workspace_id] * len(group)
                events += group
            statements.append(
                (
                    week,
                    week - timedelta(days=7),
                    workspace_ids,
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
            )
        if len(statements) == 1:
            # One statement is its own transaction: it has committed (durably, with
            # synchronous_commit) when execute returns, without the BEGIN and COMMIT round
            # trips, which cost about a third of a small commit's CPU.
            return _count(await conn.execute(_INSERT, *statements[0]))
        stored = 0
        async with conn.transaction():
            for args in statements:
                stored += _count(await conn.execute(_INSERT, *args))
        return stored

    def forget_partitions(self) -> None:
        """Re-check partitions on the next insert (after retention dropped some)."""
        self._known_weeks.clear()


def _count(status: str) -> int:
    """Rows of an `INSERT 0 n` status."""
    return int(status.rsplit(" ", 1)[-1])
