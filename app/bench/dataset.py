"""A large, realistic dataset for `journeys bench stitch` and `journeys bench lookup`, made fast.

How it is made (C customers x E events each, over the last `days` days):

1. **Archetypes** (Python, seeded): K customer journeys (default 2,000) of Segment events as
   analytics.js and a server library send them: anonymous page views arriving from direct,
   search, paid search, social, email and referral visits (UTM campaigns and referrers in the
   context), product list/product views, searches, cart, checkout; ~40% of customers identify
   (userId + anonymousId + email trait), some on a second device; ~15% complete an order, ~30%
   of those more than once; some buyers answer an NPS survey (`Survey Responded` with a score);
   ~1% are heavy customers with 60-150 events (for timeline pages). Every event goes through
   ingest's own normaliser (`segment.normalise_event`), so each stored payload is exactly what
   `/v1/batch` would have stored.
2. **Raw events**, server-side SQL: customer n is archetype `n % K` with its identifiers renamed
   (a customer token inside anonymousId/userId/email/messageId) and its whole journey shifted in
   time by a per-customer offset that keeps it inside the window. Rows are inserted in
   `received_at` order in chunks (one transaction each), so the stitcher's feed (tx, seq) is
   in receipt order with customers interleaved, as live traffic would be. `tx`/`seq` take
   their defaults; weekly partitions are created with `ensure_week_partition`.
3. **Derived state** (only for `kind="full"`, used by the lookup bench): the archetypes are
   stitched by the real `WorkspaceStitcher`, and their identities, links, ledger, customers and
   timeline rows are copied for every customer with the same renaming and time shift. Customer
   ids (`cus_` + sha256 of the oldest identifier) and session ids (`ses_` + sha256 of the first
   message id) are recomputed in SQL; cluster ids are fresh. The stitcher's output only depends
   on identifiers' equality and on event-time order, both preserved, so the copy equals what
   stitching the raw events would produce; `verify_sample` checks that on random customers by
   re-stitching their raw events with the real stitcher and comparing row by row.
4. **Aggregates' derived state** (only for `kind="aggregates"`, used by the aggregates bench:
   "full" plus this): each archetype customer's stored contribution (`customers.facts`), its
   breakdown groups (`dims`) and stage entries are copied the same way. A contribution's
   instants are shifted, and each of its days (the day a stage was entered, or of the first
   event) is recomputed as the UTC day of its shifted instant, which is what `customer_facts`
   gives for the shifted timeline (durations, conversion flags, credits and counters do not
   depend on the shift). The rollups are then summed from `customers.facts` in SQL
   (`app.aggregates.rollups_from_facts`). `verify_sample` also compares contributions, and
   `verify_rollups` compares every rollup row with a from-scratch sum of every customer's
   contribution by the stitcher's own `add_facts`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.aggregates.rollups_from_facts import ROLLUP_TABLES, rebuild_rollups_from_facts
from app.db.engine import asyncpg_dsn, make_engine, raw_connection
from app.db.partitions import ensure_week_partition, week_of
from app.identity.graph import Identifier, customer_key
from app.ingest import segment
from app.journeys.rebuild import DERIVED_TABLES
from app.journeys.sessions import session_id

# The block tables beside the day rollups (written by `rebuild_rollups_from_facts`); analyzed
# with them, or the planner guesses one row per block lookup and scans a block table whole.
BLOCK_TABLES = ("agg_stage_duration_blocks", "agg_touch_blocks")

# "aggregates": "full" plus the aggregates' derived state (each customer's stored contribution,
# breakdown groups and stage entries, copied like the rest; the rollups summed from them).
Kind = Literal["raw", "full", "aggregates"]

PH = "{C}"  # the customer token's placeholder in the archetype templates
_TEMPLATE_TOKEN = re.compile(r"zq(\d{6})")
# A bench workspace's derived state: what a rebuild clears (one list, `app.journeys.rebuild`:
# identities, links, ledger, timelines, customers, stage entries, rollups), and the change feed
# and unmerge blocks, which only bench workspaces may lose with it.
BENCH_DERIVED_TABLES = (*DERIVED_TABLES, "blocked_links")
# The tables the "full" kind copies from the stitched archetypes (vacuumed after the copy).
_COPIED_TABLES = ("journey_events", "customers", "identities", "identity_links", "identity_ledger")


def template_token(a: int) -> str:
    """Archetype a's customer token (lower case: emails are compared lower-cased)."""
    return f"zq{a:06d}"


def copy_token(n: int) -> str:
    """Customer n's token (same length as the archetypes')."""
    return f"{n:08d}"


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """The shape of a dataset; equal specs make interchangeable datasets (`--reuse`)."""

    customers: int = 1_000_000
    events_per_customer: int = 10
    archetypes: int = 2_000
    days: int = 180
    identified_share: float = 0.40
    buyer_share: float = 0.15
    repeat_share: float = 0.30  # of buyers
    survey_share: float = 0.40  # of buyers
    second_device_share: float = 0.15  # of identified customers
    heavy_share: float = 0.01
    seed: int = 7
    # Breakdowns kept by the journey model (besides the defaults), set before stitching.
    breakdowns: tuple[str, ...] = ()

    def prefix(self, kind: Kind) -> str:
        """Workspace name prefix (the name adds a timestamp)."""
        days = "" if self.days == 180 else f"d{self.days}-"  # names of older datasets kept
        kept = ""
        if self.breakdowns:
            kept = "b" + hashlib.sha256(",".join(self.breakdowns).encode()).hexdigest()[:6] + "-"
        return (
            f"bench-{kind}-c{self.customers}-e{self.events_per_customer}-"
            f"k{self.archetypes}-s{self.seed}-{days}{kept}"
        )


@dataclass(slots=True)
class Dataset:
    """A generated (or reused) dataset in one workspace."""

    workspace_id: int
    name: str
    kind: Kind
    spec: DatasetSpec
    customers: int
    events: int
    read_key: str
    reused: bool = False
    derived: str = "none"
    archetype_stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rows_per_s: dict[str, float] = field(default_factory=dict)
    anchor: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (without the read key)."""
        body = asdict(self)
        body.pop("read_key")
        return body


# --------------------------------------------------------------------------- archetypes

_CATEGORIES = (
    "Tents",
    "Backpacks",
    "Jackets",
    "Shoes",
    "Sleeping Bags",
    "Headlamps",
    "Stoves",
    "Socks",
)
_ADJECTIVES = (
    "Alpine",
    "Summit",
    "Trail",
    "Ridge",
    "Canyon",
    "Glacier",
    "Forest",
    "Coastal",
    "Desert",
    "Storm",
)
_FIRST_NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Taylor",
    "Morgan",
    "Casey",
    "Jamie",
    "Robin",
    "Avery",
    "Riley",
    "Quinn",
    "Charlie",
    "Kim",
    "Lee",
    "Noor",
    "Mia",
    "Luca",
    "Ana",
)
_LAST_NAMES = (
    "Smith",
    "Garcia",
    "Müller",
    "Rossi",
    "Dubois",
    "Kowalski",
    "Silva",
    "Jensen",
    "Novak",
    "Tanaka",
    "Okafor",
    "Ivanova",
    "Brown",
    "Nguyen",
)
_SEARCHES = (
    "2 person tent",
    "waterproof jacket",
    "trail runners",
    "down sleeping bag",
    "headlamp rechargeable",
    "merino socks",
    "ultralight backpack",
    "camp stove",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
)
_SITE = "https://shop.example.com"
# (weight, referrer, campaign (source, medium, name), landing query string)
_VISIT_SOURCES: tuple[tuple[int, str | None, tuple[str, str, str] | None, str], ...] = (
    (30, None, None, ""),
    (20, "https://www.google.com/", None, ""),
    (
        12,
        "https://www.google.com/",
        ("google", "cpc", "spring_sale"),
        "?utm_source=google&utm_medium=cpc&utm_campaign=spring_sale&gclid=Cj0KCQjwxYOiBhC9",
    ),
    (4, "https://www.bing.com/", None, ""),
    (
        8,
        "https://l.facebook.com/",
        ("facebook", "paid_social", "retargeting_q2"),
        "?utm_source=facebook&utm_medium=paid_social&utm_campaign=retargeting_q2",
    ),
    (6, "https://www.instagram.com/", None, ""),
    (
        10,
        None,
        ("newsletter", "email", "weekly_digest"),
        "?utm_source=newsletter&utm_medium=email&utm_campaign=weekly_digest",
    ),
    (10, "https://www.outdoorgearlab.com/reviews/best-tents", None, ""),
)
_BROWSE = (
    ("page", 20),
    ("Product List Viewed", 15),
    ("Product Viewed", 32),
    ("Products Searched", 8),
    ("Product Added", 12),
    ("Cart Viewed", 8),
    ("Checkout Started", 5),
)


@dataclass(frozen=True, slots=True)
class _Product:
    sku: str
    name: str
    category: str
    price: float


@dataclass(slots=True)
class _Plan:
    count: int
    heavy: bool = False
    identified: bool = False
    orders: int = 0
    survey: bool = False
    second_device: bool = False


@dataclass(frozen=True, slots=True)
class TemplateEvent:
    """One archetype event, stored form, identifiers as placeholders."""

    a: int
    k: int
    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    flags: int
    payload: str


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plans(spec: DatasetSpec, rng: random.Random) -> list[_Plan]:
    k = spec.archetypes
    heavy = max(1, round(k * spec.heavy_share)) if spec.heavy_share > 0 else 0
    plans = [_Plan(count=rng.randint(60, 150), heavy=True) for _ in range(heavy)]
    target = spec.events_per_customer * k
    light_total = target - sum(p.count for p in plans)
    light = k - heavy
    if light_total < light:
        raise ValueError(
            f"{spec.events_per_customer} events per customer leave less than one "
            f"per light customer with a heavy share of {spec.heavy_share}; lower "
            "--heavy-share"
        )
    mean = light_total / light if light else 1.0
    cap = 45
    for _ in range(light):
        # 1 + geometric with the right mean: many one-visit bounces, a long tail.
        prob = 1 / max(mean, 1.0)
        n = 1 + (int(math.log(1 - rng.random()) / math.log(1 - prob)) if prob < 1 else 0)
        plans.append(_Plan(count=min(n, cap)))
    diff = target - sum(p.count for p in plans)
    lights = [p for p in plans if not p.heavy]
    while diff != 0 and lights:
        p = rng.choice(lights)
        if diff > 0 and p.count < cap:
            p.count += 1
            diff -= 1
        elif diff < 0 and p.count > 1:
            p.count -= 1
            diff += 1
    rng.shuffle(plans)

    def pick(pool: list[_Plan], share_of: int, share: float) -> list[_Plan]:
        wanted = min(len(pool), round(share_of * share))
        return rng.sample(pool, wanted)

    heavies = [p for p in plans if p.heavy]
    for p in heavies:
        p.identified = True
    more = round(k * spec.identified_share) - len(heavies)
    eligible = [p for p in plans if not p.heavy and p.count >= 2]
    for p in rng.sample(eligible, max(0, min(more, len(eligible)))):
        p.identified = True
    identified = [p for p in plans if p.identified]
    buyers = pick([p for p in identified if p.count >= 4], k, spec.buyer_share)
    for p in buyers:
        p.orders = 1
    for p in pick([p for p in buyers if p.count >= 7], len(buyers), spec.repeat_share):
        p.orders = rng.randint(2, max(2, min(4, (p.count - 3) // 2)))
    for p in pick([p for p in buyers if p.count >= 5], len(buyers), spec.survey_share):
        p.survey = True
    for p in pick(
        [p for p in identified if p.count >= 5], len(identified), spec.second_device_share
    ):
        p.second_device = True
    for p in plans:  # enough browsing around the special events
        while p.identified and p.count - _specials(p) < 1 + p.orders:
            if p.second_device:
                p.second_device = False
            elif p.survey:
                p.survey = False
            elif p.orders:
                p.orders -= 1
            else:
                break
    return plans


def _specials(p: _Plan) -> int:
    return int(p.identified) + int(p.second_device) + p.orders + int(p.survey)


def _steps(p: _Plan, rng: random.Random) -> list[str]:
    if not p.identified:
        return ["B"] * p.count
    browse = p.count - _specials(p)
    b0 = max(1, min(browse - p.orders, round(browse * rng.uniform(0.2, 0.6))))
    segments = [1] * p.orders + [0]
    for _ in range(browse - b0 - p.orders):
        segments[rng.randrange(len(segments))] += 1
    post: list[str] = []
    for i in range(p.orders):
        post += ["B"] * segments[i] + ["ORD"]
    post += ["B"] * segments[-1]
    if p.survey:
        post.insert(post.index("ORD") + 1, "SURVEY")
    if p.second_device:
        post.insert(rng.randrange(len(post) + 1), "ID2")
    return ["B"] * b0 + ["ID"] + post


class _Archetype:
    """Builds one customer's events as wire JSON with arrival times."""

    def __init__(
        self,
        a: int,
        plan: _Plan,
        rng: random.Random,
        products: list[_Product],
        *,
        anchor: datetime,
        days: int,
    ) -> None:
        self.a = a
        self.plan = plan
        self.rng = rng
        self.products = products
        self.anchor = anchor
        self.days = days
        tok = template_token(a)
        self.anon = [
            f"{_hex(rng, 8)}-{_hex(rng, 4)}-4{_hex(rng, 3)}-"
            f"{rng.choice('89ab')}{_hex(rng, 3)}-{tok}{_hex(rng, 4)}"
            for _ in range(2)
        ]
        self.user_id = f"usr_{tok}"
        self.email = f"customer.{tok}@example.com"
        self.tok = tok
        self.ua = [rng.choice(_USER_AGENTS), _USER_AGENTS[rng.choice((1, 3))]]
        self.ip = [f"203.0.113.{rng.randrange(1, 255)}", f"198.51.100.{rng.randrange(1, 255)}"]
        self.name = (rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES))

    def _message_id(self, k: int) -> str:
        return f"ajs-next-{_hex(self.rng, 12)}-{self.tok}-{k:04d}"

    def events(self) -> list[tuple[dict[str, Any], datetime, str | None]]:
        """(wire event, received_at, client ip) in event-time order."""
        rng = self.rng
        steps = _steps(self.plan, rng)
        # Cut into visits.
        visits: list[list[str]] = []
        limit = 0
        for i, step in enumerate(steps):
            prev = steps[i - 1] if i else None
            new = (
                not visits
                or step in ("ID2", "SURVEY")
                or prev == "SURVEY"
                or (prev == "ORD" and rng.random() < 0.6)
                or len(visits[-1]) >= limit
            )
            if new:
                visits.append([])
                limit = rng.choice((1, 1, 2, 2, 3, 3, 4, 5, 6, 8))
            visits[-1].append(step)
        gap_mean = min(12 * 86400.0, 0.6 * self.days * 86400 / max(1, len(visits)))
        rel: list[float] = []
        at = 0.0
        for v, visit in enumerate(visits):
            if v:
                at += (
                    rng.uniform(2, 10) * 86400
                    if visit[0] == "SURVEY"
                    else max(1900.0, rng.expovariate(1 / gap_mean))
                )
            for j in range(len(visit)):
                if j:
                    at += rng.uniform(8, 150)
                rel.append(at)
        span = rel[-1] if rel else 0.0
        room = self.days * 86400 * 0.97 - 9 * 3600
        if span > room:  # compress (keeps order and visits apart by > 30 min mostly)
            rel = [r * room / span for r in rel]
            span = room
        start = (
            self.anchor
            - timedelta(days=self.days)
            + timedelta(hours=1)
            + timedelta(seconds=rng.uniform(0, room - span))
        )
        out: list[tuple[dict[str, Any], datetime, str | None]] = []
        device = 0
        known = [False, False]
        signed_up = False
        cart: list[_Product] = []
        k = 0
        focus = rng.choice(_CATEGORIES)
        for visit in visits:
            if visit[0] == "ID2":
                device = 1
            elif visit[0] != "SURVEY" and known[1]:
                device = rng.choice((0, 1))
            weight, referrer, campaign, query = _pick_source(rng)
            del weight
            focus = rng.choice(_CATEGORIES) if rng.random() < 0.5 else focus
            page_url, prev_url = f"{_SITE}/{query}", referrer
            for j, step in enumerate(visit):
                moment = start + timedelta(seconds=rel[k])
                moment = moment.replace(microsecond=rng.randrange(1, 1000) * 1000)
                mid = self._message_id(k)
                k += 1
                if step == "SURVEY":
                    score = rng.choices(range(11), weights=(2, 1, 1, 2, 2, 4, 6, 9, 14, 17, 18))[0]
                    wire: dict[str, Any] = {
                        "type": "track",
                        "event": "Survey Responded",
                        "userId": self.user_id,
                        "messageId": mid,
                        "timestamp": _iso_ms(moment),
                        "properties": {
                            "survey_id": "nps-2024",
                            "score": score,
                            "comment": "" if score < 9 else "Great gear",
                        },
                        "context": {"library": {"name": "analytics-node", "version": "2.1.0"}},
                    }
                    out.append((wire, _received(rng, moment, server=True), "10.20.0.7"))
                    continue
                if step == "ID":
                    known[0] = True
                elif step == "ID2":
                    known[1] = True
                if j:
                    prev_url = page_url
                wire, page_url = self._client_event(
                    step,
                    j,
                    mid,
                    moment,
                    page_url=page_url if j == 0 else None,
                    referrer=prev_url,
                    campaign=campaign if j == 0 else None,
                    device=device,
                    known=known[device],
                    focus=focus,
                    cart=cart,
                    signed_up=signed_up,
                )
                if wire.get("event") == "Signed Up":
                    signed_up = True
                out.append((wire, _received(rng, moment, server=False), self.ip[device]))
        return out

    def _client_event(
        self,
        step: str,
        j: int,
        mid: str,
        moment: datetime,
        *,
        page_url: str | None,
        referrer: str | None,
        campaign: tuple[str, str, str] | None,
        device: int,
        known: bool,
        focus: str,
        cart: list[_Product],
        signed_up: bool,
    ) -> tuple[dict[str, Any], str]:
        rng = self.rng
        wire: dict[str, Any] = {
            "anonymousId": self.anon[device],
            "messageId": mid,
            "timestamp": _iso_ms(moment),
        }
        if known:
            wire["userId"] = self.user_id
        products = [p for p in self.products if p.category == focus]
        product = rng.choice(products)
        slug = focus.lower().replace(" ", "-")
        if step in ("ID", "ID2"):
            wire.update(
                type="identify",
                userId=self.user_id,
                traits={
                    "email": self.email,
                    "first_name": self.name[0],
                    "last_name": self.name[1],
                    "marketing_opt_in": rng.random() < 0.6,
                },
            )
            path = "/account/login"
        elif step == "ORD":
            items = cart[-3:] or [product]
            total = round(sum(p.price for p in items), 2)
            wire.update(
                type="track",
                event="Order Completed",
                properties={
                    "order_id": f"ord_{_hex(rng, 10)}",
                    "checkout_id": f"chk_{_hex(rng, 8)}",
                    "total": total,
                    "revenue": round(total / 1.19, 2),
                    "tax": round(total - total / 1.19, 2),
                    "shipping": 0 if total > 100 else 6.9,
                    "currency": "EUR",
                    "products": [
                        {
                            "product_id": p.sku,
                            "sku": p.sku,
                            "name": p.name,
                            "category": p.category,
                            "price": p.price,
                            "quantity": 1,
                        }
                        for p in items
                    ],
                },
            )
            cart.clear()
            path = "/checkout/thank-you"
        elif j == 0 or (step == "B" and _browse(rng) == "page"):
            wire.update(type="page", name=focus if j else "Home", properties={})
            path = f"/collections/{slug}" if j else "/"
        else:
            name = _browse(rng)
            if name == "page":
                name = "Product Viewed"
            if known and not signed_up and rng.random() < 0.5:
                name = "Signed Up"
            props: dict[str, Any]
            if name == "Products Searched":
                props = {"query": rng.choice(_SEARCHES)}
                path = "/search"
            elif name == "Product List Viewed":
                props = {
                    "list_id": slug,
                    "category": focus,
                    "products": [
                        {"product_id": p.sku, "position": i + 1} for i, p in enumerate(products[:4])
                    ],
                }
                path = f"/collections/{slug}"
            elif name in ("Cart Viewed", "Checkout Started"):
                items = cart[-3:] or [product]
                props = {
                    "cart_id": f"cart_{_hex(rng, 8)}",
                    "currency": "EUR",
                    "value": round(sum(p.price for p in items), 2),
                    "products": [{"product_id": p.sku, "price": p.price} for p in items],
                }
                path = "/cart" if name == "Cart Viewed" else "/checkout"
            elif name == "Signed Up":
                props = {"method": rng.choice(("email", "google", "apple"))}
                path = "/account/welcome"
            else:
                props = {
                    "product_id": product.sku,
                    "sku": product.sku,
                    "name": product.name,
                    "category": product.category,
                    "price": product.price,
                    "currency": "EUR",
                }
                if name == "Product Added":
                    props["quantity"] = 1
                    cart.append(product)
                path = f"/products/{product.sku}"
            wire.update(type="track", event=name, properties=props)
        url = page_url if page_url is not None else f"{_SITE}{path}"
        page = {
            "path": path,
            "url": url,
            "referrer": referrer or "",
            "title": f"{path.strip('/').split('/')[-1] or 'Home'} | Example Outdoor",
            "search": url.partition("?")[2] and "?" + url.partition("?")[2],
        }
        if wire["type"] == "page":
            wire["properties"] = {**page, **wire["properties"]}
        context: dict[str, Any] = {
            "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
            "page": page,
            "userAgent": self.ua[device],
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
        }
        if campaign is not None:
            context["campaign"] = {
                "source": campaign[0],
                "medium": campaign[1],
                "name": campaign[2],
            }
        wire["context"] = context
        wire["integrations"] = {}
        return wire, url


def _pick_source(rng: random.Random) -> tuple[int, str | None, tuple[str, str, str] | None, str]:
    return rng.choices(_VISIT_SOURCES, weights=[s[0] for s in _VISIT_SOURCES])[0]


def _browse(rng: random.Random) -> str:
    return rng.choices([b[0] for b in _BROWSE], weights=[b[1] for b in _BROWSE])[0]


def _received(rng: random.Random, moment: datetime, *, server: bool) -> datetime:
    r = rng.random()
    if server or r < 0.93:
        delay = rng.uniform(0.03, 1.5)
    elif r < 0.98:
        delay = rng.uniform(2, 60)
    else:
        delay = rng.uniform(3600, 8 * 3600)  # a phone that was offline
    at = moment + timedelta(seconds=delay)
    return at.replace(microsecond=at.microsecond or 1)


def _catalog(rng: random.Random) -> list[_Product]:
    products = []
    for category in _CATEGORIES:
        for _ in range(30):
            sku = f"sku-{rng.randrange(10_000, 99_999)}"
            name = f"{rng.choice(_ADJECTIVES)} {category.rstrip('s')} {rng.randrange(1, 9)}"
            products.append(_Product(sku, name, category, rng.randrange(990, 49_900) / 100))
    return products


def make_archetypes(
    spec: DatasetSpec, anchor: datetime
) -> tuple[list[TemplateEvent], dict[int, tuple[str, Any]], dict[str, Any]]:
    """The archetypes' stored events (placeholder form), their raw rows for stitching
    (keyed by k-order), and statistics."""
    rng = random.Random(spec.seed)
    products = _catalog(rng)
    plans = _plans(spec, rng)
    meta_ip: dict[int, tuple[str, Any]] = {}
    rows: list[TemplateEvent] = []
    for a, plan in enumerate(plans):
        arch = _Archetype(a, plan, rng, products, anchor=anchor, days=spec.days)
        tok = arch.tok
        for k, (wire, received, ip) in enumerate(arch.events()):
            meta = segment.RequestMeta(received_at=received, client_ip=ip)
            ev = segment.normalise_event(wire, type_hint=None, meta=meta)
            if ev.timestamp.microsecond == 0 or ev.received_at.microsecond == 0:
                raise AssertionError("archetype times need non-zero microseconds")
            rows.append(
                TemplateEvent(
                    a=a,
                    k=k,
                    message_id=ev.message_id.replace(tok, PH),
                    type=ev.type,
                    event=ev.event,
                    user_id=_ph(ev.user_id, tok),
                    anonymous_id=_ph(ev.anonymous_id, tok),
                    timestamp=ev.timestamp,
                    received_at=ev.received_at,
                    flags=ev.flags,
                    payload=ev.payload.replace(tok, PH),
                )
            )
            meta_ip[len(rows) - 1] = (tok, ev)
    n = len(plans)
    stats = {
        "archetypes": n,
        "events": len(rows),
        "identified_pct": round(100 * sum(p.identified for p in plans) / n, 1),
        "buyers_pct": round(100 * sum(p.orders > 0 for p in plans) / n, 1),
        "repeat_buyers_pct": round(100 * sum(p.orders > 1 for p in plans) / n, 1),
        "survey_pct": round(100 * sum(p.survey for p in plans) / n, 1),
        "second_device_pct": round(100 * sum(p.second_device for p in plans) / n, 1),
        "heavy_pct": round(100 * sum(p.heavy for p in plans) / n, 2),
        "events_per_customer_max": max(p.count for p in plans),
        "event_types": _type_counts(rows),
    }
    return rows, meta_ip, stats


def _ph(value: str | None, tok: str) -> str | None:
    return None if value is None else value.replace(tok, PH)


def _type_counts(rows: Sequence[TemplateEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        key = r.event or r.type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- SQL


_ISO_Z = """to_char(({x}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_ISO_OFFSET = """to_char(({x}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _cid(tok: str, kind: str, value: str) -> str:
    """SQL: the customer id named after identifier kind:value (placeholder form)."""
    return (
        f"CASE WHEN {kind} IS NULL THEN NULL ELSE 'cus_' || left(encode(sha256(convert_to("
        f"{kind} || ':' || replace({value}, '{PH}', {tok}), 'UTF8')), 'hex'), 20) END"
    )


def _rep(col: str, tok: str = "s.tok") -> str:
    return f"replace({col}, '{PH}', {tok})"


_RAW_INSERT = f"""
INSERT INTO events (workspace_id, received_week, message_id, type, event, user_id, anonymous_id,
                    timestamp, received_at, flags, payload)
SELECT $1, date_trunc('week', (t.rcv + s.off) AT TIME ZONE 'UTC')::date, {_rep("t.mid")},
       t.type, t.event, {_rep("t.user_id")}, {_rep("t.anon")}, t.ts + s.off, t.rcv + s.off,
       t.flags,
       CASE WHEN t.email IS NULL THEN t.payload
            ELSE jsonb_set(t.payload, '{{traits,email}}', to_jsonb({_rep("t.email")})) END
       || jsonb_strip_nulls(jsonb_build_object(
           'messageId', {_rep("t.mid")}, 'userId', {_rep("t.user_id")},
           'anonymousId', {_rep("t.anon")},
           'timestamp', {_ISO_Z.format(x="t.ts + s.off")},
           'receivedAt', {_ISO_Z.format(x="t.rcv + s.off")}))
FROM b_sched s JOIN b_tmpl t ON t.a = s.a AND t.k = s.k
WHERE s.pos > $2 AND s.pos <= $3
ORDER BY s.pos
"""

_JE_INSERT = f"""
INSERT INTO journey_events (workspace_id, message_id, customer_id, timestamp, received_at, type,
    event, user_id, anonymous_id, trait_identifier, source_channel, channel, session_id, stage,
    flags, properties, traits, campaign)
SELECT $1, {_rep("j.mid")}, {_cid("s.tok", "j.ckind", "j.cvalue")}, j.ts + s.off,
       j.rcv + s.off, j.type, j.event, {_rep("j.user_id")}, {_rep("j.anon")},
       {_rep("j.trait")}, j.source_channel, j.channel,
       CASE WHEN j.smid IS NULL THEN NULL ELSE 'ses_' || left(encode(sha256(convert_to(
           {_rep("j.smid")}, 'UTF8')), 'hex'), 16) END,
       j.stage, j.flags, j.properties, {_rep("j.traits")}::jsonb, j.campaign
FROM b_sched s JOIN b_je j ON j.a = s.a AND j.k = s.k
WHERE s.pos > $2 AND s.pos <= $3
ORDER BY s.pos
"""

_CUSTOMERS_INSERT = f"""
INSERT INTO customers (workspace_id, customer_id, first_seen, last_seen, event_count, stage,
    stage_entered_at, stage_history, traits, updated_at)
SELECT $1, {_cid("c.tok", "t.ckind", "t.cvalue")}, t.first_seen + c.off, t.last_seen + c.off,
       t.event_count, t.stage, t.stage_entered_at + c.off,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'stage', h.stage, 'entered_at', {_ISO_OFFSET.format(x="h.at + c.off")},
                    'message_id', {_rep("h.mid", "c.tok")}) ORDER BY h.ord)
                 FROM b_hist h WHERE h.a = t.a AND h.ci = t.ci), '[]'::jsonb),
       {_rep("t.traits", "c.tok")}::jsonb, now()
FROM b_copies c JOIN b_cust t ON t.a = c.a
WHERE c.n >= $2 AND c.n < $3
"""

# kind "aggregates": the same customers with their breakdown groups and contribution. A copy's
# contribution is the template's with every instant shifted (entries in epoch µs) and every day
# recomputed as the UTC day of its shifted instant: what `customer_facts` gives for the shifted
# timeline (durations, conversion flags, credits and counters do not depend on the shift).
_FACTS_OF_COPY = """
convert_to(jsonb_build_object(
    'd', fd.dims,
    's', coalesce((SELECT jsonb_agg(jsonb_build_array(x.stage, x.us + c.off_us, x.conv, x.bucket)
                                    ORDER BY x.ord)
                   FROM b_fstage x WHERE x.a = t.a AND x.ci = t.ci), '[]'::jsonb),
    't', coalesce((SELECT jsonb_agg(jsonb_build_array(x.stage, x.channel,
                                        719163 + (x.ref + c.off_us) / 86400000000) || x.vals
                                    ORDER BY x.ord)
                   FROM b_fkeyed x WHERE x.a = t.a AND x.ci = t.ci AND x.part = 't'), '[]'::jsonb),
    'a', coalesce((SELECT jsonb_agg(jsonb_build_array(x.stage, x.channel,
                                        719163 + (x.ref + c.off_us) / 86400000000) || x.vals
                                    ORDER BY x.ord)
                   FROM b_fkeyed x WHERE x.a = t.a AND x.ci = t.ci AND x.part = 'a'), '[]'::jsonb)
)::text, 'UTF8')
"""

_CUSTOMERS_FACTS_INSERT = f"""
INSERT INTO customers (workspace_id, customer_id, first_seen, last_seen, event_count, stage,
    stage_entered_at, stage_history, traits, dims, facts, updated_at)
SELECT $1, {_cid("c.tok", "t.ckind", "t.cvalue")}, t.first_seen + c.off, t.last_seen + c.off,
       t.event_count, t.stage, t.stage_entered_at + c.off,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'stage', h.stage, 'entered_at', {_ISO_OFFSET.format(x="h.at + c.off")},
                    'message_id', {_rep("h.mid", "c.tok")}) ORDER BY h.ord)
                 FROM b_hist h WHERE h.a = t.a AND h.ci = t.ci), '[]'::jsonb),
       {_rep("t.traits", "c.tok")}::jsonb, fd.dims, {_FACTS_OF_COPY}, now()
FROM (SELECT *, (extract(epoch FROM off) * 1000000)::int8 AS off_us FROM b_copies) c
JOIN b_cust t ON t.a = c.a
JOIN b_fdims fd ON fd.a = t.a AND fd.ci = t.ci
WHERE c.n >= $2 AND c.n < $3
ORDER BY 2
"""

_STAGE_ENTRIES_INSERT = f"""
INSERT INTO stage_entries (workspace_id, customer_id, stage, entered_at)
SELECT $1, {_cid("c.tok", "t.ckind", "t.cvalue")}, x.stage,
       timestamptz 'epoch' + (x.us + (extract(epoch FROM c.off) * 1000000)::int8)
                             * interval '1 microsecond'
FROM b_copies c JOIN b_cust t ON t.a = c.a JOIN b_fstage x ON x.a = t.a AND x.ci = t.ci
WHERE c.n >= $2 AND c.n < $3
ORDER BY 2, 3
"""

_IDENTITIES_INSERT = f"""
INSERT INTO identities (workspace_id, kind, value, customer_id, cluster_id, first_seen,
                        first_message_id, shared_device)
SELECT $1, i.kind, {_rep("i.value", "c.tok")}, {_cid("c.tok", "i.ckind", "i.cvalue")},
       $4 + c.n::bigint * $5 + i.cl, i.first_seen + c.off, {_rep("i.mid", "c.tok")}, i.shared
FROM b_copies c JOIN b_ident i ON i.a = c.a
WHERE c.n >= $2 AND c.n < $3
"""

_LINKS_INSERT = f"""
INSERT INTO identity_links (workspace_id, a_kind, a_value, b_kind, b_value, rule, at, message_id)
SELECT $1, l.a_kind, {_rep("l.a_value", "c.tok")}, l.b_kind, {_rep("l.b_value", "c.tok")},
       l.rule, l.at + c.off, {_rep("l.mid", "c.tok")}
FROM b_copies c JOIN b_links l ON l.a = c.a
WHERE c.n >= $2 AND c.n < $3
"""

_LEDGER_INSERT = f"""
INSERT INTO identity_ledger (workspace_id, cluster_id, position, at, message_id, action, rule,
                             identifiers, "into", reason)
SELECT $1, $4 + c.n::bigint * $5 + l.cl, l.position, l.at + c.off, {_rep("l.mid", "c.tok")},
       l.action, l.rule, string_to_array({_rep("l.idents", "c.tok")}, E'\\x1f'),
       {_cid("c.tok", "l.ikind", "l.ivalue")}, {_rep("l.reason", "c.tok")}
FROM b_copies c JOIN b_ledger l ON l.a = c.a
WHERE c.n >= $2 AND c.n < $3
"""


# --------------------------------------------------------------------------- progress


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        yield bar


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------- workspaces


async def _new_workspace(url: str, name: str) -> tuple[int, str]:
    from sqlalchemy import text

    from app.workspaces.repository import create_workspace

    engine = make_engine(url, pooled=False)
    try:
        async with engine.begin() as conn:
            created = await create_workspace(conn, name)
            await conn.execute(
                text("UPDATE workspaces SET rate_limit_per_second = 1e9 WHERE id = :id"),
                {"id": created.workspace_id},
            )
            return created.workspace_id, created.read_key
    finally:
        await engine.dispose()


async def set_journey_model(dsn: str, workspace_id: int, breakdowns: Sequence[str]) -> list[str]:
    """Keep `breakdowns` (besides the default ones) in the workspace's journey model."""
    from dataclasses import replace

    from app.journeys.stages import DEFAULT_MODEL, model_to_dict

    kept = list(DEFAULT_MODEL.breakdowns)
    kept += [b for b in breakdowns if b not in kept]
    model = replace(DEFAULT_MODEL, breakdowns=tuple(kept))  # validates
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE workspaces SET settings = settings || jsonb_build_object('journey_model', "
            "$2::jsonb) WHERE id = $1",
            workspace_id,
            orjson.dumps(model_to_dict(model)).decode(),
        )
    finally:
        await conn.close()
    return kept


async def new_read_key(conn: asyncpg.Connection, workspace_id: int) -> str:
    """An extra read key for a kept dataset (the clear text of the first one is gone)."""
    from app.core.security import KeyKind, hash_key, new_key

    key = new_key(KeyKind.READ)
    await conn.execute(
        "INSERT INTO api_keys (workspace_id, kind, key_hash) VALUES ($1, $2, $3)",
        workspace_id,
        KeyKind.READ.value,
        hash_key(key),
    )
    return key


async def find_dataset(dsn: str, spec: DatasetSpec, kind: Kind) -> Dataset | None:
    """The newest complete kept dataset of this spec and kind, with a fresh read key."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT id, name, settings -> 'bench_dataset' AS info FROM workspaces "
            "WHERE name LIKE $1 AND (settings -> 'bench_dataset' ->> 'complete')::bool "
            "ORDER BY id DESC LIMIT 1",
            spec.prefix(kind) + "%",
        )
        if row is None:
            return None
        info = orjson.loads(row["info"])
        key = await new_read_key(conn, row["id"])
    finally:
        await conn.close()
    return Dataset(
        workspace_id=row["id"],
        name=row["name"],
        kind=kind,
        spec=spec,
        customers=info["customers"],
        events=info["events"],
        read_key=key,
        reused=True,
        derived=info.get("derived", "none"),
        archetype_stats=info.get("archetype_stats", {}),
        timings=info.get("timings", {}),
        rows_per_s=info.get("rows_per_s", {}),
        anchor=info.get("anchor", ""),
    )


async def drop_workspace_data(
    dsn: str,
    workspace_id: int,
    *,
    events: bool = True,
    workspace: bool = True,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Delete a bench workspace's derived rows (and raw events, and the workspace)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        tables = (*BENCH_DERIVED_TABLES, "events") if events else BENCH_DERIVED_TABLES
        for table in tables:
            if progress:
                progress(table)
            await conn.execute(f"DELETE FROM {table} WHERE workspace_id = $1", workspace_id)
        if workspace:
            await conn.execute("DELETE FROM workspaces WHERE id = $1", workspace_id)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- generation


async def _ensure_partitions(conn: asyncpg.Connection, first: datetime, last: datetime) -> int:
    week = week_of(first)
    end = week_of(last) + timedelta(days=7)
    made = 0
    while week <= end:
        await ensure_week_partition(conn, week)
        week += timedelta(days=7)
        made += 1
    return made


async def _load_template(conn: asyncpg.Connection, rows: Sequence[TemplateEvent]) -> None:
    """The archetypes' events; payloads as jsonb whose only customer-specific values are the
    top-level ids (replaced per copy with `||`) and an identify's `traits.email`, which saves
    parsing JSON text for every copied event."""
    await conn.execute(
        "CREATE TEMP TABLE b_tmpl (a int, k int, mid text, type text, event text, user_id text,"
        " anon text, ts timestamptz, rcv timestamptz, flags int2, payload text, email text,"
        " PRIMARY KEY (a, k))"
    )
    records = []
    for r in rows:
        doc = orjson.loads(r.payload)
        email = doc.get("traits", {}).get("email") if r.type == "identify" else None
        rest = {
            k: v
            for k, v in doc.items()
            if k not in ("messageId", "userId", "anonymousId", "timestamp", "receivedAt")
        }
        if email is not None:
            rest["traits"] = {**rest["traits"], "email": ""}
        if PH in orjson.dumps(rest).decode():
            raise AssertionError(f"customer token in an unexpected field: {r.payload}")
        if (
            doc.get("messageId") != r.message_id
            or doc.get("userId") != r.user_id
            or doc.get("anonymousId") != r.anonymous_id
        ):
            raise AssertionError(f"payload ids differ from the columns: {r.payload}")
        records.append(
            (
                r.a,
                r.k,
                r.message_id,
                r.type,
                r.event,
                r.user_id,
                r.anonymous_id,
                r.timestamp,
                r.received_at,
                r.flags,
                r.payload,
                email,
            )
        )
    await conn.copy_records_to_table("b_tmpl", records=records)
    await conn.execute("ALTER TABLE b_tmpl ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
    await conn.execute("ANALYZE b_tmpl")


async def _schedule(conn: asyncpg.Connection, spec: DatasetSpec, anchor: datetime) -> int:
    """b_copies (customer → archetype, token, time offset) and b_sched (every event of every
    customer with its position in receipt order)."""
    await conn.execute(
        """
        CREATE TEMP TABLE b_bounds AS
        SELECT a, extract(epoch FROM ($1::timestamptz - min(ts))) AS lo,
               extract(epoch FROM ($2::timestamptz - max(rcv))) AS hi
        FROM b_tmpl GROUP BY a
        """,
        anchor - timedelta(days=spec.days),
        anchor,
    )
    # Offsets in whole seconds: the archetypes' microseconds (never zero) carry over.
    await conn.execute(
        """
        CREATE TEMP TABLE b_copies AS
        SELECT c.n, c.a, lpad(c.n::text, 8, '0') AS tok,
               make_interval(secs => floor(b.lo + (hashint4(c.n # $3) & 2147483647)::float8
                                           / 2147483648 * greatest(b.hi - b.lo, 0))) AS off
        FROM (SELECT n, n % $2 AS a FROM generate_series(0, $1 - 1) AS n) c
        JOIN b_bounds b USING (a)
        """,
        spec.customers,
        spec.archetypes,
        spec.seed,
    )
    await conn.execute("CREATE UNIQUE INDEX ON b_copies (n)")
    await conn.execute("ANALYZE b_copies")
    await conn.execute(
        """
        CREATE TEMP TABLE b_sched AS
        SELECT row_number() OVER (ORDER BY t.rcv + c.off, c.n, t.k) AS pos,
               c.n, c.a, t.k, c.tok, c.off
        FROM b_copies c JOIN b_tmpl t ON t.a = c.a
        """
    )
    await conn.execute("CREATE UNIQUE INDEX ON b_sched (pos)")
    await conn.execute("ANALYZE b_sched")
    return int(await conn.fetchval("SELECT count(*) FROM b_sched"))


async def _stitch_template(url: str, workspace_id: int, meta: dict[int, tuple[str, Any]]) -> None:
    """Stitch the archetypes with the real WorkspaceStitcher, in receipt order, batches of 2,000,
    without going through the feed (their raw rows are never stored in `events`)."""
    from app.journeys.stitch import WorkspaceStitcher
    from app.journeys.stitcher import model_for

    order = sorted(meta, key=lambda i: (meta[i][1].received_at, i))
    engine = make_engine(url, pool_size=1)
    try:
        async with raw_connection(engine) as conn:
            model = await model_for(conn, workspace_id)
            for start in range(0, len(order), 2_000):
                records: list[Any] = []
                for i in order[start : start + 2_000]:
                    ev = meta[i][1]
                    records.append(
                        {
                            "workspace_id": workspace_id,
                            "message_id": ev.message_id,
                            "tx": 1,
                            "seq": i,
                            "timestamp": ev.timestamp,
                            "received_at": ev.received_at,
                            "flags": ev.flags,
                            "payload": orjson.loads(ev.payload),
                        }
                    )
                async with conn.transaction():
                    await WorkspaceStitcher(conn, workspace_id, model).stitch(records)
    finally:
        await engine.dispose()


@dataclass(slots=True)
class _Derived:
    ident: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)
    cust: list[tuple[Any, ...]] = field(default_factory=list)
    hist: list[tuple[Any, ...]] = field(default_factory=list)
    je: list[tuple[Any, ...]] = field(default_factory=list)
    clusters_per_customer: int = 1
    # kind "aggregates": each template customer's breakdown groups and stored contribution, with
    # every day of the contribution as the instant it is the UTC day of (so a copy's days are
    # those of its shifted instants), and its stage entries.
    facts: bool = False
    fdims: list[tuple[Any, ...]] = field(default_factory=list)
    fstage: list[tuple[Any, ...]] = field(default_factory=list)
    fkeyed: list[tuple[Any, ...]] = field(default_factory=list)


def _arch(*texts: str | None) -> int:
    for text in texts:
        if text:
            m = _TEMPLATE_TOKEN.search(text)
            if m:
                return int(m.group(1))
    raise AssertionError(f"no archetype token in {texts!r}")


def _phs(text: str | None, a: int) -> str | None:
    if text is None:
        return None
    out = text.replace(template_token(a), PH)
    if _TEMPLATE_TOKEN.search(out):
        raise AssertionError(f"another archetype's token in {text!r}")
    return out


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _template_facts(out: _Derived, a: int, ci: int, r: Any) -> None:
    """One template customer's contribution in copyable form (see `_Derived`)."""
    from app.aggregates.facts import ANY_STAGE, Facts, day_of, epoch_us_to_datetime

    dims = orjson.loads(r["dims"]) if isinstance(r["dims"], str) else dict(r["dims"])
    facts = Facts.from_json(orjson.loads(r["facts"]))
    # The stitcher's saved walk (message and session ids) is not copied: a copy's next batch
    # walks the customer again from its events (`app.journeys.fold`).
    facts.walk = None
    text = orjson.dumps([dims, facts.to_json()]).decode()
    if _TEMPLATE_TOKEN.search(text) or PH in text:
        raise AssertionError(f"a customer token in a contribution: {text[:300]}")
    if facts.dims != dims:
        raise AssertionError(f"stored dims {dims} differ from the contribution's {facts.dims}")
    out.fdims.append((a, ci, orjson.dumps(dims).decode()))
    entered: dict[str, int] = {}
    for ord_, (stage, at_us, converted, bucket) in enumerate(facts.stages):
        entered[stage] = at_us
        out.fstage.append((a, ci, ord_, stage, at_us, converted, bucket))
    first_us = _epoch_us(r["first_seen"])
    for part, table in (("t", facts.touches), ("a", facts.attribution)):
        for ord_, ((stage, channel, day), values) in enumerate(table.items()):
            ref = first_us if part == "t" and stage == ANY_STAGE else entered.get(stage)
            if ref is None:
                raise AssertionError(f"{part} key {stage!r} without a stage entry")
            if day_of(epoch_us_to_datetime(ref)) != day:
                raise AssertionError(f"{part} key {(stage, channel, day)} is not the day of {ref}")
            out.fkeyed.append(
                (a, ci, part, ord_, stage, channel, ref, orjson.dumps(values).decode())
            )


async def _template_derived(
    dsn: str, template_ws: int, rows: Sequence[TemplateEvent], *, facts: bool = False
) -> _Derived:
    """The archetypes' stitched state in placeholder form, checked to be copyable."""
    conn = await asyncpg.connect(dsn)
    try:
        idents = await conn.fetch("SELECT * FROM identities WHERE workspace_id = $1", template_ws)
        links = await conn.fetch(
            "SELECT * FROM identity_links WHERE workspace_id = $1", template_ws
        )
        ledger = await conn.fetch(
            "SELECT * FROM identity_ledger WHERE workspace_id = $1", template_ws
        )
        customers = await conn.fetch("SELECT * FROM customers WHERE workspace_id = $1", template_ws)
        je = await conn.fetch("SELECT * FROM journey_events WHERE workspace_id = $1", template_ws)
    finally:
        await conn.close()
    out = _Derived(facts=facts)
    named: dict[str, tuple[int, str, str]] = {}  # customer key → (a, kind, value placeholder)
    clusters: dict[int, dict[int, int]] = {}
    for r in idents:
        a = _arch(r["value"])
        ident = Identifier(r["kind"], r["value"])
        named[customer_key(ident)] = (a, r["kind"], _phs(r["value"], a) or "")
        local = clusters.setdefault(a, {})
        local.setdefault(r["cluster_id"], len(local))
    out.clusters_per_customer = max((len(v) for v in clusters.values()), default=1)

    def owner(customer: str | None, a: int) -> tuple[str | None, str | None]:
        if customer is None:
            return None, None
        na, kind, value = named[customer]
        if na != a:
            raise AssertionError(f"customer {customer} spans archetypes {a} and {na}")
        return kind, value

    for r in idents:
        a = _arch(r["value"])
        ckind, cvalue = owner(r["customer_id"], a)
        out.ident.append(
            (
                a,
                r["kind"],
                _phs(r["value"], a),
                ckind,
                cvalue,
                clusters[a][r["cluster_id"]],
                r["first_seen"],
                _phs(r["first_message_id"], a),
                r["shared_device"],
            )
        )
    for r in links:
        a = _arch(r["a_value"], r["b_value"])
        out.links.append(
            (
                a,
                r["a_kind"],
                _phs(r["a_value"], a),
                r["b_kind"],
                _phs(r["b_value"], a),
                r["rule"],
                r["at"],
                _phs(r["message_id"], a),
            )
        )
    for r in ledger:
        a = _arch(*r["identifiers"])
        if "cus_" in r["reason"]:
            raise AssertionError(f"a ledger reason names customers: {r['reason']!r}")
        ikind, ivalue = owner(r["into"], a)
        out.ledger.append(
            (
                a,
                clusters[a][r["cluster_id"]],
                r["position"],
                r["at"],
                _phs(r["message_id"], a),
                r["action"],
                r["rule"],
                "\x1f".join(_phs(x, a) or "" for x in r["identifiers"]),
                ikind,
                ivalue,
                _phs(r["reason"], a),
            )
        )
    for ci, r in enumerate(customers):
        ckind, cvalue = owner(r["customer_id"], named[r["customer_id"]][0])
        a = named[r["customer_id"]][0]
        traits = _json_text(r["traits"]) or "{}"
        out.cust.append(
            (
                a,
                ci,
                ckind,
                cvalue,
                r["first_seen"],
                r["last_seen"],
                r["event_count"],
                r["stage"],
                r["stage_entered_at"],
                _phs(traits, a),
            )
        )
        if facts:
            if r["facts"] is None:
                raise AssertionError(f"template customer {r['customer_id']} has no facts")
            _template_facts(out, a, ci, r)
        for ord_, h in enumerate(orjson.loads(r["stage_history"])):
            at = datetime.fromisoformat(h["entered_at"])
            if at.isoformat() != h["entered_at"] or at.microsecond == 0:
                raise AssertionError(f"unexpected entered_at format {h['entered_at']!r}")
            out.hist.append((a, ci, ord_, h["stage"], at, _phs(h["message_id"], a)))
    k_of = {(r.a, r.message_id): r.k for r in rows}
    firsts: dict[str, tuple[datetime, str]] = {}
    for r in je:
        sid = r["session_id"]
        if sid is not None:
            key = (r["timestamp"], r["message_id"])
            if sid not in firsts or key < firsts[sid]:
                firsts[sid] = key
    for sid, (_, mid) in firsts.items():
        if session_id(mid) != sid:
            raise AssertionError(f"session {sid} is not named after its first event {mid}")
    for r in je:
        a = _arch(r["message_id"])
        mid = _phs(r["message_id"], a) or ""
        ckind, cvalue = owner(r["customer_id"], a)
        smid = _phs(firsts[r["session_id"]][1], a) if r["session_id"] is not None else None
        out.je.append(
            (
                a,
                k_of[(a, mid)],
                mid,
                ckind,
                cvalue,
                r["timestamp"],
                r["received_at"],
                r["type"],
                r["event"],
                _phs(r["user_id"], a),
                _phs(r["anonymous_id"], a),
                _phs(r["trait_identifier"], a),
                r["source_channel"],
                r["channel"],
                smid,
                r["stage"],
                r["flags"],
                _json_text(r["properties"]),
                _phs(_json_text(r["traits"]), a),
                _json_text(r["campaign"]),
            )
        )
    if len(out.je) != len(rows):
        raise AssertionError(f"{len(rows)} archetype events but {len(out.je)} timeline rows")
    return out


async def _load_derived(conn: asyncpg.Connection, d: _Derived) -> None:
    ddl = {
        "b_ident": "a int, kind text, value text, ckind text, cvalue text, cl int, "
        "first_seen timestamptz, mid text, shared bool",
        "b_links": "a int, a_kind text, a_value text, b_kind text, b_value text, rule text, "
        "at timestamptz, mid text",
        "b_ledger": "a int, cl int, position int, at timestamptz, mid text, action text, "
        "rule text, idents text, ikind text, ivalue text, reason text",
        "b_cust": "a int, ci int, ckind text, cvalue text, first_seen timestamptz, "
        "last_seen timestamptz, event_count int, stage text, "
        "stage_entered_at timestamptz, traits text",
        "b_hist": "a int, ci int, ord int, stage text, at timestamptz, mid text",
        "b_je": "a int, k int, mid text, ckind text, cvalue text, ts timestamptz, "
        "rcv timestamptz, type text, event text, user_id text, anon text, trait text, "
        "source_channel text, channel text, smid text, stage text, flags int2, "
        "properties text, traits text, campaign text",
    }
    if d.facts:
        ddl |= {
            "b_fdims": "a int, ci int, dims text",
            "b_fstage": "a int, ci int, ord int, stage text, us int8, conv int, bucket int",
            "b_fkeyed": "a int, ci int, part text, ord int, stage text, channel text, ref int8, "
            "vals text",
        }
    data = {
        "b_ident": d.ident,
        "b_links": d.links,
        "b_ledger": d.ledger,
        "b_cust": d.cust,
        "b_hist": d.hist,
        "b_je": d.je,
        "b_fdims": d.fdims,
        "b_fstage": d.fstage,
        "b_fkeyed": d.fkeyed,
    }
    for table, columns in ddl.items():
        await conn.execute(f"CREATE TEMP TABLE {table} ({columns})")
        await conn.copy_records_to_table(table, records=data[table])
    await conn.execute(
        "ALTER TABLE b_je ALTER COLUMN properties TYPE jsonb USING "
        "properties::jsonb, ALTER COLUMN campaign TYPE jsonb USING campaign::jsonb"
    )
    await conn.execute("CREATE INDEX ON b_je (a, k)")
    await conn.execute("CREATE INDEX ON b_hist (a, ci)")
    if d.facts:
        await conn.execute(
            "ALTER TABLE b_fdims ALTER COLUMN dims TYPE jsonb USING dims::jsonb; "
            "ALTER TABLE b_fkeyed ALTER COLUMN vals TYPE jsonb USING vals::jsonb"
        )
        for table in ("b_fdims", "b_fstage", "b_fkeyed"):
            await conn.execute(f"CREATE INDEX ON {table} (a, ci)")
    for table in ddl:
        await conn.execute(f"ANALYZE {table}")


async def generate(
    url: str,
    spec: DatasetSpec,
    kind: Kind,
    console: Console,
    *,
    chunk_events: int = 100_000,
    chunk_customers: int = 25_000,
) -> Dataset:
    """Generate a dataset into a new workspace (see the module docstring)."""
    dsn = asyncpg_dsn(url)
    started = time.perf_counter()
    anchor = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    name = spec.prefix(kind) + f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    workspace_id, read_key = await _new_workspace(url, name)
    ds = Dataset(
        workspace_id=workspace_id,
        name=name,
        kind=kind,
        spec=spec,
        customers=spec.customers,
        events=0,
        read_key=read_key,
        anchor=anchor.isoformat(),
    )
    console.log(
        f"dataset workspace {workspace_id} ({name}): {spec.customers:,} customers x "
        f"{spec.events_per_customer} events, {spec.archetypes:,} archetypes, "
        f"{spec.days} days, kind={kind}"
    )
    t0 = time.perf_counter()
    rows, meta, stats = make_archetypes(spec, anchor)
    ds.archetype_stats = stats
    ds.timings["archetypes_s"] = round(time.perf_counter() - t0, 2)
    console.log(
        f"archetypes: {len(rows):,} events in {ds.timings['archetypes_s']:.1f} s; "
        f"identified {stats['identified_pct']}%, buyers {stats['buyers_pct']}%, "
        f"repeat buyers {stats['repeat_buyers_pct']}%, surveys {stats['survey_pct']}%, "
        f"heavy {stats['heavy_pct']}%"
    )
    derived: _Derived | None = None
    template_ws: int | None = None
    if spec.breakdowns:
        await set_journey_model(dsn, workspace_id, spec.breakdowns)
    if kind in ("full", "aggregates"):
        t0 = time.perf_counter()
        template_ws, _ = await _new_workspace(url, name.replace(f"bench-{kind}-", "bench-tmpl-"))
        if spec.breakdowns:
            await set_journey_model(dsn, template_ws, spec.breakdowns)
        await _stitch_template(url, template_ws, meta)
        derived = await _template_derived(dsn, template_ws, rows, facts=kind == "aggregates")
        await drop_workspace_data(dsn, template_ws, events=False)
        ds.timings["template_stitch_s"] = round(time.perf_counter() - t0, 2)
        console.log(
            f"archetypes stitched by the real stitcher in {ds.timings['template_stitch_s']:.1f} s"
        )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET temp_buffers = '512MB'")
        await conn.execute("SET work_mem = '256MB'")
        await conn.execute("SET synchronous_commit = off")
        t0 = time.perf_counter()
        await _load_template(conn, rows)
        total = await _schedule(conn, spec, anchor)
        weeks = await _ensure_partitions(conn, anchor - timedelta(days=spec.days + 1), anchor)
        ds.timings["schedule_s"] = round(time.perf_counter() - t0, 2)
        console.log(
            f"schedule of {total:,} events ({weeks} weekly partitions) in "
            f"{ds.timings['schedule_s']:.1f} s"
        )
        if derived is not None:
            await _load_derived(conn, derived)
        cluster_base = 0
        if derived is not None:
            per = derived.clusters_per_customer
            cluster_base = int(await conn.fetchval("SELECT nextval('identity_cluster_seq')"))
            await conn.execute(
                "SELECT setval('identity_cluster_seq', $1)", cluster_base + spec.customers * per + 1
            )
        with _progress(console) as bar:
            t0 = time.perf_counter()
            what = "raw events + timeline rows" if derived is not None else "raw events"
            task: TaskID = bar.add_task(f"insert {what}", total=total, info="")
            done = 0
            while done < total:
                upto = min(total, done + chunk_events)
                async with conn.transaction():
                    await conn.execute(_RAW_INSERT, workspace_id, done, upto)
                    if derived is not None:
                        await conn.execute(_JE_INSERT, workspace_id, done, upto)
                bar.update(
                    task,
                    advance=upto - done,
                    info=(f"{_rate(upto, time.perf_counter() - t0):,.0f} events/s"),
                )
                done = upto
            ds.timings["raw_s"] = round(time.perf_counter() - t0, 2)
            ds.rows_per_s["events" + ("+journey_events" if derived else "")] = round(
                _rate(total, ds.timings["raw_s"])
            )
            ds.events = total
            if derived is not None:
                t0 = time.perf_counter()
                task = bar.add_task("insert customers + identities", total=spec.customers, info="")
                n = 0
                while n < spec.customers:
                    upto = min(spec.customers, n + chunk_customers)
                    async with conn.transaction():
                        if derived.facts:
                            await conn.execute(_CUSTOMERS_FACTS_INSERT, workspace_id, n, upto)
                            await conn.execute(_STAGE_ENTRIES_INSERT, workspace_id, n, upto)
                        else:
                            await conn.execute(_CUSTOMERS_INSERT, workspace_id, n, upto)
                        await conn.execute(
                            _IDENTITIES_INSERT,
                            workspace_id,
                            n,
                            upto,
                            cluster_base,
                            derived.clusters_per_customer,
                        )
                        await conn.execute(_LINKS_INSERT, workspace_id, n, upto)
                        await conn.execute(
                            _LEDGER_INSERT,
                            workspace_id,
                            n,
                            upto,
                            cluster_base,
                            derived.clusters_per_customer,
                        )
                    bar.update(
                        task,
                        advance=upto - n,
                        info=(f"{_rate(upto, time.perf_counter() - t0):,.0f} customers/s"),
                    )
                    n = upto
                ds.timings["derived_s"] = round(time.perf_counter() - t0, 2)
                ds.rows_per_s["customers"] = round(_rate(spec.customers, ds.timings["derived_s"]))
                ds.derived = (
                    "SQL copy of archetypes stitched by the real WorkspaceStitcher "
                    "(renamed identifiers, shifted times)"
                )
                if derived.facts:
                    t0 = time.perf_counter()
                    task = bar.add_task("rollups from customers.facts", total=4, info="")

                    def step(table: str) -> None:
                        bar.update(task, info=table)

                    async with conn.transaction():
                        written = await rebuild_rollups_from_facts(
                            conn, workspace_id, progress=step
                        )
                    bar.update(task, completed=4, info="")
                    ds.timings["rollups_s"] = round(time.perf_counter() - t0, 2)
                    ds.archetype_stats["rollup_rows"] = written
                    ds.derived += (
                        "; contributions (customers.facts, dims, stage_entries) copied the same "
                        "way, rollups summed from customers.facts in SQL"
                    )
            t0 = time.perf_counter()
            tables = ["events", *(_COPIED_TABLES if derived is not None else ())]
            if derived is not None and derived.facts:
                tables += ["stage_entries", *ROLLUP_TABLES, *BLOCK_TABLES]
            task = bar.add_task("vacuum analyze", total=len(tables), info="")
            await conn.execute("RESET synchronous_commit")
            for table in tables:
                bar.update(task, info=table)
                await conn.execute(f"VACUUM (ANALYZE) {table}")
                bar.advance(task)
            ds.timings["vacuum_s"] = round(time.perf_counter() - t0, 2)
        ds.timings["total_s"] = round(time.perf_counter() - started, 2)
        info = {**ds.as_dict(), "complete": True}
        info.pop("spec")
        await conn.execute(
            "UPDATE workspaces SET settings = settings || jsonb_build_object('bench_dataset', "
            "$2::jsonb) WHERE id = $1",
            workspace_id,
            orjson.dumps(info).decode(),
        )
    finally:
        await conn.close()
        if template_ws is not None:
            await drop_workspace_data(dsn, template_ws, events=False)
    console.log(
        f"dataset ready in {ds.timings['total_s']:.1f} s: {ds.events:,} events ({ds.rows_per_s})"
    )
    return ds


async def ensure_dataset(
    url: str, spec: DatasetSpec, kind: Kind, console: Console, *, reuse: bool
) -> Dataset:
    """A kept dataset of this shape (with `reuse`), else a newly generated one."""
    if reuse:
        found = await find_dataset(asyncpg_dsn(url), spec, kind)
        if found is not None:
            console.log(
                f"reusing dataset {found.name} (workspace {found.workspace_id}): "
                f"{found.customers:,} customers, {found.events:,} events"
            )
            return found
        console.log("no kept dataset of this shape: generating one")
    return await generate(url, spec, kind, console)


# --------------------------------------------------------------------------- verification


_COMPARE = {
    "customers": (
        "customer_id",
        "SELECT customer_id, first_seen, last_seen, event_count, stage, "
        "stage_entered_at, stage_history, traits FROM customers "
        "WHERE workspace_id = $1 AND customer_id = ANY($2::text[]) "
        "ORDER BY customer_id",
    ),
    "journey_events": (
        "message_id",
        "SELECT message_id, customer_id, timestamp, received_at, "
        "type, event, user_id, anonymous_id, trait_identifier, source_channel, "
        "channel, session_id, stage, flags, properties, traits, campaign "
        "FROM journey_events WHERE workspace_id = $1 "
        "AND customer_id = ANY($2::text[]) ORDER BY message_id",
    ),
    "identities": (
        "value",
        "SELECT kind, value, customer_id, first_seen, first_message_id, "
        "shared_device FROM identities WHERE workspace_id = $1 "
        "AND customer_id = ANY($2::text[]) ORDER BY kind, value",
    ),
    "identity_links": (
        "a_value",
        "SELECT l.a_kind, l.a_value, l.b_kind, l.b_value, l.rule, "
        "l.at, l.message_id FROM identity_links l JOIN identities i ON "
        "i.workspace_id = l.workspace_id AND i.kind = l.b_kind AND "
        "i.value = l.b_value WHERE l.workspace_id = $1 "
        "AND i.customer_id = ANY($2::text[]) ORDER BY 1, 2, 3, 4, 5",
    ),
}


# kind "aggregates": the contributions, compared as what the stitcher reads back (`Facts`).
_COMPARE_AGGREGATES = {
    "customers.facts": (
        "customer_id",
        "SELECT customer_id, dims, facts FROM customers WHERE workspace_id = $1 "
        "AND customer_id = ANY($2::text[]) ORDER BY customer_id",
    ),
    "stage_entries": (
        "customer_id",
        "SELECT customer_id, stage, entered_at FROM stage_entries WHERE workspace_id = $1 "
        "AND customer_id = ANY($2::text[]) ORDER BY customer_id, stage",
    ),
}


def _comparable(row: asyncpg.Record) -> dict[str, Any]:
    from app.aggregates.facts import Facts

    out = dict(row)
    if out.get("facts") is not None:
        out["facts"] = Facts.from_json(orjson.loads(out["facts"]))
    if isinstance(out.get("dims"), str):
        out["dims"] = orjson.loads(out["dims"])
    return out


async def verify_rollups(url: str, workspace_id: int, console: Console) -> dict[str, Any]:
    """The workspace's rollup tables against a from-scratch sum of every customer's stored
    contribution by the stitcher's own `add_facts` (floats within 1e-6)."""
    from app.aggregates.rollups_from_facts import compare_rollups, sum_facts

    t0 = time.perf_counter()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            expected = await sum_facts(conn, workspace_id)
            result = await compare_rollups(conn, workspace_id, expected)
    finally:
        await conn.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["mismatches"] = result["mismatches"][:20]
    console.log(
        f"rollups vs a from-scratch sum of every customer's facts ({result['rows']} rows, "
        f"{result['seconds']} s): "
        + ("identical" if result["identical"] else f"MISMATCH {result['mismatches'][:5]}")
    )
    return result


async def verify_sample(
    url: str, workspace_id: int, sample: int, console: Console
) -> dict[str, Any]:
    """Re-stitch the raw events of `sample` random customers with the real stitcher (into a
    scratch workspace, outside the feed) and compare every derived row with the dataset's."""
    from app.journeys.stitch import WorkspaceStitcher
    from app.journeys.stitcher import model_for

    dsn = asyncpg_dsn(url)
    scratch, _ = await _new_workspace(url, f"bench-verify-{secrets.token_hex(4)}")
    engine = make_engine(url, pool_size=1)
    result: dict[str, Any] = {"customers": 0, "rows_compared": 0, "mismatches": []}
    try:
        async with raw_connection(engine) as conn:
            customers = [
                r["customer_id"]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customers WHERE workspace_id = $1 "
                    "ORDER BY random() LIMIT $2",
                    workspace_id,
                    sample,
                )
            ]
            mids = [
                r["message_id"]
                for r in await conn.fetch(
                    "SELECT message_id FROM journey_events WHERE workspace_id = $1 "
                    "AND customer_id = ANY($2::text[])",
                    workspace_id,
                    customers,
                )
            ]
            raw = await conn.fetch(
                "SELECT workspace_id, message_id, tx::text::bigint AS tx, seq, timestamp, "
                "received_at, flags, payload FROM events WHERE workspace_id = $1 "
                "AND message_id = ANY($2::text[]) ORDER BY tx, seq",
                workspace_id,
                mids,
            )
            await conn.execute(
                "UPDATE workspaces SET settings = settings || jsonb_strip_nulls("
                "jsonb_build_object('journey_model', (SELECT settings -> 'journey_model' "
                "FROM workspaces WHERE id = $2))) WHERE id = $1",
                scratch,
                workspace_id,
            )
            model = await model_for(conn, scratch)
            for start in range(0, len(raw), 2_000):
                async with conn.transaction():
                    await WorkspaceStitcher(conn, scratch, model).stitch(raw[start : start + 2_000])
            result["customers"] = len(customers)
            result["raw_events"] = len(raw)
            compare = dict(_COMPARE)
            with_facts = await conn.fetchval(
                "SELECT count(*) FROM customers WHERE workspace_id = $1 "
                "AND customer_id = ANY($2::text[]) AND facts IS NOT NULL",
                workspace_id,
                customers,
            )
            if with_facts:
                compare |= _COMPARE_AGGREGATES
            for table, (_, sql) in compare.items():
                mine = [_comparable(r) for r in await conn.fetch(sql, workspace_id, customers)]
                real = [_comparable(r) for r in await conn.fetch(sql, scratch, customers)]
                result["rows_compared"] += len(real)
                if mine != real:
                    diff = next(
                        ((a, b) for a, b in zip(mine, real, strict=False) if a != b),
                        (len(mine), len(real)),
                    )
                    result["mismatches"].append(
                        {
                            "table": table,
                            "dataset_rows": len(mine),
                            "stitched_rows": len(real),
                            "first_difference": repr(diff)[:600],
                        }
                    )
    finally:
        await engine.dispose()
        await drop_workspace_data(dsn, scratch)
    result["identical"] = not result["mismatches"]
    console.log(
        f"verification: {result['customers']} random customers re-stitched from their "
        f"{result.get('raw_events', 0)} raw events by the real stitcher: "
        + ("identical" if result["identical"] else f"MISMATCH {result['mismatches']}")
    )
    return result


# --------------------------------------------------------------------------- shared helpers


def resolve_url(database_url: str | None, console: Console) -> tuple[str, Any]:
    """The database URL (option, JOURNEYS_DATABASE_URL, else embedded) and the embedded handle."""
    url = database_url or os.environ.get("JOURNEYS_DATABASE_URL")
    if url:
        return url, None
    from app.core.settings import get_settings
    from app.runtime import resolve_database

    console.log("no database URL: starting the embedded PostgreSQL")
    return resolve_database(get_settings())
