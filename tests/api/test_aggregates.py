"""The aggregate API on a small, hand-checked set of journeys: each figure's definition."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

Stitch = Callable[[], Awaitable[int]]
WINDOW = {"from": "2026-01-01", "to": "2026-01-31"}


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "messageId": uuid.uuid4().hex, **fields}


def _google(ts: str, anon: str) -> dict[str, Any]:
    return _ev(
        "page",
        ts,
        anonymousId=anon,
        context={"page": {"referrer": "https://www.google.com/", "url": "https://shop.test/"}},
    )


def _email_click(ts: str, user: str) -> dict[str, Any]:
    return _ev(
        "track",
        ts,
        userId=user,
        event="Order Completed",
        context={"campaign": {"source": "newsletter", "medium": "email", "name": "jan"}},
    )


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert "rejected" not in r.json(), r.json()


async def _get(client: httpx.AsyncClient, ws: NewWorkspace, path: str, **params: Any) -> Any:
    r = await client.get(
        f"/v1/aggregates/{path}",
        params={**WINDOW, **params},
        headers={"Authorization": f"Bearer {ws.read_key}"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _by_stage(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["stage"]: s for s in body["stages"]}


JOURNEYS = [
    # Ann: organic search, a product view, signs in, buys from a newsletter, then promotes.
    _google("2026-01-01T10:00:00Z", "a1"),
    _ev("track", "2026-01-01T10:01:00Z", anonymousId="a1", event="Product Viewed"),
    _ev(
        "identify",
        "2026-01-01T10:02:00Z",
        anonymousId="a1",
        userId="u1",
        traits={"persona": "researcher"},
    ),
    _email_click("2026-01-02T09:00:00Z", "u1"),
    _ev(
        "track",
        "2026-01-03T09:00:00Z",
        userId="u1",
        event="Survey Responded",
        properties={"score": 10, "effort": 2, "success": True, "sentiment": 0.5},
    ),
    # Bob: straight to the site, adds to cart, never buys.
    _ev("page", "2026-01-05T08:00:00Z", userId="u2"),
    _ev(
        "identify",
        "2026-01-05T08:00:01Z",
        userId="u2",
        traits={"persona": "bargain hunter"},
    ),
    _ev(
        "track",
        "2026-01-05T08:01:00Z",
        userId="u2",
        event="Product Added",
        properties={"variation_name": "treatment"},
    ),
    _ev(
        "track",
        "2026-01-05T08:02:00Z",
        userId="u2",
        event="CSAT Submitted",
        properties={"score": 2},
    ),
    # Cat: one page view.
    _ev("page", "2026-01-06T08:00:00Z", anonymousId="c1"),
]


@pytest.fixture
async def journeys(client: httpx.AsyncClient, database_url: str, stitch: Stitch) -> NewWorkspace:
    ws = await new_workspace(database_url, "agg")
    await _send(client, ws, JOURNEYS)
    await stitch()
    return ws


async def test_stages_count_current_customers_entries_and_conversions(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    body = await _get(client, journeys, "stages")
    assert body["from"] == "2026-01-01" and body["to"] == "2026-01-31"
    stages = _by_stage(body)
    assert [s["stage"] for s in body["stages"]] == list(stages)
    assert stages["awareness"]["entered"] == 3
    assert stages["awareness"]["converted"] == 2
    assert stages["awareness"]["customers"] == 1  # Cat
    assert stages["consideration"]["entered"] == 2
    assert stages["consideration"]["customers"] == 1  # Bob
    assert stages["consideration"]["conversion_rate"] == 0.5
    assert stages["purchase"]["entered"] == 1
    assert stages["advocacy"]["customers"] == 1  # Ann
    assert stages["retention"]["entered"] == 0  # Ann skipped it: the survey made her advocate
    # Ann: consideration at 10:01 on Jan 1, purchase at 09:00 on Jan 2: 82,740 s (±5%).
    median = stages["consideration"]["median_seconds_to_next"]
    assert median is not None and abs(median - 82_740) / 82_740 < 0.05
    # A window that holds none of the entries: nobody entered, the snapshot stays.
    later = await _get(client, journeys, "stages", **{"from": "2026-02-01", "to": "2026-02-10"})
    assert _by_stage(later)["awareness"]["entered"] == 0
    assert _by_stage(later)["awareness"]["customers"] == 1


async def test_attribution_models_share_one_conversion(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    credits = {}
    for model in ("first", "last", "linear", "position", "time_decay"):
        body = await _get(client, journeys, "attribution", model=model, conversion="purchase")
        assert body["conversions"] == 1
        assert sum(c["credit"] for c in body["channels"]) == pytest.approx(1.0, abs=1e-3)
        credits[model] = {c["channel"]: c["credit"] for c in body["channels"]}
    assert credits["first"] == {"Organic Search": 1.0}
    assert credits["last"] == {"Email": 1.0}
    assert credits["linear"] == {"Organic Search": 0.5, "Email": 0.5}
    assert credits["position"] == {"Organic Search": 0.5, "Email": 0.5}
    # The email session is ~1 day nearer the purchase: more credit under time decay.
    assert credits["time_decay"]["Email"] > credits["time_decay"]["Organic Search"]


async def test_channels_and_feedback_per_stage(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    body = await _get(client, journeys, "channels", stage="awareness")
    assert body["stage"] == "awareness"
    channels = {c["channel"]: c for c in body["channels"]}
    assert channels["Organic Search"] == {
        "channel": "Organic Search",
        "touches": 1,
        "customers": 1,
    }
    whole = await _get(client, journeys, "channels")
    assert sum(c["customers"] for c in whole["channels"]) >= 3

    jmap = _by_stage(await _get(client, journeys, "journey-map"))
    advocacy = jmap["advocacy"]["feedback"]
    assert advocacy["nps"] == 100.0  # one promoter
    assert advocacy["effort"] == 2 and advocacy["success_rate"] == 1.0
    assert advocacy["sentiment"] == 0.5
    assert jmap["consideration"]["feedback"]["csat"] == 2
    assert jmap["consideration"]["feedback"]["nps"] is None
    assert jmap["purchase"]["channels"][0]["channel"] == "Email"


async def test_breakdowns_by_trait_and_latest_property(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    body = await _get(client, journeys, "stages", breakdown="trait:persona")
    assert body["breakdown"] == "trait:persona"
    groups = {g["value"]: _by_stage(g) for g in body["groups"]}
    assert set(groups) == {"researcher", "bargain hunter", None}
    assert groups["researcher"]["purchase"]["entered"] == 1
    assert groups["bargain hunter"]["consideration"]["customers"] == 1
    assert groups[None]["awareness"]["customers"] == 1

    variant = await _get(client, journeys, "stages", breakdown="property:variation_name")
    values = {g["value"] for g in variant["groups"]}
    assert values == {"treatment", None}

    r = await client.get(
        "/v1/aggregates/stages",
        params={"breakdown": "trait:plan"},
        headers={"Authorization": f"Bearer {journeys.read_key}"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "unknown_breakdown"


async def test_funnel_of_stages_and_events(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    body = await _get(
        client, journeys, "funnel", steps="awareness,Product Viewed,purchase", window="2d"
    )
    steps = body["steps"]
    assert [s["kind"] for s in steps] == ["stage", "event", "stage"]
    assert [s["customers"] for s in steps] == [3, 1, 1]
    assert steps[1]["median_seconds_from_previous"] == 60.0
    short = await _get(client, journeys, "funnel", steps="awareness,purchase", window="1h")
    assert [s["customers"] for s in short["steps"]] == [3, 0]


async def test_dropoff_counts_and_lists_stalled_customers(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    # Bob has sat in consideration since 2026-01-05, far beyond the 14-day default.
    r = await client.get(
        "/v1/aggregates/dropoff",
        headers={"Authorization": f"Bearer {journeys.read_key}"},
    )
    assert r.status_code == 200
    stages = _by_stage(r.json())
    assert stages["consideration"] == {
        "stage": "consideration",
        "threshold_seconds": 14 * 86400,
        "stalled": 1,
    }
    r = await client.get(
        "/v1/aggregates/dropoff",
        params={"customers": "true", "stage": "consideration", "limit": 1},
        headers={"Authorization": f"Bearer {journeys.read_key}"},
    )
    listed = r.json()["customers"]
    assert len(listed) == 1 and listed[0]["entered_at"].startswith("2026-01-05T08:01")
    assert r.json()["next_cursor"] is None


async def test_recent_entries_are_not_stalled(
    client: httpx.AsyncClient, database_url: str, stitch: Stitch
) -> None:
    ws = await new_workspace(database_url, "agg")
    recent = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    await _send(client, ws, [_ev("track", recent, userId="x", event="Product Viewed")])
    await stitch()
    r = await client.get(
        "/v1/aggregates/dropoff", headers={"Authorization": f"Bearer {ws.read_key}"}
    )
    assert _by_stage(r.json())["consideration"]["stalled"] == 0


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("stages", {"from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ("channels", {"stage": "nowhere"}, "stage"),
        ("attribution", {"model": "magic"}, "model"),
        ("funnel", {"steps": "awareness"}, "steps"),
        ("funnel", {"steps": "awareness,purchase", "window": "forever"}, "window"),
    ],
)
async def test_bad_parameters_are_400_problems_naming_the_field(
    client: httpx.AsyncClient, workspace: NewWorkspace, path: str, params: Any, field: str
) -> None:
    r = await client.get(
        f"/v1/aggregates/{path}",
        params=params,
        headers={"Authorization": f"Bearer {workspace.read_key}"},
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field


async def test_aggregates_need_the_read_key(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    assert (await client.get("/v1/aggregates/stages")).status_code == 401
    r = await client.get("/v1/aggregates/stages", auth=(workspace.write_key, ""))
    assert r.status_code == 403


async def test_bot_traffic_is_flagged_and_never_moves_a_stage_or_counts(
    client: httpx.AsyncClient, database_url: str, stitch: Stitch, db: Any
) -> None:
    ws = await new_workspace(database_url, "agg")
    crawler = {
        "userAgent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    }
    scanner = {"journeys": {"bot": True, "botReason": "link_scanner"}}
    await _send(
        client,
        ws,
        [
            _ev("page", "2026-01-10T10:00:00Z", userId="h1"),
            _ev(
                "track",
                "2026-01-10T10:01:00Z",
                userId="h1",
                event="Product Viewed",
                context=crawler,
            ),
            _ev(
                "track",
                "2026-01-10T10:02:00Z",
                userId="h1",
                event="Email Link Clicked",
                context=scanner,
            ),
            _ev("track", "2026-01-10T10:03:00Z", userId="h1", event="Order Completed"),
        ],
    )
    await stitch()
    flags = await db.fetch(
        "SELECT event, flags FROM events WHERE workspace_id = $1 ORDER BY timestamp",
        ws.workspace_id,
    )
    assert [f["flags"] & 2 for f in flags] == [0, 2, 2, 0]
    history = (
        await client.get(
            "/v1/profiles/user_id:h1/stage", headers={"Authorization": f"Bearer {ws.read_key}"}
        )
    ).json()["stage_history"]
    # The bots' product view and click moved nothing: straight from awareness to purchase.
    assert [h["stage"] for h in history] == ["awareness", "purchase"]
    body = await _get(client, ws, "channels")
    assert sum(c["touches"] for c in body["channels"]) == 2


@pytest.mark.parametrize(
    "params",
    [{"to": "0001-01-01"}, {"from": "0001-01-01", "to": "0001-01-02"}, {"to": "9999-12-31"}],
)
async def test_windows_at_the_ends_of_the_calendar_are_answered(
    client: httpx.AsyncClient, workspace: NewWorkspace, params: dict[str, str]
) -> None:
    for path, extra in (
        ("stages", {}),
        ("funnel", {"steps": "awareness,purchase"}),
        ("journey-map", {}),
        ("dropoff", {}),
    ):
        r = await client.get(
            f"/v1/aggregates/{path}",
            params={**params, **extra},
            headers={"Authorization": f"Bearer {workspace.read_key}"},
        )
        assert r.status_code in (200, 400), (path, r.text)
