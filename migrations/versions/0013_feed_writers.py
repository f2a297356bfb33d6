"""raw-event writers mark themselves, so the stitcher's feed waits for them alone

The stitcher's feed used to read only below the oldest transaction running anywhere on the
server, so that an ingest commit which took its transaction id early and commits late is never
overtaken. Any long write transaction therefore held every shard back: a bulk load, a
migration, another database's batch job, `journeys rebuild` itself.

Now every statement that inserts into `events` (into the partitioned table or straight into a
partition, by INSERT or COPY) first runs `feed_writer()`, a statement-level trigger. The trigger
takes a shared transaction-level advisory lock, `FEED_WRITER_LOCK`, before the statement writes
a row, so before the transaction has an id. The feed can then tell the transactions that may
still add raw events (holding the lock, or gone by the time it looks) from those that cannot:
running, and not holding it (`app.journeys.repository.FEED_HORIZON`). A transaction that has
already written something else cannot start inserting raw events: the trigger refuses it,
because its id would predate its lock.

`app.db.partitions` adds the trigger to every partition it creates; this migration adds it to
`events` and to the partitions that exist.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 17:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEED_WRITER_LOCK = 0x4A53_4657  # "JSFW"; app.db.partitions.FEED_WRITER_LOCK

_FUNCTION = f"""
CREATE FUNCTION feed_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('journeys.feed_writer', true), '') <> 'on' THEN
        IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
            RAISE EXCEPTION 'raw events must be the first write of their transaction'
                USING HINT = 'The stitcher''s feed waits only for transactions that began by '
                             'writing raw events; insert them first, or in a transaction of '
                             'their own.';
        END IF;
        PERFORM pg_advisory_xact_lock_shared({FEED_WRITER_LOCK});
        PERFORM set_config('journeys.feed_writer', 'on', true);
    END IF;
    RETURN NULL;
END
$$
"""


def _trigger(table: str) -> str:
    return (
        f"CREATE TRIGGER feed_writer BEFORE INSERT ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION feed_writer()"
    )


def _partitions() -> list[str]:
    rows = op.get_bind().exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY c.relname"
    )
    return [r[0] for r in rows]


def upgrade() -> None:
    op.execute(_FUNCTION)
    for table in ['events', *_partitions()]:
        op.execute(_trigger(table))


def downgrade() -> None:
    for table in ['events', *_partitions()]:
        op.execute(f"DROP TRIGGER IF EXISTS feed_writer ON {table}")
    op.execute("DROP FUNCTION IF EXISTS feed_writer()")
