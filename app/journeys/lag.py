"""How far the stitcher is behind ingest: per shard, the oldest committed event not yet stitched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.journeys.repository import SHARDS

# One index seek per shard (ix_events_feed), never a scan, so readiness checks stay cheap.
_OLDEST_PENDING = """
SELECT e.received_at FROM events e
WHERE e.workspace_id % 16 = $1
  AND (e.tx, e.seq) > (coalesce((SELECT tx FROM stitch_progress WHERE shard = $1), '0'::xid8),
                       coalesce((SELECT seq FROM stitch_progress WHERE shard = $1), 0))
ORDER BY e.workspace_id % 16, e.tx, e.seq
LIMIT 1
"""


async def stitch_lag(conn: asyncpg.Connection) -> dict[str, Any]:
    """`{failed_events, lag_seconds, shards_behind, stitched_events}`; lag 0 when nothing is
    pending; failed events are set aside in `stitch_failures` for a fix and a rebuild."""
    now = datetime.now(UTC)
    oldest: datetime | None = None
    behind = 0
    for shard in range(SHARDS):
        received = await conn.fetchval(_OLDEST_PENDING, shard)
        if received is not None:
            behind += 1
            oldest = received if oldest is None else min(oldest, received)
    stitched = await conn.fetchval("SELECT coalesce(sum(events), 0) FROM stitch_progress")
    failures = await conn.fetchval("SELECT count(*) FROM stitch_failures")
    return {
        "failed_events": int(failures),
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "shards_behind": behind,
        "stitched_events": int(stitched),
    }
