"""Authenticating requests by key, with a small cache so the hot path rarely asks the database."""

from __future__ import annotations

import time
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import ProblemError
from app.core.security import KeyKind, hash_key, same_hash
from app.db.engine import is_unavailable
from app.workspaces.repository import KeyRecord, lookup_key

_MAX_CACHED = 10_000


class KeyResolver:
    """Resolves keys to workspaces; remembers answers (also "unknown") for `ttl` seconds."""

    def __init__(self, engine: AsyncEngine, *, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()

    async def resolve(self, key: str) -> KeyRecord | None:
        """The live key record for a clear-text key, or None."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
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
        self._cache[digest] = (now + self._ttl, record)
        self._cache.move_to_end(digest)
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return record

    def forget(self) -> None:
        """Drop cached answers (after a rotation in this process)."""
        self._cache.clear()

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
