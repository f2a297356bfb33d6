"""The dashboard over ASGI: logging in with the read key (and refusing every other kind),
the session cookie's flags, CSRF and security headers, every page on demo journeys sent through
the real ingest API and stitched, and customer data shown escaped."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from app.dashboard.session import CONTENT_SECURITY_POLICY, COOKIE
from app.demo.generator import STAGES, DemoDataset, generate
from app.demo.send import make_batches
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

BASE = "http://testserver"
ORIGIN = {"origin": BASE}
PAGES = (
    "/",
    "/dashboard/funnel",
    "/dashboard/trends",
    "/dashboard/channels",
    "/dashboard/attribution",
    "/dashboard/profiles",
)
XSS_NAME = "<script>alert('name')</script>"
XSS_PERSONA = '"><img src=x onerror=alert(1)>'
XSS_EVENT = "<svg onload=alert('event')>"
XSS_USER = "xss-</script><script>alert(1)</script>"


@dataclass(frozen=True)
class Demo:
    workspace: NewWorkspace
    dataset: DemoDataset
    # A hand-made customer whose traits, event names and ids are markup.
    xss_email: str


def _events_with_markup(run: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)

    def at(hours: float) -> str:
        return (now - timedelta(hours=hours)).isoformat()

    user = XSS_USER
    email = f"xss-{run}@example.com"
    return [
        {"type": "page", "anonymousId": f"xss-anon-{run}", "timestamp": at(30)},
        {
            "type": "identify",
            "anonymousId": f"xss-anon-{run}",
            "userId": user,
            "timestamp": at(29),
            "traits": {"email": email, "name": XSS_NAME, "persona": XSS_PERSONA},
        },
        {
            "type": "track",
            "userId": user,
            "event": XSS_EVENT,
            "timestamp": at(28),
            "properties": {"note": "</td><script>alert(2)</script>"},
        },
        {"type": "track", "userId": user, "event": "Product Viewed", "timestamp": at(27)},
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "timestamp": at(26),
            "properties": {"variation_name": XSS_PERSONA},
        },
    ]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def demo(app: FastAPI, database_url: str) -> AsyncIterator[Demo]:
    """Demo journeys (all six stages, every persona) sent through /v1/batch and stitched."""
    ws = await new_workspace(database_url, "dashboard")
    now = datetime.now(UTC)
    dataset = generate(customers=40, days=20, seed=7, now=now)
    run = uuid.uuid4().hex[:8]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        for batch in make_batches(dataset.events(), sent_at=now):
            r = await c.post(
                "/v1/batch",
                content=batch.body,
                headers={"content-type": "application/json"},
                auth=(ws.write_key, ""),
            )
            assert r.status_code == 200, r.text
            assert "rejected" not in r.json(), r.text
        r = await c.post(
            "/v1/batch", json={"batch": _events_with_markup(run)}, auth=(ws.write_key, "")
        )
        assert r.status_code == 200 and "rejected" not in r.json(), r.text
    await app.state.runtime.stitcher.drain()
    yield Demo(workspace=ws, dataset=dataset, xss_email=f"xss-{run}@example.com")


def session(key: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={key}"}


async def login(client: httpx.AsyncClient, key: str, **extra: str) -> httpx.Response:
    return await client.post(
        "/dashboard/login",
        data={"key": key, **extra},
        headers=ORIGIN,
    )


def set_cookie(response: httpx.Response) -> str:
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert len(cookies) == 1, cookies
    return cookies[0]


def assert_secure_headers(response: httpx.Response) -> None:
    h = response.headers
    csp = h["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "same-origin"
    assert "access-control-allow-origin" not in h


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_no_inline_code(html: str) -> None:
    """Only our own external scripts and JSON data blocks; no inline event handlers, style
    attributes or style elements, no element that customer data could have made."""
    parser = Tags()
    parser.feed(html)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag not in ("style", "img", "iframe", "object", "embed", "base"), (tag, attrs)
        if tag == "script":
            src = attrs.get("src") or ""
            assert attrs.get("type") == "application/json" or src.startswith(
                "/dashboard/static/"
            ), attrs
        for name in attrs:
            assert not name.startswith("on") and name != "style", (tag, attrs)


# --------------------------------------------------------------------------- log in / out


async def test_without_a_session_home_is_the_login_form(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<form class="login" method="post" action="/dashboard/login">' in r.text
    assert 'name="key" type="password"' in r.text
    assert "set-cookie" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert_secure_headers(r)
    assert_no_inline_code(r.text)


@pytest.mark.parametrize("page", PAGES[1:])
async def test_other_pages_send_the_browser_to_log_in(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page, params={"from": "2026-01-01"})
    assert r.status_code == 303
    target = urlsplit(r.headers["location"])
    assert target.path == "/"
    assert parse_qs(target.query)["next"] == [f"{page}?from=2026-01-01"]
    assert_secure_headers(r)
    form = await client.get(r.headers["location"])
    assert f'name="next" value="{page}?from=2026-01-01"' in form.text


async def test_an_api_key_header_is_no_session(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.get("/", headers={"authorization": f"Bearer {workspace.read_key}"})
    assert r.status_code == 200 and 'action="/dashboard/login"' in r.text


async def test_login_with_the_read_key_sets_a_strict_http_only_cookie(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await login(client, workspace.read_key)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = set_cookie(r)
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert parts[0] == f"{COOKIE}={workspace.read_key}".lower()
    assert "httponly" in parts and "samesite=strict" in parts and "path=/" in parts
    assert "secure" not in parts  # plain http: a Secure cookie would never come back
    assert any(p.startswith("max-age=") for p in parts)
    assert_secure_headers(r)

    page = await client.get("/", headers=session(workspace.read_key))
    assert page.status_code == 200
    assert 'class="stage ' in page.text and "Log out" in page.text


async def test_over_https_the_cookie_is_secure(app: FastAPI, workspace: NewWorkspace) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://dash.example") as c:
        r = await c.post(
            "/dashboard/login",
            data={"key": workspace.read_key},
            headers={"origin": "https://dash.example"},
        )
    assert r.status_code == 303
    assert "secure" in [p.strip().lower() for p in set_cookie(r).split(";")]


async def test_login_goes_back_to_the_page_asked_for_never_elsewhere(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await login(client, workspace.read_key, next="/dashboard/funnel?window=7d")
    assert r.headers["location"] == "/dashboard/funnel?window=7d"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"):
        r = await login(client, workspace.read_key, next=evil)
        assert r.status_code == 303 and r.headers["location"] == "/", evil


@pytest.mark.parametrize(
    ("kind", "status", "says"),
    [
        ("write_key", 403, "write key"),
        ("server_key", 403, "server key"),
        ("unknown", 401, "unknown, revoked or expired"),
        ("empty", 400, "Enter your workspace"),
    ],
)
async def test_login_refuses_other_keys_with_a_clear_message(
    client: httpx.AsyncClient, workspace: NewWorkspace, kind: str, status: int, says: str
) -> None:
    key = {"unknown": "jr_" + "x" * 32, "empty": "  "}.get(kind) or getattr(workspace, kind)
    r = await login(client, key)
    assert r.status_code == status
    assert says in r.text and "read key" in r.text
    assert "set-cookie" not in r.headers
    assert key.strip() == "" or key not in r.text  # a refused key is never echoed
    assert_secure_headers(r)


async def test_login_and_logout_refuse_other_origins(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    for headers in (
        {},
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"referer": "https://evil.example/page"},
        {"origin": "http://testserver.evil.example"},
    ):
        for path in ("/dashboard/login", "/dashboard/logout"):
            r = await client.post(path, data={"key": workspace.read_key}, headers=headers)
            assert r.status_code == 403, (path, headers)
            assert "set-cookie" not in r.headers
            assert_secure_headers(r)
    # A browser that sends no Origin still sends the Referer of our own login page.
    r = await client.post(
        "/dashboard/login",
        data={"key": workspace.read_key},
        headers={"referer": f"{BASE}/?next=/"},
    )
    assert r.status_code == 303


async def test_login_wants_a_small_form(client: httpx.AsyncClient, workspace: NewWorkspace) -> None:
    r = await client.post("/dashboard/login", json={"key": workspace.read_key}, headers=ORIGIN)
    assert r.status_code == 400
    r = await client.post(
        "/dashboard/login", data={"key": workspace.read_key, "pad": "x" * 5000}, headers=ORIGIN
    )
    assert r.status_code == 400


async def test_logout_clears_the_cookie(client: httpx.AsyncClient, workspace: NewWorkspace) -> None:
    r = await client.post("/dashboard/logout", headers={**ORIGIN, **session(workspace.read_key)})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = set_cookie(r).lower()
    assert cookie.startswith(f'{COOKIE}="";') or cookie.startswith(f"{COOKIE}=;")
    assert "max-age=0" in cookie and "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("kind", ["write_key", "server_key", "garbage"])
async def test_a_cookie_without_a_live_read_key_is_no_session(
    client: httpx.AsyncClient, workspace: NewWorkspace, kind: str
) -> None:
    key = "jr_" + "q" * 32 if kind == "garbage" else getattr(workspace, kind)
    r = await client.get("/", headers=session(key))
    assert r.status_code == 200 and 'action="/dashboard/login"' in r.text
    assert "session has ended" in r.text
    assert "max-age=0" in set_cookie(r).lower()
    r = await client.get("/dashboard/funnel", headers=session(key))
    assert r.status_code == 303


# --------------------------------------------------------------------------- static files


async def test_static_files_are_cached_for_long_and_versioned(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    css = re.search(r'href="(/dashboard/static/dashboard\.css\?v=[0-9a-f]{12})"', page.text)
    assert css, page.text
    r = await client.get(css.group(1))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["x-content-type-options"] == "nosniff"
    for name, kind in (
        ("dashboard.js", "text/javascript"),
        ("vendor/chart.umd.min.js", "text/javascript"),
        ("vendor/chart.js.LICENSE.md", "text/plain"),
    ):
        r = await client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    assert "MIT License" in r.text
    for missing in ("nope.js", "../routes.py", "%2e%2e/routes.py", "templates/base.html"):
        r = await client.get(f"/dashboard/static/{missing}")
        assert r.status_code == 404, missing


# --------------------------------------------------------------------------- pages with data


async def page(client: httpx.AsyncClient, demo: Demo, path: str, **params: str) -> str:
    r = await client.get(path, params=params, headers=session(demo.workspace.read_key))
    assert r.status_code == 200, r.text[:2000]
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert_secure_headers(r)
    assert_no_inline_code(r.text)
    return r.text


def charts(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="charts">(.*?)</script>', html, re.S)
    assert found, "no chart data"
    assert "<" not in found.group(1)
    specs: dict[str, Any] = json.loads(found.group(1))
    return specs


async def api(client: httpx.AsyncClient, demo: Demo, path: str, **params: str) -> Any:
    r = await client.get(
        path, params=params, headers={"authorization": f"Bearer {demo.workspace.read_key}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_journey_map_shows_every_stage_with_its_figures(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    html = await page(client, demo, "/")
    body = await api(client, demo, "/v1/aggregates/journey-map")
    assert [s["stage"] for s in body["stages"]] == list(STAGES)
    for stage in body["stages"]:
        assert f'data-stage="{stage["stage"]}"' in html
    total = sum(s["customers"] for s in body["stages"])
    assert total == len(demo.dataset.customers) + 1
    kpi = re.search(r'<div class="label">Customers</div><div class="value">([\d,]+)<', html)
    assert kpi and int(kpi.group(1).replace(",", "")) == total
    # Touchpoints under the stages, feedback badges, drop-off and medians.
    assert "Organic Search" in html and "Paid Social" in html
    assert "NPS" in html and "CSAT" in html
    assert "Median time in stage" in html and "Stalled &gt; 14 d" in html
    assert "How these figures are defined" in html


@pytest.mark.parametrize("breakdown", ["trait:persona", "property:variation_name"])
async def test_journey_map_by_breakdown(
    client: httpx.AsyncClient, demo: Demo, breakdown: str
) -> None:
    html = await page(client, demo, "/", breakdown=breakdown)
    assert f"By {breakdown}" in html
    # No value picked: the "All" tab, the whole workspace's map above the comparison.
    assert 'class="active" aria-selected="true">All</a>' in html
    kpi = re.search(r'<div class="label">Customers</div><div class="value">([\d,]+)<', html)
    assert kpi and int(kpi.group(1)) == len(demo.dataset.customers) + 1
    if breakdown == "trait:persona":
        for persona in ("bargain hunter", "researcher", "impulse buyer", "loyal fan"):
            assert f">{persona}</a>" in html
        one = await page(client, demo, "/", breakdown=breakdown, value="researcher")
        assert 'class="active" aria-selected="true">researcher</a>' in one
    else:
        assert ">treatment</a>" in html and ">control</a>" in html


async def test_funnel_defaults_to_the_stages_and_takes_steps(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    html = await page(client, demo, "/dashboard/funnel")
    spec = charts(html)["funnel"]
    assert spec["labels"] == list(STAGES)
    body = await api(client, demo, "/v1/aggregates/funnel", steps=",".join(STAGES), window="14d")
    assert spec["datasets"][0]["data"] == [s["customers"] for s in body["steps"]]
    assert spec["datasets"][0]["data"][0] > 0

    html = await page(
        client,
        demo,
        "/dashboard/funnel",
        steps="Product Viewed,Checkout Started,Order Completed",
        window="7d",
        breakdown="property:variation_name",
    )
    spec = charts(html)["funnel"]
    assert spec["labels"] == ["Product Viewed", "Checkout Started", "Order Completed"]
    assert {d["label"] for d in spec["datasets"]} >= {"control", "treatment"}


async def test_trends_are_entries_per_day_per_stage(client: httpx.AsyncClient, demo: Demo) -> None:
    html = await page(client, demo, "/dashboard/trends")
    spec = charts(html)["trends"]
    assert len(spec["labels"]) == 30 and spec["stacked"] is True
    assert [d["label"] for d in spec["datasets"]] == list(STAGES)
    stages = await api(client, demo, "/v1/aggregates/stages")
    entered = {s["stage"]: s["entered"] for s in stages["stages"]}
    assert {d["label"]: sum(d["data"]) for d in spec["datasets"]} == entered

    by_persona = charts(
        await page(client, demo, "/dashboard/trends", breakdown="trait:persona", value="loyal fan")
    )["trends"]
    grouped = await api(client, demo, "/v1/aggregates/stages", breakdown="trait:persona")
    fan = next(g for g in grouped["groups"] if g["value"] == "loyal fan")
    assert {d["label"]: sum(d["data"]) for d in by_persona["datasets"]} == {
        s["stage"]: s["entered"] for s in fan["stages"]
    }


async def test_channels_page_mixes_channels_per_stage(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    html = await page(client, demo, "/dashboard/channels")
    specs = charts(html)
    overall = await api(client, demo, "/v1/aggregates/channels")
    assert specs["share"]["labels"] == [c["channel"] for c in overall["channels"]]
    assert specs["mix"]["labels"] == list(STAGES) and specs["mix"]["horizontal"] is True
    consideration = await api(client, demo, "/v1/aggregates/channels", stage="consideration")
    mix = {d["label"]: d["data"][1] for d in specs["mix"]["datasets"]}
    for c in consideration["channels"]:
        assert mix[c["channel"]] == c["touches"]


async def test_attribution_compares_all_five_models(client: httpx.AsyncClient, demo: Demo) -> None:
    html = await page(client, demo, "/dashboard/attribution")
    spec = charts(html)["attribution"]
    assert len(spec["datasets"]) == 5
    for model, dataset in zip(
        ("first", "last", "linear", "position", "time_decay"), spec["datasets"], strict=True
    ):
        body = await api(client, demo, "/v1/aggregates/attribution", model=model)
        assert sum(dataset["data"]) == pytest.approx(body["conversions"], abs=0.05)
        assert body["conversions"] > 0
    html = await page(client, demo, "/dashboard/attribution", conversion="loyalty")
    assert "entered <strong>loyalty</strong>" in html


async def test_profile_search_by_email_user_id_and_kind_value(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    customer = next(
        c
        for c in demo.dataset.customers
        if c.email and c.user_id and c.planned_stage != "awareness"
    )
    assert customer.email and customer.user_id
    for query in (customer.email, customer.user_id, f"user_id:{customer.user_id}"):
        html = await page(client, demo, "/dashboard/profiles", q=query)
        assert "Timeline" in html and "Identity ledger" in html, query
        assert customer.user_id in html
        assert f'class="chip stagechip stage-c{STAGES.index(customer.planned_stage)}"' in html
        assert '<svg class="timeline-svg"' in html and "<circle" in html
    html = await page(
        client, demo, "/dashboard/profiles", q=f"anonymous_id:{customer.anonymous_ids[0]}"
    )
    assert customer.user_id in html and "linked" in html

    html = await page(client, demo, "/dashboard/profiles", q="nobody@example.com")
    assert "No customer has the identifier" in html
    assert "<code>email:nobody@example.com</code>" in html
    html = await page(client, demo, "/dashboard/profiles")
    assert 'name="q"' in html and "Timeline" not in html


async def test_markup_in_customer_data_is_shown_escaped(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    pages = [
        await page(client, demo, "/dashboard/profiles", q=demo.xss_email),
        await page(client, demo, "/dashboard/profiles", q=XSS_USER),
        await page(client, demo, "/", breakdown="trait:persona"),
        await page(client, demo, "/", breakdown="property:variation_name", value=XSS_PERSONA),
        await page(client, demo, "/dashboard/trends", breakdown="trait:persona"),
        await page(client, demo, "/dashboard/channels", breakdown="trait:persona"),
        await page(client, demo, "/dashboard/attribution", breakdown="property:variation_name"),
        await page(client, demo, "/dashboard/funnel", steps=f"awareness,{XSS_EVENT}", window="30d"),
        await page(client, demo, "/dashboard/profiles", q=XSS_EVENT),
    ]
    profile = pages[0]
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in profile
    assert "&lt;svg onload=alert(&#39;event&#39;)&gt;" in profile
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in profile
    assert "xss-&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in profile
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[2]
    for html in pages:
        for raw in (XSS_NAME, XSS_PERSONA, XSS_EVENT, "<script>alert(", "<img src=x"):
            assert raw not in html
        assert_no_inline_code(html)
    funnel = charts(pages[7])["funnel"]
    assert funnel["labels"] == ["awareness", XSS_EVENT]  # JSON data, decoded as text by JS


async def test_invalid_filters_are_an_error_page_not_json(
    client: httpx.AsyncClient, demo: Demo
) -> None:
    for path, params, status in (
        ("/", {"from": "2026-02-01", "to": "2026-01-01"}, 400),
        ("/", {"from": "yesterday"}, 400),
        ("/dashboard/trends", {"to": "9999-12-31"}, 400),
        ("/", {"breakdown": "trait:<b>shoe</b>"}, 400),
        ("/dashboard/funnel", {"steps": "awareness"}, 400),
        ("/dashboard/funnel", {"window": "forever"}, 400),
        ("/dashboard/attribution", {"conversion": "nirvana"}, 400),
    ):
        r = await client.get(path, params=params, headers=session(demo.workspace.read_key))
        assert r.status_code == status, (path, params, r.text[:300])
        assert r.headers["content-type"].startswith("text/html")
        assert 'role="alert"' in r.text and "<b>shoe</b>" not in r.text
        assert_secure_headers(r)


async def test_a_shared_device_lists_its_customers(
    client: httpx.AsyncClient, database_url: str, app: FastAPI
) -> None:
    ws = await new_workspace(database_url, "dash-shared")
    device = f"family-pc-{uuid.uuid4().hex[:6]}"
    batch = [
        {"type": "identify", "anonymousId": device, "userId": "mum", "timestamp": "2026-01-01"},
        {"type": "identify", "anonymousId": device, "userId": "kid", "timestamp": "2026-01-02"},
    ]
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200
    await app.state.runtime.stitcher.drain()
    r = await client.get(
        "/dashboard/profiles",
        params={"q": f"anonymous_id:{device}"},
        headers=session(ws.read_key),
    )
    assert r.status_code == 200
    assert "is a shared device, used by 2 customers" in r.text
    assert r.text.count("?q=customer_id%3Acus_") == 2


async def test_pages_show_the_sessions_workspace_only(
    client: httpx.AsyncClient, demo: Demo, workspace: NewWorkspace
) -> None:
    html = await page(client, demo, "/dashboard/profiles", q=demo.xss_email)
    assert "Identity ledger" in html
    r = await client.get(
        "/dashboard/profiles", params={"q": demo.xss_email}, headers=session(workspace.read_key)
    )
    assert r.status_code == 200 and "No customer has the identifier" in r.text
    r = await client.get("/", headers=session(workspace.read_key))
    kpi = re.search(r'<div class="label">Customers</div><div class="value">([\d,]+)<', r.text)
    assert kpi and kpi.group(1) == "0"


async def test_nav_links_keep_the_window(client: httpx.AsyncClient, demo: Demo) -> None:
    html = await page(client, demo, "/", **{"from": "2026-01-01", "to": "2026-01-31"})
    link = quote("2026-01-01")
    assert f'href="/dashboard/funnel?from={link}&amp;to=2026-01-31"' in html
