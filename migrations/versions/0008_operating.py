"""The audit trail names key, user and object; locations; conversation retention;
autovacuum thresholds for the tables every call updates (PostgreSQL)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agentserver.adapters.db.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables whose rows every call updates (Process rewrites its reply message once its
# actions ran), and how soon their dead rows are vacuumed.
# PostgreSQL's defaults wait for 20% of a table to be dead: on a table of ten
# million actions, two million dead row versions slow every scan and index lookup
# first. These wait for 1% (plus a floor, so small tables are not vacuumed
# constantly), and vacuum without the cost pauses that let it fall behind.
# business_tokens (the wallets) is a handful of rows updated thousands of times a
# second: it is vacuumed after a fixed number of dead rows whatever its size, and
# its pages are kept half empty so updates stay on the page (no index entry each).
_HOT = {
    "business_tokens": {
        "autovacuum_vacuum_scale_factor": "0",
        "autovacuum_vacuum_threshold": "1000",
        "autovacuum_analyze_scale_factor": "0",
        "autovacuum_analyze_threshold": "5000",
        "autovacuum_vacuum_cost_delay": "0",
        "fillfactor": "50",
    },
    **{
        table: {
            "autovacuum_vacuum_scale_factor": "0.01",
            "autovacuum_vacuum_threshold": "1000",
            "autovacuum_analyze_scale_factor": "0.02",
            "autovacuum_vacuum_insert_scale_factor": "0.05",
            "autovacuum_vacuum_cost_delay": "0",
        }
        for table in ("actions", "reservations", "sessions", "messages")
    },
}


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("key_id", sa.String(40), server_default="", nullable=False))
        batch.add_column(sa.Column("user_id", sa.String(120), server_default="", nullable=False))
        batch.add_column(sa.Column("object", sa.String(200), server_default="", nullable=False))
    op.create_index("ix_events_tenant_user_id", "events", ["tenant_id", "user_id", "id"])
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column(
                "conversation_retention_days", sa.Integer(), server_default="0", nullable=False
            )
        )
    op.create_table(
        "locations",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_locations_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_locations")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table, options in _HOT.items():
            settings = ", ".join(f"{name} = {value}" for name, value in options.items())
            op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, options in _HOT.items():
            op.execute(f"ALTER TABLE {table} RESET ({', '.join(options)})")
    op.drop_table("locations")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("conversation_retention_days")
    op.drop_index("ix_events_tenant_user_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("object")
        batch.drop_column("user_id")
        batch.drop_column("key_id")
