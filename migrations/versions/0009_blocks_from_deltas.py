"""blocks from the deltas: the stitcher keeps the 8- and 64-day blocks itself

0007 kept `agg_stage_duration_blocks` and `agg_touch_blocks` with statement triggers over
transition tables on the day rollups. The stitcher already holds every change as a delta
(`app.aggregates.repository.apply_deltas`), so it now upserts the block deltas beside the day
deltas, and the other writers of the day tables rebuild the blocks from the day rows
(`rebuild_blocks`). The data-version triggers of 0007 stay: they catch every writer.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 17:45:00.000000+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('agg_stage_durations', 'agg_touch_days')


def upgrade() -> None:
    for table in TABLES:
        for suffix in ('ins', 'upd', 'del'):
            op.execute(f"DROP TRIGGER IF EXISTS agg_blocks_{table}_{suffix} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS agg_blocks_{table}_{suffix}()")


def _revision_0007() -> ModuleType:
    path = Path(__file__).with_name('0007_aggregates_read.py')
    spec = importlib.util.spec_from_file_location('journeys_migration_0007', path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    m = _revision_0007()
    for table in TABLES:
        op.execute(m._blocks_function(table, 'ins', m._rows(table, 'new_rows', '')))
        op.execute(
            m._blocks_function(
                table,
                'upd',
                m._rows(table, 'new_rows', '') + ' UNION ALL ' + m._rows(table, 'old_rows', '-'),
            )
        )
        op.execute(m._blocks_function(table, 'del', m._rows(table, 'old_rows', '-')))
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
