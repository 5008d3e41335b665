"""incident.responders (everyone who acknowledged the incident, in order)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.add_column(sa.Column('responders', sa.JSON(), nullable=False, server_default='[]'))
    # Who acknowledged before this column existed is the first responder.
    listed = "'[\"' || investigator || '\"]'"
    if op.get_bind().dialect.name == "postgresql":
        listed = f"CAST({listed} AS json)"
    op.execute(f"UPDATE incident SET responders = {listed} WHERE investigator IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.drop_column('responders')
