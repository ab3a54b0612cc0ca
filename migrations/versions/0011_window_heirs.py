"""conversation_windows.joined_by: the first message sent inside a window another
send opened, which inherits the window (and pays for it) if that send fails

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversation_windows") as batch:
        batch.add_column(sa.Column("joined_by", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversation_windows") as batch:
        batch.drop_column("joined_by")
