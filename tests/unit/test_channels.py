"""Channel grouping: GA4 source/medium rules, click ids, referrers, SDK and event hints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.journeys.channels import CHANNELS, channel_of, session_channels, session_channels_from
from app.journeys.model import StitchEvent
from app.journeys.sessions import assign_sessions

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
SHOP = "https://shop.example.com/products/blue-shoe"


def ev(
    *,
    type: str = "page",
    event: str | None = None,
    page_url: str | None = SHOP,
    referrer: str | None = None,
    campaign: dict[str, str] | None = None,
    library: str | None = "analytics.js",
    properties: dict[str, Any] | None = None,
    source_channel: str | None = None,
    message_id: str = "m1",
    minutes: float = 0,
) -> StitchEvent:
    return StitchEvent(
        message_id=message_id,
        type=type,
        event=event,
        timestamp=T0 + timedelta(minutes=minutes),
        anonymous_id="d1",
        page_url=page_url,
        referrer=referrer,
        campaign=campaign or {},
        library_name=library,
        properties=properties or {},
        source_channel=source_channel,
    )


def utm(source: str = "", medium: str = "", name: str = "") -> dict[str, str]:
    return {k: v for k, v in (("source", source), ("medium", medium), ("name", name)) if v}


CASES: list[tuple[str, StitchEvent, str]] = [
    # --- campaign (utm) rules, in GA4's order
    ("google cpc", ev(campaign=utm("google", "cpc")), "Paid Search"),
    ("bing ppc", ev(campaign=utm("bing", "ppc")), "Paid Search"),
    ("adwords paid", ev(campaign=utm("adwords", "paid")), "Paid Search"),
    ("google cpm is paid search", ev(campaign=utm("google", "cpm")), "Paid Search"),
    ("pmax cross-network", ev(campaign=utm("partner", "x", "PMax Cross-Network")), "Paid Search"),
    ("facebook cpc", ev(campaign=utm("facebook", "cpc")), "Paid Social"),
    ("fb paid_social", ev(campaign=utm("fb", "paid_social")), "Paid Social"),
    (
        "l.facebook.com retargeting",
        ev(campaign=utm("l.facebook.com", "retargeting")),
        "Paid Social",
    ),
    ("linkedin sponsored paid", ev(campaign=utm("linkedin_ads", "paid")), "Paid Social"),
    ("unknown paid_social", ev(campaign=utm("partner", "paid-social")), "Paid Social"),
    ("criteo display", ev(campaign=utm("criteo", "display")), "Display"),
    ("banner", ev(campaign=utm("gumgum", "banner")), "Display"),
    ("cpm from unknown network", ev(campaign=utm("taboola", "cpm")), "Display"),
    ("retargeting from unknown network", ev(campaign=utm("criteo", "retargeting")), "Display"),
    ("google display", ev(campaign=utm("google", "display")), "Display"),
    ("instagram social", ev(campaign=utm("instagram", "social")), "Organic Social"),
    ("medium sm", ev(campaign=utm("partner", "sm")), "Organic Social"),
    ("social-network", ev(campaign=utm("mastodon.social", "social-network")), "Organic Social"),
    ("t.co organic", ev(campaign=utm("t.co", "")), "Organic Social"),
    ("youtube video", ev(campaign=utm("youtube", "video")), "Organic Social"),
    ("google organic", ev(campaign=utm("google", "organic")), "Organic Search"),
    ("medium organic", ev(campaign=utm("startpage.com", "organic")), "Organic Search"),
    ("duckduckgo source only", ev(campaign=utm("duckduckgo")), "Organic Search"),
    ("partner referral", ev(campaign=utm("partner-blog", "referral")), "Referral"),
    ("newsletter email", ev(campaign=utm("newsletter", "email")), "Email"),
    ("e-mail source", ev(campaign=utm("e-mail", "blast")), "Email"),
    ("e_mail medium", ev(campaign=utm("crm", "e_mail")), "Email"),
    ("e mail medium", ev(campaign=utm("crm", "E Mail")), "Email"),
    ("affiliate", ev(campaign=utm("awin", "affiliate")), "Affiliates"),
    ("sms medium", ev(campaign=utm("twilio", "sms")), "SMS"),
    ("sms source", ev(campaign=utm("sms", "text")), "SMS"),
    ("push", ev(campaign=utm("braze", "mobile-push")), "Mobile App"),
    ("firebase", ev(campaign=utm("firebase", "notif")), "Mobile App"),
    ("(direct) / (none)", ev(campaign=utm("(direct)", "(none)")), "Direct"),
    ("unknown medium", ev(campaign=utm("podcast-ad", "audio-read")), "Unassigned"),
    ("ask_the_expert is not search", ev(campaign=utm("ask_the_expert", "x")), "Unassigned"),
    ("campaign name only falls through", ev(campaign=utm(name="spring")), "Direct"),
    # --- utm parameters in the page URL
    (
        "utm in url",
        ev(page_url=SHOP + "?utm_source=google&utm_medium=cpc&utm_campaign=brand"),
        "Paid Search",
    ),
    (
        "utm in url, mixed case names",
        ev(page_url=SHOP + "?UTM_SOURCE=Newsletter&UTM_MEDIUM=Email"),
        "Email",
    ),
    (
        "context campaign wins over url",
        ev(campaign=utm("facebook", "social"), page_url=SHOP + "?utm_source=google&utm_medium=cpc"),
        "Organic Social",
    ),
    # --- click ids
    ("gclid", ev(page_url=SHOP + "?gclid=EAIaIQobChMI"), "Paid Search"),
    ("gbraid", ev(page_url=SHOP + "?gbraid=0AAAAAD"), "Paid Search"),
    ("msclkid", ev(page_url=SHOP + "?msclkid=4b2f"), "Paid Search"),
    ("dclid", ev(page_url=SHOP + "?dclid=CJKZ"), "Display"),
    (
        "fbclid with facebook referrer",
        ev(page_url=SHOP + "?fbclid=IwAR2x", referrer="https://l.facebook.com/"),
        "Paid Social",
    ),
    ("ttclid", ev(page_url=SHOP + "?ttclid=E.C.P"), "Paid Social"),
    ("empty gclid is ignored", ev(page_url=SHOP + "?gclid="), "Direct"),
    # --- referrers
    ("google search", ev(referrer="https://www.google.com/"), "Organic Search"),
    ("google.co.uk", ev(referrer="https://www.google.co.uk/"), "Organic Search"),
    ("google.com.br", ev(referrer="https://www.google.com.br/"), "Organic Search"),
    ("bing", ev(referrer="https://www.bing.com/search?q=blue+shoe"), "Organic Search"),
    ("yahoo", ev(referrer="https://search.yahoo.com/"), "Organic Search"),
    ("duckduckgo", ev(referrer="https://duckduckgo.com/"), "Organic Search"),
    ("baidu mobile", ev(referrer="https://m.baidu.com/s?word=x"), "Organic Search"),
    ("yandex", ev(referrer="https://yandex.ru/search/?text=x"), "Organic Search"),
    ("ecosia", ev(referrer="https://www.ecosia.org/search?q=x"), "Organic Search"),
    (
        "google app",
        ev(referrer="android-app://com.google.android.googlequicksearchbox/"),
        "Organic Search",
    ),
    ("facebook", ev(referrer="https://l.facebook.com/l.php?u=x"), "Organic Social"),
    ("instagram", ev(referrer="https://www.instagram.com/"), "Organic Social"),
    ("t.co", ev(referrer="https://t.co/AbC123"), "Organic Social"),
    ("x.com", ev(referrer="https://x.com/someone/status/1"), "Organic Social"),
    ("linkedin", ev(referrer="https://www.linkedin.com/feed/"), "Organic Social"),
    ("lnkd.in", ev(referrer="https://lnkd.in/eXyZ"), "Organic Social"),
    ("pinterest", ev(referrer="https://www.pinterest.co.uk/pin/1/"), "Organic Social"),
    ("reddit", ev(referrer="https://old.reddit.com/r/running/"), "Organic Social"),
    ("tiktok", ev(referrer="https://www.tiktok.com/"), "Organic Social"),
    ("youtube", ev(referrer="https://m.youtube.com/watch?v=x"), "Organic Social"),
    ("facebook app", ev(referrer="android-app://com.facebook.katana/"), "Organic Social"),
    ("gmail web", ev(referrer="https://mail.google.com/"), "Email"),
    ("outlook web", ev(referrer="https://outlook.live.com/"), "Email"),
    ("gmail app", ev(referrer="android-app://com.google.android.gm/"), "Email"),
    ("google docs is a referral", ev(referrer="https://docs.google.com/document/d/1"), "Referral"),
    ("blog", ev(referrer="https://runningblog.example.org/best-shoes"), "Referral"),
    ("x.example.com is not x.com", ev(referrer="https://x.example.net/"), "Referral"),
    ("some app", ev(referrer="android-app://com.example.reader/"), "Referral"),
    # --- internal navigation and direct
    ("no referrer", ev(), "Direct"),
    ("same host", ev(referrer="https://shop.example.com/"), "Direct"),
    ("sibling subdomain", ev(referrer="https://www.example.com/"), "Direct"),
    ("garbage referrer", ev(referrer="http://[::1"), "Direct"),
    ("page type without url", ev(page_url=None), "Direct"),
    # --- messaging, mobile and offline hints
    ("email opened", ev(type="track", event="Email Opened", page_url=None), "Email"),
    (
        "email link clicked beats utm",
        ev(type="track", event="Email Link Clicked", campaign=utm("google", "cpc")),
        "Email",
    ),
    (
        "email library",
        ev(type="track", event="Delivered", page_url=None, library="journeys-email"),
        "Email",
    ),
    (
        "email address updated is not email traffic",
        ev(type="track", event="Email Address Updated", page_url=None, library="analytics-python"),
        "Unassigned",
    ),
    ("sms link clicked", ev(type="track", event="SMS Link Clicked", page_url=None), "SMS"),
    ("screen", ev(type="screen", page_url=None, library="analytics-kotlin"), "Mobile App"),
    (
        "ios sdk track",
        ev(type="track", event="Product Viewed", page_url=None, library="analytics-ios"),
        "Mobile App",
    ),
    ("android sdk", ev(type="track", page_url=None, library="analytics-android"), "Mobile App"),
    (
        "react native",
        ev(type="track", page_url=None, library="analytics-react-native"),
        "Mobile App",
    ),
    ("flutter", ev(type="track", page_url=None, library="analytics_flutter"), "Mobile App"),
    ("rudder ios", ev(type="track", page_url=None, library="rudder-ios-library"), "Mobile App"),
    (
        "rudder android",
        ev(type="track", page_url=None, library="com.rudderstack.android.sdk.core"),
        "Mobile App",
    ),
    (
        "mobile channel",
        ev(type="track", page_url=None, library=None, source_channel="mobile"),
        "Mobile App",
    ),
    (
        "app deep link with campaign",
        ev(
            type="screen",
            page_url=None,
            library="analytics-ios",
            campaign=utm("newsletter", "email"),
        ),
        "Email",
    ),
    (
        "support ticket",
        ev(type="track", event="Support Ticket Created", page_url=None, library="analytics-python"),
        "Customer Service",
    ),
    ("call completed", ev(type="track", event="Call Completed", page_url=None), "Customer Service"),
    (
        "properties.channel call center",
        ev(
            type="track",
            event="Order Completed",
            page_url=None,
            properties={"channel": "Call Center"},
        ),
        "Customer Service",
    ),
    (
        "context channel support",
        ev(type="track", event="Refund Issued", page_url=None, source_channel="support"),
        "Customer Service",
    ),
    (
        "pos order",
        ev(type="track", event="Order Completed", page_url=None, properties={"channel": "pos"}),
        "Store",
    ),
    (
        "in-store",
        ev(
            type="track", event="Order Completed", page_url=None, properties={"channel": "in-store"}
        ),
        "Store",
    ),
    ("store visited", ev(type="track", event="Store Visited", page_url=None), "Store"),
    (
        "web channel is not a hint",
        ev(type="track", event="Order Completed", properties={"channel": "web"}),
        "Direct",
    ),
    # --- server side
    (
        "server order",
        ev(type="track", event="Order Completed", page_url=None, library="analytics-python"),
        "Unassigned",
    ),
    (
        "rudder server",
        ev(type="identify", page_url=None, library="rudder-sdk-python", source_channel="server"),
        "Unassigned",
    ),
]


@pytest.mark.parametrize(
    ("e", "expected"), [(e, want) for _, e, want in CASES], ids=[c[0] for c in CASES]
)
def test_channel_of(e: StitchEvent, expected: str) -> None:
    assert expected in CHANNELS
    assert channel_of(e) == expected


def test_own_hosts_are_not_referrals() -> None:
    checkout = ev(
        page_url="https://checkout.example-pay.com/", referrer="https://www.example.com/cart"
    )
    assert channel_of(checkout) == "Referral"
    assert channel_of(checkout, own_hosts=frozenset({"example.com"})) == "Direct"
    assert channel_of(checkout, own_hosts=frozenset({"www.example.com"})) == "Direct"
    assert channel_of(checkout, own_hosts=frozenset({"other.com"})) == "Referral"


def test_every_channel_is_reachable() -> None:
    assert {want for _, _, want in CASES} == set(CHANNELS)


def test_session_channels_carry_the_source_through_the_visit() -> None:
    events = [
        ev(message_id="a", minutes=0, referrer="https://www.google.com/"),
        ev(message_id="b", minutes=1, referrer="https://shop.example.com/"),
        ev(
            message_id="c",
            minutes=2,
            type="track",
            event="Order Completed",
            page_url=None,
            library="analytics-python",
        ),
        ev(message_id="d", minutes=3, type="track", event="Call Completed", page_url=None),
        ev(message_id="e", minutes=90),  # a new, direct visit
        ev(
            message_id="f",
            minutes=91,
            type="track",
            event="Order Completed",
            page_url=None,
            library=None,
        ),
        ev(
            message_id="g",
            minutes=200,
            type="track",
            event="Order Completed",
            page_url=None,
            library=None,
        ),
    ]
    sessions = assign_sessions(events)
    assert session_channels(reversed(events), sessions=sessions) == {
        "a": "Organic Search",
        "b": "Organic Search",
        "c": "Organic Search",
        "d": "Customer Service",
        "e": "Direct",
        "f": "Direct",
        "g": "Unassigned",
    }


def test_direct_never_overrides_a_session_source() -> None:
    events = [
        ev(message_id="a", minutes=0),
        ev(message_id="b", minutes=1, referrer="https://t.co/x"),
        ev(message_id="c", minutes=2),
    ]
    sessions = {"a": "s1", "b": "s1", "c": "s1"}
    assert session_channels(events, sessions=sessions) == {
        "a": "Direct",
        "b": "Organic Social",
        "c": "Organic Social",
    }


def test_session_channels_from_stored_channels() -> None:
    pairs = [
        ("a", "Direct"),
        ("b", "Unassigned"),
        ("c", "Paid Search"),
        ("d", "Direct"),
        ("e", "Email"),
        ("f", "Unassigned"),
        ("g", "Unassigned"),
    ]
    sessions = {"a": "s1", "b": "s1", "c": "s1", "d": "s1", "e": "s1", "f": "s1", "g": "s2"}
    assert session_channels_from(pairs, sessions=sessions) == {
        "a": "Direct",
        "b": "Direct",
        "c": "Paid Search",
        "d": "Paid Search",
        "e": "Email",
        "f": "Paid Search",
        "g": "Unassigned",
    }
