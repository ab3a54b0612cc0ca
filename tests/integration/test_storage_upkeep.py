"""The schema the migrations build matches the models, and audit events are pruned
past their retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from agentserver.adapters.db.models import Base
from agentserver.app import (
    HOT_TABLES,
    App,
    build_app,
    postgres_too_old,
    prepare_database,
    warn_about_upkeep,
)
from agentserver.config import Settings
from agentserver.entrypoints.grpc.server import start_server
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, PgDatabases
from tests.fakes.clock import FakeClock

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'upkeep.db'}"
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    return dbs.create()


@pytest.fixture
async def app(url: str) -> AsyncIterator[App]:
    clock = FakeClock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    application = await build_app(
        Settings(database_url=url, auto_migrate=True, access_log=False, audit_retention_days=30),
        clock=clock,
    )
    await prepare_database(application)
    yield application
    await application.close()


async def test_migrations_build_exactly_the_models(app: App) -> None:
    def diff(connection: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with app.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_audit_events_past_retention_are_pruned(app: App) -> None:
    clock = app.clock
    assert isinstance(clock, FakeClock)
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app=app, server=server, clock=clock, backend="", url="")
    try:
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        await app.admin.create_tenant(tenant, tenant, clock.now())
        await app.admin.set_rule(tenant, "business", "", "allow", "*:*")
        _, key = await app.admin.create_key(tenant, ["tokens:read"], "t", clock.now())
        async with h.client(key, tenant) as client:
            await client.get_costs(tpb.GetCostsRequest())  # audited 40 days ago
            clock.advance(timedelta(days=20))
            await client.get_costs(tpb.GetCostsRequest())  # 20 days ago
            await app.audit.flush()
            clock.advance(timedelta(days=20))
            await app.ledger.add_tokens(tenant, "", 100, "seed", "seed")
            await app.ledger.charge_monthly_fees()  # a low-balance event: not audit, kept
        kinds_before = [e["kind"] for e in await app.admin.events(tenant)]
        assert kinds_before.count("audit.GetCosts") == 2
        assert await app.prune_audit() == 1
        kinds = [e["kind"] for e in await app.admin.events(tenant)]
        assert kinds.count("audit.GetCosts") == 1
        assert [k for k in kinds if not k.startswith("audit.")] == [
            k for k in kinds_before if not k.startswith("audit.")
        ]
        assert await app.prune_audit() == 0
    finally:
        await server.stop(0)


def test_retention_zero_keeps_everything_and_the_cli_sweep_prunes(url: str) -> None:
    env = {"AGENTSERVER_DATABASE_URL": url, "AGENTSERVER_AUTO_MIGRATE": "true"}
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSERVER_")}
    run = [str(BIN / "agentserver"), "sweep"]
    keep = subprocess.run(
        run,
        env={**base, **env, "AGENTSERVER_AUDIT_RETENTION_DAYS": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pruned" not in keep.stdout
    prune = subprocess.run(run, env={**base, **env}, capture_output=True, text=True, check=True)
    assert "pruned 0 audit events older than 90 days" in prune.stdout
    assert "deleted 0 conversation windows that lapsed over a day ago" in prune.stdout


async def test_hot_tables_have_their_own_autovacuum_thresholds(app: App) -> None:
    if app.settings.is_sqlite:
        assert await warn_about_upkeep(app) is None  # SQLite has no vacuum to keep up
        return
    async with app.engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1)",
            (list(HOT_TABLES),),
        )
        options = {r.relname: set(r.reloptions or ()) for r in rows}
        autovacuum = (await conn.exec_driver_sql("SHOW autovacuum")).scalar_one()
    assert set(options) == set(HOT_TABLES)
    assert "autovacuum_vacuum_threshold=1000" in options["business_tokens"]
    assert "autovacuum_vacuum_scale_factor=0" in options["business_tokens"]
    for table in ("actions", "reservations", "sessions", "messages"):
        assert "autovacuum_vacuum_scale_factor=0.01" in options[table], options[table]
    warning = await warn_about_upkeep(app)
    if autovacuum == "off":  # this machine's PostgreSQL: serve says so
        assert warning is not None and "autovacuum is off" in warning
    else:
        assert warning is None


def test_a_postgresql_older_than_12_is_refused_by_name() -> None:
    """The hot connections set plan_cache_mode (PostgreSQL 12): an older server is
    refused at start with its version, not with an error on the first call."""
    assert postgres_too_old(150020, "15.2") is None
    assert postgres_too_old(120000, "12.0") is None
    why = postgres_too_old(110022, "11.22 (Debian)")
    assert why is not None and "12 or newer" in why and "11.22" in why


async def test_this_postgresql_is_new_enough(pg_databases: PgDatabases) -> None:
    app = await build_app(
        Settings(database_url=pg_databases.create(), access_log=False, auto_migrate=True)
    )
    try:
        await prepare_database(app)  # raises SystemExit on a server it cannot use
    finally:
        await app.close()


def test_serve_warns_when_autovacuum_is_off(pg_databases: PgDatabases, tmp_path: Path) -> None:
    """As an operator sees it: the warning is in serve's log (when the server's
    autovacuum is off, as on this machine; else its absence is checked)."""
    import asyncpg

    from tests import procs

    url = pg_databases.create()

    async def setting() -> str:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return str(await conn.fetchval("SHOW autovacuum"))
        finally:
            await conn.close()

    import asyncio

    autovacuum = asyncio.run(setting())
    proc, _ = procs.start(tmp_path, database_url=url, auto_migrate="true")
    _, log = procs.stop(proc)
    assert ("autovacuum is off" in log) == (autovacuum == "off"), log[-2000:]
