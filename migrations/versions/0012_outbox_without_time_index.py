"""outbox: no index on created_at (every event paid for it; retention walks the key)

Events are appended in id order, so the oldest are the lowest ids: pruning takes
them by the primary key, and the time index only cost every write an insert.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 12:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_outbox_created_at", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
