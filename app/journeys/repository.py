"""SQL of the journey state: the feed, timeline rows, customers and the stitcher's progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from app.db.engine import copies_jsonb
from app.db.partitions import FEED_WRITER_LOCK

SHARDS = 16


@dataclass(slots=True)
class TimelineRow:
    """A `journey_events` row as the stitcher writes it."""

    message_id: str
    customer_id: str | None
    timestamp: datetime
    received_at: datetime
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    trait_identifier: str | None
    source_channel: str
    channel: str
    session_id: str | None
    stage: str | None
    flags: int
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    campaign: dict[str, Any] | None


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# The feed's horizon (xid8): no transaction below it can still add a raw event, so the feed reads
# only events with `tx` below it, and an event is never overtaken by one that commits later with
# an earlier id. It is the oldest transaction running in the statement's snapshot, leaving out
# those seen running without `FEED_WRITER_LOCK`: every raw-event writer takes that lock before it
# has an id (the `feed_writer` trigger, migration 0013) and one that has written anything else
# cannot start, so they will never write raw events. Those that ended after the snapshot stay in
# (they may have been writers): the horizon can only err low, never skip an event. Transactions
# of other databases never hold it here, nor write here: they hold nothing back. Prepared
# transactions (no pid) stay in. With nothing running: the next transaction id.
FEED_HORIZON = f"""
(SELECT coalesce(
     (SELECT min(x) FROM pg_snapshot_xip(s.snap) AS x
      WHERE x::xid NOT IN (
          SELECT t.transactionid FROM pg_locks t
          WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
            AND t.pid IS NOT NULL
            AND NOT EXISTS (
                SELECT FROM pg_locks w
                WHERE w.pid = t.pid AND w.locktype = 'advisory' AND w.granted
                  AND w.database = (SELECT oid FROM pg_database
                                    WHERE datname = current_database())
                  AND w.classid = {FEED_WRITER_LOCK >> 32}
                  AND w.objid = {FEED_WRITER_LOCK & 0xFFFFFFFF} AND w.objsubid = 1))),
     pg_snapshot_xmax(s.snap))
 FROM (SELECT pg_current_snapshot() AS snap) s)"""


async def read_feed(
    conn: asyncpg.Connection, *, shard: int, after: tuple[int, int], limit: int
) -> list[asyncpg.Record]:
    """The next raw events of a shard in (tx, seq) order, only from transactions that can no
    longer be overtaken: below `FEED_HORIZON`."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT workspace_id, message_id, tx::text::bigint AS tx, seq, timestamp, received_at,
               flags, payload
        FROM events
        WHERE workspace_id % 16 = $1
          AND (tx, seq) > ($2::text::xid8, $3::bigint)
          AND tx < {FEED_HORIZON}
        -- Qualified: a bare `tx` here would mean the bigint output column, which no index has.
        ORDER BY events.workspace_id % 16, events.tx, events.seq
        LIMIT $4
        """,
        shard,
        str(after[0]),
        after[1],
        limit,
    )
    return rows


async def pending_shards(conn: asyncpg.Connection, shards: Sequence[int]) -> list[int]:
    """Which of these shards have an event the feed could read now: one round trip, one index
    probe per shard (ix_events_feed), instead of a transaction per idle shard."""
    rows = await conn.fetch(
        f"""
        WITH h AS MATERIALIZED (SELECT {FEED_HORIZON} AS horizon)
        SELECT s.shard FROM h, unnest($1::int[]) AS s(shard)
        CROSS JOIN LATERAL (
            SELECT 1 FROM events e
            WHERE e.workspace_id % 16 = s.shard
              AND (e.tx, e.seq) > (
                  coalesce((SELECT tx FROM stitch_progress p WHERE p.shard = s.shard),
                           '0'::xid8),
                  coalesce((SELECT seq FROM stitch_progress p WHERE p.shard = s.shard), 0))
              AND e.tx < h.horizon
            ORDER BY e.workspace_id % 16, e.tx, e.seq
            LIMIT 1
        ) AS ready
        ORDER BY s.shard
        """,
        list(shards),
    )
    return [int(r["shard"]) for r in rows]


async def lock_progress(conn: asyncpg.Connection, shard: int) -> tuple[int, int]:
    """The shard's feed position, row-locked for this transaction."""
    await conn.execute(
        "INSERT INTO stitch_progress (shard) VALUES ($1) ON CONFLICT DO NOTHING", shard
    )
    row = await conn.fetchrow(
        "SELECT tx::text::bigint AS tx, seq FROM stitch_progress WHERE shard = $1 FOR UPDATE",
        shard,
    )
    assert row is not None
    return int(row["tx"]), int(row["seq"])


async def set_aside(
    conn: asyncpg.Connection, workspace_id: int, message_id: str, error: BaseException
) -> None:
    """Record a raw event the stitcher cannot process (`stitch_failures`: counted by /readyz,
    retried by a rebuild)."""
    await conn.execute(
        "INSERT INTO stitch_failures (workspace_id, message_id, error) VALUES ($1, $2, $3)"
        " ON CONFLICT (workspace_id, message_id) DO UPDATE SET error = excluded.error,"
        " at = now()",
        workspace_id,
        message_id,
        repr(error)[:2000],
    )


async def save_progress(
    conn: asyncpg.Connection, shard: int, position: tuple[int, int], events: int
) -> None:
    """Advance the shard's feed position (same transaction as the derived writes)."""
    await conn.execute(
        "UPDATE stitch_progress SET tx = $2::text::xid8, seq = $3, events = events + $4, "
        "updated_at = now() WHERE shard = $1",
        shard,
        str(position[0]),
        position[1],
        events,
    )


async def feed_lag(conn: asyncpg.Connection) -> dict[str, Any]:
    """Events committed but not yet stitched, and the age of the oldest one."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS pending, min(e.received_at) AS oldest
        FROM events e
        LEFT JOIN stitch_progress p ON p.shard = e.workspace_id % 16
        WHERE (e.tx, e.seq) > (coalesce(p.tx, '0'::xid8), coalesce(p.seq, 0))
        """
    )
    assert row is not None
    return {"pending": row["pending"], "oldest": row["oldest"]}


async def existing_message_ids(
    conn: asyncpg.Connection, workspace_id: int, message_ids: Sequence[str]
) -> set[str]:
    """Which of these events are already on a timeline (replays, reused messageIds)."""
    rows = await conn.fetch(
        "SELECT message_id FROM journey_events WHERE workspace_id = $1 "
        "AND message_id = ANY($2::text[])",
        workspace_id,
        list(message_ids),
    )
    return {r["message_id"] for r in rows}


_TIMELINE_COLUMNS = (
    "workspace_id", "message_id", "customer_id", "timestamp", "received_at", "type", "event",
    "user_id", "anonymous_id", "trait_identifier", "source_channel", "channel", "session_id",
    "stage", "flags", "properties", "traits", "campaign",
)  # fmt: skip
# Below this many rows, one INSERT costs less than a savepoint and a COPY.
_COPY_MIN_ROWS = 64


async def insert_timeline(
    conn: asyncpg.Connection, workspace_id: int, rows: Sequence[TimelineRow]
) -> None:
    """Insert new timeline rows (the caller has left out those already stored). Large batches
    go through COPY, in a savepoint: should a row be there after all, the COPY fails whole and
    the rows are inserted with ON CONFLICT DO NOTHING instead, as small batches always are."""
    if not rows:
        return
    records = [
        (
            workspace_id, r.message_id, r.customer_id, r.timestamp, r.received_at, r.type,
            r.event, r.user_id, r.anonymous_id, r.trait_identifier, r.source_channel, r.channel,
            r.session_id, r.stage, r.flags, _json(r.properties), _json(r.traits),
            _json(r.campaign),
        )
        for r in rows
    ]  # fmt: skip
    if len(records) >= _COPY_MIN_ROWS and copies_jsonb(conn):
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "journey_events", records=records, columns=_TIMELINE_COLUMNS
                )
            return
        except asyncpg.UniqueViolationError:
            pass
    await conn.execute(
        """
        INSERT INTO journey_events (workspace_id, message_id, customer_id, timestamp, received_at,
            type, event, user_id, anonymous_id, trait_identifier, source_channel, channel,
            session_id, stage, flags, properties, traits, campaign)
        SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
            $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::text[], $14::text[], $15::int2[], $16::jsonb[], $17::jsonb[], $18::jsonb[])
        ON CONFLICT (workspace_id, message_id) DO NOTHING
        """,
        workspace_id,
        *(list(column) for column in list(zip(*records, strict=True))[1:]),
    )


async def events_to_reassign(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    user_ids: Sequence[str],
    anonymous_ids: Sequence[str],
    trait_identifiers: Sequence[str],
    customer_ids: Sequence[str],
) -> list[asyncpg.Record]:
    """Timeline rows whose customer may change after a cluster was re-resolved."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT message_id, customer_id, timestamp, type, user_id, anonymous_id, trait_identifier
        FROM journey_events WHERE workspace_id = $1 AND user_id = ANY($2::text[])
        UNION
        SELECT message_id, customer_id, timestamp, type, user_id, anonymous_id, trait_identifier
        FROM journey_events WHERE workspace_id = $1 AND anonymous_id = ANY($3::text[])
        UNION
        SELECT message_id, customer_id, timestamp, type, user_id, anonymous_id, trait_identifier
        FROM journey_events WHERE workspace_id = $1 AND customer_id = ANY($5::text[])
        UNION
        SELECT message_id, customer_id, timestamp, type, user_id, anonymous_id, trait_identifier
        FROM journey_events WHERE workspace_id = $1 AND trait_identifier = ANY($4::text[])
          AND user_id IS NULL AND anonymous_id IS NULL
        """,
        workspace_id,
        list(user_ids),
        list(anonymous_ids),
        list(trait_identifiers),
        list(customer_ids),
    )
    return rows


async def set_customers(
    conn: asyncpg.Connection, workspace_id: int, changes: Sequence[tuple[str, str | None]]
) -> None:
    """Move timeline rows (message_id → customer_id)."""
    if not changes:
        return
    await conn.execute(
        "UPDATE journey_events j SET customer_id = c.customer_id "
        "FROM unnest($2::text[], $3::text[]) AS c(message_id, customer_id) "
        "WHERE j.workspace_id = $1 AND j.message_id = c.message_id",
        workspace_id,
        [m for m, _ in changes],
        [c for _, c in changes],
    )


async def load_customer_events(
    conn: asyncpg.Connection, workspace_id: int, customer_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """All timeline rows of the given customers."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT customer_id, message_id, timestamp, type, event, user_id, anonymous_id, flags, "
        "properties, traits, campaign, source_channel, channel, session_id, stage "
        "FROM journey_events WHERE workspace_id = $1 AND customer_id = ANY($2::text[])",
        workspace_id,
        list(customer_ids),
    )
    return rows


async def load_customer_states(
    conn: asyncpg.Connection, workspace_id: int, customer_ids: Sequence[str]
) -> dict[str, asyncpg.Record]:
    """What the stitcher resumes a customer's walk from (`app.journeys.fold`) and what its
    rollup delta subtracts: first event, event count, traits, stage history and contribution
    (with the saved walk), by customer id."""
    if not customer_ids:
        return {}
    rows = await conn.fetch(
        "SELECT customer_id, first_seen, event_count, traits, stage_history, facts "
        "FROM customers WHERE workspace_id = $1 AND customer_id = ANY($2::text[])",
        workspace_id,
        list(customer_ids),
    )
    return {r["customer_id"]: r for r in rows}


async def update_derived(
    conn: asyncpg.Connection,
    workspace_id: int,
    rows: Sequence[tuple[str, str, str | None, str | None]],
) -> None:
    """Write (message_id, channel, session_id, stage) where they changed."""
    if not rows:
        return
    await conn.execute(
        "UPDATE journey_events j SET channel = d.channel, session_id = d.session_id, "
        "stage = d.stage FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) "
        "AS d(message_id, channel, session_id, stage) "
        "WHERE j.workspace_id = $1 AND j.message_id = d.message_id",
        workspace_id,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )


@dataclass(slots=True)
class CustomerRow:
    """A customer's summary."""

    customer_id: str
    first_seen: datetime
    last_seen: datetime
    event_count: int
    stage: str | None
    stage_entered_at: datetime | None
    stage_history: list[dict[str, Any]]
    traits: dict[str, Any]
    dims: dict[str, str]
    facts: bytes


async def upsert_customers(
    conn: asyncpg.Connection, workspace_id: int, rows: Sequence[CustomerRow]
) -> None:
    """Write customers' summaries."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO customers (workspace_id, customer_id, first_seen, last_seen, event_count,
            stage, stage_entered_at, stage_history, traits, dims, facts, updated_at)
        SELECT $1, *, now() FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[],
            $5::int[], $6::text[], $7::timestamptz[], $8::jsonb[], $9::jsonb[], $10::jsonb[],
            $11::bytea[])
        ON CONFLICT (workspace_id, customer_id) DO UPDATE SET
            first_seen = excluded.first_seen, last_seen = excluded.last_seen,
            event_count = excluded.event_count, stage = excluded.stage,
            stage_entered_at = excluded.stage_entered_at, stage_history = excluded.stage_history,
            traits = excluded.traits, dims = excluded.dims, facts = excluded.facts,
            updated_at = now()
        """,
        workspace_id,
        [r.customer_id for r in rows],
        [r.first_seen for r in rows],
        [r.last_seen for r in rows],
        [r.event_count for r in rows],
        [r.stage for r in rows],
        [r.stage_entered_at for r in rows],
        [orjson.dumps(r.stage_history).decode() for r in rows],
        [orjson.dumps(r.traits).decode() for r in rows],
        [orjson.dumps(r.dims).decode() for r in rows],
        [r.facts for r in rows],
    )


async def delete_customers(
    conn: asyncpg.Connection, workspace_id: int, customer_ids: Sequence[str]
) -> None:
    """Remove customers that no longer have any event (merged into another)."""
    if customer_ids:
        await conn.execute(
            "DELETE FROM customers WHERE workspace_id = $1 AND customer_id = ANY($2::text[])",
            workspace_id,
            list(customer_ids),
        )
