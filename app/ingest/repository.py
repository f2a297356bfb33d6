"""SQL of the ingest hot path: one multi-row INSERT per group commit, deduplicated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from app.db.partitions import ensure_week_partition, week_of
from app.ingest.segment import NormalisedEvent

# Rows land in the week of receipt. The primary key (workspace_id, message_id, received_week)
# deduplicates inside that week; NOT EXISTS against the previous week's partition extends the
# window to at least 7 days. The planner prunes both to a single partition each.
_INSERT = """
INSERT INTO events (workspace_id, received_week, message_id, type, event, user_id,
                    anonymous_id, timestamp, received_at, flags, payload)
SELECT n.workspace_id, $1::date, n.message_id, n.type, n.event, n.user_id, n.anonymous_id,
       n.ts, n.received_at, n.flags, n.payload::jsonb
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::int2[], $12::text[])
     AS n(workspace_id, message_id, type, event, user_id, anonymous_id, ts, received_at,
          flags, payload)
WHERE NOT EXISTS (
    SELECT 1 FROM events p
    WHERE p.received_week = $2::date
      AND p.workspace_id = n.workspace_id AND p.message_id = n.message_id)
ON CONFLICT (workspace_id, message_id, received_week) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event bound to its workspace."""

    workspace_id: int
    event: NormalisedEvent


class EventWriter:
    """Inserts rows; remembers which weekly partitions exist so it only checks once."""

    def __init__(self) -> None:
        self._known_weeks: set[date] = set()

    async def insert(self, conn: asyncpg.Connection, rows: Sequence[EventRow]) -> int:
        """Insert in one transaction; returns rows newly stored (duplicates are skipped)."""
        by_week: dict[date, list[EventRow]] = {}
        for row in rows:
            by_week.setdefault(week_of(row.event.received_at), []).append(row)
        for week in by_week:
            if week not in self._known_weeks:
                await ensure_week_partition(conn, week)
                await ensure_week_partition(conn, week + timedelta(days=7))
                self._known_weeks.add(week)
        stored = 0
        async with conn.transaction():
            for week, group in sorted(by_week.items()):
                # A stable order makes concurrent commits take index locks in the same order.
                group.sort(key=lambda r: (r.workspace_id, r.event.message_id))
                status = await conn.execute(
                    _INSERT,
                    week,
                    week - timedelta(days=7),
                    [r.workspace_id for r in group],
                    [r.event.message_id for r in group],
                    [r.event.type for r in group],
                    [r.event.event for r in group],
                    [r.event.user_id for r in group],
                    [r.event.anonymous_id for r in group],
                    [r.event.timestamp for r in group],
                    [r.event.received_at for r in group],
                    [r.event.flags for r in group],
                    [r.event.payload for r in group],
                )
                stored += int(status.rsplit(" ", 1)[-1])
        return stored

    def forget_partitions(self) -> None:
        """Re-check partitions on the next insert (after retention dropped some)."""
        self._known_weeks.clear()
