"""Run the Alembic revision chain in migrations/ programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# server/agentserver/adapters/db/migrate.py -> repository root
# Installed from a wheel, the chain is inside the package; in the repository, beside it.
_PACKAGED = Path(__file__).resolve().parents[2] / "_migrations"
_SOURCE = Path(__file__).resolve().parents[4] / "migrations"
MIGRATIONS_DIR = _PACKAGED if _PACKAGED.is_dir() else _SOURCE


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision`."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))

    def _upgrade(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def pending_revisions(engine: AsyncEngine) -> list[str]:
    """Revisions not yet applied (empty when the schema is current)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    script = ScriptDirectory.from_config(cfg)

    def _current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
    head = script.get_current_head()
    if head is None or head in current:
        return []
    return [rev.revision for rev in script.iterate_revisions(head, tuple(current) or "base")]
