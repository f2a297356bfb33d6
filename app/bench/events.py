"""Realistic ~700-byte Segment `track` events, shared by every phase of `journeys bench ingest`.

The generator is deterministic (seeded). Each event carries `MESSAGE_ID_PLACEHOLDER` as its
messageId: the COPY phase substitutes ids into the stored payload, the HTTP phases into the
request bodies (the wrk script builds a fresh id per event of every request).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from app.ingest import segment

MESSAGE_ID_PLACEHOLDER: Final = "@@JOURNEYS_MESSAGE_ID@@"

_EVENTS: Final = (
    "Product Viewed",
    "Product Viewed",
    "Product Viewed",
    "Product List Viewed",
    "Products Searched",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Order Completed",
    "Signed Up",
)
_CATEGORIES: Final = ("Shoes", "Jackets", "Backpacks", "Tents", "Socks", "Headlamps")
_CAMPAIGNS: Final = (
    ("google", "cpc", "spring_sale_2024"),
    ("facebook", "paid_social", "retargeting_q2"),
    ("newsletter", "email", "weekly_digest_23"),
    ("instagram", "social", "summer_launch"),
    ("bing", "cpc", "brand_terms"),
)
_REFERRERS: Final = (
    "https://www.google.com/",
    "https://l.facebook.com/",
    "https://mail.example.net/",
    "https://www.instagram.com/",
    "https://www.bing.com/search?q=acme+outdoor",
)
_USER_AGENTS: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(rng: random.Random, now: datetime) -> dict[str, Any]:
    """One analytics.js-style track event (messageId = the placeholder)."""
    name = rng.choice(_EVENTS)
    sku = rng.randrange(10_000, 99_999)
    category = rng.choice(_CATEGORIES)
    source, medium, campaign = rng.choice(_CAMPAIGNS)
    path = f"/products/{category.lower()}/sku-{sku}"
    return {
        "type": "track",
        "event": name,
        "userId": f"user-{rng.randrange(1, 50_000):06d}",
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "messageId": MESSAGE_ID_PLACEHOLDER,
        "timestamp": _iso(now - timedelta(milliseconds=rng.randrange(0, 600_000))),
        "properties": {
            "product_id": f"sku-{sku}",
            "category": category,
            "price": rng.randrange(1_500, 39_900) / 100,
            "currency": "USD",
        },
        "context": {
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "page": {
                "path": path,
                "referrer": rng.choice(_REFERRERS),
                "url": f"https://shop.example.com{path}",
            },
            "userAgent": rng.choice(_USER_AGENTS),
            "campaign": {"source": source, "medium": medium, "name": campaign},
        },
    }


@dataclass(frozen=True, slots=True)
class EventTemplate:
    """An event as the client sends it and as the server stores it, both with the placeholder."""

    wire: bytes  # the client's JSON
    stored: segment.NormalisedEvent  # what the server makes of it (for the COPY baseline)

    def wire_parts(self) -> tuple[str, str]:
        """The client JSON split around the messageId placeholder."""
        before, _, after = self.wire.decode().partition(MESSAGE_ID_PLACEHOLDER)
        return before, after


def make_templates(
    count: int, *, seed: int = 7, now: datetime | None = None
) -> list[EventTemplate]:
    """`count` distinct events; the stored form comes from the server's own normaliser."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    meta = segment.RequestMeta(received_at=now, client_ip="127.0.0.1")
    templates = []
    for _ in range(count):
        event = make_event(rng, now)
        stored = segment.normalise_event(event, type_hint=None, meta=meta)
        templates.append(EventTemplate(wire=orjson.dumps(event), stored=stored))
    return templates


def average_size(templates: list[EventTemplate]) -> float:
    """Mean size of the client JSON of an event, in bytes (with a 40-character messageId)."""
    extra = 40 - len(MESSAGE_ID_PLACEHOLDER)
    return sum(len(t.wire) + extra for t in templates) / max(len(templates), 1)
