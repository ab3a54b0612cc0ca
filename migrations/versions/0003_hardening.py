"""API keys may expire; an index for the sweep's reads of stale actions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agentserver.adapters.db.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(timezone=True), nullable=True))
    op.create_index("ix_actions_state_updated_at", "actions", ["state", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_actions_state_updated_at", table_name="actions")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
