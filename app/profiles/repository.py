"""SQL of the profile API (read side)."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def find_identity(
    conn: asyncpg.Connection, workspace_id: int, kind: str, value: str
) -> asyncpg.Record | None:
    """An identifier's customer, whether it is a shared device, and whether that customer has
    a profile (`has_profile`: a `customers` row; an unmerge can leave an identifier whose
    customer has no events and so no row)."""
    return await conn.fetchrow(
        "SELECT i.customer_id, i.cluster_id, i.shared_device, EXISTS ("
        "SELECT FROM customers c "
        "WHERE c.workspace_id = i.workspace_id AND c.customer_id = i.customer_id"
        ") AS has_profile FROM identities i "
        "WHERE i.workspace_id = $1 AND i.kind = $2 AND i.value = $3",
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


async def stage_of_customer(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> asyncpg.Record | None:
    """A customer's stage columns only (the row's wide `facts` and `dims` are not read)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT customer_id, stage, stage_entered_at, stage_history::text AS stage_history "
        "FROM customers WHERE workspace_id = $1 AND customer_id = $2",
        workspace_id,
        customer_id,
    )
    return row


async def customer_exists(conn: asyncpg.Connection, workspace_id: int, customer_id: str) -> bool:
    """Whether the workspace has this customer (an index probe, no wide columns)."""
    found = await conn.fetchval(
        "SELECT true FROM customers WHERE workspace_id = $1 AND customer_id = $2",
        workspace_id,
        customer_id,
    )
    return found is not None


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


TIMELINE_COLUMNS = (
    "message_id",
    "type",
    "event",
    "timestamp",
    "received_at",
    "channel",
    "session_id",
    "stage",
    "properties",
)
_TIMELINE_SELECT = (
    "SELECT message_id, type, event, timestamp, received_at, channel, session_id, stage, "
    "properties::text AS properties FROM journey_events"
)


def _timeline_page(
    args: list[object],
    *,
    customer: str,
    limit: int,
    after: tuple[datetime, str] | None,
    since: datetime | None,
    until: datetime | None,
    descending: bool,
) -> str:
    """The page query of one customer (`customer`: an SQL expression); appends its parameters
    to `args`, whose first is the workspace id."""
    op, order = ("<", "DESC") if descending else (">", "ASC")
    clauses = ["workspace_id = $1", f"customer_id = {customer}"]
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
    return (
        f"{_TIMELINE_SELECT} WHERE {' AND '.join(clauses)} "
        f"ORDER BY timestamp {order}, message_id {order} LIMIT ${len(args)}"
    )


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
    """One page of a customer's events in event-time order (columns: TIMELINE_COLUMNS)."""
    args: list[object] = [workspace_id, customer_id]
    sql = _timeline_page(
        args,
        customer="$2",
        limit=limit,
        after=after,
        since=since,
        until=until,
        descending=descending,
    )
    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


async def timeline_by_identity(
    conn: asyncpg.Connection,
    workspace_id: int,
    kind: str,
    value: str,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    since: datetime | None,
    until: datetime | None,
    descending: bool,
) -> list[asyncpg.Record]:
    """An identifier's customer and one page of its events in one round trip: TIMELINE_COLUMNS
    then `customer_id`, `shared_device`; no row for an unknown identifier, one row with a null
    `message_id` for a customer without events in the page."""
    args: list[object] = [workspace_id, kind, value]
    page = _timeline_page(
        args,
        customer="i.customer_id",
        limit=limit,
        after=after,
        since=since,
        until=until,
        descending=descending,
    )
    order = "DESC" if descending else "ASC"
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT e.*, i.customer_id AS customer_id, i.shared_device FROM identities i "
        f"LEFT JOIN LATERAL ({page}) e ON true "
        "WHERE i.workspace_id = $1 AND i.kind = $2 AND i.value = $3 "
        f"ORDER BY e.timestamp {order}, e.message_id {order}",
        *args,
    )
    return rows
