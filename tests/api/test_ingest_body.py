"""The ingest fast path reads bodies straight from ASGI: chunks, limits, slow and gone clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.requests import ClientDisconnect

from app.core.errors import ProblemError
from app.ingest.segment import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from app.ingest.service import receive_body
from app.workspaces.repository import NewWorkspace


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_batch_sent_in_many_chunks_is_stored_whole(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    items = [
        {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"chunked-{i}"}
        for i in range(200)
    ]
    body = orjson.dumps({"batch": items})
    answer = await client.post(
        "/v1/batch",
        content=chunks(body, 1000),
        auth=(workspace.write_key, ""),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 200 and answer.json() == {"success": True}
    stored = await db.fetchval(
        "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
    )
    assert stored == 200


@pytest.mark.parametrize(
    ("path", "limit"), [("/v1/track", MAX_EVENT_BYTES), ("/v1/b", MAX_BATCH_BYTES)]
)
async def test_a_streamed_body_over_the_limit_is_a_413(
    client: httpx.AsyncClient, workspace: NewWorkspace, path: str, limit: int
) -> None:
    answer = await client.post(
        path,
        content=chunks(b" " * (limit + 1), 4096),
        auth=(workspace.write_key, ""),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "body_too_large"


def receive_of(*messages: dict[str, Any], then_wait: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.Event().wait()  # a client that stops sending
        raise AssertionError("read past the end of the body")

    return receive


async def test_receive_body_joins_chunks_and_stops_at_the_last() -> None:
    receive = receive_of(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd"},
    )
    assert await receive_body(receive, limit=4, timeout=5) == b"abcd"


async def test_receive_body_refuses_more_than_the_limit() -> None:
    receive = receive_of(
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": False},
    )
    with pytest.raises(ProblemError) as info:
        await receive_body(receive, limit=4, timeout=5)
    assert (info.value.status, info.value.code) == (413, "body_too_large")


async def test_receive_body_gives_up_on_a_slow_client() -> None:
    receive = receive_of({"type": "http.request", "body": b"ab", "more_body": True}, then_wait=True)
    with pytest.raises(ProblemError) as info:
        await receive_body(receive, limit=100, timeout=0.05)
    assert (info.value.status, info.value.code) == (408, "request_timeout")


async def test_receive_body_notices_a_client_that_went_away() -> None:
    receive = receive_of(
        {"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnect):
        await receive_body(receive, limit=100, timeout=5)
