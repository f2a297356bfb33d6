"""SQL of the profiles export: customers in primary-key order, a chunk at a time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

_SEEN = (
    "($2::timestamptz IS NULL OR last_seen >= $2) AND ($3::timestamptz IS NULL OR first_seen < $3)"
)


async def count_customers(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    seen_from: datetime | None,
    seen_before: datetime | None,
) -> int:
    """How many customers the export will hold."""
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM customers WHERE workspace_id = $1 AND {_SEEN}",
        workspace_id,
        seen_from,
        seen_before,
    )
    return count


async def customers_after(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    after: str,
    limit: int,
    seen_from: datetime | None,
    seen_before: datetime | None,
) -> list[asyncpg.Record]:
    """The next `limit` customers after the customer id `after` (keyset on the primary key)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT customer_id, stage, stage_entered_at, first_seen, last_seen, event_count, traits "
        f"FROM customers WHERE workspace_id = $1 AND {_SEEN} AND customer_id > $4 "
        "ORDER BY customer_id LIMIT $5",
        workspace_id,
        seen_from,
        seen_before,
        after,
        limit,
    )
    return rows


async def identifiers_of(
    conn: asyncpg.Connection, workspace_id: int, customer_ids: Sequence[str]
) -> dict[str, list[str]]:
    """Each customer's identifiers `kind:value`, oldest first (as the profile API lists them)."""
    rows = await conn.fetch(
        "SELECT customer_id, array_agg(kind || ':' || value ORDER BY first_seen, kind, value) "
        "AS identifiers FROM identities "
        "WHERE workspace_id = $1 AND customer_id = ANY($2::text[]) GROUP BY customer_id",
        workspace_id,
        list(customer_ids),
    )
    return {r["customer_id"]: list(r["identifiers"]) for r in rows}
