"""workspaces keys events

Revision ID: c1a86236655c
Revises: 
Create Date: 2026-11-23 10:39:07.301142+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db.models.events import Xid8

revision: str = 'c1a86236655c'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE events_seq CACHE 1000")
    op.create_table('events',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('received_week', sa.Date(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default=sa.text("nextval('events_seq')"), nullable=False),
    sa.Column('tx', Xid8(), server_default=sa.text('pg_current_xact_id()'), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('event', sa.Text(), nullable=True),
    sa.Column('user_id', sa.Text(), nullable=True),
    sa.Column('anonymous_id', sa.Text(), nullable=True),
    sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flags', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'message_id', 'received_week', name=op.f('pk_events')),
    postgresql_partition_by='RANGE (received_week)'
    )
    op.create_index('ix_events_feed', 'events', [sa.text('(workspace_id % 16)'), 'tx', 'seq'], unique=False)
    op.create_table('workspaces',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('rate_limit_per_second', sa.Double(), nullable=True),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workspaces')),
    sa.UniqueConstraint('name', name=op.f('uq_workspaces_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('key_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_api_keys_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index(op.f('ix_api_keys_workspace_id_kind'), 'api_keys', ['workspace_id', 'kind'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_api_keys_workspace_id_kind'), table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_table('workspaces')
    op.drop_index('ix_events_feed', table_name='events')
    op.drop_table('events')
    op.execute("DROP SEQUENCE events_seq")
