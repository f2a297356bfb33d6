"""The stitcher's privacy screen: events that must not be kept are dropped before stitching.

Dropped: an event carrying a suppressed identifier (its customer was deleted), and an event
whose consent preferences explicitly deny the category its workspace requires. Ingest accepted
both with 200 (a client must not learn about either, and must not retry); here their raw rows
are deleted in the stitcher's transaction, so nothing is ever derived from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter

from app.identity.graph import Identifier, affected_identifiers
from app.journeys.model import StitchEvent
from app.privacy import consent
from app.privacy import repository as privacy

SUPPRESSED = "suppressed"
CONSENT = "consent"

EVENTS_DROPPED = Counter(
    "journeys_events_dropped_total",
    "Accepted events dropped before stitching: suppressed identifier or consent denied",
    ["reason"],
)


def identifier_hash(ident: Identifier) -> bytes:
    """How an identifier is kept on the suppression list: SHA-256 of `kind:value`."""
    return hashlib.sha256(str(ident).encode("utf-8")).digest()


async def drop_unwanted(
    conn: asyncpg.Connection,
    workspace_id: int,
    events: Sequence[tuple[asyncpg.Record, StitchEvent]],
) -> set[str]:
    """Message ids of the (raw record, parsed event) pairs to drop; their raw rows are deleted.
    Costs one indexed query per batch (hashing only in a workspace with suppressions), and one
    more when an event denies some consent category."""
    dropped: dict[str, tuple[str, str]] = {}  # parsed message id → (raw message id, reason)
    if await privacy.has_suppressions(conn, workspace_id):
        hashes = {
            e.message_id: {identifier_hash(i) for i in affected_identifiers(e)} for _, e in events
        }
        suppressed = await privacy.suppressed_among(
            conn, workspace_id, (h for group in hashes.values() for h in group)
        )
        for record, e in events:
            if hashes[e.message_id] & suppressed:
                dropped[e.message_id] = (record["message_id"], SUPPRESSED)
    denying = [
        (record, e)
        for record, e in events
        if e.message_id not in dropped and consent.denied_categories(record["payload"])
    ]
    if denying:
        required = await privacy.required_consent_category(conn, workspace_id)
        for record, e in denying:
            if required is not None and consent.denies(record["payload"], required):
                dropped[e.message_id] = (record["message_id"], CONSENT)
    if not dropped:
        return set()
    await privacy.delete_raw_events(conn, workspace_id, [raw for raw, _ in dropped.values()])
    for reason in (SUPPRESSED, CONSENT):
        count = sum(1 for _, r in dropped.values() if r == reason)
        if count:
            EVENTS_DROPPED.labels(reason=reason).inc(count)
    return set(dropped)
