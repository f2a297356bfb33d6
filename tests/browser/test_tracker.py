"""journeys.js in headless Chromium against a real service: page views with campaigns, track and
identify, ids in cookie and localStorage, the beacon on page hide, the consent gate, retries."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.browser.conftest import (
    BrowserPage,
    PageServer,
    RecordingProxy,
    poll,
    stored_events,
)
from tests.conftest import LiveServer, new_workspace

pytestmark = pytest.mark.browser

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UTM = (
    "utm_source=newsletter&utm_medium=email&utm_campaign=spring%20sale"
    "&utm_term=shoes&utm_content=hero"
)


CONSENT_BANNER = """
<div style="border:1px solid #888;padding:1em">We would like to measure how this site is used.
<button id="accept" onclick="journeys.consent({analytics: true, marketing: false})">Accept</button>
<button id="refuse" onclick="journeys.consent({analytics: false, marketing: false})">Refuse</button>
</div>"""


def tracker_page(title: str, script: str, body: str = "") -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:16px system-ui,sans-serif;margin:2em}} code{{background:#eef;padding:2px}}</style>
{script}
</head><body><h1>{title}</h1><p id="status">loaded</p>{body}</body></html>"""


def snippet(service: LiveServer, ws: NewWorkspace, host: str, extra: str = "") -> str:
    return (
        f'<script src="{service.url}/js/journeys.js" data-write-key="{ws.write_key}"'
        f' data-host="{host}" {extra}></script>'
    )


async def status(bp: BrowserPage, text: str) -> None:
    await bp.page.evaluate("t => { document.getElementById('status').textContent = t }", text)


def batch_requests(proxy: RecordingProxy, ws: NewWorkspace) -> list[Any]:
    return [s for s in proxy.requests(ws.write_key) if s.path == "/v1/batch"]


async def test_page_view_track_and_identify_arrive_and_are_stitched(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "tracker")
    run = uuid.uuid4().hex[:8]
    site.add(f"/from-{run}.html", tracker_page("Referrer", ""))
    url = site.add(f"/shop-{run}.html", tracker_page("Shop", snippet(service, ws, proxy.url)))
    page = browser_page.page

    # Arrive from another page (a real referrer) on a campaign URL.
    await page.goto(f"{site.url}/from-{run}.html")
    await page.evaluate("u => { location.href = u }", f"{url}?{UTM}#top")
    await page.wait_for_url(f"{url}?{UTM}#top")
    await page.wait_for_function("window.journeys && journeys.VERSION")
    user = f"user-{run}"
    await page.evaluate(
        """([user, email]) => {
            journeys.identify(user, {email: email, plan: "pro"});
            journeys.track("Product Viewed", {sku: "A-1", price: 19.99});
            return journeys.flush();
        }""",
        [user, f"{run}@example.com"],
    )
    await status(browser_page, "sent: page, identify, track")
    await browser_page.screenshot("sent")

    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 3,
        what="the page view, identify and track",
    )
    assert sorted(e["type"] for e in events) == ["identify", "page", "track"]
    by_type = {e["type"]: e["payload"] for e in events}
    pageview, identify, track = by_type["page"], by_type["identify"], by_type["track"]

    anon = pageview["anonymousId"]
    assert UUID.match(anon), anon
    assert {e["payload"]["anonymousId"] for e in events} == {anon}
    assert "userId" not in pageview  # the page view came before identify
    assert identify["userId"] == track["userId"] == user
    assert identify["traits"] == {"email": f"{run}@example.com", "plan": "pro"}
    assert track["event"] == "Product Viewed"
    assert track["properties"] == {"sku": "A-1", "price": 19.99}

    campaign = {
        "source": "newsletter",
        "medium": "email",
        "name": "spring sale",
        "term": "shoes",
        "content": "hero",
    }
    for payload in (pageview, identify, track):
        context = payload["context"]
        assert context["campaign"] == campaign
        assert context["library"] == {"name": "journeys.js", "version": "1.0.0"}
        assert context["consent"] == {"categoryPreferences": {}}
        assert context["page"]["url"] == f"{url}?{UTM}"  # no fragment, as analytics.js
        assert context["page"]["path"] == f"/shop-{run}.html"
        assert context["page"]["search"] == f"?{UTM}"
        assert context["page"]["referrer"] == f"{site.url}/from-{run}.html"
        assert context["page"]["title"] == "Shop"
        assert "HeadlessChrome" in context["userAgent"]
        assert UUID.match(payload["messageId"])
        assert payload["sentAt"] and payload["originalTimestamp"]
    assert pageview["properties"]["url"] == f"{url}?{UTM}"
    assert pageview["properties"]["referrer"] == f"{site.url}/from-{run}.html"
    assert len({e["message_id"] for e in events}) == 3

    # Cookie and localStorage hold the same ids (analytics.js names: a site can switch).
    assert await browser_page.cookie("ajs_anonymous_id") == anon
    assert await browser_page.local("ajs_anonymous_id") == f'"{anon}"'
    assert await browser_page.cookie("ajs_user_id") == user
    # Simple requests (text/plain, key in the body): no preflight, and CORS answered.
    sent = batch_requests(proxy, ws)
    assert sent and all(s.method == "POST" and s.status == 200 for s in sent)
    assert all(s.headers["content-type"].startswith("text/plain") for s in sent)
    assert all(s.json()["writeKey"] == ws.write_key for s in sent)
    assert not [s for s in proxy.requests() if s.method == "OPTIONS" and s.path == "/v1/batch"]

    # Stitched: one customer with the anonymous id, the user id and the email.
    read = {"Authorization": f"Bearer {ws.read_key}"}
    async with httpx.AsyncClient(base_url=service.url, headers=read) as api:

        async def profile() -> dict[str, Any]:
            r = await api.get(f"/v1/profiles/user_id:{user}")
            return r.json() if r.status_code == 200 else {}

        found = await poll(profile, lambda p: p.get("event_count") == 3, what="stitching")
        kinds = {(i["kind"], i["value"]) for i in found["identifiers"]}
        assert kinds == {("anonymous_id", anon), ("user_id", user), ("email", f"{run}@example.com")}
        timeline = (await api.get(f"/v1/profiles/anonymous_id:{anon}/timeline")).json()
        # identify and track may share a millisecond: then the message ids order them.
        types = [e["type"] for e in timeline["events"]]
        assert types[0] == "page" and sorted(types[1:]) == ["identify", "track"]
        assert timeline["events"][0]["channel"] == "Email"  # utm_medium=email

    # Next visit: the same ids, from the cookie; with the cookie gone, from localStorage.
    await page.goto(url)
    assert await page.evaluate("journeys.user()") == {
        "anonymousId": anon,
        "userId": user,
        "traits": {"email": f"{run}@example.com", "plan": "pro"},
    }
    await browser_page.context.clear_cookies()
    await page.goto(url)
    assert await page.evaluate("journeys.user().anonymousId") == anon
    assert await browser_page.cookie("ajs_anonymous_id") == anon  # written back
    await page.evaluate("journeys.flush()")

    # reset(): a new visitor on this device.
    await page.evaluate("journeys.reset()")
    after = await page.evaluate("journeys.user()")
    assert after["userId"] is None and after["anonymousId"] != anon
    assert await browser_page.cookie("ajs_anonymous_id") == after["anonymousId"]
    assert await browser_page.cookie("ajs_user_id") is None
    await browser_page.screenshot("reset")
    assert (browser_page.errors, browser_page.failed) == ([], [])


async def test_beacon_on_page_hide_delivers_what_is_queued(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "beacon")
    run = uuid.uuid4().hex[:8]
    # No automatic flush for a minute: only the page hide can send these events.
    script = (
        f'<script src="{service.url}/js/journeys.js"></script><script>'
        f'journeys.load({{writeKey: "{ws.write_key}", host: "{proxy.url}", flushInterval: 60000}})'
        "</script>"
    )
    url = site.add(f"/checkout-{run}.html", tracker_page("Checkout", script))
    site.add(f"/next-{run}.html", tracker_page("Next page", ""))
    page = browser_page.page
    await page.goto(url)
    await page.evaluate(
        'journeys.track("Checkout Started", {total: 42}); journeys.identify("buyer-' + run + '")'
    )
    await status(browser_page, "2 events queued; leaving the page")
    await browser_page.screenshot("queued")
    assert batch_requests(proxy, ws) == []  # nothing sent yet: all three still queued

    await page.goto(f"{site.url}/next-{run}.html")  # pagehide: sendBeacon
    await browser_page.screenshot("next-page")

    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 3,
        what="the beaconed events",
    )
    assert sorted(e["type"] for e in events) == ["identify", "page", "track"]
    [beacon] = batch_requests(proxy, ws)
    assert beacon.method == "POST" and beacon.status == 200
    assert beacon.headers["content-type"] == "text/plain;charset=UTF-8"  # sendBeacon's own
    assert "authorization" not in beacon.headers
    body = beacon.json()
    assert body["writeKey"] == ws.write_key and len(body["batch"]) == 3
    assert (browser_page.errors, browser_page.failed) == ([], [])


async def test_consent_gate_holds_events_until_consent(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "consent")
    run = uuid.uuid4().hex[:8]
    url = site.add(
        f"/consent-{run}.html",
        tracker_page(
            "Consent required",
            snippet(service, ws, proxy.url, 'data-require-consent="true"'),
            CONSENT_BANNER,
        ),
    )
    page = browser_page.page
    await page.goto(url)
    await page.evaluate('journeys.track("Banner Seen"); journeys.flush()')
    await browser_page.screenshot("before-consent")
    # Nothing sent and nothing stored on the device before a decision.
    assert batch_requests(proxy, ws) == []
    assert await browser_page.context.cookies() == []
    assert await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('ajs_'))") == []
    anon = await page.evaluate("journeys.user().anonymousId")

    await page.click("#accept")  # journeys.consent({analytics: true, marketing: false})
    await page.evaluate('journeys.track("Consent Given"); journeys.flush()')
    await status(browser_page, "consent given")
    await browser_page.screenshot("after-consent")
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 3,
        what="the held events after consent",
    )
    assert sorted((e["type"], e["event"] or "") for e in events) == [
        ("page", ""),
        ("track", "Banner Seen"),
        ("track", "Consent Given"),
    ]
    for e in events:
        assert e["anonymous_id"] == anon
        assert e["payload"]["context"]["consent"] == {
            "categoryPreferences": {"analytics": True, "marketing": False}
        }
    assert await browser_page.cookie("ajs_anonymous_id") == anon
    # The decision is remembered: the next page view goes out without asking again.
    await page.goto(url)
    await page.evaluate("journeys.flush()")
    await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) == 4,
        what="the second page view",
    )

    # Another visitor refuses: nothing is ever sent, and nothing stays on the device.
    refuser = await new_workspace(database_url, "consent-refused")
    other = site.add(
        f"/refuse-{run}.html",
        tracker_page(
            "Consent refused",
            snippet(service, refuser, proxy.url, 'data-require-consent="true"'),
            CONSENT_BANNER,
        ),
    )
    context = await browser_page.context.browser.new_context()
    try:
        second = await context.new_page()
        await second.goto(other)
        await second.evaluate('journeys.track("Banner Seen")')
        await second.click("#refuse")
        await second.evaluate('journeys.track("After Refusal"); journeys.flush()')
        await second.goto(other)  # the refusal is remembered; the page hide sends nothing
        await second.evaluate('journeys.track("Next Visit"); journeys.flush()')
        await second.goto("about:blank")
        assert await context.cookies() == []
    finally:
        await context.close()
    assert batch_requests(proxy, refuser) == []
    assert await stored_events(db, refuser.workspace_id) == []
    assert (browser_page.errors, browser_page.failed) == ([], [])


async def test_retries_with_backoff_on_5xx_and_network_errors_but_not_on_4xx(
    service: LiveServer,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "retry")
    run = uuid.uuid4().hex[:8]
    # journeys.load() without a host: the script's origin, the service itself.
    script = (
        f'<script src="{service.url}/js/journeys.js"></script><script>'
        f'journeys.load({{writeKey: "{ws.write_key}", autoPage: false,'
        " backoff: {base: 200, max: 1000}})</script>"
    )
    url = site.add(f"/retry-{run}.html", tracker_page("Retries", script))
    page = browser_page.page
    attempts: list[tuple[float, str]] = []
    plan = ["503", "abort", "429"]  # then through to the real service

    async def route(route: Any) -> None:
        request = route.request
        body = request.post_data or ""
        origin = request.headers.get("origin", "*")
        attempts.append((time.monotonic(), body))
        cors = {"Access-Control-Allow-Origin": origin}
        if '"Refused Item"' in body:
            await route.fulfill(status=400, headers=cors, json={"code": "invalid_event"})
        elif plan:
            step = plan.pop(0)
            if step == "abort":
                await route.abort("connectionreset")
            elif step == "429":
                # Retry-After (exposed to the page as the service's CORS answers do) wins over
                # the shorter backoff.
                slow = {"Retry-After": "1", "Access-Control-Expose-Headers": "Retry-After"}
                await route.fulfill(status=429, headers={**cors, **slow}, json={"code": "limited"})
            else:
                await route.fulfill(status=int(step), headers=cors, json={"code": "unavailable"})
        else:
            await route.continue_()

    await page.route(f"{service.url}/v1/batch", route)
    await page.goto(url)
    await page.evaluate('journeys.track("Retried Item", {n: 1}); journeys.flush()')
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 1,
        what="the retried event",
    )
    assert [e["event"] for e in events] == ["Retried Item"]
    assert len(attempts) == 4  # 503, network error, 429, delivered
    assert all('"Retried Item"' in body for _, body in attempts)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts)]
    # base·2^(n-1), with jitter of at most half: ≥ 0.1 s, ≥ 0.2 s; then Retry-After's 1 s,
    # longer than the third backoff (≤ 0.8 s).
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.99, gaps

    # A 4xx (not 429) is never retried: the next batch does not carry the refused item.
    attempts.clear()
    await page.evaluate('journeys.track("Refused Item"); journeys.flush()')
    assert len(attempts) == 1
    await page.evaluate('journeys.track("Later Item"); journeys.flush()')
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 2,
        what="the later event",
    )
    assert [e["event"] for e in events] == ["Retried Item", "Later Item"]
    assert len(attempts) == 2 and '"Refused Item"' not in attempts[1][1]
    await status(browser_page, "retried 3 times, then delivered; a 400 was dropped")
    await browser_page.screenshot("retries")
    # The browser itself logs the failed loads; the tracker logs nothing.
    assert all("Failed to load resource" in e for e in browser_page.errors), browser_page.errors
    assert len(browser_page.errors) == 4  # 503, connection reset, 429, 400


async def test_async_snippet_replays_calls_made_before_the_script_loaded(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "snippet")
    run = uuid.uuid4().hex[:8]
    # The stub of docs/tracker.md: calls queue up until the async script replaces it.
    script = (
        "<script>window.journeys=window.journeys||[];"
        '["load","track","identify","page","reset","consent"].forEach(function(m){'
        "journeys[m]=journeys[m]||function(){journeys.push([m].concat([].slice.call(arguments)))}"
        "});"
        f'journeys.load({{writeKey: "{ws.write_key}", host: "{proxy.url}"}});'
        f'journeys.identify("early-{run}");'
        'journeys.track("Early Bird", {n: 1});</script>'
        f'<script async src="{service.url}/js/journeys.js"></script>'
    )
    url = site.add(f"/snippet-{run}.html", tracker_page("Async snippet", script))
    page = browser_page.page
    await page.goto(url)
    await page.wait_for_function("window.journeys && journeys.VERSION")
    await page.evaluate("journeys.flush()")
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 3,
        what="the page view and the replayed calls",
    )
    # Made in the same millisecond, so compared as a set.
    assert {(e["type"], e["event"]) for e in events} == {
        ("page", None),
        ("identify", None),
        ("track", "Early Bird"),
    }
    [track] = [e for e in events if e["type"] == "track"]
    assert track["user_id"] == f"early-{run}"
    assert track["payload"]["properties"] == {"n": 1}
    await status(browser_page, "replayed: identify, track")
    await browser_page.screenshot("replayed")
    assert (browser_page.errors, browser_page.failed) == ([], [])


async def test_what_the_beacon_cannot_carry_goes_out_from_the_next_page(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "beacon-big")
    run = uuid.uuid4().hex[:8]
    script = (
        f'<script src="{service.url}/js/journeys.js"></script><script>'
        f'journeys.load({{writeKey: "{ws.write_key}", host: "{proxy.url}",'
        " flushInterval: 60000, flushAt: 1000, autoPage: false})</script>"
    )
    url = site.add(f"/big-{run}.html", tracker_page("Large queue", script))
    site.add(f"/away-{run}.html", tracker_page("Away", ""))
    page = browser_page.page
    await page.goto(url)
    # ~90 KB queued: more than a page may hand to sendBeacon (64 KB in flight).
    await page.evaluate(
        "for (let i = 0; i < 60; i++) journeys.track('Big ' + i, {blob: 'x'.repeat(1500)})"
    )
    await page.goto(f"{site.url}/away-{run}.html")
    beaconed = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 1,
        what="the beaconed part",
    )
    pending = await browser_page.local("journeys_pending")
    assert pending is not None
    left = {e["messageId"] for e in json.loads(pending)}
    assert 0 < len(left) < 60
    assert not left & {e["message_id"] for e in beaconed}, "kept what was already delivered"

    await page.goto(url)  # the next page of the site sends the rest
    await page.evaluate("journeys.flush()")
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 60,
        what="all 60 events",
    )
    assert sorted(e["event"] for e in events) == sorted(f"Big {i}" for i in range(60))
    assert await browser_page.local("journeys_pending") is None
    assert (browser_page.errors, browser_page.failed) == ([], [])
