"""the no-value group of a breakdown is derived, not stored

Every rollup row was written once for the totals and once per breakdown the journey model
keeps, also for customers without a value for that breakdown (group `''`): with the two default
breakdowns, an anonymous customer's every rollup row was written three times. Readers now derive
a breakdown's no-value group as the totals minus its named groups
(`app.aggregates.service.grouped_rows`) and the stitcher no longer writes it
(`app.aggregates.facts._groups`); this drops the stored ones. Run it with the stitchers stopped
(like every migration): a stitcher of the old code would go on adding such rows, which the new
readers would count twice.

The downgrade writes them back as the same difference, for each breakdown that has at least one
named row in a workspace (a breakdown without any named row gets no rows back: run
`journeys rebuild` after downgrading if that matters).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 13:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOUCH_FIELDS = (
    'touches', 'customers', 'converted', 'responses', 'nps_n', 'nps_promoters', 'nps_detractors',
    'csat_n', 'csat_sum', 'effort_n', 'effort_sum', 'success_n', 'success_yes', 'sentiment_n',
    'sentiment_sum',
)
ATTRIBUTION_MODELS = ('first', 'last', 'linear', 'position', 'time_decay')
# table -> (key columns besides workspace_id, dim, dval; value columns)
TABLES = {
    'agg_stage_days': (('day', 'stage'), ('entered', 'converted')),
    'agg_stage_durations': (('day', 'stage', 'bucket'), ('n',)),
    'agg_touch_days': (('day', 'stage', 'channel'), TOUCH_FIELDS),
    'agg_attribution_days': (('day', 'stage', 'channel'), ATTRIBUTION_MODELS),
    'agg_stage_duration_blocks': (('span', 'start', 'stage', 'bucket'), ('n',)),
    'agg_touch_blocks': (('span', 'start', 'stage', 'channel'), TOUCH_FIELDS),
}


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE dim <> '' AND dval = ''")


def downgrade() -> None:
    for table, (keys, values) in TABLES.items():
        key_list = ', '.join(keys)
        signed = ', '.join(
            f"sum(CASE WHEN t.dim = '' THEN t.{v} ELSE -t.{v} END)" for v in values
        )
        nonzero = ' OR '.join(
            f"abs(sum(CASE WHEN t.dim = '' THEN t.{v} ELSE -t.{v} END)) > 1e-9" for v in values
        )
        op.execute(
            f"INSERT INTO {table} (workspace_id, dim, dval, {key_list}, {', '.join(values)}) "
            f"SELECT d.workspace_id, d.dim, '', {', '.join(f't.{k}' for k in keys)}, {signed} "
            f"FROM (SELECT DISTINCT workspace_id, dim FROM {table} WHERE dim <> '') d "
            f"JOIN {table} t ON t.workspace_id = d.workspace_id AND t.dim IN (d.dim, '') "
            f"GROUP BY d.workspace_id, d.dim, {', '.join(f't.{k}' for k in keys)} "
            f"HAVING {nonzero}"
        )
