"""Write keys on ingest: 401/403, workspace isolation, rotation, hashing, per-workspace limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.security import KeyKind
from app.core.settings import Settings
from app.db.engine import make_engine
from app.workspaces.repository import NewWorkspace, rotate_key
from tests.conftest import new_workspace

EVENT = {"userId": "u1", "event": "Product Viewed"}
PROBLEM = "application/problem+json"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pooled=False)
    try:
        yield eng
    finally:
        await eng.dispose()


async def count(db: asyncpg.Connection, workspace_id: int) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM events WHERE workspace_id = $1", workspace_id)
    )


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["message"] == body["detail"]
    return body


def basic_header(value: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(value.encode()).decode()}


# --------------------------------------------------------------------------- 401 / 403


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Basic"},
        {"authorization": "Basic !!!not-base64"},
        basic_header(":"),
        basic_header(":password"),
        {"authorization": "Bearer jw_whatever"},
        {"authorization": ""},
    ],
    ids=[
        "none",
        "empty-basic",
        "bad-base64",
        "empty-user",
        "password-only",
        "bearer",
        "empty-header",
    ],
)
async def test_missing_key_is_401_with_a_challenge(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for path, body in (("/v1/track", EVENT), ("/v1/batch", {"batch": [EVENT]})):
        r = await client.post(path, json=body, headers=headers)
        problem(r, 401, "missing_key")
        assert r.headers["www-authenticate"].lower().startswith("basic")
    # A bad body without a key still doesn't reveal anything about the body.
    r = await client.post("/v1/track", content=b"{nope", headers=headers)
    problem(r, 401, "missing_key")


async def test_unknown_key_is_401(client: httpx.AsyncClient, workspace: NewWorkspace) -> None:
    attempts: list[dict[str, Any]] = [
        {"auth": ("jw_unknown_key_000000000000000000", "")},
        {"auth": (workspace.write_key + "x", "")},
        {"auth": (workspace.write_key.upper(), "")},
        {"json": {**EVENT, "writeKey": "jw_unknown_key"}},
    ]
    for kwargs in attempts:
        kwargs.setdefault("json", EVENT)
        r = await client.post("/v1/track", **kwargs)
        problem(r, 401, "invalid_key")
        assert r.headers["www-authenticate"].lower().startswith("basic")


async def test_basic_with_a_password_part_still_works(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, "ignored"))
    assert r.status_code == 200, r.text
    assert await count(db, workspace.workspace_id) == 1


@pytest.mark.parametrize("kind", ["read", "server"])
async def test_other_kinds_of_key_are_403_on_ingest(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, kind: str
) -> None:
    key = workspace.read_key if kind == "read" else workspace.server_key
    attempts: list[dict[str, Any]] = [
        {"json": EVENT, "auth": (key, "")},
        {"json": {**EVENT, "writeKey": key}},
        {"json": {"batch": [{**EVENT, "type": "track"}], "writeKey": key}, "path": "/v1/batch"},
        {
            "content": orjson.dumps({**EVENT, "writeKey": key}),
            "path": "/v1/t",
            "headers": {"content-type": "text/plain"},
        },
    ]
    for kwargs in attempts:
        path = str(kwargs.pop("path", "/v1/track"))
        r = await client.post(path, **kwargs)
        body = problem(r, 403, "wrong_key_kind")
        assert key not in r.text and key not in body["detail"]
    assert await count(db, workspace.workspace_id) == 0


async def test_a_key_of_workspace_a_writes_only_to_a(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    other = await new_workspace(database_url)
    r = await client.post(
        "/v1/track", json={**EVENT, "messageId": "a-only"}, auth=(workspace.write_key, "")
    )
    assert r.status_code == 200
    r = await client.post(
        "/v1/batch", json={"batch": [{**EVENT, "type": "track"}], "writeKey": workspace.write_key}
    )
    assert r.status_code == 200
    # The header authenticates; a key of B in the body doesn't redirect the events to B.
    r = await client.post(
        "/v1/track",
        json={**EVENT, "writeKey": other.write_key, "workspaceId": other.workspace_id},
        auth=(workspace.write_key, ""),
    )
    assert r.status_code in (200, 401, 403)
    assert await count(db, other.workspace_id) == 0
    assert await count(db, workspace.workspace_id) >= 2


# --------------------------------------------------------------------------- rotation


async def wait_for_status(
    client: httpx.AsyncClient, key: str, status: int, timeout: float = 10.0
) -> int:
    """Poll until an event sent with `key` is answered `status` (bounded)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        last = (await client.post("/v1/track", json=EVENT, auth=(key, ""))).status_code
        if last == status:
            return last
        await asyncio.sleep(0.05)
    return last


async def test_rotation_with_overlap_keeps_the_old_key_working(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    engine: AsyncEngine,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    async with engine.begin() as conn:
        new = await rotate_key(
            conn,
            workspace_id=workspace.workspace_id,
            kind=KeyKind.WRITE,
            overlap=timedelta(hours=1),
        )
    assert new != workspace.write_key and new.startswith("jw_")
    assert (await client.post("/v1/track", json=EVENT, auth=(new, ""))).status_code == 200
    # Once any cached answer has expired, the old key is still live (overlap).
    deadline = time.monotonic() + settings.key_cache_seconds + 0.2
    while time.monotonic() < deadline:
        r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
        assert r.status_code == 200
        await asyncio.sleep(0.05)
    expires = await db.fetch(
        "SELECT expires_at IS NOT NULL AS expiring FROM api_keys"
        " WHERE workspace_id = $1 AND kind = 'write' ORDER BY id",
        workspace.workspace_id,
    )
    assert [row["expiring"] for row in expires] == [True, False]


async def test_rotation_without_overlap_retires_the_old_key(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    engine: AsyncEngine,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    assert settings.key_cache_seconds <= 1
    # Warm the key cache with the old key, so the retirement has to outlive it.
    assert (
        await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
    ).status_code == 200
    async with engine.begin() as conn:
        new = await rotate_key(
            conn, workspace_id=workspace.workspace_id, kind=KeyKind.WRITE, overlap=timedelta(0)
        )
    started = time.monotonic()
    assert await wait_for_status(client, workspace.write_key, 401) == 401
    assert time.monotonic() - started < settings.key_cache_seconds + 5
    r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
    problem(r, 401, "invalid_key")
    assert (await client.post("/v1/track", json=EVENT, auth=(new, ""))).status_code == 200
    # The other kinds of key are untouched by a write-key rotation.
    r = await client.post("/v1/track", json=EVENT, auth=(workspace.read_key, ""))
    assert r.status_code == 403


async def test_keys_are_stored_only_as_hashes(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        rotated = await rotate_key(
            conn,
            workspace_id=workspace.workspace_id,
            kind=KeyKind.READ,
            overlap=timedelta(minutes=5),
        )
    clear = [workspace.write_key, workspace.read_key, workspace.server_key, rotated]
    rows = await db.fetch(
        "SELECT kind, key_hash, row_to_json(k)::text AS everything FROM api_keys k"
        " WHERE workspace_id = $1",
        workspace.workspace_id,
    )
    assert sorted(row["kind"] for row in rows) == ["read", "read", "server", "write"]
    hashes = {row["key_hash"] for row in rows}
    assert hashes == {hashlib.sha256(key.encode()).hexdigest() for key in clear}
    dump = "\n".join(row["everything"] for row in rows)
    ws_dump = await db.fetchval(
        "SELECT row_to_json(w)::text FROM workspaces w WHERE id = $1", workspace.workspace_id
    )
    for key in clear:
        assert key not in dump and key not in ws_dump
        assert key[3:] not in dump  # not even without its prefix
    # An ingested event never keeps the key that authenticated it.
    r = await client.post("/v1/track", json={**EVENT, "writeKey": workspace.write_key})
    assert r.status_code == 200
    payload = await db.fetchval(
        "SELECT payload::text FROM events WHERE workspace_id = $1", workspace.workspace_id
    )
    assert workspace.write_key not in payload


# --------------------------------------------------------------------------- rate limit


async def limited_workspace(database_url: str, db: asyncpg.Connection, rate: float) -> NewWorkspace:
    """A fresh workspace (never resolved, so never cached) with its own rate limit."""
    ws = await new_workspace(database_url, prefix="limited")
    await db.execute(
        "UPDATE workspaces SET rate_limit_per_second = $2 WHERE id = $1", ws.workspace_id, rate
    )
    return ws


async def test_rate_limit_is_per_workspace(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    limited = await limited_workspace(database_url, db, 1.0)
    statuses = []
    refused: httpx.Response | None = None
    for n in range(10):
        r = await client.post(
            "/v1/track", json={**EVENT, "messageId": f"rl-{n}"}, auth=(limited.write_key, "")
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            refused = r
            break
    assert refused is not None, statuses
    assert 1 <= statuses.count(200) <= 3, statuses
    body = problem(refused, 429, "rate_limited")
    assert body["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    # The refused request stored nothing.
    assert await count(db, limited.workspace_id) == statuses.count(200)
    # Another workspace is not affected.
    for _ in range(5):
        r = await client.post("/v1/track", json=EVENT, auth=(workspace.write_key, ""))
        assert r.status_code == 200
    # A refused batch stores none of its events either.
    r = await client.post(
        "/v1/batch", json={"batch": [{**EVENT, "type": "track"}] * 3}, auth=(limited.write_key, "")
    )
    assert r.status_code == 429 and "retry-after" in r.headers
    assert await count(db, limited.workspace_id) == statuses.count(200)


async def test_a_batch_larger_than_the_burst_is_not_refused_forever(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """With 1 event/s the burst is a couple of events; a batch of 5 could never fit in the
    bucket, so it must pass on a full bucket (and the debt delays what follows)."""
    limited = await limited_workspace(database_url, db, 1.0)
    batch = {"batch": [{**EVENT, "type": "track", "messageId": f"big-{n}"} for n in range(5)]}
    r = await client.post("/v1/batch", json=batch, auth=(limited.write_key, ""))
    assert r.status_code == 200, r.text
    assert await count(db, limited.workspace_id) == 5
    r = await client.post("/v1/track", json=EVENT, auth=(limited.write_key, ""))
    problem(r, 429, "rate_limited")
    # The debt of ~3 events at 1 event/s shows in Retry-After.
    assert int(r.headers["retry-after"]) >= 3


# --------------------------------------------------------------------------- key cache


async def test_concurrent_lookups_of_an_expired_key_share_one_query(
    engine: AsyncEngine, workspace: NewWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a busy key's cached answer expires, the requests arriving meanwhile share one
    database lookup instead of each taking a pool connection."""
    from app.workspaces import auth

    queries = 0
    release = asyncio.Event()
    real_lookup = auth.lookup_key

    async def slow_lookup(conn: Any, digest: str) -> Any:
        nonlocal queries
        queries += 1
        await release.wait()  # every caller arrives while the first lookup is in flight
        return await real_lookup(conn, digest)

    monkeypatch.setattr(auth, "lookup_key", slow_lookup)
    keys = auth.KeyResolver(engine, ttl=60)
    callers = [asyncio.create_task(keys.resolve(workspace.write_key)) for _ in range(20)]
    while queries == 0:
        await asyncio.sleep(0)  # let the callers reach the lookup
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    records = await asyncio.gather(*callers)
    assert queries == 1
    assert {r.workspace_id for r in records if r is not None} == {workspace.workspace_id}
    assert all(r is not None and r.kind is KeyKind.WRITE for r in records)
    # Cached now: no further query; forget() makes the next caller ask again.
    assert await keys.resolve(workspace.write_key) is not None and queries == 1
    keys.forget()
    assert await keys.resolve(workspace.write_key) is not None and queries == 2


async def test_a_caller_going_away_does_not_cancel_the_shared_lookup(
    engine: AsyncEngine, workspace: NewWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.workspaces import auth

    release = asyncio.Event()
    started = asyncio.Event()
    real_lookup = auth.lookup_key

    async def slow_lookup(conn: Any, digest: str) -> Any:
        started.set()
        await release.wait()
        return await real_lookup(conn, digest)

    monkeypatch.setattr(auth, "lookup_key", slow_lookup)
    keys = auth.KeyResolver(engine, ttl=60)
    first = asyncio.create_task(keys.resolve(workspace.write_key))
    await started.wait()
    second = asyncio.create_task(keys.resolve(workspace.write_key))
    await asyncio.sleep(0)
    first.cancel()  # a client disconnect
    release.set()
    record = await second
    assert record is not None and record.workspace_id == workspace.workspace_id
    with pytest.raises(asyncio.CancelledError):
        await first
