"""ingested batch ids (idempotent event batches)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'ingested_batch',
        sa.Column('batch_id', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('batch_id'),
    )
    op.create_index('ix_ingested_batch_created_at', 'ingested_batch', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_ingested_batch_created_at', table_name='ingested_batch')
    op.drop_table('ingested_batch')
