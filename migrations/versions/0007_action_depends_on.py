"""actions.depends_on: an action of the same message this one runs after

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("depends_on", sa.String(length=40), nullable=True))
        batch.create_index("ix_actions_tenant_depends_on", ["tenant_id", "depends_on"])


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.drop_index("ix_actions_tenant_depends_on")
        batch.drop_column("depends_on")
