"""rollout.revision (the routing revision the rollout last wrote: a foreign change supersedes it)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('rollout') as batch:
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rollout') as batch:
        batch.drop_column('revision')
