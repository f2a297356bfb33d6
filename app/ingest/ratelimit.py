"""Per-workspace token buckets, counted in events (per process)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per workspace: `rate` events/s sustained, `burst` at once."""

    def __init__(self, *, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[int, _Bucket] = {}

    def take(self, workspace_id: int, events: int, *, rate: float | None = None) -> float:
        """Spend `events` tokens; returns 0 when allowed, else seconds until it would be."""
        rate = rate or self._rate
        burst = max(self._burst * rate / self._rate, 1.0)
        now = time.monotonic()
        bucket = self._buckets.get(workspace_id)
        if bucket is None:
            bucket = self._buckets[workspace_id] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if events <= bucket.tokens or bucket.tokens >= burst:
            # A request larger than the burst passes on a full bucket and leaves it in debt:
            # waiting could never make room for it.
            bucket.tokens -= events
            return 0.0
        missing = min(events, burst) - bucket.tokens
        return max(missing / rate, 0.001)


def retry_after(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
