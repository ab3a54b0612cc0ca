"""conversation_windows: WhatsApp priced per 24-hour conversation per recipient

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import agentserver.adapters.db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_windows",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("opened_by", sa.String(length=40), nullable=False),
        sa.Column(
            "opened_at", agentserver.adapters.db.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "expires_at", agentserver.adapters.db.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "channel", "recipient", name=op.f("pk_conversation_windows")
        ),
    )


def downgrade() -> None:
    op.drop_table("conversation_windows")
