"""aggregates rollups

Stage-level rollups maintained by the stitcher, stage entries for funnels, and each
customer's breakdown groups and rollup contribution. Customers stitched before this revision
have no contribution yet: a re-derive job per workspace fills the rollups in the background.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 13:16:53.672125+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agg_attribution_days',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('dim', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('dval', sa.Text(), nullable=False),
    sa.Column('first', sa.Double(), nullable=False),
    sa.Column('last', sa.Double(), nullable=False),
    sa.Column('linear', sa.Double(), nullable=False),
    sa.Column('position', sa.Double(), nullable=False),
    sa.Column('time_decay', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'dim', 'day', 'stage', 'channel', 'dval', name=op.f('pk_agg_attribution_days'))
    )
    op.create_table('agg_stage_days',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('dim', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=False),
    sa.Column('dval', sa.Text(), nullable=False),
    sa.Column('entered', sa.BigInteger(), nullable=False),
    sa.Column('converted', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'dim', 'day', 'stage', 'dval', name=op.f('pk_agg_stage_days'))
    )
    op.create_table('agg_stage_durations',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('dim', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=False),
    sa.Column('dval', sa.Text(), nullable=False),
    sa.Column('bucket', sa.SmallInteger(), nullable=False),
    sa.Column('n', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'dim', 'day', 'stage', 'dval', 'bucket', name=op.f('pk_agg_stage_durations'))
    )
    op.create_table('agg_touch_days',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('dim', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('dval', sa.Text(), nullable=False),
    sa.Column('touches', sa.Double(), nullable=False),
    sa.Column('customers', sa.Double(), nullable=False),
    sa.Column('converted', sa.Double(), nullable=False),
    sa.Column('responses', sa.Double(), nullable=False),
    sa.Column('nps_n', sa.Double(), nullable=False),
    sa.Column('nps_promoters', sa.Double(), nullable=False),
    sa.Column('nps_detractors', sa.Double(), nullable=False),
    sa.Column('csat_n', sa.Double(), nullable=False),
    sa.Column('csat_sum', sa.Double(), nullable=False),
    sa.Column('effort_n', sa.Double(), nullable=False),
    sa.Column('effort_sum', sa.Double(), nullable=False),
    sa.Column('success_n', sa.Double(), nullable=False),
    sa.Column('success_yes', sa.Double(), nullable=False),
    sa.Column('sentiment_n', sa.Double(), nullable=False),
    sa.Column('sentiment_sum', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'dim', 'day', 'stage', 'channel', 'dval', name=op.f('pk_agg_touch_days'))
    )
    op.create_table('stage_entries',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=False),
    sa.Column('entered_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'customer_id', 'stage', name=op.f('pk_stage_entries'))
    )
    op.create_index(op.f('ix_stage_entries_workspace_id_stage_entered_at'), 'stage_entries', ['workspace_id', 'stage', 'entered_at'], unique=False)
    op.add_column('customers', sa.Column('dims', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False))
    op.add_column('customers', sa.Column('facts', sa.LargeBinary(), nullable=True))
    op.create_index(op.f('ix_customers_workspace_id_stage_stage_entered_at_customer_id'), 'customers', ['workspace_id', 'stage', 'stage_entered_at', 'customer_id'], unique=False)
    op.create_index('ix_journey_events_event', 'journey_events', ['workspace_id', 'event', 'timestamp'], unique=False, postgresql_where=sa.text('event IS NOT NULL'))
    op.execute(
        "INSERT INTO jobs (workspace_id, kind, total) "
        "SELECT workspace_id, 'rederive_stages', count(*) FROM customers GROUP BY workspace_id"
    )


def downgrade() -> None:
    op.drop_index('ix_journey_events_event', table_name='journey_events', postgresql_where=sa.text('event IS NOT NULL'))
    op.drop_index(op.f('ix_customers_workspace_id_stage_stage_entered_at_customer_id'), table_name='customers')
    op.drop_column('customers', 'facts')
    op.drop_column('customers', 'dims')
    op.drop_index(op.f('ix_stage_entries_workspace_id_stage_entered_at'), table_name='stage_entries')
    op.drop_table('stage_entries')
    op.drop_table('agg_touch_days')
    op.drop_table('agg_stage_durations')
    op.drop_table('agg_stage_days')
    op.drop_table('agg_attribution_days')
