"""Answering "who is this, and where are they now?" for any identifier of a customer."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from app.core.errors import ProblemError
from app.identity import repository as ids
from app.identity.graph import ANONYMOUS_ID, EMAIL, Identifier
from app.journeys.model import normalise_email
from app.profiles import repository as profiles

CUSTOMER_ID = "customer_id"


def parse_identifier(text: str) -> Identifier:
    """`kind:value` from the path; emails are compared trimmed and lower-cased."""
    try:
        ident = Identifier.parse(text)
    except ValueError:
        raise ProblemError(
            400,
            "invalid_identifier",
            f"{text[:100]!r} is not an identifier of the form kind:value "
            "(user_id, anonymous_id, email, customer_id or an external id type)",
            field="id",
        ) from None
    kind = ident.kind.strip().lower()
    value = ident.value
    if kind == EMAIL:
        value = normalise_email(value) or value.strip().lower()
    return Identifier(kind, value)


async def resolve_customer(
    conn: asyncpg.Connection, workspace_id: int, text: str, *, require_profile: bool = False
) -> str:
    """The customer an identifier belongs to: 404 if unknown, 409 for a shared device. With
    `require_profile` (the read routes), also 404 when that customer has no profile: an
    identifier an unmerge left without events. Unmerge and deletion still reach it.

    `customer_id:…` is the Journeys customer id or, when no customer has that id, an external
    id of type `customer_id` (the contract allows any `context.externalIds` type)."""
    ident = parse_identifier(text)
    if ident.kind == CUSTOMER_ID and await profiles.customer_exists(
        conn, workspace_id, ident.value
    ):
        return ident.value
    row = await profiles.find_identity(conn, workspace_id, ident.kind, ident.value)
    if row is None:
        raise _not_found(text)
    if row["shared_device"] and ident.kind == ANONYMOUS_ID:
        customers = await profiles.device_customers(conn, workspace_id, ident.value)
        raise ProblemError(
            409,
            "shared_device",
            f"{ident} is a shared device used by {len(customers)} customers; "
            "ask by one of their own identifiers",
            extra={"customer_ids": customers},
        )
    if require_profile and not row["has_profile"]:
        raise _not_found(text)
    return str(row["customer_id"])


def _not_found(text: str) -> ProblemError:
    return ProblemError(404, "profile_not_found", f"no customer has the identifier {text[:200]}")


async def profile(conn: asyncpg.Connection, workspace_id: int, text: str) -> dict[str, Any]:
    """The customer's summary and identifiers."""
    customer_id = await resolve_customer(conn, workspace_id, text)
    row = await profiles.customer(conn, workspace_id, customer_id)
    if row is None:
        raise _not_found(text)
    idents = await profiles.identifiers(conn, workspace_id, customer_id)
    return {
        "customer_id": customer_id,
        "identifiers": [{"kind": r["kind"], "value": r["value"]} for r in idents],
        "traits": row["traits"],
        "stage": row["stage"],
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "event_count": row["event_count"],
    }


async def stage(conn: asyncpg.Connection, workspace_id: int, text: str) -> dict[str, Any]:
    """The customer's current stage and when each stage was entered."""
    ident = parse_identifier(text)
    row = None
    if ident.kind == CUSTOMER_ID:
        row = await profiles.stage_of_customer(conn, workspace_id, ident.value)
    if row is None:  # an identity (external ids of type `customer_id` included)
        row = await profiles.stage_by_identity(conn, workspace_id, ident.kind, ident.value)
        if row is None or row["shared_device"] or row["stage_history"] is None:
            # Misses, shared devices and identities without a customer row take the general
            # path (its 404 and 409 answers).
            customer_id = await resolve_customer(conn, workspace_id, text)
            row = await profiles.stage_of_customer(conn, workspace_id, customer_id)
            if row is None:
                raise _not_found(text)
    return {
        "customer_id": row["customer_id"],
        "stage": row["stage"],
        "entered_at": row["stage_entered_at"],
        # Stored JSON goes out as it is: no decode and re-encode on the hot path.
        "stage_history": orjson.Fragment(row["stage_history"]),
    }


def encode_cursor(timestamp: datetime, message_id: str) -> str:
    """An opaque cursor for the next page."""
    raw = orjson.dumps([timestamp.isoformat(), message_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; 400 for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, message_id = orjson.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(ts), str(message_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ProblemError(
            400, "invalid_cursor", "cursor is not one this API returned", field="cursor"
        ) from None


async def timeline(
    conn: asyncpg.Connection,
    workspace_id: int,
    text: str,
    *,
    limit: int,
    cursor: str | None,
    since: datetime | None,
    until: datetime | None,
    order: str,
) -> dict[str, Any]:
    """A page of the customer's events with sessions, channels and stages."""
    ident = parse_identifier(text)
    descending = order == "desc"
    after = None
    fast = ident.kind != CUSTOMER_ID
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ProblemError:
            fast = False  # the general path answers an unknown identifier's 404 first
    if fast:
        # One round trip for the identifier and the page (the general path takes 2).
        rows = await profiles.timeline_by_identity(
            conn,
            workspace_id,
            ident.kind,
            ident.value,
            limit=limit + 1,
            after=after,
            since=since,
            until=until,
            descending=descending,
        )
        if (
            rows
            and rows[0]["message_id"] is not None
            and not (rows[0]["shared_device"] and ident.kind == ANONYMOUS_ID)
        ):
            return _page(str(rows[0]["customer_id"]), rows, limit)
    # Customer ids, shared devices, misses, bad cursors and empty pages (the customer may
    # have no profile at all): the general path (404/409/400).
    customer_id = await resolve_customer(conn, workspace_id, text, require_profile=True)
    rows = await profiles.timeline(
        conn,
        workspace_id,
        customer_id,
        limit=limit + 1,
        after=decode_cursor(cursor) if cursor else None,
        since=since,
        until=until,
        descending=descending,
    )
    return _page(customer_id, rows, limit)


_EVENT_KEYS = profiles.TIMELINE_COLUMNS[:-1]


def _page(customer_id: str, rows: list[asyncpg.Record], limit: int) -> dict[str, Any]:
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["timestamp"], page[-1]["message_id"]) if len(rows) > limit else None
    )
    events = []
    for r in page:
        # Rows start with TIMELINE_COLUMNS; zip stops before any column after them.
        event = dict(zip(_EVENT_KEYS, r.values(), strict=False))
        properties = r["properties"]
        event["properties"] = orjson.Fragment(properties) if properties else None
        events.append(event)
    return {"customer_id": customer_id, "events": events, "next_cursor": next_cursor}


async def identities(conn: asyncpg.Connection, workspace_id: int, text: str) -> dict[str, Any]:
    """The customer's identifiers and every ledger decision that concerns them."""
    customer_id = await resolve_customer(conn, workspace_id, text, require_profile=True)
    idents = await profiles.identifiers(conn, workspace_id, customer_id)
    mine = {f"{r['kind']}:{r['value']}" for r in idents}
    clusters = sorted({r["cluster_id"] for r in idents})
    ledger = [
        {
            "at": r["at"],
            "message_id": r["message_id"],
            "action": r["action"],
            "rule": r["rule"],
            "identifiers": r["identifiers"],
            "into": r["into"],
            "reason": r["reason"],
        }
        for r in await ids.ledger_for(conn, workspace_id, clusters)
        if r["into"] == customer_id or mine.intersection(r["identifiers"])
    ]
    return {
        "customer_id": customer_id,
        "identifiers": [
            {"kind": r["kind"], "value": r["value"], "first_seen": r["first_seen"]} for r in idents
        ],
        "ledger": ledger,
    }
