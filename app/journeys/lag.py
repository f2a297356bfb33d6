"""How far the stitcher is behind ingest: per shard, the oldest committed event not yet stitched,
and, when it is held back, by what.

The feed only reads events of transactions older than every raw-event writer still running
(`app.journeys.repository.FEED_HORIZON`), so no event can be overtaken by an earlier one that
commits later. Other transactions (a migration, a rebuild, another database's batch job) hold
nothing back; a raw-event writer left open does, for as long as it runs: `held_back_by` names
it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.db.partitions import FEED_WRITER_LOCK
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


# The oldest raw-event writer of this database that has an xid: the feed cannot read past it.
_HOLDER = f"""
SELECT a.pid, a.datname, a.application_name, a.state,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS seconds
FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid
WHERE w.locktype = 'advisory' AND w.granted
  AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND w.classid = {FEED_WRITER_LOCK >> 32} AND w.objid = {FEED_WRITER_LOCK & 0xFFFFFFFF}
  AND w.objsubid = 1
  AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
ORDER BY age(a.backend_xid) DESC
LIMIT 1
"""
# Ingest's own group commits last milliseconds; a writer open this long is worth naming.
HOLD_REPORT_SECONDS = 5.0


async def feed_holder(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The oldest raw-event writer when it has been open for `HOLD_REPORT_SECONDS` or more
    (None otherwise)."""
    row = await conn.fetchrow(_HOLDER)
    if row is None or row["seconds"] is None or row["seconds"] < HOLD_REPORT_SECONDS:
        return None
    return {
        "pid": row["pid"],
        "database": row["datname"],
        "application": row["application_name"] or None,
        "state": row["state"],
        "seconds": round(float(row["seconds"]), 1),
    }


async def stitch_lag(conn: asyncpg.Connection) -> dict[str, Any]:
    """`{failed_events, lag_seconds, shards_behind, stitched_events, held_back_by}`; lag 0 when
    nothing is pending; failed events are set aside in `stitch_failures` for a fix and a rebuild;
    `held_back_by` (None unless shards are behind) is the raw-event writer left open that the
    feed waits for (see the module docstring)."""
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
    holder = await feed_holder(conn) if behind else None
    return {
        "failed_events": int(failures),
        "held_back_by": holder,
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "shards_behind": behind,
        "stitched_events": int(stitched),
    }
