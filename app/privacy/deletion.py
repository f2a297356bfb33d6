"""Deleting a customer (GDPR erasure): a request suppresses its identifiers at once and queues
a `delete_customer` job; the job removes its events in chunks, then its identity state, and
takes its contribution out of the rollups.

Every step runs under the shard's progress lock (the stitcher's own serialisation), and every
step is idempotent: a crash, a retry or a second worker at any point leads to the same end.
Suppression is what makes it race-free: once an identifier is suppressed, the stitcher drops
every event carrying it (app/privacy/screen.py), so no new event can join the customer while
its rows are being removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from app.identity import repository as ids
from app.identity.graph import ANONYMOUS_ID, USER_ID, Identifier, affected_identifiers
from app.journeys import jobs
from app.journeys import repository as journeys
from app.journeys.model import from_payload
from app.journeys.stages import JourneyModel
from app.journeys.stitch import FLAG_BOT, WorkspaceStitcher
from app.privacy import repository as privacy
from app.privacy.screen import identifier_hash
from app.profiles import repository as profiles
from app.profiles.service import resolve_customer
from app.webhooks import outbox as webhook_outbox

# Events removed per transaction: keeps each lock on the shard short.
EVENT_CHUNK = 5_000
TAIL_PAGE = 5_000
MAX_ATTEMPTS = 3


async def erasable_identifiers(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> list[ids.IdentityRow]:
    """The customer's identifiers, except a shared device's anonymous id that other customers
    still use: that one identifies a family computer, not this person, and erasing it would
    drop the other customers' events from that device."""
    rows = await ids.identities_of_customer(conn, workspace_id, customer_id)
    kept: list[ids.IdentityRow] = []
    for row in rows:
        if row.shared_device and row.ident.kind == ANONYMOUS_ID:
            users = await profiles.device_customers(conn, workspace_id, row.ident.value)
            if any(c != customer_id for c in users):
                continue
        kept.append(row)
    return kept


async def request_deletion(
    conn: asyncpg.Connection, workspace_id: int, text: str, *, key_id: int | None
) -> asyncpg.Record:
    """Resolve `kind:value` to its customer (404/409 as the profile API), suppress its
    identifiers and queue the job; a deletion of the same customer already under way is
    answered with that job."""
    async with conn.transaction():
        await journeys.lock_progress(conn, workspace_id % journeys.SHARDS)
        customer_id = await resolve_customer(conn, workspace_id, text)
        running = await privacy.open_deletion_of(conn, workspace_id, customer_id)
        if running is not None:
            return running
        total = await privacy.customer_event_count(conn, workspace_id, customer_id)
        job = await jobs.enqueue(conn, workspace_id, jobs.DELETE_CUSTOMER, total=total)
        await privacy.insert_deletion(
            conn, workspace_id, job_id=job["id"], customer_id=customer_id, key_id=key_id
        )
        await _suppress(conn, workspace_id, job["id"], customer_id)
    return job


async def _suppress(
    conn: asyncpg.Connection, workspace_id: int, job_id: int, customer_id: str
) -> list[ids.IdentityRow]:
    rows = await erasable_identifiers(conn, workspace_id, customer_id)
    hashes = [identifier_hash(r.ident) for r in rows]
    await privacy.suppress(conn, workspace_id, hashes, job_id)
    await privacy.add_identifier_hashes(conn, workspace_id, job_id, hashes)
    return rows


async def run_chunk(conn: asyncpg.Connection, job: Mapping[str, Any], model: JourneyModel) -> None:
    """One step of a deletion job, inside the caller's transaction and shard lock: a chunk of
    the customer's events; once none is left, the final step."""
    workspace_id, job_id = job["workspace_id"], job["id"]
    entry = await privacy.deletion(conn, workspace_id, job_id)
    if entry is None:
        raise LookupError(f"deletion job {job_id} has no ledger entry")
    customer_id = entry["customer_id"]
    # Again, under this lock: cheap, idempotent, and covers anything stitched since the request.
    rows = await _suppress(conn, workspace_id, job_id, customer_id)
    message_ids = await privacy.customer_message_ids(
        conn,
        workspace_id,
        customer_id,
        user_ids=[r.ident.value for r in rows if r.ident.kind == USER_ID],
        anonymous_ids=[r.ident.value for r in rows if r.ident.kind == ANONYMOUS_ID],
        limit=EVENT_CHUNK,
    )
    if message_ids:
        removed = await privacy.delete_events(conn, workspace_id, message_ids)
        await privacy.count_progress(conn, workspace_id, job_id, removed)
        return
    removed = await _remove_unstitched(conn, workspace_id, {r.ident for r in rows})
    await _forget_identities(conn, workspace_id, customer_id, rows, model)
    await privacy.count_progress(conn, workspace_id, job_id, removed)
    await privacy.finish_deletion(conn, workspace_id, job_id)
    await webhook_outbox.record_customer_deleted(
        conn, workspace_id, customer_id, job_id=job_id, identifiers=[str(r.ident) for r in rows]
    )


def _carries(record: Mapping[str, Any], idents: set[Identifier]) -> bool:
    """Whether a raw event carries one of the identifiers (its columns, else its payload)."""
    if record["user_id"] is not None and Identifier(USER_ID, record["user_id"]) in idents:
        return True
    if (
        record["anonymous_id"] is not None
        and Identifier(ANONYMOUS_ID, record["anonymous_id"]) in idents
    ):
        return True
    try:
        e = from_payload(
            record["payload"],
            timestamp=record["timestamp"],
            is_bot=bool(record["flags"] & FLAG_BOT),
        )
    except (ValueError, TypeError, AttributeError):
        return False  # unparsable: its columns were all there is to go on
    return not affected_identifiers(e).isdisjoint(idents)


async def _remove_unstitched(
    conn: asyncpg.Connection, workspace_id: int, idents: set[Identifier]
) -> int:
    """Raw events carrying the identifiers that the stitcher has not reached yet, or set
    aside as failures; returns how many were removed."""
    if not idents:
        return 0
    shard = workspace_id % journeys.SHARDS
    after = await journeys.lock_progress(conn, shard)
    doomed: list[str] = []
    while True:
        page = await privacy.unstitched_events(
            conn, workspace_id, shard=shard, after=after, limit=TAIL_PAGE
        )
        doomed += [r["message_id"] for r in page if _carries(r, idents)]
        if len(page) < TAIL_PAGE:
            break
        after = (page[-1]["tx"], page[-1]["seq"])
    doomed += [
        r["message_id"]
        for r in await privacy.set_aside_events(conn, workspace_id)
        if _carries(r, idents)
    ]
    return await privacy.delete_events(conn, workspace_id, doomed)


async def _forget_identities(
    conn: asyncpg.Connection,
    workspace_id: int,
    customer_id: str,
    rows: Iterable[ids.IdentityRow],
    model: JourneyModel,
) -> None:
    """Remove identifiers, their evidence and ledger; re-resolve what remains of their
    clusters (other customers); recompute the customer, which, with no event left, takes its
    contribution out of the rollups and deletes its stage entries and summary."""
    rows = list(rows)
    idents = [r.ident for r in rows]
    await privacy.delete_identity_evidence(conn, workspace_id, idents)
    await ids.delete_identities(conn, workspace_id, idents)
    stitcher = WorkspaceStitcher(conn, workspace_id, model)
    await stitcher.restitch(sorted({r.cluster_id for r in rows}))
    await stitcher.recompute_customers([customer_id])


async def record_failure(
    conn: asyncpg.Connection, job: Mapping[str, Any], exc: BaseException
) -> None:
    """A step failed (and was rolled back): count it; fail the job after MAX_ATTEMPTS."""
    await privacy.record_attempt_failed(
        conn, job["workspace_id"], job["id"], repr(exc)[:2000], max_attempts=MAX_ATTEMPTS
    )


def deletion_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of a deletion: status and counts, identifiers only as hashes."""
    return {
        "job_id": row["job_id"],
        "status": row["status"],
        "deleted_events": row["deleted_events"],
        "identifiers": row["deleted_identifiers"],
        "identifier_hashes": [bytes(h).hex() for h in row["identifier_hashes"]],
        "requested_at": row["requested_at"],
        "finished_at": row["finished_at"],
        "error": row["error"],
    }
