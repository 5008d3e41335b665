"""verification.pre_switch (the restored version's counts in the switch minute, before it)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('verification') as batch:
        batch.add_column(sa.Column('pre_switch', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('verification') as batch:
        batch.drop_column('pre_switch')
