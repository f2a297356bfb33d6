"""The rollups stay exact under disorder: merges, unmerges, late and out-of-order events, retries
and journey-model changes.

The property: one generated multi-device story (the identity stitching property test's
generator) is ingested into two workspaces in two different permutations and batchings, the
stitcher drained between batches, so the rollups of each are built by a different sequence of
merges and re-stitches. Every aggregate endpoint must answer the same in both, the same after a
rebuild from the raw events, and the same as a brute-force count over the stitched customers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.aggregates.facts import duration_bucket, median_of_buckets
from app.aggregates.funnel_store import FUNNELS, FunnelIndexes, funnel_found
from app.aggregates.repository import BLOCK_SPANS
from app.aggregates.rollups_from_facts import (
    compare_rollups,
    rebuild_rollups_from_facts,
    sum_facts,
)
from app.aggregates.service import funnel, funnel_steps, funnel_window, window
from app.journeys.rebuild import rebuild_workspace
from app.journeys.stitcher import model_for
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace
from tests.integration.test_stitching import arrivals, ingest, stories, unmerge

Stitch = Callable[[], Awaitable[int]]
WINDOW = {"from": "2026-09-01", "to": "2026-12-31"}
BREAKDOWNS = ["trait:plan", "property:score"]
STAGES = ("awareness", "consideration", "purchase", "retention", "loyalty", "advocacy")
QUERIES: list[tuple[str, dict[str, str]]] = [
    ("stages", {}),
    *[("stages", {"breakdown": b}) for b in BREAKDOWNS],
    ("channels", {}),
    *[("channels", {"stage": s}) for s in STAGES],
    *[
        ("attribution", {"model": m, "conversion": c})
        for m in ("first", "last", "linear", "position", "time_decay")
        for c in ("consideration", "purchase")
    ],
    ("attribution", {"model": "linear", "conversion": "purchase", "breakdown": "trait:plan"}),
    ("journey-map", {}),
    ("journey-map", {"breakdown": "trait:plan"}),
    ("dropoff", {}),
    ("dropoff", {"breakdown": "property:score"}),
    ("funnel", {"steps": "awareness,consideration,purchase", "window": "14d"}),
    ("funnel", {"steps": "Product Viewed,Order Completed", "window": "1d"}),
    ("funnel", {"steps": "awareness,Order Completed,loyalty", "breakdown": "trait:plan"}),
]


# Funnels compared between the in-memory index (HTTP: the suite indexes every workspace) and
# the SQL path: every stage, event name and breakdown the index holds, so that after the first
# comparison it is only ever brought up to date by the change feed, never reloaded.
FUNNEL_EVENTS = ("Product Viewed", "Order Completed", "Email Link Clicked", "Survey Responded")
FIXED_FUNNELS: list[dict[str, str]] = [
    {"steps": "awareness,consideration,purchase,retention,loyalty,advocacy", "window": "14d"},
    {"steps": ",".join(FUNNEL_EVENTS), "window": "14d", "breakdown": "trait:plan"},
    {
        "steps": "Product Viewed,purchase,Order Completed",
        "window": "1d",
        "breakdown": "property:score",
    },
]
FUNNEL_STEP = st.sampled_from([*STAGES, *FUNNEL_EVENTS, "event:Order Completed"])
FUNNEL_QUERY = st.fixed_dictionaries(
    {
        "steps": st.lists(FUNNEL_STEP, min_size=2, max_size=5).map(",".join),
        "window": st.sampled_from(["1s", "40m", "1h", "1d", "14d"]),
    },
    optional={
        "breakdown": st.sampled_from(BREAKDOWNS),
        "from": st.sampled_from(["2026-09-01", "2026-10-01", "2026-10-03"]),
    },
)


async def funnels_equal_sql(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    ws: NewWorkspace,
    queries: list[dict[str, str]],
) -> None:
    """Each funnel from the index (through HTTP, computed now) equals the SQL path's."""
    model = await model_for(conn, ws.workspace_id)
    for params in [*FIXED_FUNNELS, *queries]:
        q = {**WINDOW, **params}
        r = await client.get(
            "/v1/aggregates/funnel",
            params=q,
            headers={"Authorization": f"Bearer {ws.read_key}", "Cache-Control": "no-cache"},
        )
        assert r.status_code == 200, (q, r.text)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            expected = await funnel(
                conn,
                ws.workspace_id,
                model,
                dim=q.get("breakdown", ""),
                win=window(q["from"], q["to"]),
                steps=funnel_steps(model, q["steps"]),
                span=funnel_window(q["window"]),
            )
        assert r.json() == orjson.loads(orjson.dumps(expected)), q
    assert FUNNELS.entry(ws.workspace_id) is not None


async def prepared_workspace(client: httpx.AsyncClient, database_url: str) -> NewWorkspace:
    """A workspace whose journey model keeps two breakdowns the generated stories vary."""
    ws = await new_workspace(database_url, "aggx")
    headers = {"Authorization": f"Bearer {ws.server_key}"}
    model = (await client.get("/v1/settings/journey-model", headers=headers)).json()["model"]
    model["breakdowns"] = BREAKDOWNS
    r = await client.put("/v1/settings/journey-model", json=model, headers=headers)
    assert r.status_code == 202, r.text
    return ws


def assert_same(one: list[Any], two: list[Any]) -> None:
    """Query by query, so a failure names the figure that differs."""
    for (path, params), a, b in zip(QUERIES, one, two, strict=True):
        assert a == b, (path, params)


async def answers(client: httpx.AsyncClient, ws: NewWorkspace, *, fresh: bool = False) -> list[Any]:
    """Every query's answer; `fresh`: computed now, bypassing the answer cache."""
    out = []
    headers = {"Authorization": f"Bearer {ws.read_key}"}
    if fresh:
        headers["Cache-Control"] = "no-cache"
    for path, params in QUERIES:
        r = await client.get(
            f"/v1/aggregates/{path}",
            params={**WINDOW, **params} if path != "dropoff" else params,
            headers=headers,
        )
        assert r.status_code == 200, (path, params, r.text)
        out.append(r.json())
    return out


async def brute_force(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
    """Stage and touch figures counted directly from the stitched customers and timelines."""
    start, end = date.fromisoformat(WINDOW["from"]), date.fromisoformat(WINDOW["to"])
    entered: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    now_in: Counter[str] = Counter()
    to_next: dict[str, Counter[int]] = defaultdict(Counter)
    for r in await conn.fetch(
        "SELECT stage, stage_history FROM customers WHERE workspace_id = $1", workspace_id
    ):
        history = r["stage_history"]
        history = orjson.loads(history) if isinstance(history, str) else history
        for i, h in enumerate(history):
            if start <= datetime.fromisoformat(h["entered_at"]).date() <= end:
                entered[h["stage"]] += 1
                converted[h["stage"]] += i + 1 < len(history)
                if i + 1 < len(history):
                    seconds = datetime.fromisoformat(history[i + 1]["entered_at"]) - (
                        datetime.fromisoformat(h["entered_at"])
                    )
                    to_next[h["stage"]][duration_bucket(seconds.total_seconds())] += 1
        if r["stage"] is not None:
            now_in[r["stage"]] += 1
    touches: dict[str, Counter[str]] = defaultdict(Counter)
    for r in await conn.fetch(
        "SELECT stage, channel, count(*) AS n FROM journey_events WHERE workspace_id = $1 "
        "AND type IN ('track', 'page', 'screen') AND flags & 2 = 0 AND stage IS NOT NULL "
        "AND customer_id IS NOT NULL GROUP BY stage, channel",
        workspace_id,
    ):
        touches[r["stage"]][r["channel"]] += r["n"]
    return {
        "entered": entered,
        "converted": converted,
        "now": now_in,
        "median_to_next": {s: median_of_buckets(to_next[s]) for s in STAGES},
        "touches": touches,
    }


def assert_matches_brute_force(answer: list[Any], expected: dict[str, Any]) -> None:
    stages = {s["stage"]: s for s in answer[0]["stages"]}
    for stage in STAGES:
        assert stages[stage]["entered"] == expected["entered"][stage], stage
        assert stages[stage]["converted"] == expected["converted"][stage], stage
        assert stages[stage]["customers"] == expected["now"][stage], stage
        median = expected["median_to_next"][stage]
        assert stages[stage]["median_seconds_to_next"] == median, stage
    # The journey map's stage figures are the same counts.
    journey_map = answer[[path for path, _ in QUERIES].index("journey-map")]
    for st_ in journey_map["stages"]:
        assert st_["entered"] == expected["entered"][st_["stage"]], st_["stage"]
        assert st_["customers"] == expected["now"][st_["stage"]], st_["stage"]
        assert st_["median_seconds_in_stage"] == expected["median_to_next"][st_["stage"]]
    for i, stage in enumerate(STAGES):
        body = answer[1 + len(BREAKDOWNS) + 1 + i]
        assert body["stage"] == stage
        got = {c["channel"]: c["touches"] for c in body["channels"]}
        assert got == dict(expected["touches"][stage]), stage
    for body in answer:
        if "conversions" in body and "channels" in body:
            credit = sum(c["credit"] for c in body["channels"])
            assert abs(credit - body["conversions"]) < 1e-3 * max(1, body["conversions"])


async def rollups_are_never_negative(conn: asyncpg.Connection, workspace_id: int) -> None:
    for table, columns in (
        ("agg_stage_days", "least(entered, converted, entered - converted)"),
        ("agg_stage_durations", "n"),
        ("agg_touch_days", "least(touches, customers, converted, customers - converted)"),
    ):
        low = await conn.fetchval(
            f"SELECT min({columns}) FROM {table} WHERE workspace_id = $1", workspace_id
        )
        assert low is None or low > -1e-9, table


async def blocks_are_sums_of_days(conn: asyncpg.Connection, workspace_id: int) -> None:
    """The block tables (migrations 0007, 0010) hold exactly the sums of their day rows."""
    spans = ", ".join(f"({span})" for span in BLOCK_SPANS)
    for days, blocks, keys, values in (
        ("agg_stage_durations", "agg_stage_duration_blocks", "stage, dval, bucket", ["n"]),
        (
            "agg_touch_days",
            "agg_touch_blocks",
            "stage, channel, dval",
            ["touches", "customers", "converted", "nps_n", "csat_sum", "sentiment_sum"],
        ),
    ):
        sums = ", ".join(f"sum({v})::float8 AS {v}" for v in values)
        start = "day - ((((day - date '1970-01-01') % s.span) + s.span) % s.span)"
        expected = {
            tuple(r)[: -len(values)]: tuple(r)[-len(values) :]
            for r in await conn.fetch(
                f"SELECT dim, s.span, {start} AS start, {keys}, {sums} FROM {days} "
                f"CROSS JOIN (VALUES {spans}) AS s(span) WHERE workspace_id = $1 "
                f"GROUP BY 1, 2, 3, {keys}",
                workspace_id,
            )
        }
        stored = {
            tuple(r)[: -len(values)]: tuple(r)[-len(values) :]
            for r in await conn.fetch(
                f"SELECT dim, span::int, start, {keys}, "
                + ", ".join(f"{v}::float8" for v in values)
                + f" FROM {blocks} WHERE workspace_id = $1",
                workspace_id,
            )
        }
        for key in expected.keys() | stored.keys():
            want = expected.get(key, (0.0,) * len(values))
            got = stored.get(key, (0.0,) * len(values))
            assert all(abs(a - b) < 1e-6 for a, b in zip(got, want, strict=True)), (blocks, key)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_aggregate_is_independent_of_arrival_and_equals_a_recount(
    data: st.DataObject,
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    events = data.draw(stories(max_events=30), label="story")
    first = data.draw(arrivals(events), label="arrival 1")
    second = data.draw(arrivals(events), label="arrival 2")
    ws1 = await prepared_workspace(client, database_url)
    ws2 = await prepared_workspace(client, database_url)
    funnel_queries = data.draw(st.lists(FUNNEL_QUERY, max_size=3), label="funnels")
    await funnels_equal_sql(client, conn, ws1, [])  # the index, loaded before any event
    await ingest(client, ws1, stitch, first)
    await ingest(client, ws2, stitch, second)
    await funnels_equal_sql(client, conn, ws1, funnel_queries)
    await funnels_equal_sql(client, conn, ws2, funnel_queries)
    # From now on the indexes hold every name asked for: only the change feed moves them.
    indexes = [FUNNELS.entry(ws.workspace_id) for ws in (ws1, ws2)]

    one = await answers(client, ws1)
    assert_same(one, await answers(client, ws2))
    assert_matches_brute_force(one, await brute_force(conn, ws1.workspace_id))
    await rollups_are_never_negative(conn, ws1.workspace_id)
    await blocks_are_sums_of_days(conn, ws1.workspace_id)
    # Answered again from the answer cache: the same as computed now.
    assert_same(await answers(client, ws1), one)
    assert_same(await answers(client, ws1, fresh=True), one)

    # An unmerge in both re-stitches history: still equal, still a true count.
    joins = [
        r["identifiers"]
        for r in await conn.fetch(
            "SELECT identifiers FROM identity_ledger WHERE workspace_id = $1 "
            "AND action IN ('linked', 'merged') ORDER BY position",
            ws1.workspace_id,
        )
    ]
    if joins:
        pair = data.draw(st.sampled_from(joins), label="unmerged link")
        for ws in (ws1, ws2):
            await unmerge(client, ws, list(pair))
        one = await answers(client, ws1)
        assert_same(one, await answers(client, ws2))
        assert_matches_brute_force(one, await brute_force(conn, ws1.workspace_id))
        await rollups_are_never_negative(conn, ws1.workspace_id)
        await blocks_are_sums_of_days(conn, ws1.workspace_id)
        assert_same(await answers(client, ws1, fresh=True), one)
        await funnels_equal_sql(client, conn, ws1, funnel_queries)

    # Late events: a second story (same people, same two weeks) arriving after the first.
    late = data.draw(stories(max_events=8), label="late events")
    for i, e in enumerate(late):
        e["messageId"] = f"late{i:02d}"
    for ws in (ws1, ws2):
        await ingest(client, ws, stitch, [late])
    one = await answers(client, ws1)
    assert_same(one, await answers(client, ws2))
    assert_matches_brute_force(one, await brute_force(conn, ws1.workspace_id))
    await funnels_equal_sql(client, conn, ws1, funnel_queries)

    # The rollups are the sum of the customers' stored contributions (by the stitcher's own
    # add_facts), and rebuilt from those contributions alone they answer the same.
    async with conn.transaction():
        expected = await sum_facts(conn, ws1.workspace_id)
        assert (await compare_rollups(conn, ws1.workspace_id, expected))["identical"]
        await rebuild_rollups_from_facts(conn, ws1.workspace_id)
        assert (await compare_rollups(conn, ws1.workspace_id, expected))["identical"]
    await blocks_are_sums_of_days(conn, ws1.workspace_id)
    assert_same(await answers(client, ws1), one)

    # Rebuilt from the raw events alone: the same answers.
    await rebuild_workspace(conn, ws2.workspace_id)
    await blocks_are_sums_of_days(conn, ws2.workspace_id)
    assert_same(await answers(client, ws2), one)
    await funnels_equal_sql(client, conn, ws2, funnel_queries)

    # A GDPR deletion of one customer of ws1: gone from the funnels too.
    victim = await conn.fetchval(
        "SELECT kind || ':' || value FROM identities WHERE workspace_id = $1 "
        "AND kind IN ('user_id', 'anonymous_id') ORDER BY kind, value LIMIT 1",
        ws1.workspace_id,
    )
    if victim is not None:
        r = await client.delete(
            f"/v1/profiles/{victim}", headers={"Authorization": f"Bearer {ws1.server_key}"}
        )
        assert r.status_code in (202, 409), r.text
        await stitch()
        await funnels_equal_sql(client, conn, ws1, funnel_queries)
    # Every comparison after the first was answered by the same indexes, kept by the feed.
    assert [FUNNELS.entry(ws.workspace_id) for ws in (ws1, ws2)] == indexes


async def test_a_model_change_moves_every_figure_to_the_new_stages(
    client: httpx.AsyncClient, stitch: Stitch, conn: asyncpg.Connection, database_url: str
) -> None:
    events = [
        {
            "type": "track",
            "messageId": f"mc{i}",
            "userId": f"u{i % 3}",
            "event": name,
            "timestamp": f"2026-10-0{1 + i % 5}T10:00:00Z",
            "properties": {"score": i},
        }
        for i, name in enumerate(
            [
                "Product Viewed",
                "Trial Started",
                "Order Completed",
                "Product Viewed",
                "Trial Started",
            ]
        )
    ]
    ws = await prepared_workspace(client, database_url)
    fresh = await new_workspace(database_url, "aggx")
    model = {
        "stages": [
            {"name": "visitor", "rules": [{}]},
            {"name": "trial", "rules": [{"events": ["Trial Started"]}]},
            {"name": "paying", "rules": [{"events": ["Order Completed"]}]},
        ],
        "breakdowns": ["trait:plan"],
    }
    await ingest(client, ws, stitch, [events])
    headers = {"Authorization": f"Bearer {ws.server_key}"}
    r = await client.put("/v1/settings/journey-model", json=model, headers=headers)
    assert r.status_code == 202
    # Start the re-derive job now rather than after the model-cache delay.
    await conn.execute(
        "UPDATE jobs SET created_at = now() - interval '1 hour' WHERE workspace_id = $1",
        ws.workspace_id,
    )
    await stitch()
    got = await client.get("/v1/settings/journey-model", headers=headers)
    assert got.json()["rederive"]["status"] == "done"

    # A workspace that had the new model from the start agrees on every figure.
    fresh_headers = {"Authorization": f"Bearer {fresh.server_key}"}
    r = await client.put("/v1/settings/journey-model", json=model, headers=fresh_headers)
    assert r.status_code == 202
    await ingest(client, fresh, stitch, [events])
    for path, params in [
        ("stages", {}),
        ("stages", {"breakdown": "trait:plan"}),
        ("journey-map", {}),
        ("attribution", {"model": "linear", "conversion": "paying"}),
        ("funnel", {"steps": "visitor,trial,paying", "window": "30d"}),
    ]:
        answers_ = []
        for w in (ws, fresh):
            resp = await client.get(
                f"/v1/aggregates/{path}",
                params={**WINDOW, **params},
                headers={"Authorization": f"Bearer {w.read_key}"},
            )
            assert resp.status_code == 200, resp.text
            answers_.append(resp.json())
        assert answers_[0] == answers_[1], path
    body = (
        await client.get(
            "/v1/aggregates/stages",
            params=WINDOW,
            headers={"Authorization": f"Bearer {ws.read_key}"},
        )
    ).json()
    assert [s["stage"] for s in body["stages"]] == ["visitor", "trial", "paying"]
    # Each customer's first event puts it straight into the furthest stage it matches.
    assert {s["stage"]: s["entered"] for s in body["stages"]} == {
        "visitor": 1,
        "trial": 1,
        "paying": 1,
    }
    # Rows filed under the old stage names were all taken back.
    old = await conn.fetchval(
        "SELECT coalesce(sum(entered), 0) FROM agg_stage_days WHERE workspace_id = $1 "
        "AND stage NOT IN ('visitor', 'trial', 'paying')",
        ws.workspace_id,
    )
    assert old == 0


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_one_pass_stage_funnel_equals_the_general_step_matcher(
    data: st.DataObject,
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """Stage-only funnels take a one-pass shortcut; the general matcher must agree with it."""
    events = data.draw(stories(max_events=30), label="story")
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [events])
    model = await model_for(conn, ws.workspace_id)
    names = data.draw(
        st.lists(st.sampled_from(STAGES), min_size=2, max_size=4, unique=True), label="steps"
    )
    steps = funnel_steps(model, ",".join(names))
    span = funnel_window(data.draw(st.sampled_from(["1h", "1d", "14d"]), label="window"))
    win = window(WINDOW["from"], WINDOW["to"])
    for dim in ("", "trait:plan"):
        fast = await funnel(conn, ws.workspace_id, model, dim=dim, win=win, steps=steps, span=span)
        general = await funnel(
            conn,
            ws.workspace_id,
            model,
            dim=dim,
            win=win,
            # `event:`-free but not all distinct stages: forces the general matcher; the
            # repeated last step is dropped from the comparison.
            steps=[*steps, steps[-1]],
            span=span,
        )
        fast_groups = fast.get("groups", [fast])
        general_groups = general.get("groups", [general])
        assert len(fast_groups) == len(general_groups)
        for a, b in zip(fast_groups, general_groups, strict=True):
            assert a.get("value") == b.get("value")
            assert a["steps"] == b["steps"][:-1], (names, dim)


async def test_an_index_older_than_the_trimmed_feed_reloads_and_stays_exact(
    app: Any,
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """The feed's rows are trimmed after their retention; an index that could have missed one
    reloads (and one that could not keeps going from the feed)."""
    ws = await prepared_workspace(client, database_url)

    def story(prefix: str, user: str, day: int) -> list[dict[str, Any]]:
        return [
            {
                "type": "track",
                "messageId": f"{prefix}{i}",
                "userId": user,
                "event": name,
                "timestamp": f"2026-10-{day + i:02d}T10:00:00Z",
                "properties": {"score": 9},
            }
            for i, name in enumerate(["Product Viewed", "Order Completed", "Order Completed"])
        ]

    await ingest(client, ws, stitch, [story("a", "u1", 1)])
    await funnels_equal_sql(client, conn, ws, [])
    loaded = FUNNELS.entry(ws.workspace_id)
    await ingest(client, ws, stitch, [story("b", "u2", 5)])
    await funnels_equal_sql(client, conn, ws, [])
    assert FUNNELS.entry(ws.workspace_id) is loaded  # brought up to date by the feed

    await ingest(client, ws, stitch, [story("c", "u3", 9)])
    await conn.execute(
        "UPDATE funnel_changes SET at = now() - interval '2 hours' WHERE workspace_id = $1",
        ws.workspace_id,
    )
    assert await app.state.runtime.trim_funnel_changes() > 0
    assert not await conn.fetchval(
        "SELECT count(*) FROM funnel_changes WHERE workspace_id = $1", ws.workspace_id
    )
    await funnels_equal_sql(client, conn, ws, [])
    assert FUNNELS.entry(ws.workspace_id) is not loaded  # reloaded: the feed was trimmed
    body = (
        await client.get(
            "/v1/aggregates/funnel",
            params={**WINDOW, "steps": "Product Viewed,Order Completed", "window": "14d"},
            headers={"Authorization": f"Bearer {ws.read_key}", "Cache-Control": "no-cache"},
        )
    ).json()
    assert [s["customers"] for s in body["steps"]] == [3, 3]


async def test_indexes_beyond_the_memory_bound_are_evicted_least_recently_used(
    client: httpx.AsyncClient, stitch: Stitch, conn: asyncpg.Connection, database_url: str
) -> None:
    indexes = FunnelIndexes()
    workspaces = [await prepared_workspace(client, database_url) for _ in range(2)]
    for ws in workspaces:
        visit = {"type": "page", "messageId": "v", "userId": "u", "name": "Home"}
        signup = {"type": "track", "messageId": "s", "userId": "u", "event": "Signed Up"}
        await ingest(
            client,
            ws,
            stitch,
            [
                [
                    {**visit, "timestamp": "2026-10-01T10:00:00Z"},
                    {**signup, "timestamp": "2026-10-01T11:00:00Z"},
                ]
            ],
        )
    model = await model_for(conn, workspaces[0].workspace_id)
    win = window(WINDOW["from"], WINDOW["to"])
    steps = funnel_steps(model, "awareness,consideration")
    for ws in workspaces:
        async with (
            indexes.lock(ws.workspace_id),
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            found = await funnel_found(
                indexes,
                conn,
                ws.workspace_id,
                stages=model.stage_names,
                dim="",
                steps=steps,
                start=win.start_at,
                end=win.end_at,
                span=funnel_window("1d"),
                max_bytes=1,  # room for the one in use only
            )
        assert found == {"": {1: (1, None), 2: (1, 3600.0)}}
    assert indexes.entry(workspaces[0].workspace_id) is None
    assert indexes.entry(workspaces[1].workspace_id) is not None
