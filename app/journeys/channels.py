"""Marketing channel of an event: GA4's default channel grouping, adapted to Segment events.

Pure: standard library only. Precedence, first match wins:
1. explicit channel hints: `properties.channel` / `context.channel` (customer service, store,
   email, sms) and support or store event names;
2. messaging events and libraries (`Email ...`, `SMS ...` events, a library named `*email*`);
3. the campaign (`context.campaign`, else the page URL's `utm_*`), by GA4's source/medium rules;
4. ad click ids in the page URL (gclid, msclkid, fbclid, ...);
5. mobile SDKs and `screen` events: Mobile App;
6. an external referrer: webmail, search engine, social network, else Referral;
7. a page with no (external) referrer: Direct; anything else (server-side): Unassigned.

GA4 groups with no counterpart here are folded in: Cross-network and Paid Shopping into Paid
Search, Paid Other into Display, Organic Shopping/Video into the referrer's group, Mobile Push
Notifications into Mobile App.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from urllib.parse import urlsplit

from app.journeys.model import StitchEvent, campaign_of, query_params, sort_key

DIRECT = "Direct"
ORGANIC_SEARCH = "Organic Search"
PAID_SEARCH = "Paid Search"
ORGANIC_SOCIAL = "Organic Social"
PAID_SOCIAL = "Paid Social"
EMAIL = "Email"
SMS = "SMS"
REFERRAL = "Referral"
DISPLAY = "Display"
AFFILIATES = "Affiliates"
MOBILE_APP = "Mobile App"
CUSTOMER_SERVICE = "Customer Service"
STORE = "Store"
UNASSIGNED = "Unassigned"

CHANNELS = (
    DIRECT,
    ORGANIC_SEARCH,
    PAID_SEARCH,
    ORGANIC_SOCIAL,
    PAID_SOCIAL,
    EMAIL,
    SMS,
    REFERRAL,
    DISPLAY,
    AFFILIATES,
    MOBILE_APP,
    CUSTOMER_SERVICE,
    STORE,
    UNASSIGNED,
)

# Names as they appear as the registrable part of a host (google.co.uk -> google) or as a
# bare utm_source token.
SEARCH_ENGINES = frozenset(
    {
        "google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "ecosia", "ask", "aol",
        "naver", "seznam", "startpage", "qwant", "sogou", "brave", "so", "daum", "kagi", "ya",
        "msn", "adwords", "googleads", "bingads",
    }
)  # fmt: skip
SOCIAL_NETWORKS = frozenset(
    {
        "facebook", "instagram", "twitter", "linkedin", "pinterest", "reddit", "tiktok",
        "youtube", "snapchat", "tumblr", "quora", "whatsapp", "telegram", "threads", "vk",
        "weibo", "discord", "mastodon", "xing", "wechat", "messenger", "bsky", "nextdoor",
        "twitch", "vimeo", "flickr",
    }
)  # fmt: skip
# Engine names that are also common words ("ask_the_expert") only count as a whole source.
_SEARCH_TOKENS = SEARCH_ENGINES - {"ask", "so", "ya", "msn", "daum"}
# Short names that are only safe to match as a whole utm_source, never as a host label.
_SOCIAL_SOURCE_ALIASES = frozenset({"fb", "ig", "x", "tw", "yt", "li"})
# Link shorteners and short domains of the networks (matched as whole hosts).
_SOCIAL_HOSTS = frozenset(
    {
        "t.co", "x.com", "lnkd.in", "fb.me", "fb.com", "fb.watch", "youtu.be", "pin.it",
        "redd.it", "t.me", "wa.me", "ig.me", "bsky.app",
    }
)  # fmt: skip
# Subdomains of a search engine's domain that are products, not search results.
_NOT_SEARCH_SUBDOMAINS = frozenset(
    {
        "mail", "docs", "drive", "accounts", "calendar", "meet", "sites", "groups", "photos",
        "play", "ads", "support", "developers", "cloud", "console", "analytics", "business",
        "myaccount", "classroom", "chat", "keep", "login", "outlook",
    }
)  # fmt: skip
_WEBMAIL_HOSTS = frozenset(
    {"outlook.live.com", "outlook.office.com", "outlook.office365.com", "app.fastmail.com"}
)
_ANDROID_APPS = {
    "com.google.android.gm": EMAIL,
    "com.microsoft.office.outlook": EMAIL,
    "com.google.android.googlequicksearchbox": ORGANIC_SEARCH,
    "com.google.android.gms": ORGANIC_SEARCH,
}
# Second-level labels under which ccTLD registrations sit (google.co.uk, google.com.br).
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "gob"})

# GA4's regexes and lists, https://support.google.com/analytics/answer/9756891
_PAID_MEDIUM = re.compile(r"(.*cp.*|ppc|retargeting|paid.*)")
_DISPLAY_MEDIA = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SOCIAL_MEDIA = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
# "newsletter" is not in GA4's list but is the most common hand-written email medium.
_EMAIL_WORDS = frozenset({"email", "e-mail", "e_mail", "e mail", "newsletter"})
_AFFILIATE_MEDIA = frozenset({"affiliate", "affiliates"})
_REFERRAL_MEDIA = frozenset({"referral", "app", "link"})

_SEARCH_CLICK_IDS = ("gclid", "gbraid", "wbraid", "msclkid", "yclid")
_DISPLAY_CLICK_IDS = ("dclid",)
# fbclid is also appended to organic Facebook links; counting it as paid is a deliberate choice.
_SOCIAL_CLICK_IDS = ("fbclid", "ttclid", "twclid", "li_fat_id", "epik", "sccid", "rdt_cid")

_MOBILE_LIBRARY = re.compile(
    r"(^|[^a-z])(ios|android|react-native|react_native|flutter|swift|kotlin|xamarin|unity|"
    r"cordova|capacitor)([^a-z]|$)"
)
_CUSTOMER_SERVICE_VALUES = frozenset(
    {"customer_service", "support", "call_center", "callcenter", "contact_center", "helpdesk",
     "help_desk"}
)  # fmt: skip
_STORE_VALUES = frozenset({"store", "pos", "in_store", "instore", "retail", "point_of_sale"})
_CUSTOMER_SERVICE_EVENTS = frozenset(
    {
        "support ticket created", "support ticket updated", "support ticket resolved",
        "ticket created", "call completed", "call started", "chat started", "chat ended",
        "live chat started",
    }
)  # fmt: skip
_STORE_EVENTS = frozenset({"store visited", "in store purchase", "pos transaction"})
# Segment's Email spec events (and what email tools commonly send); not every "Email ..." event
# ("Email Address Updated") is email traffic.
_EMAIL_EVENTS = frozenset(
    {
        "email opened", "email link clicked", "email clicked", "email delivered", "email sent",
        "email bounced", "email marked as spam", "email unsubscribed",
    }
)  # fmt: skip
_SMS_EVENTS = frozenset({"sms sent", "sms delivered", "sms link clicked", "sms clicked"})


def channel_of(
    e: StitchEvent,
    *,
    own_hosts: frozenset[str] = frozenset(),
    campaign: Mapping[str, str] | None = None,
) -> str:
    """The channel of one event in isolation; `own_hosts` are the site's own domains;
    `campaign` is `campaign_of(e)` when the caller already has it."""
    hinted = _hinted_channel(e)
    if hinted is not None:
        return hinted

    if campaign is None:
        campaign = campaign_of(e)
    by_campaign = _campaign_channel(
        campaign.get("source", ""), campaign.get("medium", ""), campaign.get("name", "")
    )
    if by_campaign is not None:
        return by_campaign

    if e.page_url:
        by_click = _click_id_channel(e.page_url)
        if by_click is not None:
            return by_click

    if _is_mobile(e):
        return MOBILE_APP

    if e.referrer and not _is_internal(e.referrer, page_url=e.page_url, own_hosts=own_hosts):
        return _referrer_channel(e.referrer)

    if e.page_url or e.type == "page":
        return DIRECT
    return UNASSIGNED


@lru_cache(maxsize=8192)
def _click_id_channel(url: str) -> str | None:
    """The paid channel an ad click id in the URL names (landing URLs repeat: cached)."""
    params = query_params(url)
    for names, channel in (
        (_SEARCH_CLICK_IDS, PAID_SEARCH),
        (_DISPLAY_CLICK_IDS, DISPLAY),
        (_SOCIAL_CLICK_IDS, PAID_SOCIAL),
    ):
        if any(params.get(name) for name in names):
            return channel
    return None


def session_channels(
    events: Iterable[StitchEvent],
    *,
    sessions: Mapping[str, str],
    own_hosts: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Per message id: the event's channel, except that Direct and Unassigned events take the
    source of their session so far (a later page of a search visit is still Organic Search)."""
    ordered = sorted(events, key=sort_key)
    return session_channels_from(
        [(e.message_id, channel_of(e, own_hosts=own_hosts)) for e in ordered], sessions=sessions
    )


def session_channels_from(
    channels: Iterable[tuple[str, str]], *, sessions: Mapping[str, str]
) -> dict[str, str]:
    """`session_channels` from stored (message id, `channel_of`) pairs, which must come in
    `sort_key` order (the result depends on it)."""
    source: dict[str, str] = {}
    result: dict[str, str] = {}
    for message_id, own in channels:
        sid = sessions.get(message_id)
        known = source.get(sid) if sid is not None else None
        if own not in (DIRECT, UNASSIGNED):
            # The first real source names the session; GA4 never lets Direct override one.
            if sid is not None and known in (None, DIRECT):
                source[sid] = own
            result[message_id] = own
            continue
        if own == DIRECT and sid is not None and known is None:
            source[sid] = DIRECT
        result[message_id] = known if known is not None else own
    return result


def _normalise(value: object) -> str:
    return _normalised(value) if isinstance(value, str) else ""


# Hints, event names and library names repeat across events: their normal forms are cached.
@lru_cache(maxsize=4096)
def _normalised(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().lower())


def _event_name(e: StitchEvent) -> str:
    return _normalised_event(e.event or "")


@lru_cache(maxsize=4096)
def _normalised_event(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


@lru_cache(maxsize=1024)
def _library_is_sms(library: str) -> bool:
    return re.search(r"(^|[^a-z])sms([^a-z]|$)", library) is not None


@lru_cache(maxsize=1024)
def _library_is_mobile(library: str) -> bool:
    return _MOBILE_LIBRARY.search(library) is not None


def _hinted_channel(e: StitchEvent) -> str | None:
    for hint in (_normalise(e.properties.get("channel")), _normalise(e.source_channel)):
        if hint in _CUSTOMER_SERVICE_VALUES:
            return CUSTOMER_SERVICE
        if hint in _STORE_VALUES:
            return STORE
        if hint in ("email", "e_mail"):
            return EMAIL
        if hint == "sms":
            return SMS
    name = _event_name(e)
    if name in _CUSTOMER_SERVICE_EVENTS:
        return CUSTOMER_SERVICE
    if name in _STORE_EVENTS:
        return STORE
    library = (e.library_name or "").lower()
    if name in _EMAIL_EVENTS or "email" in library:
        return EMAIL
    if name in _SMS_EVENTS or _library_is_sms(library):
        return SMS
    return None


def _is_mobile(e: StitchEvent) -> bool:
    library = (e.library_name or "").lower()
    return (
        e.type == "screen"
        or _normalise(e.source_channel) == "mobile"
        or _library_is_mobile(library)
        or _event_name(e).startswith("push notification")
    )


def _host(url: str) -> str | None:
    text = url.strip()
    if "://" not in text and not text.startswith("//"):
        text = "//" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def _strip_www(host: str) -> str:
    for prefix in ("www.", "m.", "l.", "lm."):
        if host.startswith(prefix) and host.count(".") > 1:
            return host[len(prefix) :]
    return host


def _split_host(host: str) -> tuple[str, str]:
    """(subdomain, site): `news.google.co.uk` -> ("news", "google.co.uk")."""
    labels = host.split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2:
        at = len(labels) - 3
    else:
        at = max(len(labels) - 2, 0)
    return ".".join(labels[:at]), ".".join(labels[at:])


def _source_category(source: str) -> str | None:
    """Category ("search" or "social") of a utm_source or referrer host, else None."""
    if not source:
        return None
    if "." in source and " " not in source:
        host = _strip_www(_host(source) or source)
        if host in _SOCIAL_HOSTS:
            return "social"
        sub, site = _split_host(host)
        name = site.split(".")[0]
        if name in SOCIAL_NETWORKS:
            return "social"
        if name in SEARCH_ENGINES and not set(sub.split(".")) & _NOT_SEARCH_SUBDOMAINS:
            return "search"
        return None
    # "facebook_ads", "Google-CPC": match the words of a hand-written source.
    tokens = [t for t in re.split(r"[^a-z0-9]+", source) if t]
    if source in _SOCIAL_SOURCE_ALIASES or any(t in SOCIAL_NETWORKS for t in tokens):
        return "social"
    if source in SEARCH_ENGINES or any(t in _SEARCH_TOKENS for t in tokens):
        return "search"
    return None


@lru_cache(maxsize=8192)
def _campaign_channel(source: str, medium: str, name: str) -> str | None:
    """GA4's rules on a campaign, in GA4's order; None when there is no source or medium."""
    s, m, n = source.strip().lower(), medium.strip().lower(), name.strip().lower()
    if not s and not m:
        return None
    if s == "(direct)" and m in ("", "(none)", "(not set)"):
        return DIRECT
    category = _source_category(s)
    paid = _PAID_MEDIUM.fullmatch(m) is not None
    if "cross-network" in n:
        return PAID_SEARCH
    if paid and category == "search":
        return PAID_SEARCH
    if paid and (category == "social" or "social" in m):
        return PAID_SOCIAL
    if m in _DISPLAY_MEDIA or paid:
        return DISPLAY
    if category == "social" or m in _SOCIAL_MEDIA:
        return ORGANIC_SOCIAL
    if category == "search" or m == "organic":
        return ORGANIC_SEARCH
    if m in _REFERRAL_MEDIA:
        return REFERRAL
    if s in _EMAIL_WORDS or m in _EMAIL_WORDS:
        return EMAIL
    if m in _AFFILIATE_MEDIA:
        return AFFILIATES
    if s == "sms" or m == "sms":
        return SMS
    if m.endswith("push") or "mobile" in m or "notification" in m or s == "firebase":
        return MOBILE_APP
    return UNASSIGNED


def _own(host: str, own_hosts: Iterable[str]) -> bool:
    for own in own_hosts:
        base = _strip_www(own.strip().lower().rstrip("."))
        if base and (host == base or host.endswith("." + base)):
            return True
    return False


@lru_cache(maxsize=8192)
def _is_internal(referrer: str, *, page_url: str | None, own_hosts: frozenset[str]) -> bool:
    host = _host(referrer)
    if host is None:
        # An unparsable referrer says nothing about where the visit came from.
        return True
    host = _strip_www(host)
    if _own(host, own_hosts):
        return True
    page_host = _host(page_url) if page_url else None
    # Same site as the page: navigation inside it (shop.example.com -> www.example.com).
    return page_host is not None and _split_host(host)[1] == _split_host(_strip_www(page_host))[1]


@lru_cache(maxsize=8192)
def _referrer_channel(referrer: str) -> str:
    text = referrer.strip().lower()
    if text.startswith("android-app://"):
        package = text[len("android-app://") :].split("/")[0]
        if package in _ANDROID_APPS:
            return _ANDROID_APPS[package]
        if set(package.split(".")) & SOCIAL_NETWORKS:
            return ORGANIC_SOCIAL
        return REFERRAL
    host = _strip_www(_host(text) or "")
    if not host:
        return REFERRAL
    if host.startswith(("mail.", "webmail.")) or host in _WEBMAIL_HOSTS:
        return EMAIL
    category = _source_category(host)
    if category == "search":
        return ORGANIC_SEARCH
    if category == "social":
        return ORGANIC_SOCIAL
    return REFERRAL
