"""rollout.trigger (through what its operator started it: a Slack user is shown as a mention)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('rollout') as batch:
        batch.add_column(
            sa.Column(
                'trigger',
                sa.Enum('slack', 'api', 'cli', 'automatic', name='trigger', native_enum=False, length=24),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('rollout') as batch:
        batch.drop_column('trigger')
