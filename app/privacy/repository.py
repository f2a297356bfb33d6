"""SQL of privacy: suppression, the deletion ledger, removing a customer's rows, export reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from app.identity.graph import Identifier

# ----------------------------------------------------------------------------- settings


async def privacy_settings(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
    """`settings -> 'privacy'` of a workspace ({} when unset)."""
    raw = await conn.fetchval(
        "SELECT settings -> 'privacy' FROM workspaces WHERE id = $1", workspace_id
    )
    return dict(raw) if isinstance(raw, dict) else {}


async def store_privacy_settings(
    conn: asyncpg.Connection, workspace_id: int, settings: dict[str, Any]
) -> None:
    """Replace `settings -> 'privacy'` of a workspace."""
    await conn.execute(
        "UPDATE workspaces SET settings = jsonb_set(settings, '{privacy}', $2::jsonb) "
        "WHERE id = $1",
        workspace_id,
        orjson.dumps(settings).decode(),
    )


async def required_consent_category(conn: asyncpg.Connection, workspace_id: int) -> str | None:
    """The consent category a workspace requires, if any."""
    value = await conn.fetchval(
        "SELECT settings -> 'privacy' ->> 'require_consent_category' FROM workspaces WHERE id = $1",
        workspace_id,
    )
    return str(value) if value else None


# ----------------------------------------------------------------------------- suppression


async def has_suppressions(conn: asyncpg.Connection, workspace_id: int) -> bool:
    """Whether a workspace has suppressed any identifier (most never do)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM suppressed_identifiers WHERE workspace_id = $1)",
            workspace_id,
        )
    )


async def suppressed_among(
    conn: asyncpg.Connection, workspace_id: int, hashes: Iterable[bytes]
) -> set[bytes]:
    """Which of these identifier hashes are suppressed."""
    wanted = sorted(set(hashes))
    if not wanted:
        return set()
    rows = await conn.fetch(
        "SELECT identifier_hash FROM suppressed_identifiers "
        "WHERE workspace_id = $1 AND identifier_hash = ANY($2::bytea[])",
        workspace_id,
        wanted,
    )
    return {bytes(r["identifier_hash"]) for r in rows}


async def suppress(
    conn: asyncpg.Connection, workspace_id: int, hashes: Sequence[bytes], job_id: int
) -> None:
    """Suppress identifier hashes (idempotent)."""
    if hashes:
        await conn.execute(
            "INSERT INTO suppressed_identifiers (workspace_id, identifier_hash, job_id) "
            "SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h ON CONFLICT DO NOTHING",
            workspace_id,
            sorted(set(hashes)),
            job_id,
        )


# ----------------------------------------------------------------------------- deletion ledger


async def insert_deletion(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    job_id: int,
    customer_id: str,
    key_id: int | None,
) -> None:
    """Open the ledger entry of a deletion job."""
    await conn.execute(
        "INSERT INTO deletions (workspace_id, job_id, customer_id, requested_by_key_id) "
        "VALUES ($1, $2, $3, $4)",
        workspace_id,
        job_id,
        customer_id,
        key_id,
    )


async def add_identifier_hashes(
    conn: asyncpg.Connection, workspace_id: int, job_id: int, hashes: Sequence[bytes]
) -> None:
    """Record the hashes of the identifiers a deletion removes (a set: repeats are ignored)."""
    await conn.execute(
        "UPDATE deletions SET identifier_hashes = ARRAY(SELECT DISTINCT h FROM "
        "unnest(identifier_hashes || $3::bytea[]) AS h ORDER BY h), "
        "deleted_identifiers = (SELECT count(DISTINCT h) FROM "
        "unnest(identifier_hashes || $3::bytea[]) AS h) "
        "WHERE workspace_id = $1 AND job_id = $2",
        workspace_id,
        job_id,
        list(hashes),
    )


async def deletion(
    conn: asyncpg.Connection, workspace_id: int, job_id: int
) -> asyncpg.Record | None:
    """A deletion's ledger entry joined with its job's status."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT d.*, j.status, j.error FROM deletions d JOIN jobs j "
        "ON j.workspace_id = d.workspace_id AND j.id = d.job_id "
        "WHERE d.workspace_id = $1 AND d.job_id = $2",
        workspace_id,
        job_id,
    )
    return row


async def open_deletion_of(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> asyncpg.Record | None:
    """A deletion of this customer that is still pending or running."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT j.* FROM deletions d JOIN jobs j "
        "ON j.workspace_id = d.workspace_id AND j.id = d.job_id "
        "WHERE d.workspace_id = $1 AND d.customer_id = $2 "
        "AND j.status IN ('pending', 'running') ORDER BY j.id LIMIT 1",
        workspace_id,
        customer_id,
    )
    return row


async def count_progress(
    conn: asyncpg.Connection, workspace_id: int, job_id: int, events: int
) -> None:
    """A chunk of a deletion is done: count its events, mark the job running."""
    await conn.execute(
        "UPDATE deletions SET deleted_events = deleted_events + $3 "
        "WHERE workspace_id = $1 AND job_id = $2",
        workspace_id,
        job_id,
        events,
    )
    await conn.execute(
        "UPDATE jobs SET status = 'running', done = done + $3, updated_at = now() "
        "WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        job_id,
        events,
    )


async def finish_deletion(conn: asyncpg.Connection, workspace_id: int, job_id: int) -> None:
    """Close the ledger entry and the job."""
    await conn.execute(
        "UPDATE deletions SET finished_at = now() WHERE workspace_id = $1 AND job_id = $2",
        workspace_id,
        job_id,
    )
    await conn.execute(
        "UPDATE jobs SET status = 'done', error = NULL, updated_at = now() "
        "WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        job_id,
    )


async def record_attempt_failed(
    conn: asyncpg.Connection, workspace_id: int, job_id: int, error: str, *, max_attempts: int
) -> bool:
    """Count a failed run; the job fails for good after `max_attempts`. True if it did."""
    attempts = await conn.fetchval(
        "UPDATE deletions SET attempts = attempts + 1 WHERE workspace_id = $1 AND job_id = $2 "
        "RETURNING attempts",
        workspace_id,
        job_id,
    )
    failed = attempts is None or attempts >= max_attempts
    await conn.execute(
        "UPDATE jobs SET error = $3, updated_at = now(), "
        "status = CASE WHEN $4 THEN 'failed' ELSE status END "
        "WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        job_id,
        error,
        failed,
    )
    return failed


async def api_key_id(conn: asyncpg.Connection, workspace_id: int, key_hash: str) -> int | None:
    """The id of a workspace's key from its hash (to record who asked for a deletion)."""
    value = await conn.fetchval(
        "SELECT id FROM api_keys WHERE workspace_id = $1 AND key_hash = $2",
        workspace_id,
        key_hash,
    )
    return int(value) if value is not None else None


# ----------------------------------------------------------------------------- removing rows


async def customer_event_count(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> int:
    """How many timeline events a customer has."""
    value = await conn.fetchval(
        "SELECT count(*) FROM journey_events WHERE workspace_id = $1 AND customer_id = $2",
        workspace_id,
        customer_id,
    )
    return int(value or 0)


async def customer_message_ids(
    conn: asyncpg.Connection,
    workspace_id: int,
    customer_id: str,
    *,
    user_ids: Sequence[str],
    anonymous_ids: Sequence[str],
    limit: int,
) -> list[str]:
    """Up to `limit` timeline events of the customer, or carrying one of these ids."""
    rows = await conn.fetch(
        """
        (SELECT message_id FROM journey_events WHERE workspace_id = $1 AND customer_id = $2
         LIMIT $5)
        UNION
        (SELECT message_id FROM journey_events WHERE workspace_id = $1
           AND user_id = ANY($3::text[]) LIMIT $5)
        UNION
        (SELECT message_id FROM journey_events WHERE workspace_id = $1
           AND anonymous_id = ANY($4::text[]) LIMIT $5)
        LIMIT $5
        """,
        workspace_id,
        customer_id,
        list(user_ids),
        list(anonymous_ids),
        limit,
    )
    return [r["message_id"] for r in rows]


async def delete_events(
    conn: asyncpg.Connection, workspace_id: int, message_ids: Sequence[str]
) -> int:
    """Remove events everywhere they are held: raw (every weekly copy), timeline and the
    set-aside list; returns how many distinct events were removed."""
    if not message_ids:
        return 0
    value = await conn.fetchval(
        """
        WITH raw AS (
            DELETE FROM events WHERE workspace_id = $1 AND message_id = ANY($2::text[])
            RETURNING message_id
        ), timeline AS (
            DELETE FROM journey_events WHERE workspace_id = $1 AND message_id = ANY($2::text[])
            RETURNING message_id
        ), failures AS (
            DELETE FROM stitch_failures WHERE workspace_id = $1 AND message_id = ANY($2::text[])
        )
        SELECT count(*) FROM (SELECT message_id FROM raw UNION SELECT message_id FROM timeline) u
        """,
        workspace_id,
        sorted(set(message_ids)),
    )
    return int(value or 0)


async def delete_raw_events(
    conn: asyncpg.Connection, workspace_id: int, message_ids: Sequence[str]
) -> None:
    """Remove raw events (every weekly copy) that were dropped before stitching."""
    if message_ids:
        await conn.execute(
            "DELETE FROM events WHERE workspace_id = $1 AND message_id = ANY($2::text[])",
            workspace_id,
            sorted(set(message_ids)),
        )


async def unstitched_events(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    shard: int,
    after: tuple[int, int],
    limit: int,
) -> list[asyncpg.Record]:
    """A page of a workspace's raw events beyond its shard's feed position (not yet stitched,
    committed or not below the feed's horizon yet), in feed order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT message_id, tx::text::bigint AS tx, seq, timestamp, flags, user_id, anonymous_id,
               payload
        FROM events
        WHERE workspace_id % 16 = $1 AND (tx, seq) > ($2::text::xid8, $3::bigint)
          AND workspace_id = $4
        ORDER BY events.workspace_id % 16, events.tx, events.seq
        LIMIT $5
        """,
        shard,
        str(after[0]),
        after[1],
        workspace_id,
        limit,
    )
    return rows


async def set_aside_events(conn: asyncpg.Connection, workspace_id: int) -> list[asyncpg.Record]:
    """Raw events the stitcher set aside (`stitch_failures`): never stitched, still stored."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT e.message_id, e.timestamp, e.flags, e.user_id, e.anonymous_id, e.payload "
        "FROM stitch_failures f JOIN events e "
        "ON e.workspace_id = f.workspace_id AND e.message_id = f.message_id "
        "WHERE f.workspace_id = $1",
        workspace_id,
    )
    return rows


async def delete_identity_evidence(
    conn: asyncpg.Connection, workspace_id: int, idents: Sequence[Identifier]
) -> None:
    """Remove the link evidence and blocked links that name any of these identifiers."""
    if not idents:
        return
    kinds = [i.kind for i in idents]
    values = [i.value for i in idents]
    await conn.execute(
        "DELETE FROM identity_links l USING unnest($2::text[], $3::text[]) AS q(kind, value) "
        "WHERE l.workspace_id = $1 AND (l.a_kind, l.a_value) = (q.kind, q.value)",
        workspace_id,
        kinds,
        values,
    )
    await conn.execute(
        "DELETE FROM identity_links l USING unnest($2::text[], $3::text[]) AS q(kind, value) "
        "WHERE l.workspace_id = $1 AND (l.b_kind, l.b_value) = (q.kind, q.value)",
        workspace_id,
        kinds,
        values,
    )
    names = [str(i) for i in idents]
    await conn.execute(
        "DELETE FROM blocked_links WHERE workspace_id = $1 "
        "AND (a = ANY($2::text[]) OR b = ANY($2::text[]))",
        workspace_id,
        names,
    )


# ----------------------------------------------------------------------------- export


async def export_timeline(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> list[asyncpg.Record]:
    """Every timeline row of a customer, JSON columns as text, in event-time order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT message_id, type, event, timestamp, received_at, user_id, anonymous_id, "
        "trait_identifier, source_channel, channel, session_id, stage, flags, "
        "properties::text AS properties, traits::text AS traits, campaign::text AS campaign "
        "FROM journey_events WHERE workspace_id = $1 AND customer_id = $2 "
        "ORDER BY timestamp, message_id",
        workspace_id,
        customer_id,
    )
    return rows


async def export_raw_events(
    conn: asyncpg.Connection, workspace_id: int, message_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """The raw rows of these events (every weekly copy), payloads as text."""
    if not message_ids:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT message_id, received_week, received_at, payload::text AS payload FROM events "
        "WHERE workspace_id = $1 AND message_id = ANY($2::text[]) "
        "ORDER BY received_at, message_id",
        workspace_id,
        sorted(set(message_ids)),
    )
    return rows


async def export_customer(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> asyncpg.Record | None:
    """A customer's summary row for export."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT customer_id, first_seen, last_seen, event_count, stage, stage_entered_at, "
        "stage_history::text AS stage_history, traits::text AS traits, dims::text AS dims, "
        "updated_at FROM customers WHERE workspace_id = $1 AND customer_id = $2",
        workspace_id,
        customer_id,
    )
    return row
