"""What webhooks send and how (pure): event types, the envelope, signatures, retry timing.

Knows nothing of the database or the web framework (a test parses its imports to keep it so).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

STAGE_CHANGED: Final = "stage.changed"
IDENTITY_MERGED: Final = "identity.merged"
CUSTOMER_DELETED: Final = "customer.deleted"
EVENT_TYPES: Final = (STAGE_CHANGED, IDENTITY_MERGED, CUSTOMER_DELETED)

SIGNATURE_HEADER: Final = "Journeys-Signature"
EVENT_ID_HEADER: Final = "Journeys-Event-Id"
EVENT_TYPE_HEADER: Final = "Journeys-Event-Type"

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def event_id(event_number: int) -> str:
    """The public id of an outbox event (`Journeys-Event-Id`), stable across retries."""
    return f"evt_{event_number}"


def envelope(
    *, event_number: int, event_type: str, created_at: datetime, data: Mapping[str, Any]
) -> bytes:
    """The JSON body POSTed for an event: the same bytes for every webhook and attempt."""
    return orjson.dumps(
        {
            "id": event_id(event_number),
            "type": event_type,
            "created_at": created_at,
            "data": data,
        }
    )


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `f"{timestamp}.{body}"` with the webhook's secret."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """`Journeys-Signature: t=<unix seconds>,v1=<hex>` (Stripe's scheme)."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300.0) -> bool:
    """What a receiver does: the header parses, one `v1` matches, and `t` is recent."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry timing: `base` seconds doubling per failure up to `cap`, with jitter (the
    delivery is given up, in SQL, when the next attempt would fall past the horizon)."""

    base: float = 10.0
    cap: float = 3600.0

    def delay(self, attempts: int, jitter: float) -> float:
        """Seconds before the next attempt after `attempts` failed ones: base, 2 base, 4 base
        … up to `cap`, each ±20 % by `jitter` in [0, 1) (so the retries of many deliveries
        that failed together do not all hit a receiver coming back up at the same instant)."""
        exponent = min(max(attempts - 1, 0), 60)
        nominal = min(self.base * 2.0**exponent, self.cap)
        return nominal * (0.8 + 0.4 * jitter)
