"""Weekly partitions of `events`: created on demand, dropped whole for retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

# Serialises concurrent partition creation across processes.
_LOCK_KEY = 0x4A_4F_55_52  # "JOUR"
# Held (shared, until commit) by every transaction that inserts raw events, taken by the
# `feed_writer` statement trigger before its first row (migration 0013): the stitcher's feed
# waits for these transactions only (`app.journeys.repository.FEED_HORIZON`).
FEED_WRITER_LOCK = 0x4A53_4657  # "JSFW"


def week_of(moment: datetime) -> date:
    """The Monday (UTC) of the week a moment falls in: the partition key."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def partition_name(week: date) -> str:
    """`events_pYYYYMMDD`, named after the week's Monday."""
    return f"events_p{week:%Y%m%d}"


async def ensure_week_partition(conn: asyncpg.Connection, week: date) -> None:
    """Create the partition for `week` if missing (idempotent, safe under concurrency)."""
    name = partition_name(week)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
        if not exists:
            end = week + timedelta(days=7)
            await conn.execute(
                f"CREATE TABLE {name} PARTITION OF events "
                f"FOR VALUES FROM ('{week.isoformat()}') TO ('{end.isoformat()}')"
            )
            # Statement triggers are not inherited: a COPY straight into the partition must
            # mark its transaction as a raw-event writer too.
            await conn.execute(
                f"CREATE TRIGGER feed_writer BEFORE INSERT ON {name} "
                "FOR EACH STATEMENT EXECUTE FUNCTION feed_writer()"
            )


async def existing_weeks(conn: asyncpg.Connection) -> list[date]:
    """The weeks that have a partition, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY c.relname"
    )
    return [datetime.strptime(r["relname"][len("events_p") :], "%Y%m%d").date() for r in rows]


async def drop_weeks_before(conn: asyncpg.Connection, cutoff: date) -> list[str]:
    """Drop every partition whose whole week ends on or before `cutoff` (retention)."""
    dropped = []
    for week in await existing_weeks(conn):
        if week + timedelta(days=7) <= cutoff:
            name = partition_name(week)
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
            dropped.append(name)
    return dropped
