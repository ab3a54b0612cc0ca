"""events: index on created_at, for audit retention; actor wide enough for key/user

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_created_at", "events", ["created_at"], unique=False)
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "actor", existing_type=sa.String(120), type_=sa.String(200), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "actor", existing_type=sa.String(200), type_=sa.String(120), existing_nullable=False
        )
    op.drop_index("ix_events_created_at", table_name="events")
