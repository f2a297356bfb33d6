"""funnel changes: the change feed that keeps the in-memory funnel indexes exact

Every statement that changes stage entries, customers (their breakdown values `dims`) or
timeline rows (the event steps) appends one row per workspace to `funnel_changes`: the
customers it touched and the writer's transaction id, in the writer's own transaction
(statement-level triggers with transition tables, like 0007's). An API process's funnel index
(`app.aggregates.funnel_store`) remembers the snapshot it is exact for; a request reads, in its
own REPEATABLE READ snapshot, the rows of transactions that snapshot sees and the index's did
not, and re-reads those customers. `funnel_change_horizons` records what the maintenance task
trimmed, so an index older than that reloads instead.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db.models.events import Xid8

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('stage_entries', 'customers', 'journey_events')

_FUNCTION = """
CREATE FUNCTION funnel_changes_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_changes (workspace_id, xid, customer_ids)
    SELECT workspace_id, pg_current_xact_id(), array_agg(DISTINCT customer_id)
    FROM ({rows}) r WHERE customer_id IS NOT NULL GROUP BY workspace_id;
    RETURN NULL;
END $$
"""
FUNCTIONS = {
    'new': 'SELECT workspace_id, customer_id FROM new_rows',
    'old': 'SELECT workspace_id, customer_id FROM old_rows',
    # An update can move a row to another customer (a timeline row after a merge): both.
    'both': 'SELECT workspace_id, customer_id FROM old_rows '
    'UNION ALL SELECT workspace_id, customer_id FROM new_rows',
}
TRIGGERS = {
    'ins': ('INSERT', 'NEW TABLE AS new_rows', 'new'),
    'upd': ('UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', 'both'),
    'del': ('DELETE', 'OLD TABLE AS old_rows', 'old'),
}


def upgrade() -> None:
    op.execute("CREATE SEQUENCE funnel_changes_seq")
    op.create_table('funnel_changes',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('xid', Xid8(), nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default=sa.text("nextval('funnel_changes_seq')"), nullable=False),
    sa.Column('customer_ids', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'xid', 'seq', name=op.f('pk_funnel_changes'))
    )
    op.create_table('funnel_change_horizons',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('trimmed_through', Xid8(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', name=op.f('pk_funnel_change_horizons'))
    )
    for name, rows in FUNCTIONS.items():
        op.execute(_FUNCTION.format(name=name, rows=rows))
    for table in TABLES:
        for suffix, (event, referencing, function) in TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER funnel_changes_{table}_{suffix} AFTER {event} ON {table} "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION funnel_changes_{function}()"
            )


def downgrade() -> None:
    for table in TABLES:
        for suffix in TRIGGERS:
            op.execute(f"DROP TRIGGER funnel_changes_{table}_{suffix} ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION funnel_changes_{name}()")
    op.drop_table('funnel_change_horizons')
    op.drop_table('funnel_changes')
    op.execute("DROP SEQUENCE funnel_changes_seq")
