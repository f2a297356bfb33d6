"""Ingest: authenticate, parse, rate-limit and durably store a request's events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from app.core.errors import ProblemError
from app.core.security import KeyKind, basic_auth_user
from app.ingest import segment
from app.ingest.commit import DatabaseUnavailable, GroupCommitter, RowsRefused
from app.ingest.metrics import EVENTS_ACCEPTED, EVENTS_DUPLICATE, EVENTS_REJECTED
from app.ingest.ratelimit import RateLimiter, retry_after
from app.ingest.repository import EventBatch
from app.privacy.consent import denies
from app.privacy.screen import CONSENT, EVENTS_DROPPED
from app.workspaces.auth import KeyResolver

UNAVAILABLE_RETRY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class IngestRequest:
    """The parts of an HTTP request that ingest needs."""

    route_type: str  # "track" … "alias", or "batch"
    body: bytes
    content_type: str | None
    content_encoding: str | None
    authorization: str | None
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What was stored and what was refused."""

    stored: int
    accepted: int
    rejected: list[segment.Rejection]


def body_limit(route_type: str) -> int:
    """The largest body (after decompression) a route accepts."""
    return segment.MAX_BATCH_BYTES if route_type == "batch" else segment.MAX_EVENT_BYTES


class IngestService:
    """Composes the pure parser, key resolution, rate limiting and the group committer."""

    def __init__(
        self, *, keys: KeyResolver, limiter: RateLimiter, committer: GroupCommitter
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._committer = committer

    async def ingest(self, request: IngestRequest) -> IngestResult:
        """Store the request's valid events; raises ProblemError for a request-level refusal."""
        header_key = basic_auth_user(request.authorization)
        record = await self._keys.require(header_key, KeyKind.WRITE) if header_key else None
        body: bytes | None = None
        try:
            body = segment.decode_body(
                request.body,
                content_type=request.content_type,
                content_encoding=request.content_encoding,
                limit=body_limit(request.route_type),
            )
            meta = segment.RequestMeta(received_at=datetime.now(UTC), client_ip=request.client_ip)
            if request.route_type == "batch":
                events, rejected, doc = segment.parse_batch(body, meta=meta)
            else:
                event, doc = segment.parse_single(body, type_hint=request.route_type, meta=meta)
                events, rejected = [event], []
        except segment.IngestError as exc:
            if record is None:
                # Don't tell an unauthenticated caller anything about its payload; a key in a
                # body that is JSON still authenticates it, even when its event is invalid.
                await self._keys.require(_body_write_key(body), KeyKind.WRITE)
            EVENTS_REJECTED.labels(code=exc.code).inc()
            raise ProblemError(exc.status, exc.code, exc.detail, field=exc.field) from None
        if record is None:
            record = await self._keys.require(segment.write_key_in_body(doc), KeyKind.WRITE)
        for rejection in rejected:
            EVENTS_REJECTED.labels(code=rejection.code).inc()

        wait = self._limiter.take(
            record.workspace_id, len(events), rate=record.rate_limit_per_second
        )
        if wait:
            raise ProblemError(
                429,
                "rate_limited",
                "this workspace sends more events than its rate limit allows; retry later",
                headers={"Retry-After": retry_after(wait)},
            )
        if record.consent_category is not None:
            events = _with_consent(events, record.consent_category)
        try:
            stored = await self._committer.submit(EventBatch(record.workspace_id, events))
        except DatabaseUnavailable:
            raise ProblemError(
                503,
                "database_unavailable",
                "events could not be stored right now; retry later",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
            ) from None
        except RowsRefused as exc:
            EVENTS_REJECTED.labels(code="refused_by_database").inc(len(events))
            raise ProblemError(400, "refused_by_database", exc.detail) from None
        EVENTS_ACCEPTED.inc(stored)
        EVENTS_DUPLICATE.inc(len(events) - stored)
        return IngestResult(stored=stored, accepted=len(events), rejected=rejected)


def _with_consent(
    events: list[segment.NormalisedEvent], category: str
) -> list[segment.NormalisedEvent]:
    """Drop the events whose consent preferences deny the category the workspace requires:
    answered 200 like the others, never stored (the stitcher screens again for events that
    arrived before the setting changed)."""
    kept = [e for e in events if not denies(orjson.loads(e.payload), category)]
    if len(kept) < len(events):
        EVENTS_DROPPED.labels(reason=CONSENT).inc(len(events) - len(kept))
    return kept


def _body_write_key(body: bytes | None) -> str | None:
    """The writeKey of a body that parses as JSON, whatever is wrong with its events."""
    if body is None:
        return None
    try:
        return segment.write_key_in_body(segment.parse_json(body))
    except segment.IngestError:
        return None


async def receive_body(receive: Receive, *, limit: int, timeout: float) -> bytes:
    """Read a request body from ASGI `receive`, refusing more than `limit` bytes or a client
    slower than `timeout`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ProblemError(
                        413, "body_too_large", f"body is larger than {limit // 1024} KB"
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise ProblemError(408, "request_timeout", "the request body arrived too slowly") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
