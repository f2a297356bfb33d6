"""drop customer_changes: an outbox nothing read

The stitcher appended one row per touched customer per batch for downstream rollups and
webhooks, but the rollups are maintained in the stitcher's own transaction (0004) and webhooks
have their own outbox (0006), so the table only grew: never read, never pruned, and left
customer ids behind after a deletion.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 16:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_customer_changes_id', table_name='customer_changes')
    op.drop_table('customer_changes')
    op.execute("DROP SEQUENCE customer_changes_seq")


def downgrade() -> None:
    op.execute("CREATE SEQUENCE customer_changes_seq CACHE 100")
    op.create_table('customer_changes',
    sa.Column('workspace_id', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('customer_changes_seq')"), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_customer_changes'))
    )
    op.create_index('ix_customer_changes_id', 'customer_changes', ['id'], unique=False)
