"""aggregates read versions: what the aggregates' answer cache is invalidated by

Every statement that changes a row the `/v1/aggregates/*` answers are computed from (customers,
stage entries, timelines, rollups) bumps the workspace's version in `agg_read_versions`, in the
writer's own transaction, so the bump becomes visible together with the change (statement-level
triggers with transition tables: one bump per statement and workspace, not per row). Every
writer of those tables already holds the shard's `stitch_progress` row lock, so bumps never
wait on each other in an order that could deadlock.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 16:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables the aggregates read (see app/aggregates/service.py).
TABLES = (
    'customers',
    'stage_entries',
    'journey_events',
    'agg_stage_days',
    'agg_stage_durations',
    'agg_touch_days',
    'agg_attribution_days',
)

_BUMP = """
CREATE FUNCTION agg_read_bump_{rows}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO agg_read_versions (workspace_id, version)
    SELECT DISTINCT workspace_id, 1 FROM {rows} ORDER BY 1
    ON CONFLICT (workspace_id) DO UPDATE SET version = agg_read_versions.version + 1;
    RETURN NULL;
END $$
"""


# Aligned blocks of days beside two day-level rollups, so that a window sums ~15 rows per key
# instead of one per day: a block of `span` days starts on a day whose number since 1970-01-01
# is a multiple of `span`. Kept by triggers on the day tables, from the same statements.
SPANS = (8, 64)
BLOCKS = {
    'agg_stage_durations': (
        'agg_stage_duration_blocks',
        (('stage', sa.Text()), ('dval', sa.Text()), ('bucket', sa.SmallInteger())),
        (('n', sa.BigInteger()),),
    ),
    'agg_touch_days': (
        'agg_touch_blocks',
        (('stage', sa.Text()), ('channel', sa.Text()), ('dval', sa.Text())),
        tuple(
            (name, sa.Double())
            for name in (
                'touches', 'customers', 'converted', 'responses', 'nps_n', 'nps_promoters',
                'nps_detractors', 'csat_n', 'csat_sum', 'effort_n', 'effort_sum', 'success_n',
                'success_yes', 'sentiment_n', 'sentiment_sum',
            )
        ),
    ),
}
_START = "day - ((((day - date '1970-01-01') % s.span) + s.span) % s.span)"


def _blocks_sql(table: str, source: str) -> str:
    """Add the day rows of `source` (a SELECT of workspace_id, dim, day, keys, signed values)
    to the blocks of `table`."""
    block, keys, values = BLOCKS[table]
    key_names = [k for k, _ in keys]
    value_names = [v for v, _ in values]
    group = ', '.join(['workspace_id', 'dim', 's.span', _START, *key_names])
    sums = ', '.join(f'sum({v})' for v in value_names)
    updates = ', '.join(f'{v} = {block}.{v} + excluded.{v}' for v in value_names)
    conflict = ', '.join(['workspace_id', 'dim', 'span', 'start', *key_names])
    return (
        f"INSERT INTO {block} (workspace_id, dim, span, start, {', '.join(key_names)}, "
        f"{', '.join(value_names)}) "
        f"SELECT {group}, {sums} FROM ({source}) r "
        f"CROSS JOIN (VALUES {', '.join(f'({n}::int2)' for n in SPANS)}) AS s(span) "
        f"GROUP BY {group} ORDER BY {group} "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )


def _rows(table: str, rows: str, sign: str) -> str:
    _, keys, values = BLOCKS[table]
    columns = ', '.join(['workspace_id', 'dim', 'day', *(k for k, _ in keys)])
    signed = ', '.join(f'{sign}{v} AS {v}' for v, _ in values)
    return f"SELECT {columns}, {signed} FROM {rows}"


def _blocks_function(table: str, op_name: str, source: str) -> str:
    return (
        f"CREATE FUNCTION agg_blocks_{table}_{op_name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n    {_blocks_sql(table, source)};\n    RETURN NULL;\nEND $$"
    )


def upgrade() -> None:
    op.create_table('agg_read_versions',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', name=op.f('pk_agg_read_versions'))
    )
    op.execute(_BUMP.format(rows='new_rows'))
    op.execute(_BUMP.format(rows='old_rows'))
    for table, (block, keys, values) in BLOCKS.items():
        key_names = [k for k, _ in keys]
        op.create_table(block,
        sa.Column('workspace_id', sa.BigInteger(), nullable=False),
        sa.Column('dim', sa.Text(), nullable=False),
        sa.Column('span', sa.SmallInteger(), nullable=False),
        sa.Column('start', sa.Date(), nullable=False),
        *(sa.Column(name, kind, nullable=False) for name, kind in keys),
        *(sa.Column(name, kind, nullable=False) for name, kind in values),
        sa.PrimaryKeyConstraint('workspace_id', 'dim', 'span', 'start', *key_names, name=op.f(f'pk_{block}'))
        )
        # The blocks of the rows already there, then kept by the triggers.
        op.execute(_blocks_sql(table, _rows(table, table, '')))
        op.execute(_blocks_function(table, 'ins', _rows(table, 'new_rows', '')))
        op.execute(
            _blocks_function(
                table,
                'upd',
                _rows(table, 'new_rows', '') + ' UNION ALL ' + _rows(table, 'old_rows', '-'),
            )
        )
        op.execute(_blocks_function(table, 'del', _rows(table, 'old_rows', '-')))
        op.execute(
            f"CREATE TRIGGER agg_blocks_{table}_ins AFTER INSERT ON {table} "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION agg_blocks_{table}_ins()"
        )
        op.execute(
            f"CREATE TRIGGER agg_blocks_{table}_upd AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION agg_blocks_{table}_upd()"
        )
        op.execute(
            f"CREATE TRIGGER agg_blocks_{table}_del AFTER DELETE ON {table} "
            "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION agg_blocks_{table}_del()"
        )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER agg_read_{table}_ins AFTER INSERT ON {table} "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION agg_read_bump_new_rows()"
        )
        op.execute(
            f"CREATE TRIGGER agg_read_{table}_upd AFTER UPDATE ON {table} "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION agg_read_bump_new_rows()"
        )
        op.execute(
            f"CREATE TRIGGER agg_read_{table}_del AFTER DELETE ON {table} "
            "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION agg_read_bump_old_rows()"
        )


def downgrade() -> None:
    for table, (block, _, _) in BLOCKS.items():
        for suffix in ('ins', 'upd', 'del'):
            op.execute(f"DROP TRIGGER agg_blocks_{table}_{suffix} ON {table}")
            op.execute(f"DROP FUNCTION agg_blocks_{table}_{suffix}()")
        op.drop_table(block)
    for table in TABLES:
        for suffix in ('ins', 'upd', 'del'):
            op.execute(f"DROP TRIGGER agg_read_{table}_{suffix} ON {table}")
    op.execute("DROP FUNCTION agg_read_bump_new_rows()")
    op.execute("DROP FUNCTION agg_read_bump_old_rows()")
    op.drop_table('agg_read_versions')
