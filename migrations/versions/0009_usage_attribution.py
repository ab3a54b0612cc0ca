"""Usage entries and reservations carry user, session and metadata; ListUsage's indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 04:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAMED = sa.text("user_id <> ''")


def _attribution() -> list[sa.Column[object]]:
    return [
        sa.Column("user_id", sa.String(length=120), server_default="", nullable=False),
        sa.Column("session_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("metadata", sa.JSON(), server_default="{}", nullable=False),
    ]


def upgrade() -> None:
    for table in ("token_usage_logs", "reservations"):
        with op.batch_alter_table(table) as batch:
            for column in _attribution():
                batch.add_column(column)
    op.create_index("ix_token_usage_logs_tenant_id_id", "token_usage_logs", ["tenant_id", "id"])
    op.create_index(
        "ix_token_usage_logs_location", "token_usage_logs", ["tenant_id", "location_id", "id"]
    )
    op.create_index(
        "ix_token_usage_logs_user",
        "token_usage_logs",
        ["tenant_id", "user_id", "id"],
        postgresql_where=_NAMED,
        sqlite_where=_NAMED,
    )


def downgrade() -> None:
    op.drop_index("ix_token_usage_logs_user", "token_usage_logs")
    op.drop_index("ix_token_usage_logs_location", "token_usage_logs")
    op.drop_index("ix_token_usage_logs_tenant_id_id", "token_usage_logs")
    for table in ("token_usage_logs", "reservations"):
        with op.batch_alter_table(table) as batch:
            for name in ("metadata", "session_id", "user_id"):
                batch.drop_column(name)
