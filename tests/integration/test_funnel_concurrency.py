"""Funnel evaluations of one workspace run concurrently and stay exact (app/aggregates/
funnel_store.py, `Gate`): each answer equals the SQL path's in the request's own snapshot,
while other evaluations run and the stitcher changes the data; an index changed in place waits
for the evaluations in flight; a large workspace's index loads in the background, the SQL path
answering meanwhile. No sleeps: threads meet at barriers and events, and the event loop is
yielded to (`asyncio.sleep(0)`) only while polling a condition."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.aggregates import service
from app.aggregates.funnel_index import FunnelIndex
from app.aggregates.funnel_store import (
    FUNNELS,
    FunnelIndexes,
    IndexLoading,
    funnel_found,
)
from app.journeys.stitcher import model_for
from app.workspaces.repository import NewWorkspace
from tests.integration.test_aggregates_exact import WINDOW, prepared_workspace
from tests.integration.test_stitching import ingest, send

Stitch = Callable[[], Awaitable[int]]
FUNNELS_ASKED = [
    ("awareness,consideration,purchase", "14d", ""),
    ("Product Viewed,Order Completed", "1d", "trait:plan"),
    ("awareness,Order Completed,Order Completed", "14d", "property:score"),
    ("Product Viewed,purchase", "2h", ""),
]


def story(prefix: str, user: str, day: int, score: int = 1) -> list[dict[str, Any]]:
    """A visit, a product view and an order (or two) of one user on one day."""
    names = ["Product Viewed", "Order Completed", "Order Completed"]
    return [
        {
            "type": "track",
            "messageId": f"{prefix}{i}",
            "userId": user,
            "event": name,
            "timestamp": f"2026-10-{day:02d}T1{i}:00:00Z",
            "properties": {"score": score},
            "traits": {"plan": "pro" if score % 2 else "free"},
        }
        for i, name in enumerate(names[: 2 + score % 2])
    ]


async def answer_and_sql(
    indexes: FunnelIndexes,
    conn: asyncpg.Connection,
    ws: NewWorkspace,
    asked: tuple[str, str, str],
    **kw: Any,
) -> tuple[Any, Any]:
    """The index's answer and the SQL path's, both in one REPEATABLE READ snapshot taken
    inside the gate (as the route does)."""
    steps_raw, window_raw, dim = asked
    model = await model_for(conn, ws.workspace_id)
    win = service.window(WINDOW["from"], WINDOW["to"])
    steps = service.funnel_steps(model, steps_raw)
    span = service.funnel_window(window_raw)
    async with (
        indexes.lock(ws.workspace_id),
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        await conn.fetchval("SELECT 1")  # the snapshot, taken inside the gate
        found = await funnel_found(
            indexes,
            conn,
            ws.workspace_id,
            stages=model.stage_names,
            breakdowns=model.breakdowns,
            dim=dim,
            steps=steps,
            start=win.start_at,
            end=win.end_at,
            span=span,
            max_bytes=1_000_000_000,
            **kw,
        )
        assert not indexes.lock(ws.workspace_id).held()  # let go before the evaluation
        expected = await service.funnel(
            conn, ws.workspace_id, model, dim=dim, win=win, steps=steps, span=span
        )
    got = service.funnel_answer(dim, win, steps, span, found)
    return orjson.loads(orjson.dumps(got)), orjson.loads(orjson.dumps(expected))


@pytest.fixture
def meeting(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Barrier]:
    """Every evaluation waits (in its thread) until another one is in flight too: under a
    per-workspace mutex the barrier would break (a timeout) instead."""
    barrier = threading.Barrier(2, timeout=30)
    evaluate = FunnelIndex.evaluate

    def met(self: FunnelIndex, *args: Any, **kw: Any) -> Any:
        barrier.wait()
        return evaluate(self, *args, **kw)

    monkeypatch.setattr(FunnelIndex, "evaluate", met)
    yield barrier


async def test_evaluations_of_one_workspace_overlap_and_each_equals_sql_in_its_snapshot(
    app: Any,
    client: httpx.AsyncClient,
    stitch: Stitch,
    database_url: str,
    meeting: threading.Barrier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [story("a", "u0", 1)])
    indexes = FunnelIndexes()
    runtime = app.state.runtime

    async def reader(asked: tuple[str, str, str]) -> tuple[Any, Any]:
        async with runtime.read_connection() as conn:
            return await answer_and_sql(indexes, conn, ws, asked)

    # Evaluations meet in pairs at the barrier: they are in flight at the same time.
    for round_ in range(3):
        pairs = await asyncio.gather(*(reader(FUNNELS_ASKED[(round_ + i) % 4]) for i in range(4)))
        for got, expected in pairs:
            assert got == expected
    loaded = indexes.entry(ws.workspace_id)
    assert loaded is not None
    assert not meeting.broken

    # Rounds of concurrent evaluations, the stitcher changing the data between and during
    # them: every answer is its own snapshot's. (Without the barrier: a request that applies
    # changes waits for the evaluations in flight, so pairs could not always meet.)
    monkeypatch.undo()
    for r in range(1, 7):
        batch = [
            story(f"r{r}u{u}", f"u{(r * 3 + u) % 5}", 1 + (r + u) % 20, r + u) for u in range(3)
        ]
        writer = asyncio.create_task(ingest(client, ws, stitch, batch))
        pairs = await asyncio.gather(*(reader(FUNNELS_ASKED[(r + i) % 4]) for i in range(4)))
        await writer
        for got, expected in pairs:
            assert got == expected
    pairs = await asyncio.gather(*(reader(a) for a in FUNNELS_ASKED))
    for got, expected in pairs:
        assert got == expected
    assert indexes.entry(ws.workspace_id) is loaded  # kept by the feed, never reloaded
    assert indexes.refreshes > 0


async def test_a_refresh_waits_for_the_evaluations_in_flight(
    app: Any,
    client: httpx.AsyncClient,
    stitch: Stitch,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluation at an older snapshot is in flight; a later request sees a change: it
    re-reads the changed customers but applies them only once that evaluation has ended, and
    both answers are their own snapshot's (the first one without the change)."""
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [story("a", "u1", 3, 2), story("b", "u2", 4, 2)])
    indexes = FunnelIndexes()
    runtime = app.state.runtime
    asked = FUNNELS_ASKED[0]
    async with runtime.read_connection() as conn:
        got, expected = await answer_and_sql(indexes, conn, ws, asked)
    assert got == expected
    before = got

    entered = threading.Event()
    go_on = threading.Event()
    evaluate = FunnelIndex.evaluate
    held_once = [True]

    def held(self: FunnelIndex, *args: Any, **kw: Any) -> Any:
        if held_once[0]:
            held_once[0] = False
            entered.set()
            assert go_on.wait(30)
        return evaluate(self, *args, **kw)

    monkeypatch.setattr(FunnelIndex, "evaluate", held)

    async def reader() -> tuple[Any, Any]:
        async with runtime.read_connection() as conn:
            return await answer_and_sql(indexes, conn, ws, asked)

    first = asyncio.create_task(reader())
    while not entered.is_set():  # the first evaluation is in its thread, holding
        await asyncio.sleep(0)
    gate = indexes.lock(ws.workspace_id)
    assert gate.readers == 1 and not gate.held()

    # A new customer through the whole funnel: the next request's snapshot sees it.
    newcomer: list[dict[str, Any]] = [
        {"type": "page", "name": "Home", "timestamp": "2026-10-05T10:00:00Z"},
        {"type": "track", "event": "Signed Up", "timestamp": "2026-10-05T11:00:00Z"},
        {"type": "track", "event": "Order Completed", "timestamp": "2026-10-05T12:00:00Z"},
    ]
    for i, e in enumerate(newcomer):
        e.update(messageId=f"n{i}", userId="u9")
    await send(client, ws, newcomer)
    await stitch()
    second = asyncio.create_task(reader())
    while not gate.draining:  # the second request waits for the first evaluation
        await asyncio.sleep(0)
    assert not second.done()
    go_on.set()
    got1, expected1 = await first
    got2, expected2 = await second
    assert got1 == expected1 == before  # the first snapshot's: without the newcomer
    assert got2 == expected2
    assert got2 != got1
    assert gate.readers == 0 and not gate.draining


async def test_a_large_workspace_loads_in_the_background_answering_with_sql_meanwhile(
    app: Any, client: httpx.AsyncClient, stitch: Stitch, database_url: str
) -> None:
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [story("a", "u1", 3, 2), story("b", "u2", 4, 1)])
    indexes = FunnelIndexes()
    indexes.background_min_customers = 0  # every workspace counts as large
    runtime = app.state.runtime
    connect = runtime.read_connection
    async with runtime.read_connection() as conn:
        with pytest.raises(IndexLoading):
            await answer_and_sql(indexes, conn, ws, FUNNELS_ASKED[0], connect=connect)
        assert not indexes.lock(ws.workspace_id).held()
        loading = indexes.loading(ws.workspace_id)
        assert loading is not None
        # A change committed while it loads: the feed brings the loaded index up to date.
        await ingest(client, ws, stitch, [story("c", "u3", 5, 3)])
        await loading
        assert indexes.loading(ws.workspace_id) is None
        loaded = indexes.entry(ws.workspace_id)
        assert loaded is not None
        got, expected = await answer_and_sql(indexes, conn, ws, FUNNELS_ASKED[0], connect=connect)
        assert got == expected
        # An event name the index lacks: reloaded in the background, the old index kept for
        # what it covers meanwhile.
        with pytest.raises(IndexLoading):
            await answer_and_sql(indexes, conn, ws, FUNNELS_ASKED[1], connect=connect)
        assert indexes.entry(ws.workspace_id) is loaded
        got, expected = await answer_and_sql(indexes, conn, ws, FUNNELS_ASKED[0], connect=connect)
        assert got == expected
        reloading = indexes.loading(ws.workspace_id)
        assert reloading is not None
        await reloading
        assert indexes.entry(ws.workspace_id) is not loaded
        for asked in FUNNELS_ASKED:
            got, expected = await answer_and_sql(indexes, conn, ws, asked, connect=connect)
            assert got == expected
    assert indexes.loads == 2


async def test_many_concurrent_http_funnels_interleaved_with_stitching(
    client: httpx.AsyncClient, stitch: Stitch, conn: asyncpg.Connection, database_url: str
) -> None:
    """Through the route (the process's indexes): concurrent uncached funnels while the
    stitcher runs all succeed, and once it is done they equal the SQL path's answer."""
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [story("a", "u1", 2, 1)])
    headers = {"Authorization": f"Bearer {ws.read_key}", "Cache-Control": "no-cache"}

    async def get(asked: tuple[str, str, str]) -> Any:
        steps, window, dim = asked
        params = {**WINDOW, "steps": steps, "window": window}
        if dim:
            params["breakdown"] = dim
        r = await client.get("/v1/aggregates/funnel", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    for r in range(4):
        batch = [story(f"h{r}u{u}", f"u{u}", 1 + (r * 5 + u) % 25, r + u) for u in range(4)]
        writer = asyncio.create_task(ingest(client, ws, stitch, batch))
        await asyncio.gather(*(get(FUNNELS_ASKED[i % 4]) for i in range(12)))
        await writer
    model = await model_for(conn, ws.workspace_id)
    for asked in FUNNELS_ASKED:
        steps_raw, window_raw, dim = asked
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            expected = await service.funnel(
                conn,
                ws.workspace_id,
                model,
                dim=dim,
                win=service.window(WINDOW["from"], WINDOW["to"]),
                steps=service.funnel_steps(model, steps_raw),
                span=service.funnel_window(window_raw),
            )
        assert await get(asked) == orjson.loads(orjson.dumps(expected)), asked
    assert FUNNELS.entry(ws.workspace_id) is not None
    assert FUNNELS.lock(ws.workspace_id).readers == 0


async def test_a_first_funnel_repeating_an_event_step_loads_that_event(
    app: Any, client: httpx.AsyncClient, stitch: Stitch, database_url: str
) -> None:
    """Regression (found by the overlap test): an index first loaded for a funnel naming an
    event twice held no rows for it (the name's second position matched no row)."""
    ws = await prepared_workspace(client, database_url)
    await ingest(client, ws, stitch, [story("a", "u1", 3, 1), story("b", "u2", 4, 3)])
    indexes = FunnelIndexes()
    async with app.state.runtime.read_connection() as conn:
        for asked in [("Order Completed,Order Completed", "1d", ""), FUNNELS_ASKED[2]]:
            got, expected = await answer_and_sql(indexes, conn, ws, asked)
            assert got == expected, asked
            if "steps" in got:
                assert got["steps"][1]["customers"] == 2
    assert indexes.loads == 1
