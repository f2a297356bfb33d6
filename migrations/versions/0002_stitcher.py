"""stitcher

Revision ID: 0002
Revises: c1a86236655c
Create Date: 2026-11-23 10:48:36.364106+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db.models.events import Xid8

revision: str = '0002'
down_revision: str | None = 'c1a86236655c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE identity_cluster_seq")
    op.execute("CREATE SEQUENCE customer_changes_seq CACHE 100")
    op.create_table('blocked_links',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('a', sa.Text(), nullable=False),
    sa.Column('b', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('workspace_id', 'a', 'b', name=op.f('pk_blocked_links'))
    )
    op.create_table('customer_changes',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('customer_changes_seq')"), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_customer_changes'))
    )
    op.create_index(op.f('ix_customer_changes_id'), 'customer_changes', ['id'], unique=False)
    op.create_table('customers',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('stage', sa.Text(), nullable=True),
    sa.Column('stage_entered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stage_history', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('traits', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'customer_id', name=op.f('pk_customers'))
    )
    op.create_table('identities',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('cluster_id', sa.BigInteger(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_message_id', sa.Text(), nullable=False),
    sa.Column('shared_device', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'kind', 'value', name=op.f('pk_identities'))
    )
    op.create_index(op.f('ix_identities_workspace_id_cluster_id'), 'identities', ['workspace_id', 'cluster_id'], unique=False)
    op.create_index(op.f('ix_identities_workspace_id_customer_id'), 'identities', ['workspace_id', 'customer_id'], unique=False)
    op.create_table('identity_ledger',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('cluster_id', sa.BigInteger(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('identifiers', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('into', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'cluster_id', 'position', name=op.f('pk_identity_ledger'))
    )
    op.create_table('identity_links',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('a_kind', sa.Text(), nullable=False),
    sa.Column('a_value', sa.Text(), nullable=False),
    sa.Column('b_kind', sa.Text(), nullable=False),
    sa.Column('b_value', sa.Text(), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'a_kind', 'a_value', 'b_kind', 'b_value', 'rule', name=op.f('pk_identity_links'))
    )
    op.create_index(op.f('ix_identity_links_workspace_id_b_kind_b_value'), 'identity_links', ['workspace_id', 'b_kind', 'b_value'], unique=False)
    op.create_table('journey_events',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=True),
    sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('event', sa.Text(), nullable=True),
    sa.Column('user_id', sa.Text(), nullable=True),
    sa.Column('anonymous_id', sa.Text(), nullable=True),
    sa.Column('trait_identifier', sa.Text(), nullable=True),
    sa.Column('source_channel', sa.Text(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('session_id', sa.Text(), nullable=True),
    sa.Column('stage', sa.Text(), nullable=True),
    sa.Column('flags', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('properties', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('traits', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('campaign', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('workspace_id', 'message_id', name=op.f('pk_journey_events'))
    )
    op.create_index('ix_journey_events_anonymous', 'journey_events', ['workspace_id', 'anonymous_id'], unique=False, postgresql_where=sa.text('anonymous_id IS NOT NULL'))
    op.create_index('ix_journey_events_user', 'journey_events', ['workspace_id', 'user_id'], unique=False, postgresql_where=sa.text('user_id IS NOT NULL'))
    op.create_index(op.f('ix_journey_events_workspace_id_customer_id_timestamp_message_id'), 'journey_events', ['workspace_id', 'customer_id', 'timestamp', 'message_id'], unique=False)
    op.create_table('stitch_progress',
    sa.Column('shard', sa.SmallInteger(), nullable=False),
    sa.Column('tx', Xid8(), server_default=sa.text("'0'::xid8"), nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('events', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('shard', name=op.f('pk_stitch_progress'))
    )


def downgrade() -> None:
    op.drop_table('stitch_progress')
    op.drop_index(op.f('ix_journey_events_workspace_id_customer_id_timestamp_message_id'), table_name='journey_events')
    op.drop_index('ix_journey_events_user', table_name='journey_events', postgresql_where=sa.text('user_id IS NOT NULL'))
    op.drop_index('ix_journey_events_anonymous', table_name='journey_events', postgresql_where=sa.text('anonymous_id IS NOT NULL'))
    op.drop_table('journey_events')
    op.drop_index(op.f('ix_identity_links_workspace_id_b_kind_b_value'), table_name='identity_links')
    op.drop_table('identity_links')
    op.drop_table('identity_ledger')
    op.drop_index(op.f('ix_identities_workspace_id_customer_id'), table_name='identities')
    op.drop_index(op.f('ix_identities_workspace_id_cluster_id'), table_name='identities')
    op.drop_table('identities')
    op.drop_table('customers')
    op.drop_index(op.f('ix_customer_changes_id'), table_name='customer_changes')
    op.drop_table('customer_changes')
    op.drop_table('blocked_links')
    op.execute("DROP SEQUENCE customer_changes_seq")
    op.execute("DROP SEQUENCE identity_cluster_seq")
