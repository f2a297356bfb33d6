"""SQL of webhooks: subscriptions, the delivery log, and the delivery loop's claims."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

MAX_WEBHOOKS_PER_WORKSPACE = 20
LOG_RETENTION_DAYS = 30

_PUBLIC_COLUMNS = "id, url, events, created_at"


async def create_webhook(
    conn: asyncpg.Connection, workspace_id: int, *, url: str, events: Sequence[str], secret: str
) -> asyncpg.Record | None:
    """Insert a subscription; None when the workspace has the maximum already."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO webhooks (workspace_id, url, events, secret) "
        "SELECT $1, $2, $3, $4 "
        "WHERE (SELECT count(*) FROM webhooks WHERE workspace_id = $1) < $5 "
        f"RETURNING {_PUBLIC_COLUMNS}",
        workspace_id,
        url,
        list(events),
        secret,
        MAX_WEBHOOKS_PER_WORKSPACE,
    )
    return row


async def list_webhooks(conn: asyncpg.Connection, workspace_id: int) -> list[asyncpg.Record]:
    """The workspace's subscriptions, oldest first (no secrets)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_PUBLIC_COLUMNS} FROM webhooks WHERE workspace_id = $1 ORDER BY id",
        workspace_id,
    )
    return rows


async def webhook_exists(conn: asyncpg.Connection, workspace_id: int, webhook_id: int) -> bool:
    """Whether the workspace has this webhook."""
    found = await conn.fetchval(
        "SELECT 1 FROM webhooks WHERE workspace_id = $1 AND id = $2", workspace_id, webhook_id
    )
    return found is not None


async def delete_webhook(conn: asyncpg.Connection, workspace_id: int, webhook_id: int) -> bool:
    """Remove a subscription and its deliveries (pending ones are not sent); False if unknown."""
    deleted = await conn.fetchval(
        "DELETE FROM webhooks WHERE workspace_id = $1 AND id = $2 RETURNING id",
        workspace_id,
        webhook_id,
    )
    if deleted is None:
        return False
    await conn.execute(
        "DELETE FROM webhook_deliveries WHERE workspace_id = $1 AND webhook_id = $2",
        workspace_id,
        webhook_id,
    )
    return True


async def deliveries(
    conn: asyncpg.Connection,
    workspace_id: int,
    webhook_id: int,
    *,
    limit: int,
    before: int | None,
    status: str | None,
) -> list[asyncpg.Record]:
    """One page of a webhook's delivery log, newest event first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT d.event_id, e.type, d.customer_id, d.status, d.attempts, d.last_status_code,
            d.last_error, d.next_attempt_at, d.delivered_at, d.created_at
        FROM webhook_deliveries d
        JOIN webhook_events e ON e.workspace_id = d.workspace_id AND e.id = d.event_id
        WHERE d.workspace_id = $1 AND d.webhook_id = $2
          AND ($3::int8 IS NULL OR d.event_id < $3) AND ($4::text IS NULL OR d.status = $4)
        ORDER BY d.event_id DESC
        LIMIT $5
        """,
        workspace_id,
        webhook_id,
        before,
        status,
        limit,
    )
    return rows


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery, with all that is needed to send it."""

    workspace_id: int
    webhook_id: int
    event_id: int
    attempts: int  # including the one about to be made
    url: str
    secret: str
    type: str
    data: dict[str, Any]
    event_created_at: datetime


async def claim_due(
    conn: asyncpg.Connection, *, limit: int, lease_seconds: float
) -> list[DueDelivery]:
    """Claim up to `limit` due deliveries. Only the oldest pending delivery of a (webhook,
    customer) is ever due (the others wait with no next attempt), so a customer's events go out
    in order; the NOT EXISTS keeps it so even if that were ever broken. Claiming counts the
    attempt and moves `next_attempt_at` past the lease, so a sender that dies is replaced once
    it expires; `SKIP LOCKED` lets several processes claim side by side."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT d.workspace_id, d.webhook_id, d.event_id
            FROM webhook_deliveries d
            WHERE d.status = 'pending' AND d.next_attempt_at IS NOT NULL
              AND d.next_attempt_at <= now()
              AND NOT EXISTS (
                SELECT 1 FROM webhook_deliveries p
                WHERE p.workspace_id = d.workspace_id AND p.webhook_id = d.webhook_id
                  AND p.customer_id = d.customer_id AND p.status = 'pending'
                  AND p.event_id < d.event_id)
            ORDER BY d.next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
        FROM due, webhooks w, webhook_events e
        WHERE d.workspace_id = due.workspace_id AND d.webhook_id = due.webhook_id
          AND d.event_id = due.event_id
          AND w.workspace_id = d.workspace_id AND w.id = d.webhook_id
          AND e.workspace_id = d.workspace_id AND e.id = d.event_id
        RETURNING d.workspace_id, d.webhook_id, d.event_id, d.attempts, w.url, w.secret,
            e.type, e.data, e.created_at AS event_created_at
        """,
        limit,
        lease_seconds,
    )
    return [
        DueDelivery(
            workspace_id=r["workspace_id"],
            webhook_id=r["webhook_id"],
            event_id=r["event_id"],
            attempts=r["attempts"],
            url=r["url"],
            secret=r["secret"],
            type=r["type"],
            data=r["data"],
            event_created_at=r["event_created_at"],
        )
        for r in rows
    ]


async def record_attempt(
    conn: asyncpg.Connection,
    due: DueDelivery,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    retry_in: float,
    give_up_seconds: float,
) -> str | None:
    """Record an attempt's outcome; the status after it (`delivered`, `pending` for a retry in
    `retry_in` seconds, or `failed` when that retry would fall past the give-up horizon), or
    None when the delivery is gone (its webhook was deleted) or was settled meanwhile. A
    settled delivery releases the next pending one of its customer, in the same transaction."""
    async with conn.transaction():
        settled = await conn.fetchrow(
            """
            UPDATE webhook_deliveries SET
                last_status_code = $4,
                last_error = $5,
                status = CASE
                    WHEN $6::boolean THEN 'delivered'
                    WHEN now() + make_interval(secs => $7) > created_at + make_interval(secs => $8)
                        THEN 'failed'
                    ELSE 'pending' END,
                delivered_at = CASE WHEN $6::boolean THEN now() END,
                next_attempt_at = CASE WHEN $6::boolean THEN next_attempt_at
                    ELSE now() + make_interval(secs => $7) END
            WHERE workspace_id = $1 AND webhook_id = $2 AND event_id = $3 AND status = 'pending'
            RETURNING status, customer_id
            """,
            due.workspace_id,
            due.webhook_id,
            due.event_id,
            status_code,
            error,
            delivered,
            retry_in,
            give_up_seconds,
        )
        if settled is None:
            return None
        if settled["status"] != "pending":
            await conn.execute(
                """
                UPDATE webhook_deliveries SET next_attempt_at = now()
                WHERE workspace_id = $1 AND webhook_id = $2 AND next_attempt_at IS NULL
                  AND event_id = (
                    SELECT event_id FROM webhook_deliveries
                    WHERE workspace_id = $1 AND webhook_id = $2 AND customer_id = $3
                      AND status = 'pending'
                    ORDER BY event_id LIMIT 1)
                """,
                due.workspace_id,
                due.webhook_id,
                settled["customer_id"],
            )
        status: str = settled["status"]
        return status


async def backlog(conn: asyncpg.Connection) -> int:
    """Deliveries pending, all workspaces (read off the partial index of pending rows)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
    )
    return count


async def prune(conn: asyncpg.Connection, *, days: int = LOG_RETENTION_DAYS) -> int:
    """Forget settled deliveries and their events older than `days`; returns rows removed."""
    removed = await conn.fetchval(
        """
        WITH d AS (
            DELETE FROM webhook_deliveries
            WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)
            RETURNING 1
        ), e AS (
            DELETE FROM webhook_events e
            WHERE e.created_at < now() - make_interval(days => $1)
              AND NOT EXISTS (
                SELECT 1 FROM webhook_deliveries p
                WHERE p.workspace_id = e.workspace_id AND p.event_id = e.id
                  AND p.status = 'pending')
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM e)
        """,
        days,
    )
    return int(removed or 0)
