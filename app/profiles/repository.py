"""SQL of the profile API (read side)."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def find_identity(
    conn: asyncpg.Connection, workspace_id: int, kind: str, value: str
) -> asyncpg.Record | None:
    """An identifier's customer and whether it is a shared device."""
    return await conn.fetchrow(
        "SELECT customer_id, cluster_id, shared_device FROM identities "
        "WHERE workspace_id = $1 AND kind = $2 AND value = $3",
        workspace_id,
        kind,
        value,
    )


async def stage_by_identity(
    conn: asyncpg.Connection, workspace_id: int, kind: str, value: str
) -> asyncpg.Record | None:
    """Identity and its customer's stage in one round trip (the hot path of automation tools)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT i.customer_id, i.shared_device, c.stage, c.stage_entered_at, "
        "c.stage_history::text AS stage_history "
        "FROM identities i LEFT JOIN customers c "
        "ON c.workspace_id = i.workspace_id AND c.customer_id = i.customer_id "
        "WHERE i.workspace_id = $1 AND i.kind = $2 AND i.value = $3",
        workspace_id,
        kind,
        value,
    )
    return row


async def customer(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> asyncpg.Record | None:
    """A customer's summary row."""
    return await conn.fetchrow(
        "SELECT customer_id, first_seen, last_seen, event_count, stage, stage_entered_at, "
        "stage_history, traits FROM customers WHERE workspace_id = $1 AND customer_id = $2",
        workspace_id,
        customer_id,
    )


async def device_customers(
    conn: asyncpg.Connection, workspace_id: int, anonymous_id: str
) -> list[str]:
    """The customers a shared device's anonymous id has belonged to (by identify)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT i.customer_id FROM identity_links l
        JOIN identities i ON i.workspace_id = l.workspace_id AND i.kind = l.a_kind
                         AND i.value = l.a_value
        WHERE l.workspace_id = $1 AND l.b_kind = 'anonymous_id' AND l.b_value = $2
          AND l.rule = 'identify'
        UNION
        SELECT customer_id FROM identities
        WHERE workspace_id = $1 AND kind = 'anonymous_id' AND value = $2
        """,
        workspace_id,
        anonymous_id,
    )
    return sorted(r["customer_id"] for r in rows)


async def identifiers(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> list[asyncpg.Record]:
    """A customer's identifiers, oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT kind, value, first_seen, cluster_id FROM identities "
        "WHERE workspace_id = $1 AND customer_id = $2 ORDER BY first_seen, kind, value",
        workspace_id,
        customer_id,
    )
    return rows


async def timeline(
    conn: asyncpg.Connection,
    workspace_id: int,
    customer_id: str,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    since: datetime | None,
    until: datetime | None,
    descending: bool,
) -> list[asyncpg.Record]:
    """One page of a customer's events in event-time order."""
    op, order = ("<", "DESC") if descending else (">", "ASC")
    clauses = ["workspace_id = $1", "customer_id = $2"]
    args: list[object] = [workspace_id, customer_id]
    if after is not None:
        args += [after[0], after[1]]
        clauses.append(f"(timestamp, message_id) {op} (${len(args) - 1}, ${len(args)})")
    if since is not None:
        args.append(since)
        clauses.append(f"timestamp >= ${len(args)}")
    if until is not None:
        args.append(until)
        clauses.append(f"timestamp < ${len(args)}")
    args.append(limit)
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT message_id, type, event, timestamp, received_at, channel, session_id, stage, "
        f"properties::text AS properties FROM journey_events WHERE {' AND '.join(clauses)} "
        f"ORDER BY timestamp {order}, message_id {order} LIMIT ${len(args)}",
        *args,
    )
    return rows
