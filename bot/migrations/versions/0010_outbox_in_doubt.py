"""slack_outbox.in_doubt_since (posts whose outcome is unknown are looked up before a resend)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('slack_outbox') as batch:
        batch.add_column(sa.Column('in_doubt_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('slack_outbox') as batch:
        batch.drop_column('in_doubt_since')
