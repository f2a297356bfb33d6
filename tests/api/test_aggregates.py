"""The aggregate API on a small, hand-checked set of journeys: each figure's definition."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.aggregates import service
from app.aggregates.facts import TOTAL
from app.journeys.stitcher import model_for
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


# --------------------------------------------------------------------------- the answer cache


async def _fetch(
    client: httpx.AsyncClient, ws: NewWorkspace, path: str, *, fresh: bool = False, **params: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ws.read_key}"}
    if fresh:
        headers["Cache-Control"] = "no-cache"
    r = await client.get(f"/v1/aggregates/{path}", params={**WINDOW, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return r


CACHED = [
    ("stages", {}),
    ("stages", {"breakdown": "trait:persona"}),
    ("funnel", {"steps": "awareness,consideration,purchase"}),
    ("funnel", {"steps": "Product Viewed,Order Completed", "breakdown": "trait:persona"}),
    ("channels", {"stage": "awareness"}),
    ("attribution", {"model": "linear"}),
    ("journey-map", {}),
    ("journey-map", {"breakdown": "property:variation_name"}),
]


async def test_answers_are_cached_until_the_data_changes(
    client: httpx.AsyncClient, journeys: NewWorkspace, stitch: Stitch
) -> None:
    for path, params in CACHED:
        first = await _fetch(client, journeys, path, **params)
        again = await _fetch(client, journeys, path, **params)
        fresh = await _fetch(client, journeys, path, fresh=True, **params)
        assert first.headers["x-journeys-cache"] == "miss", path
        assert again.headers["x-journeys-cache"] == "hit", path
        assert fresh.headers["x-journeys-cache"] == "bypass", path
        assert again.json() == first.json() == fresh.json(), (path, params)
    before = {i: (await _fetch(client, journeys, p, **q)).json() for i, (p, q) in enumerate(CACHED)}

    # Dan arrives and buys: every figure above moves, and no request may see the old answers.
    await _send(
        client,
        journeys,
        [
            _google("2026-01-10T10:00:00Z", "d1"),
            _ev("track", "2026-01-10T10:01:00Z", anonymousId="d1", event="Product Viewed"),
            _ev("track", "2026-01-10T10:05:00Z", anonymousId="d1", event="Order Completed"),
        ],
    )
    await stitch()
    for i, (path, params) in enumerate(CACHED):
        after = await _fetch(client, journeys, path, **params)
        fresh = await _fetch(client, journeys, path, fresh=True, **params)
        assert after.headers["x-journeys-cache"] == "miss", (path, params)
        assert after.json() == fresh.json(), (path, params)
        assert after.json() != before[i], (path, params)
    awareness = _by_stage((await _fetch(client, journeys, "stages")).json())["awareness"]
    assert awareness["entered"] == 4


async def test_a_journey_model_change_is_never_answered_from_the_cache(
    client: httpx.AsyncClient, journeys: NewWorkspace
) -> None:
    assert (await _fetch(client, journeys, "stages")).headers["x-journeys-cache"] in ("miss", "hit")
    headers = {"Authorization": f"Bearer {journeys.server_key}"}
    model = (await client.get("/v1/settings/journey-model", headers=headers)).json()["model"]
    model["stages"] = [s for s in model["stages"] if s["name"] != "advocacy"]
    r = await client.put("/v1/settings/journey-model", json=model, headers=headers)
    assert r.status_code == 202, r.text
    answer = await _fetch(client, journeys, "stages")
    assert answer.headers["x-journeys-cache"] == "miss"
    assert "advocacy" not in [s["stage"] for s in answer.json()["stages"]]


async def test_the_cached_part_of_the_journey_map_leaves_dropoff_to_the_clock(
    journeys: NewWorkspace, db: asyncpg.Connection
) -> None:
    ws = journeys.workspace_id
    model = await model_for(db, ws)
    win = service.window("2026-01-01", "2026-01-31")
    base = await service.journey_map_rollups(db, ws, model, dim=TOTAL, win=win)
    assert all(s["dropoff"] is None for s in base["answer"]["stages"])
    # Bob entered consideration on January 5: not stalled on the 6th, stalled in February.
    for now, stalled in (
        (datetime(2026, 1, 6, tzinfo=UTC), 0),
        (datetime(2026, 2, 1, tzinfo=UTC), 1),
    ):
        answer = await service.with_dropoff(db, ws, model, base, dim=TOTAL, now=now)
        assert _by_stage(answer)["consideration"]["dropoff"] == stalled
        assert answer == await service.journey_map(db, ws, model, dim=TOTAL, win=win, now=now)


TABLES_READ = (
    ("customers", "event_count = event_count"),
    ("stage_entries", "entered_at = entered_at"),
    ("journey_events", "flags = flags"),
    ("agg_stage_days", "entered = entered"),
    ("agg_stage_durations", "n = n"),
    ("agg_touch_days", "touches = touches"),
    ("agg_attribution_days", "linear = linear"),
)


@pytest.mark.parametrize(("table", "noop"), TABLES_READ)
async def test_every_change_to_what_the_aggregates_read_bumps_the_version(
    journeys: NewWorkspace, db: asyncpg.Connection, table: str, noop: str
) -> None:
    ws = journeys.workspace_id

    async def version() -> int:
        found = await db.fetchval(
            "SELECT version FROM agg_read_versions WHERE workspace_id = $1", ws
        )
        return int(found or 0)

    start = await version()
    assert start > 0  # stitching bumped it

    class RolledBack(Exception):
        pass

    with pytest.raises(RolledBack):
        async with db.transaction():
            await db.execute(f"UPDATE {table} SET {noop} WHERE workspace_id = $1", ws)
            updated = await version()
            assert updated > start
            row = await db.fetchval(
                f"SELECT ctid::text FROM {table} WHERE workspace_id = $1 LIMIT 1", ws
            )
            await db.execute(
                f"CREATE TEMP TABLE copy_of ON COMMIT DROP AS SELECT * FROM {table} "
                "WHERE ctid = $1::text::tid",
                row,
            )
            await db.execute(f"DELETE FROM {table} WHERE ctid = $1::text::tid", row)
            deleted = await version()
            assert deleted > updated
            await db.execute(f"INSERT INTO {table} SELECT * FROM copy_of")
            assert await version() > deleted
            raise RolledBack
    assert await version() == start


@given(
    start=st.dates(min_value=date(1960, 1, 1), max_value=date(2100, 1, 1)),
    length=st.integers(min_value=1, max_value=3 * 366),
)
def test_a_window_is_covered_by_days_and_aligned_blocks_exactly_once(
    start: date, length: int
) -> None:
    win = service.Window(start, start + timedelta(days=length - 1))
    days, blocks = service.cover(win)
    covered = list(days)
    for span, starts in blocks.items():
        for first in starts:
            assert (first - date(1970, 1, 1)).days % span == 0
            covered += [first + timedelta(days=i) for i in range(span)]
    assert sorted(covered) == [start + timedelta(days=i) for i in range(length)]
    # Few parts: at each end at most 1 day, 3 blocks of 2 and 3 of 8; the blocks of 32 between.
    assert len(days) <= 2
    assert len(blocks[2]) + len(blocks[8]) <= 12
    assert len(blocks[32]) <= length // 32


async def test_stalled_counts_equal_a_recount_at_every_time_of_day(
    client: httpx.AsyncClient, database_url: str, stitch: Stitch, db: asyncpg.Connection
) -> None:
    """The cutoff's own day is counted from whichever side of the cutoff is shorter (customers
    before it, or the day's rollup minus customers after it): both equal a direct count."""
    late = [  # entries late in the day, so the "minus those after the cutoff" side counts some
        _ev("track", f"2026-01-05T{hour}:00:00Z", userId=f"late{hour}", event="Product Added")
        for hour in (13, 18, 23)
    ]
    journeys = await new_workspace(database_url, "agg")
    await _send(client, journeys, [*JOURNEYS, *late])
    await stitch()
    ws = journeys.workspace_id
    model = await model_for(db, ws)
    thresholds = {s.name: s.dropoff_after for s in model.stages if s.dropoff_after is not None}
    customers = await db.fetch(
        "SELECT stage, stage_entered_at, dims FROM customers WHERE workspace_id = $1 "
        "AND stage IS NOT NULL",
        ws,
    )
    windows = [
        None,
        service.window("2026-01-01", "2026-01-31"),
        service.window("2026-01-05", "2026-01-05"),
    ]
    now = datetime(2026, 1, 16, 1, 30, tzinfo=UTC)
    checked = 0
    while now < datetime(2026, 2, 3, tzinfo=UTC):
        for dim in (TOTAL, "trait:persona"):
            for win in windows:
                expected: dict[str, dict[str, int]] = {}
                for c in customers:
                    threshold = thresholds.get(c["stage"])
                    at = c["stage_entered_at"]
                    if threshold is None or at >= now - threshold:
                        continue
                    if win is not None and not win.start_at <= at < win.end_at:
                        continue
                    dims = orjson.loads(c["dims"]) if isinstance(c["dims"], str) else c["dims"]
                    dval = TOTAL if dim == TOTAL else dims.get(dim, "")
                    by_stage = expected.setdefault(dval, dict.fromkeys(thresholds, 0))
                    by_stage[c["stage"]] += 1
                    checked += 1
                got = await service._stalled_counts(db, ws, model, dim=dim, win=win, now=now)
                if dim == TOTAL:
                    expected.setdefault(TOTAL, dict.fromkeys(thresholds, 0))
                assert got == expected, (now, dim, win)
        now += timedelta(hours=3)
    assert checked > 0
