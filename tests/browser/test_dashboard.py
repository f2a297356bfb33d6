"""The dashboard in headless Chromium against a real `journeys serve` holding demo journeys:
log in with the read key, every page draws its charts (canvas or SVG of non-zero size) under
the strict Content-Security-Policy with no console error, markup in customer data runs nothing,
and a screenshot of each page goes to tests/browser/artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.demo.generator import STAGES, DemoDataset, generate
from app.demo.send import send_events, wait_until_stitched
from app.workspaces.repository import NewWorkspace
from tests.browser.conftest import BrowserPage, poll
from tests.conftest import LiveServer, new_workspace

pytestmark = pytest.mark.browser

CUSTOMERS = 150
WALL = {"width": 1600, "height": 1000}
XSS_NAME = "<img src=x onerror=alert('trait')>"
XSS_EVENT = "<script>alert('event')</script>"

# Reported as console errors, so the no-console-error check also catches CSP violations that
# Chromium would only report to the page.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI);
});
"""


@dataclass(frozen=True)
class Demo:
    workspace: NewWorkspace
    dataset: DemoDataset
    xss_user: str


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def demo(service: LiveServer, database_url: str) -> AsyncIterator[Demo]:
    """Demo journeys sent through the live server's /v1/batch and stitched by its stitcher."""
    ws = await new_workspace(database_url, "dash-browser")
    now = datetime.now(UTC)
    dataset = generate(customers=CUSTOMERS, days=30, seed=42, now=now)
    user = f"xss-{uuid.uuid4().hex[:6]}"
    hostile = [
        {
            "type": "identify",
            "userId": user,
            "traits": {"name": XSS_NAME, "email": f"{user}@example.com", "persona": XSS_NAME},
            "timestamp": (now - timedelta(hours=5)).isoformat(),
        },
        {
            "type": "track",
            "userId": user,
            "event": XSS_EVENT,
            "properties": {"html": "</td><img src=x onerror=alert(1)>"},
            "timestamp": (now - timedelta(hours=4)).isoformat(),
        },
    ]
    report = await send_events(
        [*dataset.events(), *hostile], url=service.url, write_key=ws.write_key
    )
    assert report.accepted == report.events and not report.rejected
    stitched = await wait_until_stitched(service.url, timeout=120)
    assert stitched.caught_up, stitched

    async def customers() -> int:
        async with httpx.AsyncClient(base_url=service.url) as client:
            r = await client.get(
                "/v1/aggregates/journey-map",
                headers={"authorization": f"Bearer {ws.read_key}"},
            )
        return sum(s["customers"] for s in r.json()["stages"])

    await poll(customers, lambda n: n == CUSTOMERS + 1, timeout=60, what="every customer rolled up")
    yield Demo(workspace=ws, dataset=dataset, xss_user=user)


async def watch(bp: BrowserPage) -> list[str]:
    """A wall-sized viewport, CSP violations as console errors, and the messages of any
    alert() a page manages to run."""
    page = bp.page
    await page.set_viewport_size(WALL)
    await page.add_init_script(CSP_WATCH)
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return dialogs


async def open_dashboard(bp: BrowserPage, service: LiveServer, demo: Demo) -> Any:
    """Log in through the form, as a person would."""
    page = bp.page
    await page.goto(service.url + "/")
    await page.fill("input[name=key]", demo.workspace.read_key)
    await page.click("button[type=submit]")
    await page.wait_for_selector(".map .stage")
    return page


async def drawn(page: Any, selector: str, *, width: float = 100, height: float = 50) -> None:
    """The element is there and has a real size on screen."""
    element = await page.wait_for_selector(selector, state="visible")
    box = await element.bounding_box()
    assert box and box["width"] >= width and box["height"] >= height, (selector, box)


def no_errors(bp: BrowserPage, dialogs: list[str]) -> None:
    assert not bp.errors, (bp.errors, bp.failed)
    assert not dialogs, f"a script ran: {dialogs}"


async def test_log_in_and_every_page_draws_its_charts(
    service: LiveServer, demo: Demo, browser_page: BrowserPage
) -> None:
    dialogs = await watch(browser_page)
    page = browser_page.page
    await page.goto(service.url + "/")
    await page.wait_for_selector("form.login")
    await browser_page.screenshot("login")
    page = await open_dashboard(browser_page, service, demo)

    # Journey map: one column per stage, bars drawn as SVG.
    assert await page.locator(".map .stage").count() == len(STAGES)
    await drawn(page, ".map")
    await drawn(page, ".map .stage .bar", height=4)
    customers = await page.inner_text(".kpi .value")
    assert int(customers.replace(",", "")) == CUSTOMERS + 1
    assert await page.locator(".map .stage .tp").count() > len(STAGES)
    await browser_page.screenshot("journey-map")

    await page.select_option("select[name=breakdown]", "trait:persona")
    await page.wait_for_selector(".group-tabs")
    assert await page.locator(".group-tabs a").count() >= 4
    await browser_page.screenshot("journey-map-by-persona")

    for name, path, canvases in (
        ("funnel", "/dashboard/funnel", 1),
        ("trends", "/dashboard/trends", 1),
        ("channels", "/dashboard/channels", 2),
        ("attribution", "/dashboard/attribution", 1),
    ):
        await page.goto(service.url + path)
        await page.wait_for_selector("canvas[data-drawn]")
        assert await page.locator("canvas[data-drawn]").count() == canvases, name
        for i in range(canvases):
            await drawn(page, f"canvas[data-drawn] >> nth={i}")
        await browser_page.screenshot(name)

    # Funnel steps are editable: events instead of stages.
    await page.goto(service.url + "/dashboard/funnel")
    await page.fill("input[name=steps]", "Product Viewed,Product Added,Order Completed")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**steps=Product+Viewed*")
    await page.wait_for_selector("canvas[data-drawn]")
    assert await page.locator("table tbody tr").count() == 3

    # Profile search: a bare email, its timeline drawn with stage bands.
    customer = next(
        c for c in demo.dataset.customers if c.email and c.planned_stage in ("loyalty", "advocacy")
    )
    await page.goto(service.url + "/dashboard/profiles")
    await page.fill("input[name=q]", str(customer.email))
    await page.press("input[name=q]", "Enter")
    await page.wait_for_selector(".timeline-svg")
    await drawn(page, ".timeline-svg")
    assert await page.locator(".timeline-svg circle").count() > 3
    assert await page.locator(".timeline-svg rect").count() >= 2 * len(STAGES[:3])
    assert customer.planned_stage in await page.inner_text(".profile-head")
    await browser_page.screenshot("profile")
    no_errors(browser_page, dialogs)


async def test_markup_in_customer_data_runs_nothing(
    service: LiveServer, demo: Demo, browser_page: BrowserPage
) -> None:
    dialogs = await watch(browser_page)
    page = await open_dashboard(browser_page, service, demo)
    await page.goto(service.url + f"/dashboard/profiles?q=user_id:{demo.xss_user}")
    await page.wait_for_selector(".timeline-svg")
    assert await page.inner_text(".profile-head h1") == XSS_NAME
    assert XSS_EVENT in await page.inner_text("main")
    await page.goto(service.url + "/?breakdown=trait:persona")
    await page.wait_for_selector(".group-tabs")
    assert XSS_NAME in await page.inner_text(".group-tabs")
    await page.goto(service.url + "/dashboard/funnel?steps=awareness," + XSS_EVENT)
    await page.wait_for_selector("canvas[data-drawn]")
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    no_errors(browser_page, dialogs)


async def test_wrong_key_is_refused_and_logout_ends_the_session(
    service: LiveServer, demo: Demo, browser_page: BrowserPage
) -> None:
    dialogs = await watch(browser_page)
    page = browser_page.page
    await page.goto(service.url + "/")
    await page.fill("input[name=key]", demo.workspace.write_key)
    await page.click("button[type=submit]")
    await page.wait_for_selector(".message.error")
    assert "write key" in await page.inner_text(".message.error")
    assert await browser_page.cookie("journeys_dashboard") is None
    browser_page.errors.clear()  # the refused login is a 403 document, logged by Chromium

    await page.fill("input[name=key]", demo.workspace.read_key)
    await page.click("button[type=submit]")
    await page.wait_for_selector(".map")
    cookies = await browser_page.context.cookies()
    session = next(c for c in cookies if c["name"] == "journeys_dashboard")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
    await page.click(".logout button")
    await page.wait_for_selector("form.login")
    assert await browser_page.cookie("journeys_dashboard") is None
    await page.goto(service.url + "/dashboard/channels")
    await page.wait_for_selector("form.login")
    no_errors(browser_page, dialogs)
