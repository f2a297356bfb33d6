"""block spans 32, 8, 2: the aggregates read fewer rows per window

The 8- and 64-day blocks beside `agg_stage_durations` and `agg_touch_days` (0007, kept by the
stitcher since 0009) become 32-, 8- and 2-day blocks: still three block rows per day row
written, and a 90-day window is 6-14 parts instead of 9-26 (the days at its edges were most of
the rows the stage, journey-map and channel answers read). The blocks are rebuilt from the day
rows, in key order (`app.aggregates.repository.BLOCK_SPANS`, `rebuild_blocks`). Run it with the
stitchers stopped (like every migration): a stitcher of the old code would add 64-day blocks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 19:15:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOUCH_FIELDS = (
    'touches', 'customers', 'converted', 'responses', 'nps_n', 'nps_promoters', 'nps_detractors',
    'csat_n', 'csat_sum', 'effort_n', 'effort_sum', 'success_n', 'success_yes', 'sentiment_n',
    'sentiment_sum',
)
BLOCKS = {
    'agg_stage_duration_blocks': ('agg_stage_durations', ('stage', 'dval', 'bucket'), ('n',)),
    'agg_touch_blocks': ('agg_touch_days', ('stage', 'channel', 'dval'), TOUCH_FIELDS),
}
_START = "day - ((((day - date '1970-01-01') % s.span) + s.span) % s.span)"


def _rebuild(spans: tuple[int, ...]) -> None:
    values_of_spans = ', '.join(f'({span}::int2)' for span in spans)
    for block, (day_table, keys, values) in BLOCKS.items():
        group = ', '.join(['workspace_id', 'dim', 's.span', _START, *keys])
        op.execute(f"DELETE FROM {block}")
        op.execute(
            f"INSERT INTO {block} (workspace_id, dim, span, start, {', '.join(keys)}, "
            f"{', '.join(values)}) SELECT {group}, {', '.join(f'sum({v})' for v in values)} "
            f"FROM {day_table} CROSS JOIN (VALUES {values_of_spans}) AS s(span) "
            f"GROUP BY {group} ORDER BY {group}"
        )
        op.execute(f"ANALYZE {block}")


def upgrade() -> None:
    _rebuild((32, 8, 2))


def downgrade() -> None:
    _rebuild((64, 8))
