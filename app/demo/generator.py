"""Synthetic customer journeys for `journeys demo`: Segment events as real SDKs and tools send them.

Pure: standard library only, no I/O. `generate(customers=…, days=…, seed=…, now=…)` is a function
of its arguments: the same seed gives the same customers, identifiers, message ids and events
(timestamps are placed relative to `now`). Customer `i` depends only on the seed and `i`, so a
smaller run is a prefix of a larger one.

The shop is an outdoor-gear store on `shop.example.com`. Each customer has a persona (sent as
`traits.persona` on identify) that sets how far and how fast they go and where they come from:

- bargain hunter: ads, affiliates and deal emails/SMS; abandons carts, buys with coupons;
- researcher: search engines and review sites; many visits, slow to buy, writes reviews;
- impulse buyer: social media; buys in the first visits, shares products;
- loyal fan: direct, email and the mobile app; buys again, in store too, promotes the brand.

The journey of every customer is planned first (how far they get in the default journey model:
awareness → consideration → purchase → retention → loyalty → advocacy) and then played out as
visits: web sessions with analytics.js context (page, referrer, UTM campaign, click ids), mobile
app sessions (analytics-ios / analytics-android, a second anonymous id identified at login),
emails and SMS from a messaging tool, support tickets, store visits and surveys. Checkouts are
part of the `checkout_redesign` A/B test, whose treatment converts better.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

SITE: Final = "https://shop.example.com"

STAGES: Final = ("awareness", "consideration", "purchase", "retention", "loyalty", "advocacy")

BARGAIN_HUNTER: Final = "bargain hunter"
RESEARCHER: Final = "researcher"
IMPULSE_BUYER: Final = "impulse buyer"
LOYAL_FAN: Final = "loyal fan"
PERSONA_NAMES: Final = (BARGAIN_HUNTER, RESEARCHER, IMPULSE_BUYER, LOYAL_FAN)

EXPERIMENT: Final = "checkout_redesign"
CONTROL: Final = "control"
TREATMENT: Final = "treatment"
# The redesigned checkout turns this many times as many checkouts into orders.
TREATMENT_LIFT: Final = 1.3

# Channel names as app/journeys/channels.py spells them (kept literal: this module is pure and
# stands alone; the unit tests check the events against the real channel code).
DIRECT: Final = "Direct"
ORGANIC_SEARCH: Final = "Organic Search"
PAID_SEARCH: Final = "Paid Search"
ORGANIC_SOCIAL: Final = "Organic Social"
PAID_SOCIAL: Final = "Paid Social"
EMAIL: Final = "Email"
SMS: Final = "SMS"
REFERRAL: Final = "Referral"
DISPLAY: Final = "Display"
AFFILIATES: Final = "Affiliates"
MOBILE_APP: Final = "Mobile App"

# Visits closer than this would be one session (30 min idle); planned gaps never go below it.
_MIN_GAP: Final = 1_900.0
# The newest event is this long before `now`.
_END_MARGIN: Final = 300.0


@dataclass(frozen=True, slots=True)
class Persona:
    """How a kind of customer behaves: funnel probabilities, pace and where they come from."""

    name: str
    weight: float
    consider: float  # goes beyond reading content
    cart: float  # adds to cart, given consideration
    checkout: float  # starts a checkout, given a cart
    buy: float  # completes the order, given a checkout (control arm)
    signup: float  # creates an account without buying
    app: float  # installs the mobile app, given an account
    returns: float  # comes back after the first order
    repeat: float  # orders again, given a return
    advocate: float  # reviews, shares, refers or promotes, given an order
    browse_visits: tuple[int, int]
    browse_depth: tuple[int, int]  # product pages per visit
    gap_hours: tuple[float, float]  # between visits (log-uniform)
    first_touch: tuple[tuple[str, int], ...]
    return_touch: tuple[tuple[str, int], ...]
    coupon: float
    nps: tuple[int, int]  # score range of a survey answer when not a promoter
    csat: tuple[int, int]
    advocacy: tuple[str, ...]  # what this persona does to advocate


PERSONAS: Final = (
    Persona(
        name=BARGAIN_HUNTER,
        weight=0.30,
        consider=0.80,
        cart=0.80,
        checkout=0.80,
        buy=0.50,
        signup=0.55,
        app=0.25,
        returns=0.60,
        repeat=0.40,
        advocate=0.15,
        browse_visits=(2, 4),
        browse_depth=(2, 5),
        gap_hours=(4.0, 96.0),
        first_touch=(
            (PAID_SEARCH, 3),
            (AFFILIATES, 3),
            (DISPLAY, 2),
            (PAID_SOCIAL, 1),
            (ORGANIC_SEARCH, 1),
        ),
        return_touch=(
            (EMAIL, 3),
            (SMS, 2),
            (PAID_SEARCH, 2),
            (DISPLAY, 2),
            (AFFILIATES, 1),
            (DIRECT, 1),
        ),
        coupon=0.8,
        nps=(3, 8),
        csat=(2, 5),
        advocacy=("referral", "referral", "share"),
    ),
    Persona(
        name=RESEARCHER,
        weight=0.25,
        consider=0.90,
        cart=0.70,
        checkout=0.75,
        buy=0.55,
        signup=0.40,
        app=0.20,
        returns=0.55,
        repeat=0.30,
        advocate=0.30,
        browse_visits=(3, 6),
        browse_depth=(3, 7),
        gap_hours=(12.0, 120.0),
        first_touch=((ORGANIC_SEARCH, 5), (REFERRAL, 3), (ORGANIC_SOCIAL, 1), (DIRECT, 1)),
        return_touch=(
            (ORGANIC_SEARCH, 3),
            (DIRECT, 2),
            (REFERRAL, 2),
            (EMAIL, 2),
            (MOBILE_APP, 1),
        ),
        coupon=0.1,
        nps=(5, 8),
        csat=(3, 5),
        advocacy=("review", "review", "survey"),
    ),
    Persona(
        name=IMPULSE_BUYER,
        weight=0.25,
        consider=0.75,
        cart=0.90,
        checkout=0.90,
        buy=0.62,
        signup=0.30,
        app=0.30,
        returns=0.40,
        repeat=0.20,
        advocate=0.20,
        browse_visits=(1, 2),
        browse_depth=(1, 3),
        gap_hours=(1.0, 48.0),
        first_touch=((PAID_SOCIAL, 4), (ORGANIC_SOCIAL, 3), (DISPLAY, 1), (DIRECT, 1)),
        return_touch=(
            (PAID_SOCIAL, 2),
            (ORGANIC_SOCIAL, 2),
            (EMAIL, 1),
            (MOBILE_APP, 1),
            (DIRECT, 1),
        ),
        coupon=0.2,
        nps=(4, 8),
        csat=(2, 5),
        advocacy=("share", "share", "review"),
    ),
    Persona(
        name=LOYAL_FAN,
        weight=0.20,
        consider=0.90,
        cart=0.90,
        checkout=0.90,
        buy=0.70,
        signup=0.70,
        app=0.55,
        returns=0.90,
        repeat=0.55,
        advocate=0.35,
        browse_visits=(2, 3),
        browse_depth=(2, 4),
        gap_hours=(12.0, 96.0),
        first_touch=((DIRECT, 3), (ORGANIC_SEARCH, 2), (ORGANIC_SOCIAL, 1), (REFERRAL, 1)),
        return_touch=((DIRECT, 3), (EMAIL, 3), (MOBILE_APP, 3), (ORGANIC_SEARCH, 1)),
        coupon=0.15,
        nps=(6, 8),
        csat=(3, 5),
        advocacy=("survey", "review", "referral"),
    ),
)
PERSONA_BY_NAME: Final = {p.name: p for p in PERSONAS}


@dataclass(frozen=True, slots=True)
class Product:
    """An item of the demo shop's catalogue."""

    product_id: str
    name: str
    category: str
    price: float

    @property
    def slug(self) -> str:
        """The product's URL path segment."""
        return "-".join(self.name.lower().replace("(", "").replace(")", "").split())

    def as_properties(self, quantity: int = 1) -> dict[str, Any]:
        """Segment e-commerce spec product fields."""
        return {
            "product_id": self.product_id,
            "sku": self.product_id.upper(),
            "name": self.name,
            "category": self.category,
            "brand": "Acme Outdoor",
            "price": self.price,
            "quantity": quantity,
            "currency": "USD",
        }


CATALOGUE: Final = (
    Product("p-1001", "Ridgeline 2P Tent", "Tents", 289.0),
    Product("p-1002", "Summit 1P Ultralight Tent", "Tents", 399.0),
    Product("p-1003", "Basecamp 4P Family Tent", "Tents", 459.0),
    Product("p-1101", "Trailhead 45L Backpack", "Backpacks", 179.0),
    Product("p-1102", "Daybreak 22L Daypack", "Backpacks", 89.0),
    Product("p-1201", "Stormshell Rain Jacket", "Jackets", 159.0),
    Product("p-1202", "Loft Down Jacket", "Jackets", 229.0),
    Product("p-1301", "Switchback Trail Runners", "Shoes", 139.0),
    Product("p-1302", "Granite Hiking Boots", "Shoes", 199.0),
    Product("p-1401", "Merino Hiking Socks (3-pack)", "Socks", 39.0),
    Product("p-1501", "Beam 400 Headlamp", "Headlamps", 49.0),
    Product("p-1601", "Ember Sleeping Bag", "Sleeping Bags", 249.0),
    Product("p-1701", "Trek Carbon Poles", "Poles", 119.0),
)
_CATEGORIES: Final = tuple(sorted({p.category for p in CATALOGUE}))

_ARTICLES: Final = (
    ("/journal/how-to-choose-a-backpacking-tent", "How to choose a backpacking tent"),
    ("/journal/layering-for-shoulder-season", "Layering for shoulder season"),
    ("/journal/ten-day-hikes-near-the-city", "Ten day hikes near the city"),
    ("/journal/leave-no-trace-basics", "Leave no trace: the basics"),
    ("/journal/first-overnight-checklist", "Your first overnight: a checklist"),
)
_CONTENT_PAGES: Final = (
    ("/", "Acme Outdoor"),
    ("/stores", "Find a store"),
    ("/about", "About Acme Outdoor"),
    ("/sale", "Sale"),
)
_SEARCHES: Final = (
    "2 person tent",
    "ultralight tent",
    "rain jacket",
    "hiking boots waterproof",
    "daypack",
    "down jacket sale",
    "headlamp",
    "trail runners",
)

_FIRST_NAMES: Final = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
    "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wen",
    "Yara", "Zoe", "Liam", "Maya", "Noah", "Aiko", "Leon",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Adams", "Brown", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Kim", "Lopez", "Müller", "Nguyen", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Walsh",
)  # fmt: skip
_WEB_USER_AGENTS: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
_STORES: Final = (
    ("st-01", "Acme Outdoor Downtown", "Portland"),
    ("st-02", "Acme Outdoor Riverside", "Denver"),
    ("st-03", "Acme Outdoor Harbor", "Seattle"),
)
_SUPPORT_TOPICS: Final = ("delivery", "returns", "sizing", "warranty", "payment")


@dataclass(frozen=True, slots=True)
class Touch:
    """Where a web visit came from: the referrer, the UTM campaign and an ad click id."""

    channel: str
    referrer: str = ""
    campaign: Mapping[str, str] = field(default_factory=dict)
    click_id: tuple[str, str] | None = None


def _utm(source: str, medium: str, name: str, **extra: str) -> dict[str, str]:
    return {"source": source, "medium": medium, "name": name, **extra}


def make_touch(rng: random.Random, channel: str) -> Touch:
    """A concrete referrer / campaign / click id that the channel grouping files under
    `channel` (Email and SMS touches are the landing of a message's link)."""
    click = f"{rng.getrandbits(64):016x}"
    if channel == ORGANIC_SEARCH:
        return Touch(
            channel,
            referrer=rng.choice(
                (
                    "https://www.google.com/",
                    "https://www.google.co.uk/",
                    "https://www.bing.com/",
                    "https://duckduckgo.com/",
                    "https://www.ecosia.org/",
                )
            ),
        )
    if channel == PAID_SEARCH:
        engine = rng.choice(("google", "google", "bing"))
        name = rng.choice(("brand_search", "generic_tents", "rain_gear_q3"))
        term = rng.choice(_SEARCHES)
        click_name = "gclid" if engine == "google" else "msclkid"
        referrer = "https://www.google.com/" if engine == "google" else "https://www.bing.com/"
        return Touch(
            channel,
            referrer=referrer,
            campaign=_utm(engine, "cpc", name, term=term),
            click_id=(click_name, click),
        )
    if channel == ORGANIC_SOCIAL:
        if rng.random() < 0.3:
            return Touch(
                channel,
                referrer="https://www.instagram.com/",
                campaign=_utm("instagram", "social", "creator_collab"),
            )
        return Touch(
            channel,
            referrer=rng.choice(
                (
                    "https://l.facebook.com/",
                    "https://t.co/",
                    "https://www.reddit.com/r/CampingGear/",
                    "https://www.pinterest.com/",
                    "https://www.youtube.com/",
                )
            ),
        )
    if channel == PAID_SOCIAL:
        network = rng.choice(("facebook", "instagram", "tiktok"))
        click_name = {"facebook": "fbclid", "instagram": "fbclid", "tiktok": "ttclid"}[network]
        medium = "paid_social" if network != "instagram" else "cpc"
        return Touch(
            channel,
            referrer=f"https://www.{network}.com/",
            campaign=_utm(
                network, medium, rng.choice(("summer_launch", "retargeting_q3", "ugc_reels"))
            ),
            click_id=(click_name, click),
        )
    if channel == DISPLAY:
        if rng.random() < 0.5:
            return Touch(channel, campaign=_utm("criteo", "display", "retargeting_banners"))
        return Touch(
            channel,
            campaign=_utm("google", "display", "gdn_prospecting", content="300x250"),
            click_id=("dclid", click),
        )
    if channel == AFFILIATES:
        partner = rng.choice(("rakuten", "outdoorgearlab", "trailreviews"))
        return Touch(
            channel,
            referrer=f"https://www.{partner}.com/",
            campaign=_utm(partner, "affiliate", "partner_program"),
        )
    if channel == REFERRAL:
        return Touch(
            channel,
            referrer=rng.choice(
                (
                    "https://www.outdoorgearlab.com/topics/camping-and-hiking/best-tent",
                    "https://www.switchbacktravel.com/best-backpacking-tents",
                    "https://trailforum.example.org/t/gear-list-for-beginners",
                    "https://www.rtings.com/headlamp/reviews/best",
                )
            ),
        )
    if channel == EMAIL:
        return Touch(
            channel,
            campaign=_utm(
                "newsletter", "email", rng.choice(("weekly_digest", "new_arrivals", "trail_guide"))
            ),
        )
    if channel == SMS:
        return Touch(channel, campaign=_utm("attentive", "sms", "flash_sale"))
    return Touch(DIRECT)


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    """One generated customer: who they are, what was planned for them, and their events."""

    index: int
    persona: str
    planned_stage: str
    user_id: str | None
    email: str | None
    anonymous_ids: tuple[str, ...]
    variation: str | None
    events: tuple[dict[str, Any], ...]

    @property
    def identifier(self) -> tuple[str, str]:
        """(kind, value) of an identifier the profile API answers for this customer."""
        if self.user_id is not None:
            return ("user_id", self.user_id)
        return ("anonymous_id", self.anonymous_ids[0])


@dataclass(frozen=True, slots=True)
class DemoDataset:
    """A generated demo: customers and their events, all placed before `now`."""

    seed: int
    days: int
    now: datetime
    customers: tuple[DemoCustomer, ...]

    def events(self) -> list[dict[str, Any]]:
        """Every event, in event time (roughly the order the SDKs would have sent them)."""
        merged = [e for c in self.customers for e in c.events]
        merged.sort(key=lambda e: (e["timestamp"], e["messageId"]))
        return merged

    @property
    def event_count(self) -> int:
        """How many events the demo holds."""
        return sum(len(c.events) for c in self.customers)


def generate(*, customers: int, days: int, seed: int, now: datetime) -> DemoDataset:
    """`customers` journeys spread over the `days` before `now`; deterministic in `seed`."""
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    made = tuple(_customer(seed=seed, index=i, days=days, now=now) for i in range(customers))
    return DemoDataset(seed=seed, days=days, now=now, customers=made)


# --------------------------------------------------------------------------- one customer


@dataclass
class _Visit:
    """A burst of events: a web or app session, or a message and what followed it."""

    gap: float  # seconds since the end of the previous visit
    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    clock: float = 0.0
    page: dict[str, str] = field(default_factory=dict)
    campaign: dict[str, str] = field(default_factory=dict)

    def add(self, event: dict[str, Any], *, after: float) -> None:
        self.clock += max(after, 1.0)
        self.items.append((self.clock, event))


@dataclass(frozen=True, slots=True)
class _Plan:
    considers: bool
    carts: bool
    checks_out: bool
    variation: str | None
    buys: bool
    returns: bool
    repeats: bool
    advocates: bool
    signs_up: bool
    uses_app: bool

    @property
    def stage(self) -> str:
        if self.advocates:
            return "advocacy"
        if self.repeats:
            return "loyalty"
        if self.returns:
            return "retention"
        if self.buys:
            return "purchase"
        if self.considers:
            return "consideration"
        return "awareness"


def _plan(rng: random.Random, p: Persona) -> _Plan:
    considers = rng.random() < p.consider
    carts = considers and rng.random() < p.cart
    checks_out = carts and rng.random() < p.checkout
    variation = rng.choice((CONTROL, TREATMENT)) if checks_out else None
    chance = p.buy * (TREATMENT_LIFT if variation == TREATMENT else 1.0)
    buys = checks_out and rng.random() < min(chance, 0.95)
    returns = buys and rng.random() < p.returns
    repeats = returns and rng.random() < p.repeat
    advocates = buys and rng.random() < p.advocate
    signs_up = buys or (considers and rng.random() < p.signup)
    uses_app = signs_up and rng.random() < p.app
    return _Plan(
        considers=considers,
        carts=carts,
        checks_out=checks_out,
        variation=variation,
        buys=buys,
        returns=returns,
        repeats=repeats,
        advocates=advocates,
        signs_up=signs_up,
        uses_app=uses_app,
    )


def _weighted(rng: random.Random, options: Sequence[tuple[str, int]]) -> str:
    return rng.choices([name for name, _ in options], weights=[w for _, w in options])[0]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Journey:
    """Builds one customer's visits; `_customer` decides what happens in them."""

    def __init__(self, rng: random.Random, persona: Persona, index: int, plan: _Plan) -> None:
        self.rng = rng
        self.persona = persona
        self.index = index
        self.plan = plan
        self.visits: list[_Visit] = []
        self.web_anonymous_id = self._uuid()
        self.user_id = f"u_{rng.getrandbits(48):012x}"
        self.first_name = rng.choice(_FIRST_NAMES)
        self.last_name = rng.choice(_LAST_NAMES)
        local = f"{self.first_name}.{self.last_name}".lower().replace("ü", "ue")
        self.email = f"{local}+{self.user_id[2:8]}@example.com"
        self.user_agent = rng.choice(_WEB_USER_AGENTS)
        self.ip = f"203.0.113.{rng.randrange(1, 255)}"
        self.mobile_ip = f"198.51.100.{rng.randrange(1, 255)}"
        self.platform = rng.choice(("ios", "android"))
        self.favourite = rng.choice(_CATEGORIES)
        self.known = False  # has an account (a user id exists)
        self.web_logged_in = False
        self.mobile_anonymous_id: str | None = None
        self.app_logged_in = False
        self.cart: list[Product] = []
        self.last_order: list[Product] = []
        self.orders = 0

    # ------------------------------------------------------------------ ids and timing

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{self.rng.getrandbits(40):010x}"

    def visit(self, *, hours: tuple[float, float] | None = None) -> _Visit:
        """Start a new visit after a gap (the persona's pace unless `hours` is given)."""
        if not self.visits:
            gap = 0.0
        else:
            low, high = hours or self.persona.gap_hours
            gap = max(_log_uniform(self.rng, low, high) * 3600.0, _MIN_GAP)
        v = _Visit(gap=gap)
        self.visits.append(v)
        return v

    def _step(self, low: float = 8.0, high: float = 90.0) -> float:
        return self.rng.uniform(low, high)

    # ------------------------------------------------------------------ event shapes

    def _base(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "messageId": self._uuid(), **fields}

    def _web(self, v: _Visit, kind: str, **fields: Any) -> dict[str, Any]:
        context: dict[str, Any] = {
            "library": {"name": "analytics.js", "version": "npm:next-1.84.0"},
            "userAgent": self.user_agent,
            "locale": "en-US",
            "timezone": "America/Los_Angeles",
            "ip": self.ip,
            "page": dict(v.page),
        }
        if v.campaign:
            context["campaign"] = dict(v.campaign)
        event = self._base(kind, anonymousId=self.web_anonymous_id, context=context, **fields)
        if self.web_logged_in:
            event["userId"] = self.user_id
        return event

    def _app(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert self.mobile_anonymous_id is not None
        ios = self.platform == "ios"
        context: dict[str, Any] = {
            "library": (
                {"name": "analytics-ios", "version": "4.1.8"}
                if ios
                else {"name": "analytics-android", "version": "4.11.3"}
            ),
            "app": {"name": "Acme Outdoor", "version": "3.2.0", "build": "320"},
            "device": (
                {"type": "ios", "manufacturer": "Apple", "model": "iPhone15,2"}
                if ios
                else {"type": "android", "manufacturer": "Google", "model": "Pixel 8"}
            ),
            "os": {"name": "iOS", "version": "17.4"}
            if ios
            else {"name": "Android", "version": "14"},
            "locale": "en-US",
            "ip": self.mobile_ip,
        }
        event = self._base(kind, anonymousId=self.mobile_anonymous_id, context=context, **fields)
        if self.app_logged_in:
            event["userId"] = self.user_id
        return event

    def _server(self, name: str, library: str, properties: dict[str, Any]) -> dict[str, Any]:
        """A track event sent by a back-office tool (user id only, no device)."""
        return self._base(
            "track",
            event=name,
            userId=self.user_id,
            properties=properties,
            context={"library": {"name": library, "version": "1.0.0"}},
        )

    def _traits(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "name": f"{self.first_name} {self.last_name}",
            "persona": self.persona.name,
            "favourite_category": self.favourite,
        }

    # ------------------------------------------------------------------ web

    def page(self, v: _Visit, path: str, title: str, *, touch: Touch | None = None) -> None:
        """A page view; `touch` makes it the landing page of the visit."""
        if touch is not None:
            params: dict[str, str] = {}
            for key, value in touch.campaign.items():
                params["utm_campaign" if key == "name" else f"utm_{key}"] = value
            if touch.click_id is not None:
                params[touch.click_id[0]] = touch.click_id[1]
            search = f"?{urlencode(params)}" if params else ""
            referrer = touch.referrer
            v.campaign = dict(touch.campaign)
        else:
            search = ""
            referrer = v.page.get("url", "")
            v.campaign = {}
        url = f"{SITE}{path}{search}"
        v.page = {"path": path, "referrer": referrer, "search": search, "title": title, "url": url}
        props = {"path": path, "referrer": referrer, "search": search, "title": title, "url": url}
        v.add(self._web(v, "page", name=title, properties=props), after=self._step(2, 40))

    def track(self, v: _Visit, name: str, properties: dict[str, Any]) -> None:
        """A track event on the current page."""
        v.add(self._web(v, "track", event=name, properties=properties), after=self._step(2, 25))

    def land(self, v: _Visit, touch: Touch, *, content_only: bool = False) -> None:
        """The first page of a visit, chosen to suit where the visitor came from."""
        rng = self.rng
        if content_only or (touch.channel in (ORGANIC_SEARCH, REFERRAL) and rng.random() < 0.4):
            path, title = rng.choice(_ARTICLES if rng.random() < 0.7 else _CONTENT_PAGES)
            self.page(v, path, title, touch=touch)
            return
        if touch.channel in (PAID_SEARCH, PAID_SOCIAL, AFFILIATES, REFERRAL, ORGANIC_SOCIAL):
            self.product(v, self._pick(), touch=touch)
            return
        if touch.channel in (DISPLAY, EMAIL, SMS):
            self.category(v, self.favourite if rng.random() < 0.6 else None, touch=touch)
            return
        self.page(v, "/", "Acme Outdoor", touch=touch)

    def _pick(self) -> Product:
        if self.rng.random() < 0.7:
            return self.rng.choice([p for p in CATALOGUE if p.category == self.favourite])
        return self.rng.choice(CATALOGUE)

    def product(self, v: _Visit, product: Product, *, touch: Touch | None = None) -> None:
        self.page(v, f"/p/{product.slug}", product.name, touch=touch)
        self.track(v, "Product Viewed", product.as_properties())

    def category(self, v: _Visit, category: str | None, *, touch: Touch | None = None) -> None:
        name = category or "Sale"
        path = f"/c/{name.lower().replace(' ', '-')}"
        self.page(v, path, name, touch=touch)
        items = [p for p in CATALOGUE if category is None or p.category == category]
        self.track(
            v,
            "Product List Viewed",
            {
                "list_id": path,
                "category": name,
                "products": [
                    {"product_id": p.product_id, "name": p.name, "price": p.price, "position": i}
                    for i, p in enumerate(items[:6], start=1)
                ],
            },
        )

    def browse(self, v: _Visit) -> None:
        """Search, list and product pages."""
        rng = self.rng
        low, high = self.persona.browse_depth
        if rng.random() < 0.5:
            query = rng.choice(_SEARCHES)
            self.page(v, "/search", f"Search: {query}")
            self.track(v, "Products Searched", {"query": query})
        elif rng.random() < 0.5:
            self.category(v, self.favourite)
        for _ in range(rng.randint(low, high)):
            self.product(v, self._pick())

    def sign_up(self, v: _Visit) -> None:
        """Account creation on the web: Signed Up and identify, then logged in."""
        self.page(v, "/account/signup", "Create your account")
        self.known = True
        self.web_logged_in = True
        traits = self._traits()
        v.add(self._web(v, "identify", traits=traits), after=self._step(20, 90))
        self.track(v, "Signed Up", {"method": "email", "marketing_opt_in": self.rng.random() < 0.8})

    def add_to_cart(self, v: _Visit) -> None:
        if not self.cart:
            self.cart = [self._pick()]
            if self.rng.random() < 0.35:
                self.cart.append(self.rng.choice(CATALOGUE))
        cart_id = self._id("cart")
        for product in self.cart:
            self.track(v, "Product Added", {"cart_id": cart_id, **product.as_properties()})
        self.page(v, "/cart", "Your cart")
        self.track(v, "Cart Viewed", {"cart_id": cart_id, "products": self._products(self.cart)})

    @staticmethod
    def _products(items: Sequence[Product]) -> list[dict[str, Any]]:
        return [p.as_properties() for p in items]

    def _order_properties(self, items: Sequence[Product], order_id: str) -> dict[str, Any]:
        subtotal = sum(p.price for p in items)
        props: dict[str, Any] = {
            "order_id": order_id,
            "currency": "USD",
            "products": self._products(items),
        }
        discount = 0.0
        if self.rng.random() < self.persona.coupon:
            discount = round(subtotal * 0.15, 2)
            props["coupon"] = self.rng.choice(("SAVE15", "WELCOME15", "FLASH15"))
        shipping = 0.0 if subtotal >= 100 else 7.95
        tax = round((subtotal - discount) * 0.08, 2)
        props.update(
            subtotal=subtotal,
            discount=discount,
            shipping=shipping,
            tax=tax,
            revenue=round(subtotal - discount, 2),
            total=round(subtotal - discount + shipping + tax, 2),
        )
        return props

    def checkout(self, v: _Visit, *, completes: bool) -> None:
        """Checkout (the A/B test's page) and, if it `completes`, the order."""
        assert self.plan.variation is not None
        self.page(v, "/checkout", "Checkout")
        v.add(
            self._web(
                v,
                "track",
                event="Experiment Viewed",
                properties={
                    "experiment_id": "exp_checkout_redesign",
                    "experiment_name": EXPERIMENT,
                    "variation_id": "v1" if self.plan.variation == TREATMENT else "v0",
                    "variation_name": self.plan.variation,
                },
            ),
            after=1.5,
        )
        order_id = self._id("ord")
        props = self._order_properties(self.cart, order_id)
        self.track(v, "Checkout Started", {k: v_ for k, v_ in props.items() if k != "coupon"})
        # The one-question survey of the checkout ("how easy was it?", 1-7): the redesign is
        # easier, and an abandoned checkout sometimes says why.
        easy = self.plan.variation == TREATMENT
        if not completes:
            if self.rng.random() < 0.3:
                self.track(
                    v,
                    "Feedback Submitted",
                    {
                        "question": "checkout_exit",
                        "success": False,
                        "effort": self.rng.randint(4, 6) if easy else self.rng.randint(5, 7),
                    },
                )
            return
        self.page(v, "/checkout/complete", "Thank you for your order")
        if self.rng.random() < 0.35:
            props["success"] = True
            props["effort"] = self.rng.randint(1, 3) if easy else self.rng.randint(2, 5)
        self.track(v, "Order Completed", props)
        self.last_order, self.cart = self.cart, []
        self.orders += 1

    # ------------------------------------------------------------------ app

    def app_session(self, v: _Visit, *, push: bool = False) -> None:
        """A mobile app session; the first one installs the app and logs in (cross-device)."""
        rng = self.rng
        first = self.mobile_anonymous_id is None
        if first:
            self.mobile_anonymous_id = self._uuid()
            v.add(
                self._app("track", event="Application Installed", properties={"version": "3.2.0"}),
                after=1,
            )
        elif push:
            v.add(
                self._app(
                    "track",
                    event="Push Notification Tapped",
                    properties={"campaign": "back_in_stock"},
                ),
                after=1,
            )
        v.add(
            self._app("track", event="Application Opened", properties={"from_background": False}),
            after=1,
        )
        v.add(self._app("screen", name="Home", properties={}), after=self._step(1, 5))
        if first or not self.app_logged_in:
            v.add(self._app("screen", name="Sign In", properties={}), after=self._step(5, 30))
            self.app_logged_in = True
            v.add(self._app("identify", traits=self._traits()), after=self._step(10, 40))
        for _ in range(rng.randint(1, 3)):
            product = self._pick()
            v.add(
                self._app(
                    "screen", name="Product Detail", properties={"product_id": product.product_id}
                ),
                after=self._step(5, 40),
            )
            v.add(
                self._app("track", event="Product Viewed", properties=product.as_properties()),
                after=1,
            )

    def app_order(self, v: _Visit) -> None:
        """A repeat order placed in the app."""
        items = [self._pick()]
        for product in items:
            v.add(
                self._app("track", event="Product Added", properties=product.as_properties()),
                after=self._step(10, 60),
            )
        v.add(self._app("screen", name="Checkout", properties={}), after=self._step(5, 20))
        props = self._order_properties(items, self._id("ord"))
        v.add(
            self._app("track", event="Order Completed", properties=props), after=self._step(30, 120)
        )
        self.last_order = items
        self.orders += 1

    # ------------------------------------------------------------------ messages and offline

    def send_email(
        self, v: _Visit, *, campaign: str, subject: str, clicks: bool, link: str = "/"
    ) -> Touch:
        """An email opened (and clicked): the touch of the visit its link starts."""
        utm = _utm("newsletter", "email", campaign)
        common = {
            "email_id": self._id("em"),
            "email_subject": subject,
            "campaign_id": f"cmp_{campaign}",
            "campaign_name": campaign,
        }
        context = {
            "library": {"name": "demo-email-service", "version": "1.0.0"},
            "campaign": dict(utm),
            "traits": {"email": self.email},
        }
        opened = self._base(
            "track", event="Email Opened", userId=self.user_id, properties=common, context=context
        )
        v.add(opened, after=1)
        if clicks:
            clicked = self._base(
                "track",
                event="Email Link Clicked",
                userId=self.user_id,
                properties={**common, "link_url": f"{SITE}{link}"},
                context={**context, "campaign": dict(utm)},
            )
            v.add(clicked, after=self._step(20, 400))
        return Touch(EMAIL, campaign=utm)

    def sms(self, v: _Visit) -> Touch:
        touch = make_touch(self.rng, SMS)
        event = self._server(
            "SMS Link Clicked",
            "demo-sms-gateway",
            {"message_id": self._id("sms"), "campaign_name": touch.campaign["name"]},
        )
        event["context"]["campaign"] = dict(touch.campaign)
        v.add(event, after=1)
        return touch

    def store_visit(self, v: _Visit, *, buys: bool) -> None:
        store_id, name, city = self.rng.choice(_STORES)
        where = {"store_id": store_id, "store_name": name, "city": city}
        v.add(self._server("Store Visited", "demo-pos", dict(where)), after=1)
        if buys:
            items = [self._pick()]
            props = {**self._order_properties(items, self._id("pos")), **where, "channel": "store"}
            v.add(self._server("Order Completed", "demo-pos", props), after=self._step(300, 1500))
            self.last_order = items
            self.orders += 1

    def support(self, v: _Visit) -> None:
        """A support ticket, its resolution and the CSAT answer (customer service)."""
        rng = self.rng
        ticket = self._id("tkt")
        topic = rng.choice(_SUPPORT_TOPICS)
        v.add(
            self._server(
                "Support Ticket Created",
                "demo-helpdesk",
                {"ticket_id": ticket, "topic": topic, "priority": rng.choice(("low", "normal"))},
            ),
            after=1,
        )
        low, high = self.persona.csat
        score = rng.randint(low, high)
        resolved = score >= 3 or rng.random() < 0.3
        v.add(
            self._server(
                "Support Ticket Resolved",
                "demo-helpdesk",
                {"ticket_id": ticket, "topic": topic, "resolved": resolved},
            ),
            after=self._step(900, 5400),
        )
        v.add(
            self._server(
                "CSAT Submitted",
                "demo-helpdesk",
                {
                    "ticket_id": ticket,
                    "channel": "support",
                    "score": score,
                    "success": resolved,
                    "effort": max(1, min(7, 8 - score - rng.randint(0, 2))),
                },
            ),
            after=self._step(120, 1200),
        )

    def live_chat(self, v: _Visit) -> None:
        """A pre-sales question on the site's chat (customer service, on the current page)."""
        self.track(v, "Live Chat Started", {"topic": "product_question"})

    def feedback_widget(self, v: _Visit) -> None:
        """The on-site "did you find what you were looking for?" widget."""
        rng = self.rng
        success = rng.random() < 0.6
        effort = rng.randint(1, 3) if success else rng.randint(4, 7)
        self.track(
            v,
            "Feedback Submitted",
            {"question": "found_what_you_were_looking_for", "success": success, "effort": effort},
        )

    def nps_survey(self, v: _Visit, *, promoter: bool) -> None:
        """An NPS survey answer (by email): 9-10 only from promoters, who then advocate."""
        rng = self.rng
        score = rng.randint(9, 10) if promoter else rng.randint(*self.persona.nps)
        sentiment = max(-1.0, min(1.0, (score - 6) / 4 + rng.uniform(-0.25, 0.25)))
        v.add(
            self._server(
                "Survey Responded",
                "demo-surveys",
                {
                    "survey_id": "nps_2024",
                    "survey_type": "nps",
                    "channel": "email",
                    "score": score,
                    "sentiment": round(sentiment, 2),
                },
            ),
            after=1,
        )

    def review(self, v: _Visit) -> None:
        product = (self.last_order or [self._pick()])[0]
        touch = self.send_email(
            v,
            campaign="review_request",
            subject=f"How is your {product.name}?",
            clicks=True,
            link=f"/p/{product.slug}/review",
        )
        self.page(v, f"/p/{product.slug}/review", f"Review {product.name}", touch=touch)
        rating = self.rng.choice((4, 5, 5, 5, 3))
        sentiment = max(-1.0, min(1.0, (rating - 3) / 2 + self.rng.uniform(-0.2, 0.1)))
        self.track(
            v,
            "Product Reviewed",
            {
                "product_id": product.product_id,
                "review_id": self._id("rev"),
                "rating": rating,
                "sentiment": round(sentiment, 2),
            },
        )


def _customer(*, seed: int, index: int, days: int, now: datetime) -> DemoCustomer:
    rng = random.Random(f"journeys-demo:{seed}:{index}")
    persona = rng.choices(PERSONAS, weights=[p.weight for p in PERSONAS])[0]
    plan = _plan(rng, persona)
    j = _Journey(rng, persona, index, plan)
    _play(j)
    events = _place(j, rng=rng, days=days, now=now)
    anonymous = tuple(a for a in (j.web_anonymous_id, j.mobile_anonymous_id) if a is not None)
    return DemoCustomer(
        index=index,
        persona=persona.name,
        planned_stage=plan.stage,
        user_id=j.user_id if j.known else None,
        email=j.email if j.known else None,
        anonymous_ids=anonymous,
        variation=plan.variation,
        events=tuple(events),
    )


def _return_touch(j: _Journey) -> str:
    """Where a returning visitor comes from, among the channels open to them."""
    usable = [
        (channel, weight)
        for channel, weight in j.persona.return_touch
        if (channel not in (EMAIL, SMS) or j.known)
        and (channel != MOBILE_APP or j.mobile_anonymous_id is not None)
    ]
    return _weighted(j.rng, usable) if usable else DIRECT


def _return_visit(j: _Journey, *, hours: tuple[float, float] | None = None) -> _Visit:
    """A returning visit through one of the persona's channels; the caller adds what happens
    in it (on the web, or in the app for Mobile App)."""
    v = j.visit(hours=hours)
    channel = _return_touch(j)
    if channel == MOBILE_APP:
        j.app_session(v, push=j.rng.random() < 0.3)
        return v
    if channel == EMAIL:
        touch = j.send_email(
            v,
            campaign=j.rng.choice(("weekly_digest", "new_arrivals", "trail_guide")),
            subject="New on the trail this week",
            clicks=True,
        )
    elif channel == SMS:
        touch = j.sms(v)
    else:
        touch = make_touch(j.rng, channel)
    j.land(v, touch)
    return v


def _play(j: _Journey) -> None:
    rng, p, plan = j.rng, j.persona, j.plan
    first = make_touch(rng, _weighted(rng, p.first_touch))

    if not plan.considers:
        # Reads content, never looks at a product: stays in awareness, anonymous.
        for i in range(rng.randint(1, 3)):
            v = j.visit()
            touch = first if i == 0 else make_touch(rng, rng.choice((DIRECT, ORGANIC_SEARCH)))
            j.land(v, touch, content_only=True)
            for _ in range(rng.randint(0, 2)):
                j.page(v, *rng.choice(_ARTICLES + _CONTENT_PAGES))
        return

    # Consideration: browsing visits; an account on one of them (or at checkout).
    visits = rng.randint(*p.browse_visits)
    signup_at = rng.randrange(visits) if plan.signs_up and rng.random() < 0.6 else None
    v = j.visit()
    for i in range(visits):
        if i:
            v = _return_visit(j)
        else:
            j.land(v, first)
        j.browse(v)
        if p.name == RESEARCHER and rng.random() < 0.3:
            j.feedback_widget(v)
        if p.name in (RESEARCHER, LOYAL_FAN) and rng.random() < 0.12:
            j.live_chat(v)
        if i == signup_at:
            j.sign_up(v)
    if plan.signs_up and not plan.buys and not j.known:
        j.sign_up(v)
    if j.known and plan.uses_app and rng.random() < 0.6:
        j.app_session(j.visit(hours=(2.0, 48.0)))
    if j.known and p.name in (RESEARCHER, LOYAL_FAN) and rng.random() < 0.2:
        j.store_visit(j.visit(), buys=False)

    if not plan.carts:
        return
    # Carts and checkouts happen on the web (the experiment runs there).
    if j.visits[-1] is not v:
        v = _web_visit(j)
        j.browse(v)
    j.add_to_cart(v)
    if not plan.checks_out:
        _abandoned_cart_reminder(j)
        return
    abandons_first = not plan.buys or rng.random() < 0.35
    if abandons_first:
        if not j.known and plan.buys:
            j.sign_up(v)
        j.checkout(v, completes=False)
        reminded = _abandoned_cart_reminder(j)
        if not plan.buys:
            return
        if reminded is None:
            v = _web_visit(j)
            j.add_to_cart(v)
        else:
            v = reminded
    if not j.known:
        j.sign_up(v)  # account created at checkout
    j.checkout(v, completes=True)

    # Purchase. Without a return, only emails are opened from here on (never a stage move).
    if not plan.returns and not plan.advocates:
        for _ in range(rng.randint(0, 3)):
            j.send_email(
                j.visit(hours=(24.0, 120.0)),
                campaign="weekly_digest",
                subject="New on the trail this week",
                clicks=False,
            )
        return

    if plan.returns:
        _retention(j)
    if plan.repeats:
        _repeat_orders(j)
    if plan.advocates:
        _advocacy(j)


def _web_visit(j: _Journey) -> _Visit:
    """A returning web visit (never the app: carts and checkouts are on the website)."""
    v = j.visit()
    channel = _return_touch(j)
    if channel == MOBILE_APP:
        channel = DIRECT
    if channel == EMAIL:
        touch = j.send_email(v, campaign="new_arrivals", subject="Just landed", clicks=True)
    elif channel == SMS:
        touch = j.sms(v)
    else:
        touch = make_touch(j.rng, channel)
    j.land(v, touch)
    return v


def _abandoned_cart_reminder(j: _Journey) -> _Visit | None:
    """A known customer who left a cart gets a reminder; a click brings them back to it."""
    if not j.known:
        return None
    v = j.visit(hours=(2.0, 30.0))
    clicks = j.rng.random() < (0.8 if j.plan.buys else 0.4)
    touch = j.send_email(
        v, campaign="cart_reminder", subject="You left something behind", clicks=clicks
    )
    if not clicks:
        return None
    j.page(v, "/cart", "Your cart", touch=touch)
    j.track(v, "Cart Viewed", {"products": j._products(j.cart)})
    return v


def _retention(j: _Journey) -> None:
    rng, p = j.rng, j.persona
    for _ in range(rng.randint(1, 3)):
        v = _return_visit(j, hours=(24.0, max(p.gap_hours[1], 72.0)))
        if v.page:  # on the web
            j.browse(v)
    if rng.random() < 0.35:
        j.support(j.visit(hours=(24.0, 96.0)))
    if not j.plan.advocates and rng.random() < 0.5:
        j.nps_survey(j.visit(hours=(72.0, 240.0)), promoter=False)
    if j.plan.uses_app and rng.random() < 0.5:
        j.app_session(j.visit(), push=rng.random() < 0.5)


def _repeat_orders(j: _Journey) -> None:
    rng, p = j.rng, j.persona
    orders = 2 if p.name == LOYAL_FAN and rng.random() < 0.5 else 1
    for _ in range(orders):
        where = rng.random()
        if where < (0.4 if p.name == LOYAL_FAN else 0.1):
            j.store_visit(j.visit(hours=(48.0, 240.0)), buys=True)
        elif j.mobile_anonymous_id is not None and where < 0.7:
            v = j.visit(hours=(48.0, 240.0))
            j.app_session(v, push=rng.random() < 0.4)
            j.app_order(v)
        else:
            v = _web_visit(j)
            j.browse(v)
            j.add_to_cart(v)
            j.checkout(v, completes=True)
    # Feedback from loyal customers (advocates answer as promoters, in `_advocacy`).
    if not j.plan.advocates and rng.random() < 0.4:
        if rng.random() < 0.5:
            j.support(j.visit(hours=(24.0, 96.0)))
        else:
            j.nps_survey(j.visit(hours=(72.0, 240.0)), promoter=False)


def _advocacy(j: _Journey) -> None:
    rng, p = j.rng, j.persona
    action = rng.choice(p.advocacy)
    if action == "review":
        j.review(j.visit(hours=(120.0, 288.0)))
    elif action == "survey":
        j.nps_survey(j.visit(hours=(72.0, 240.0)), promoter=True)
    elif action == "share":
        v = _web_visit(j)
        product = (j.last_order or [j._pick()])[0]
        j.product(v, product)
        j.track(
            v,
            "Product Shared",
            {"product_id": product.product_id, "share_via": rng.choice(("whatsapp", "link"))},
        )
    else:
        v = _web_visit(j)
        j.page(v, "/account/refer", "Refer a friend")
        j.track(
            v,
            "Referral Sent",
            {"referral_code": f"ACME-{j.user_id[2:8].upper()}", "via": "email", "reward": 15},
        )


# --------------------------------------------------------------------------- placing in time


def _place(j: _Journey, *, rng: random.Random, days: int, now: datetime) -> list[dict[str, Any]]:
    """Fit the visits into the window (shrinking the gaps if the journey is longer than it)
    and stamp every event."""
    durations = [v.clock for v in j.visits]
    gaps = [v.gap for v in j.visits]
    window = days * 86_400.0 - _END_MARGIN
    room = window - sum(durations)
    later = len(gaps) - 1
    budget = max(room * 0.97, later * _MIN_GAP)
    spent = sum(gaps)
    if spent > budget and spent > later * _MIN_GAP:
        scale = (budget - later * _MIN_GAP) / (spent - later * _MIN_GAP)
        gaps = [0.0] + [_MIN_GAP + (g - _MIN_GAP) * scale for g in gaps[1:]]
    span = sum(durations) + sum(gaps)
    slack = max(window - span, 0.0)
    start = now - timedelta(seconds=_END_MARGIN + span + rng.uniform(0.0, slack))
    events: list[dict[str, Any]] = []
    offset = 0.0
    for visit, gap in zip(j.visits, gaps, strict=True):
        offset += gap
        for at, event in visit.items:
            moment = start + timedelta(milliseconds=round((offset + at) * 1000))
            events.append({**event, "timestamp": _iso(moment)})
        offset += visit.clock
    return events
