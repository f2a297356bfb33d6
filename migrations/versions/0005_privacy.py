"""privacy: suppressed identifiers and the deletion ledger

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 13:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('suppressed_identifiers',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('identifier_hash', sa.LargeBinary(), nullable=False),
    sa.Column('job_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'identifier_hash', name=op.f('pk_suppressed_identifiers'))
    )
    op.create_table('deletions',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('requested_by_key_id', sa.BigInteger(), nullable=True),
    sa.Column('deleted_events', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('deleted_identifiers', sa.Integer(), server_default='0', nullable=False),
    sa.Column('identifier_hashes', postgresql.ARRAY(sa.LargeBinary()), server_default='{}', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'job_id', name=op.f('pk_deletions'))
    )


def downgrade() -> None:
    op.drop_table('deletions')
    op.drop_table('suppressed_identifiers')
