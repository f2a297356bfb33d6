"""Authenticating requests by key, with a small cache so the hot path rarely asks the database."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import ProblemError
from app.core.security import KeyKind, hash_key, same_hash
from app.db.engine import is_unavailable
from app.workspaces.repository import KeyRecord, lookup_key

_MAX_CACHED = 10_000


class KeyResolver:
    """Resolves keys to workspaces; remembers answers (also "unknown") for `ttl` seconds.

    Lookups are single-flight: when a busy key's answer expires, the requests that arrive
    before the database has answered again share one query instead of each taking a pool
    connection (64 track connections would otherwise queue behind one another, and behind the
    group commit, every `ttl` seconds)."""

    def __init__(self, engine: AsyncEngine, *, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._generation = 0  # bumped by forget(): a lookup begun before it is not cached

    async def resolve(self, key: str) -> KeyRecord | None:
        """The live key record for a clear-text key, or None."""
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lookup = self._inflight.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(digest))
            self._inflight[digest] = lookup
            lookup.add_done_callback(lambda done: self._landed(digest, done))
        # Shielded: a caller that goes away (a client disconnect) does not cancel the others'.
        return await asyncio.shield(lookup)

    def _landed(self, digest: str, done: asyncio.Future[KeyRecord | None]) -> None:
        if self._inflight.get(digest) is done:
            del self._inflight[digest]
        if not done.cancelled():
            done.exception()  # retrieved: when every caller went away, nobody else reads it

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        generation = self._generation
        try:
            async with self._engine.connect() as conn:
                record = await lookup_key(conn, digest)
        except Exception as exc:
            if is_unavailable(exc):
                raise ProblemError(
                    503,
                    "database_unavailable",
                    "keys cannot be checked right now; retry later",
                    headers={"Retry-After": "5"},
                ) from None
            raise
        if record is not None and not same_hash(record.key_hash, digest):
            record = None
        if generation != self._generation:
            return record
        self._cache[digest] = (now + self._ttl, record)
        self._cache.move_to_end(digest)
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return record

    def forget(self) -> None:
        """Drop cached answers (after a rotation in this process)."""
        self._cache.clear()
        self._inflight.clear()
        self._generation += 1

    async def require(self, key: str | None, kind: KeyKind) -> KeyRecord:
        """The key's record if it is live and of `kind`: else 401 (missing/unknown) or 403."""
        if not key:
            raise ProblemError(
                401,
                "missing_key",
                f"a {kind.value} key is required",
                headers={"WWW-Authenticate": _challenge(kind)},
            )
        record = await self.resolve(key)
        if record is None:
            raise ProblemError(
                401,
                "invalid_key",
                "the key is unknown, revoked or expired",
                headers={"WWW-Authenticate": _challenge(kind)},
            )
        if record.kind is not kind:
            raise ProblemError(
                403,
                "wrong_key_kind",
                f"a {record.kind.value} key cannot be used here; use the {kind.value} key",
            )
        return record


def _challenge(kind: KeyKind) -> str:
    return 'Basic realm="journeys"' if kind is KeyKind.WRITE else 'Bearer realm="journeys"'
