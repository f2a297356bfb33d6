"""Segment's own browser library, @segment/analytics-next (installed from npm, its UMD build),
loaded from a local page with its CDN settings inline and pointed at Journeys: every call is
stored once with the library's messageIds, through its short paths and its CORS preflights."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.browser.conftest import BrowserPage, PageServer, RecordingProxy, poll, stored_events
from tests.conftest import LiveServer, new_workspace

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>analytics-next → Journeys</title>
<style>body{font:16px system-ui,sans-serif;margin:2em} pre{background:#eef;padding:1em}</style>
<script src="/analytics-next/bundles/index.js"></script>
<script>
window.runCalls = async function (cfg) {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({
    writeKey: cfg.writeKey,
    // Bundles from this page's server, settings inline: nothing is fetched from Segment.
    cdnURL: location.origin,
    cdnSettings: {integrations: {"Segment.io": {
      apiKey: cfg.writeKey, apiHost: cfg.apiHost, protocol: "http"}}},
  });
  const ctxs = [
    await analytics.page("Docs", "Intro", {section: "getting-started"}),
    await analytics.identify(cfg.user, {email: cfg.email, plan: "pro"}),
    await analytics.track("Product Viewed", {sku: "A-1", price: 19.99}),
    await analytics.track("Order Completed", {revenue: 42}, {messageId: cfg.fixedId}),
    await analytics.group(cfg.group, {name: "Acme"}),
    await analytics.alias(cfg.user, cfg.previous),
  ];
  const sent = ctxs.map(c => ({
    type: c.event.type, event: c.event.event || null, messageId: c.event.messageId,
    failed: c.failedDelivery() ? String(c.failedDelivery().reason) : null,
  }));
  document.getElementById("out").textContent = JSON.stringify(sent, null, 1);
  return {sent: sent, anonymousId: analytics.user().anonymousId()};
};
</script>
</head><body><h1>@segment/analytics-next → Journeys</h1><pre id="out">loading…</pre></body></html>
"""

SHORT = {"page": "/v1/p", "identify": "/v1/i", "track": "/v1/t", "group": "/v1/g", "alias": "/v1/a"}


async def test_analytics_next_delivers_every_call_through_short_paths_and_preflights(
    service: LiveServer,
    proxy: RecordingProxy,
    site: PageServer,
    browser_page: BrowserPage,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    ws = await new_workspace(database_url, "ajs-next")
    run = uuid.uuid4().hex[:8]
    url = site.add(f"/ajs-{run}.html", PAGE)
    page = browser_page.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    first = len(proxy.requests())

    await page.goto(url)
    cfg = {
        "writeKey": ws.write_key,
        "apiHost": proxy.url.removeprefix("http://") + "/v1",
        "user": f"user-{run}",
        "email": f"{run}@example.com",
        "group": f"group-{run}",
        "previous": f"old-{run}",
        "fixedId": f"fixed-{run}",
    }
    result = await page.evaluate("cfg => runCalls(cfg)", cfg)
    await browser_page.screenshot("delivered")
    sent: list[dict[str, Any]] = result["sent"]
    assert [s["failed"] for s in sent] == [None] * 6, sent
    assert [s["type"] for s in sent] == ["page", "identify", "track", "track", "group", "alias"]
    assert sent[3]["messageId"] == f"fixed-{run}"  # the call's own messageId is kept

    # Stored once each, with the library's messageIds.
    events = await poll(
        lambda: stored_events(db, ws.workspace_id),
        lambda rows: len(rows) >= 6,
        what="analytics-next's six calls",
    )
    by_id = {e["message_id"]: e for e in events}
    assert set(by_id) == {s["messageId"] for s in sent}
    anon = result["anonymousId"]
    for s in sent:
        payload = by_id[s["messageId"]]["payload"]
        assert payload["type"] == s["type"]
        assert payload["context"]["library"]["name"] == "analytics.js"
        assert payload["anonymousId"] == anon
        assert "writeKey" not in payload
    page_event = by_id[sent[0]["messageId"]]["payload"]
    assert page_event["name"] == "Intro" and page_event["category"] == "Docs"
    assert page_event["context"]["page"]["url"] == url
    identify = by_id[sent[1]["messageId"]]["payload"]
    assert identify["userId"] == f"user-{run}"
    assert identify["traits"] == {"email": f"{run}@example.com", "plan": "pro"}
    assert by_id[sent[4]["messageId"]]["payload"]["groupId"] == f"group-{run}"
    assert by_id[sent[5]["messageId"]]["payload"]["previousId"] == f"old-{run}"

    # On the wire: short paths, text/plain with Basic auth, each path preflighted first.
    seen = proxy.requests()[first:]
    posts = [s for s in seen if s.method == "POST" and s.path in SHORT.values()]
    assert sorted({s.path for s in posts}) == sorted(SHORT.values())
    for post in posts:
        assert post.status == 200, (post.path, post.body)
        assert post.headers["content-type"].startswith("text/plain")
        assert post.headers["authorization"].startswith("Basic ")
        assert post.headers["origin"] == site.url
        body = post.json()
        assert body["writeKey"] == ws.write_key and "sentAt" in body and "_metadata" in body
    for path in SHORT.values():
        preflights = [s for s in seen if s.method == "OPTIONS" and s.path == path]
        assert preflights, f"no preflight for {path}"
        preflight = preflights[0]
        assert preflight.status == 204
        assert "authorization" in preflight.headers["access-control-request-headers"].lower()
        assert preflight.at <= min(p.at for p in posts if p.path == path)
    # Everything the page loaded came from this machine (no CDN, no settings fetch).
    assert requested and all(u.startswith("http://127.0.0.1:") for u in requested), requested

    # Stitched into one customer by the identify; the alias joined the old user id.
    read = {"Authorization": f"Bearer {ws.read_key}"}
    async with httpx.AsyncClient(base_url=service.url, headers=read) as api:

        async def profile() -> dict[str, Any]:
            r = await api.get(f"/v1/profiles/email:{run}@example.com")
            return r.json() if r.status_code == 200 else {}

        found = await poll(profile, lambda p: p.get("event_count") == 6, what="stitching")
        kinds = {(i["kind"], i["value"]) for i in found["identifiers"]}
        assert {("anonymous_id", anon), ("user_id", f"user-{run}")} <= kinds
        assert found["stage"] == "retention"  # group and alias came after the order
    await page.evaluate(
        "t => { document.querySelector('h1').textContent += ' ✓ ' + t }",
        json.dumps({"stored": len(events), "stage": found["stage"]}),
    )
    await browser_page.screenshot("stitched")
    assert (browser_page.errors, browser_page.failed) == ([], [])
