"""Export (GDPR access and portability): everything held about a customer, as one JSON document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.core.errors import ProblemError
from app.identity import repository as ids
from app.privacy import repository as privacy
from app.profiles import service as profiles
from app.profiles.service import resolve_customer

EXPORT_VERSION = 1


def _fragment(text: str | None) -> Any:
    """Stored JSON passed through as it is (no decode and re-encode)."""
    return orjson.Fragment(text) if text is not None else None


async def export_customer(conn: asyncpg.Connection, workspace_id: int, text: str) -> dict[str, Any]:
    """The profile, identifiers, identity ledger, timeline (with properties and traits) and the
    raw events of the customer `text` names; 404/409 as the profile API. Run it in one
    repeatable-read transaction for a consistent document."""
    customer_id = await resolve_customer(conn, workspace_id, text)
    customer = await privacy.export_customer(conn, workspace_id, customer_id)
    if customer is None:
        raise ProblemError(404, "profile_not_found", f"no customer has the identifier {text[:200]}")
    identities = await ids.identities_of_customer(conn, workspace_id, customer_id)
    ledger = (await profiles.identities(conn, workspace_id, text))["ledger"]
    timeline = await privacy.export_timeline(conn, workspace_id, customer_id)
    raw = await privacy.export_raw_events(conn, workspace_id, [r["message_id"] for r in timeline])
    return {
        "export_version": EXPORT_VERSION,
        "exported_at": datetime.now(UTC),
        "customer_id": customer_id,
        "profile": {
            "customer_id": customer_id,
            "stage": customer["stage"],
            "stage_entered_at": customer["stage_entered_at"],
            "stage_history": _fragment(customer["stage_history"]),
            "traits": _fragment(customer["traits"]),
            "breakdowns": _fragment(customer["dims"]),
            "first_seen": customer["first_seen"],
            "last_seen": customer["last_seen"],
            "event_count": customer["event_count"],
            "updated_at": customer["updated_at"],
        },
        "identifiers": [
            {
                "kind": r.ident.kind,
                "value": r.ident.value,
                "first_seen": r.first_seen,
                "first_message_id": r.first_message_id or None,
                "shared_device": r.shared_device,
            }
            for r in identities
        ],
        "ledger": ledger,
        "timeline": [
            {
                "message_id": r["message_id"],
                "type": r["type"],
                "event": r["event"],
                "timestamp": r["timestamp"],
                "received_at": r["received_at"],
                "user_id": r["user_id"],
                "anonymous_id": r["anonymous_id"],
                "trait_identifier": r["trait_identifier"],
                "channel": r["channel"],
                "source_channel": r["source_channel"],
                "session_id": r["session_id"],
                "stage": r["stage"],
                "flags": r["flags"],
                "properties": _fragment(r["properties"]),
                "traits": _fragment(r["traits"]),
                "campaign": _fragment(r["campaign"]),
            }
            for r in timeline
        ],
        "raw_events": [
            {
                "message_id": r["message_id"],
                "received_at": r["received_at"],
                "received_week": r["received_week"],
                "payload": _fragment(r["payload"]),
            }
            for r in raw
        ],
    }
