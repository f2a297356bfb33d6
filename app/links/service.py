"""Email links: sign URLs, verify tokens, and record opens and clicks through ingest."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Final

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.core.errors import ProblemError
from app.core.logging import get_logger
from app.core.security import KeyKind
from app.ingest.commit import GroupCommitter
from app.ingest.ratelimit import RateLimiter
from app.ingest.service import IngestRequest, IngestService
from app.links import events, signing
from app.workspaces.auth import KeyResolver
from app.workspaces.repository import KeyRecord

log = get_logger(__name__)

_CREDENTIAL_PREFIX: Final = "signed-link-workspace-"


def now() -> float:
    """The clock clicks are timed by (one place, so tests can move it)."""
    return time.time()


class _SignedLinkKeys(KeyResolver):
    """Answers for the one credential the link service presents on behalf of a verified token:
    the token's signature, not a write key, is what authenticates an open or a click. Only
    `LinkService` ever builds requests for this resolver; no HTTP input reaches it."""

    async def require(self, key: str | None, kind: KeyKind) -> KeyRecord:
        if kind is KeyKind.WRITE and key and key.startswith(_CREDENTIAL_PREFIX):
            workspace = key.removeprefix(_CREDENTIAL_PREFIX)
            if workspace.isdigit():
                return KeyRecord(
                    workspace_id=int(workspace),
                    kind=KeyKind.WRITE,
                    key_hash="",
                    rate_limit_per_second=None,
                )
        raise ProblemError(401, "invalid_key", "not a signed-link credential")


def _credential(workspace_id: int) -> str:
    user = f"{_CREDENTIAL_PREFIX}{workspace_id}:"
    return "Basic " + base64.b64encode(user.encode()).decode()


class LinkService:
    """Verifies link tokens and stores their events with the same ingest service as the HTTP
    API (parse, validate, rate limit, group commit), so they are stored exactly like an SDK's."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        committer: GroupCommitter,
        limiter: RateLimiter,
        server_secret: Callable[[], bytes],
    ) -> None:
        self._server_secret = server_secret
        self._ingest = IngestService(
            keys=_SignedLinkKeys(engine, ttl=0), limiter=limiter, committer=committer
        )

    def sign(
        self,
        *,
        base_url: str,
        workspace_id: int,
        campaign: object,
        message: object,
        recipient: object,
        url: object,
    ) -> signing.SignedLinks:
        """The open-pixel and click URLs (raises signing.LinkError naming a bad field)."""
        return signing.link_urls(
            base_url=base_url,
            workspace_id=workspace_id,
            campaign=campaign,
            message=message,
            recipient=recipient,
            url=url,
            server_secret=self._server_secret(),
        )

    def verify(self, token: str, kind: str) -> signing.LinkClaims | None:
        """The claims of a genuine token of `kind`, else None."""
        server_secret = self._server_secret()
        claims = signing.verify(
            token, lambda workspace_id: signing.workspace_secret(server_secret, workspace_id)
        )
        return claims if claims is not None and claims.kind == kind else None

    async def record(
        self, claims: signing.LinkClaims, *, user_agent: str | None, client_ip: str | None
    ) -> bool:
        """Store the open or click; False (logged) if it could not be stored right now.

        The recipient still gets the pixel or the redirect: a lost open is better than a
        broken email."""
        secret = signing.workspace_secret(self._server_secret(), claims.workspace_id)
        event = events.link_event(
            claims,
            anonymous_id=signing.recipient_anonymous_id(secret, claims.recipient),
            message_id=f"link-{uuid.uuid4()}",
            user_agent=user_agent,
            machine=events.machine_reason(
                claims.kind,
                user_agent=user_agent,
                ip=client_ip,
                seconds_since_sent=None if claims.issued is None else now() - claims.issued,
            ),
            library_version=__version__,
        )
        try:
            await self._ingest.ingest(
                IngestRequest(
                    route_type="track",
                    body=orjson.dumps(event),
                    content_type="application/json",
                    content_encoding=None,
                    authorization=_credential(claims.workspace_id),
                    client_ip=client_ip,
                )
            )
        except ProblemError as exc:
            log.warning(
                "link_event_not_stored",
                workspace_id=claims.workspace_id,
                kind=claims.kind,
                status=exc.status,
                code=exc.code,
            )
            return False
        return True
