"""jobs and stitch failures

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 11:16:59.475817+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE jobs_seq")
    op.create_table('jobs',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('jobs_seq')"), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('cursor', sa.Text(), server_default='', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_jobs'))
    )
    op.create_table('stitch_failures',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'message_id', name=op.f('pk_stitch_failures'))
    )
    op.create_index('ix_jobs_open', 'jobs', ['workspace_id', 'id'], unique=False, postgresql_where=sa.text("status <> 'done'"))


def downgrade() -> None:
    op.drop_index('ix_jobs_open', table_name='jobs', postgresql_where=sa.text("status <> 'done'"))
    op.drop_table('stitch_failures')
    op.drop_table('jobs')
    op.execute("DROP SEQUENCE jobs_seq")
