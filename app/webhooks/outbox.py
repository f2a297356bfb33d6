"""Webhook events, written in the transaction of the change they describe.

Stitching calls `record_merges` and `record_stage_changes`, the deletion job
`record_customer_deleted`, each inside its own transaction: an event exists if and only if its
change committed. A workspace with no webhook subscribed to a type pays one cached set lookup
per batch for it; nothing is read or written.

All writers of one workspace hold its stitch shard's lock (the stitcher, jobs, unmerge) and
event ids come from an uncached sequence, so a workspace's event ids grow in the order the
changes committed: the delivery loop's "in order per customer" is the id order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.identity.graph import LINKED, MERGED, Identifier, LedgerEntry, Resolution
from app.journeys.repository import CustomerRow
from app.webhooks.protocol import CUSTOMER_DELETED, IDENTITY_MERGED, STAGE_CHANGED

# A webhook registered through another process is seen by stitchers within this time.
SUBSCRIPTION_CACHE_SECONDS = 2.0


class _Subscriptions:
    """Per workspace, the event types some webhook subscribes to (briefly cached)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[float, frozenset[str]]] = {}

    async def get(self, conn: asyncpg.Connection, workspace_id: int) -> frozenset[str]:
        now = time.monotonic()
        hit = self.entries.get(workspace_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        types = await conn.fetchval(
            "SELECT coalesce(array_agg(DISTINCT t), '{}') FROM webhooks, unnest(events) t "
            "WHERE workspace_id = $1",
            workspace_id,
        )
        found = frozenset(types)
        self.entries[workspace_id] = (now + SUBSCRIPTION_CACHE_SECONDS, found)
        return found

    def forget(self, workspace_id: int) -> None:
        self.entries.pop(workspace_id, None)


_subscriptions = _Subscriptions()


async def subscribed(conn: asyncpg.Connection, workspace_id: int) -> frozenset[str]:
    """The event types some webhook of the workspace subscribes to."""
    return await _subscriptions.get(conn, workspace_id)


def forget(workspace_id: int) -> None:
    """The workspace's webhooks changed (in this process): read them again next time."""
    _subscriptions.forget(workspace_id)


async def write_events(
    conn: asyncpg.Connection, workspace_id: int, events: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """Append (type, customer_id, data) events, in order, with a delivery for every webhook
    subscribed to each type. A delivery is due at once only when nothing of its customer is
    pending for that webhook; else it waits (no next attempt) until the one before it settles
    (repository.record_attempt releases it). The newest pending delivery of the customer is
    locked while we look, so it cannot settle unseen and leave the new one waiting for ever."""
    if not events:
        return
    await conn.execute(
        """
        WITH new AS (
            INSERT INTO webhook_events (workspace_id, type, customer_id, data)
            SELECT $1, t, c, d FROM unnest($2::text[], $3::text[], $4::jsonb[])
                WITH ORDINALITY AS x(t, c, d, n)
            ORDER BY n
            RETURNING id, type, customer_id
        ), fanned AS (
            SELECT w.id AS webhook_id, new.id AS event_id, new.customer_id,
                row_number() OVER (PARTITION BY w.id, new.customer_id ORDER BY new.id) AS nth
            FROM new JOIN webhooks w ON w.workspace_id = $1 AND new.type = ANY(w.events)
        ), queued AS (
            SELECT f.webhook_id, f.customer_id
            FROM fanned f CROSS JOIN LATERAL (
                SELECT 1 FROM webhook_deliveries d
                WHERE d.workspace_id = $1 AND d.webhook_id = f.webhook_id
                  AND d.customer_id = f.customer_id AND d.status = 'pending'
                ORDER BY d.event_id DESC LIMIT 1
                FOR SHARE
            ) newest
            WHERE f.nth = 1
        )
        INSERT INTO webhook_deliveries
            (workspace_id, webhook_id, event_id, customer_id, next_attempt_at)
        SELECT $1, f.webhook_id, f.event_id, f.customer_id,
            CASE WHEN f.nth = 1 AND q.webhook_id IS NULL THEN now() END
        FROM fanned f
        LEFT JOIN queued q ON q.webhook_id = f.webhook_id AND q.customer_id = f.customer_id
        """,
        workspace_id,
        [t for t, _, _ in events],
        [c for _, c, _ in events],
        [orjson.dumps(d).decode() for _, _, d in events],
    )


async def record_stage_changes(
    conn: asyncpg.Connection, workspace_id: int, summaries: Sequence[CustomerRow]
) -> None:
    """`stage.changed` for each customer whose current stage differs from the stored one;
    call before the summaries are written. A new customer changes from `null`."""
    if not summaries or STAGE_CHANGED not in await subscribed(conn, workspace_id):
        return
    rows = await conn.fetch(
        "SELECT customer_id, stage FROM customers "
        "WHERE workspace_id = $1 AND customer_id = ANY($2::text[])",
        workspace_id,
        [s.customer_id for s in summaries],
    )
    before = {r["customer_id"]: r["stage"] for r in rows}
    events: list[tuple[str, str, dict[str, Any]]] = []
    for s in summaries:
        old = before.get(s.customer_id)
        if s.stage == old:
            continue
        moving = s.stage_history[-1] if s.stage_history and s.stage is not None else None
        data = {
            "customer_id": s.customer_id,
            "old_stage": old,
            "new_stage": s.stage,
            "entered_at": s.stage_entered_at,
            "message_id": moving["message_id"] if moving else None,
        }
        events.append((STAGE_CHANGED, s.customer_id, data))
    await write_events(conn, workspace_id, events)


async def record_merges(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    previous: Mapping[Identifier, str],
    ledgers: Mapping[int, Sequence[LedgerEntry]],
    resolutions: Mapping[int, Resolution],
) -> None:
    """`identity.merged` for each linked/merged ledger entry that joins two customers which
    existed before this resolution (`previous`: each stored identifier's customer before it);
    call before the customers are recomputed.

    Each cluster's ledger is replayed in order, each side of an entry carrying the former
    customers its identifiers had so far: an entry whose two sides carry different ones joins
    them. A side with none (identifiers seen for the first time) joins nobody, and an entry
    replayed from an earlier resolution finds both sides in the same customer already."""
    if IDENTITY_MERGED not in await subscribed(conn, workspace_id):
        return
    joins = {
        cluster_id: [e for e in entries if e.action in (MERGED, LINKED) and len(e.identifiers) == 2]
        for cluster_id, entries in ledgers.items()
    }
    former = {
        previous[i]
        for entries in joins.values()
        for e in entries
        for i in e.identifiers
        if i in previous
    }
    if not former:
        return
    existing = {
        r["customer_id"]
        for r in await conn.fetch(
            "SELECT customer_id FROM customers "
            "WHERE workspace_id = $1 AND customer_id = ANY($2::text[])",
            workspace_id,
            sorted(former),
        )
    }
    events: list[tuple[str, str, dict[str, Any]]] = []
    for cluster_id, entries in sorted(joins.items()):
        for entry, merged in _joining(entries, previous=previous, existing=existing):
            now = resolutions[cluster_id].customer_of(entry.identifiers[0])
            if now is None:
                continue
            data = {
                "customer_id": now,
                "merged_customer_ids": sorted(merged),
                "identifiers": [str(i) for i in entry.identifiers],
                "action": entry.action,
                "rule": entry.rule,
                "reason": entry.reason,
                "message_id": entry.message_id,
                "at": entry.at,
            }
            events.append((IDENTITY_MERGED, now, data))
    await write_events(conn, workspace_id, events)


def _joining(
    entries: Sequence[LedgerEntry], *, previous: Mapping[Identifier, str], existing: set[str]
) -> list[tuple[LedgerEntry, frozenset[str]]]:
    """The entries (in ledger order) that join two sides carrying different former customers,
    each with the former customers it joins."""
    parent: dict[Identifier, Identifier] = {}
    carried: dict[Identifier, frozenset[str]] = {}

    def root(ident: Identifier) -> Identifier:
        while parent.get(ident, ident) != ident:
            ident = parent[ident]
        if ident not in carried:
            was = previous.get(ident)
            carried[ident] = frozenset({was} if was in existing else ())
        return ident

    found: list[tuple[LedgerEntry, frozenset[str]]] = []
    for entry in entries:
        ra, rb = root(entry.identifiers[0]), root(entry.identifiers[1])
        if ra == rb:
            continue
        left, right = carried[ra], carried[rb]
        if left and right and left.isdisjoint(right):
            found.append((entry, left | right))
        parent[rb] = ra
        carried[ra] = left | right
    return found


async def record_customer_deleted(
    conn: asyncpg.Connection,
    workspace_id: int,
    customer_id: str,
    *,
    job_id: int,
    identifiers: Sequence[str],
) -> None:
    """`customer.deleted` (the customer id and the job, no personal data); and the erased
    identifiers are struck from earlier `identity.merged` events, sent or not."""
    if identifiers:
        await conn.execute(
            "UPDATE webhook_events SET data = (data - 'identifiers' - 'reason') "
            "|| '{\"redacted\": true}'::jsonb "
            "WHERE workspace_id = $1 AND type = $2 AND data -> 'identifiers' ?| $3::text[]",
            workspace_id,
            IDENTITY_MERGED,
            list(identifiers),
        )
    if CUSTOMER_DELETED not in await subscribed(conn, workspace_id):
        return
    data = {"customer_id": customer_id, "job_id": job_id, "deleted_at": datetime.now(UTC)}
    await write_events(conn, workspace_id, [(CUSTOMER_DELETED, customer_id, data)])
