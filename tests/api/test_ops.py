"""Operations endpoints, and 503 (not 500) when the database can't be reached."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI

from app.core.security import KeyKind, hash_key
from app.core.settings import Settings
from app.db.engine import asyncpg_dsn
from app.db.migrate import head_revision
from app.db.partitions import ensure_week_partition, week_of
from app.journeys import lag
from app.main import create_app
from app.workspaces.repository import KeyRecord, NewWorkspace
from tests.conftest import insert_raw_event

EVENT = {"userId": "u1", "event": "Product Viewed"}
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope"


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_readyz_reports_the_migration_head(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["migration"] == head_revision() is not None


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_count_accepted_duplicate_and_rejected_events(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    before = (await client.get("/metrics")).text
    batch = {
        "batch": [
            {**EVENT, "type": "track", "messageId": "metrics-1"},
            {**EVENT, "type": "track", "messageId": "metrics-1"},
            {"type": "track", "userId": "u"},
        ]
    }
    r = await client.post("/v1/batch", json=batch, auth=(workspace.write_key, ""))
    assert r.status_code == 200
    r = await client.post("/v1/track", json={"userId": "u"}, auth=(workspace.write_key, ""))
    assert r.status_code == 400
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    after = answer.text
    for name in (
        "journeys_events_accepted_total",
        "journeys_events_duplicate_total",
        "journeys_events_rejected_total",
        "journeys_commit_seconds_bucket",
    ):
        assert name in after
    assert (
        metric(after, "journeys_events_accepted_total")
        - metric(before, "journeys_events_accepted_total")
        == 1
    )
    assert (
        metric(after, "journeys_events_duplicate_total")
        - metric(before, "journeys_events_duplicate_total")
        == 1
    )
    code = 'code="missing_event"'
    assert (
        metric(after, "journeys_events_rejected_total", code)
        - metric(before, "journeys_events_rejected_total", code)
        == 2
    )


@pytest_asyncio.fixture(loop_scope="session")
async def down_app() -> AsyncIterator[FastAPI]:
    """An app whose database is unreachable, with its lifespan running."""
    app = create_app(
        Settings(
            database_url=UNREACHABLE,
            log_level="warning",
            key_cache_seconds=0.5,
            inprocess_worker=False,
        )
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def down_client(down_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=down_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://down") as c:
        yield c


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["status"] == 503 and body["code"] == "database_unavailable"
    assert body["message"] == body["detail"]


async def test_unreachable_database_is_a_503_with_retry_after(
    down_client: httpx.AsyncClient,
) -> None:
    # The key lookup itself needs the database: a 503, never a 500 (SDKs retry 503s).
    key = "jw_" + "k" * 32
    assert_unavailable(await down_client.post("/v1/track", json=EVENT, auth=(key, "")))
    assert_unavailable(
        await down_client.post(
            "/v1/batch", json={"batch": [{**EVENT, "type": "track"}], "writeKey": key}
        )
    )
    assert_unavailable(
        await down_client.post(
            "/v1/t",
            content=orjson.dumps({**EVENT, "writeKey": key}),
            headers={"content-type": "text/plain", "origin": "https://shop.example"},
        )
    )
    # Requests that need no database are still answered as usual.
    missing = await down_client.post("/v1/track", json=EVENT)
    assert missing.status_code == 401
    assert (await down_client.post("/v1/m", json={"series": []})).status_code == 200
    assert (await down_client.get("/healthz")).status_code == 200
    ready = await down_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"


async def test_commit_to_an_unreachable_database_is_a_503(
    down_client: httpx.AsyncClient, down_app: FastAPI
) -> None:
    """A key already known to this process (cached before the database went away) gets as far
    as the group commit, which fails: 503, so the SDK keeps the events and retries."""
    key = "jw_" + "c" * 32
    record = KeyRecord(
        workspace_id=1, kind=KeyKind.WRITE, key_hash=hash_key(key), rate_limit_per_second=None
    )
    # White-box: plant the cache entry the resolver would hold had the database been up.
    down_app.state.runtime.keys._cache[hash_key(key)] = (time.monotonic() + 60, record)
    r = await down_client.post(
        "/v1/batch", json={"batch": [{**EVENT, "type": "track"}]}, auth=(key, "")
    )
    assert_unavailable(r)


async def test_metrics_count_requests_by_area_and_show_pool_use(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    label = 'journeys_http_requests_total{area="aggregates",status="401"}'
    before = (await client.get("/metrics")).text
    assert (await client.get("/v1/aggregates/stages")).status_code == 401
    after = (await client.get("/metrics")).text
    assert metric(after, label) - metric(before, label) == 1
    assert 'journeys_db_pool_in_use{pool="write"}' in after
    assert 'journeys_db_pool_in_use{pool="read"}' in after


async def test_a_long_write_transaction_that_writes_no_raw_events_holds_nothing_back(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    stitch: Callable[..., Awaitable[int]],
    database_url: str,
) -> None:
    """A migration, a rebuild or a batch job left open (here: any transaction with an id)
    cannot add raw events, so the feed reads past it."""
    await stitch()  # what earlier tests left
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await ensure_week_partition(blocker, week_of(datetime.now(UTC)))
        tx = blocker.transaction()
        await tx.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")  # takes an xid: a writer
        r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
        assert r.status_code == 200, r.text
        assert await stitch(settle=False) == 1
        body = (await client.get("/readyz")).json()["stitcher"]
        assert body["shards_behind"] == 0
        assert body["held_back_by"] is None
        # Once it has written, it may not start writing raw events: its id predates its lock.
        with pytest.raises(asyncpg.RaiseError, match="first write of their transaction"):
            await insert_raw_event(
                blocker, workspace.workspace_id, "late-writer", _imported("late-writer")
            )
        await tx.rollback()
    finally:
        await blocker.close()


async def test_readyz_names_the_raw_event_writer_that_holds_stitching_back(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    stitch: Callable[..., Awaitable[int]],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raw-event writer still open (a slow ingest commit, a bulk load) holds the feed back:
    events committed after it are not stitched before its own, and /readyz names it."""
    monkeypatch.setattr(lag, "HOLD_REPORT_SECONDS", 0.0)
    await stitch()  # what earlier tests left
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await blocker.execute("SET application_name = 'bulk-load'")
        await ensure_week_partition(blocker, week_of(datetime.now(UTC)))
        tx = blocker.transaction()
        await tx.start()
        await insert_raw_event(
            blocker, workspace.workspace_id, "slow-commit", _imported("slow-commit")
        )
        r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
        assert r.status_code == 200, r.text
        assert await stitch(settle=False) == 0  # committed, yet behind the open writer
        body = (await client.get("/readyz")).json()["stitcher"]
        assert body["shards_behind"] >= 1
        assert body["held_back_by"]["pid"] == blocker.get_server_pid()
        assert body["held_back_by"]["application"] == "bulk-load"
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "journeys_stitch_feed_held_seconds") >= 0.0
        # A settling drain (the default) waits for the writers older than it instead.
        settling = asyncio.create_task(stitch())
        done, _ = await asyncio.wait({settling}, timeout=0.5)
        assert not done, "the drain returned while an older raw-event writer was still open"
        await tx.commit()
    finally:
        await blocker.close()
    assert await settling == 2  # both, the slow commit's event first
    body = (await client.get("/readyz")).json()["stitcher"]
    assert body["shards_behind"] == 0
    assert body["held_back_by"] is None


def _imported(message_id: str) -> dict[str, str]:
    """A raw event as a bulk load would write it, without the API."""
    return {"type": "track", "userId": "u9", "event": "Imported", "messageId": message_id}
