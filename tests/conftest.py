"""Shared fixtures: a real server on an ephemeral port, on SQLite and on PostgreSQL.

PostgreSQL and Redis tests skip locally when the service is absent, and fail in CI
(CI=true), where a missing service is a broken machine, not a reason to skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.secrets import generate_key
from agentserver.app import App, build_app, prepare_database
from agentserver.client import AgentServerClient
from agentserver.config import Settings
from agentserver.domain.identity import PLATFORM_DEFAULT_SCOPES, TENANT_DEFAULT_SCOPES
from agentserver.entrypoints.grpc.server import RunningServer, start_server
from tests.fakes.clock import FakeClock

PG_ADMIN_DSN = os.environ.get("AGENTSERVER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGENTSERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    if IN_CI:
        pytest.fail(f"{name} is not reachable at {host}:{port}; CI requires it")
    pytest.skip(f"{name} is not running at {host}:{port}")


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agentserver")


class PgDatabases:
    """Creates throwaway PostgreSQL databases and drops them at the end of the session."""

    def __init__(self) -> None:
        self.names: list[str] = []

    @staticmethod
    def _admin(sql: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        # Fixtures may be resolved inside the session's running loop: use a thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()

    def create(self) -> str:
        name = f"agentserver_test_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        for name in self.names:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def pg_url(pg_databases: PgDatabases) -> str:
    """The session's shared PostgreSQL database."""
    return pg_databases.create()


@pytest.fixture
def fresh_pg_url(pg_databases: PgDatabases) -> str:
    """A PostgreSQL database of this test's own."""
    return pg_databases.create()


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


NATS_URL = os.environ.get("AGENTSERVER_TEST_NATS", "nats://127.0.0.1:4222")


@pytest.fixture(scope="session")
def nats_url() -> str:
    """NATS with JetStream (the machine's, on 127.0.0.1:4222)."""
    require_service("NATS", "127.0.0.1", 4222)
    return NATS_URL


def database_url(backend: str, tmp_root: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_root / f'test-{uuid.uuid4().hex[:8]}.db'}"
    return str(request.getfixturevalue("pg_url"))


@dataclass
class Harness:
    """A running server and what tests need to drive it."""

    app: App
    server: RunningServer
    clock: FakeClock
    backend: str
    url: str
    created: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def tenant(
        self, tokens: int = 0, *, rules: tuple[str, ...] = ("*:*",), prefix: str = "t"
    ) -> Tenant:
        """A fresh tenant (unique id) with a tenant key, holding `tokens`."""
        tenant_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        now = self.clock.now()
        await self.app.admin.create_tenant(tenant_id, tenant_id, now)
        self.created.append(tenant_id)
        for rule in rules:
            await self.app.admin.set_rule(tenant_id, "business", "", "allow", rule)
        _, key = await self.app.admin.create_key(tenant_id, TENANT_DEFAULT_SCOPES, "test", now)
        if tokens:
            await self.app.ledger.add_tokens(tenant_id, "", tokens, f"seed-{tenant_id}", "seed")
        return Tenant(tenant_id, key, self)

    async def platform_key(self) -> str:
        _, key = await self.app.admin.create_key(
            None, PLATFORM_DEFAULT_SCOPES, "test platform", self.clock.now()
        )
        return key

    def client(self, key: str, tenant_id: str, user_id: str = "user-1") -> AgentServerClient:
        return AgentServerClient(self.target, api_key=key, tenant_id=tenant_id, user_id=user_id)


@dataclass
class Tenant:
    id: str
    key: str
    harness: Harness

    def client(self, user_id: str = "user-1", location_id: str = "") -> AgentServerClient:
        return AgentServerClient(
            self.harness.target,
            api_key=self.key,
            tenant_id=self.id,
            user_id=user_id,
            location_id=location_id,
        )


async def start_harness(url: str, backend: str, **overrides: object) -> Harness:
    clock = FakeClock(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    # The whole suite calls from one address with many fresh keys: the per-address
    # budget for calls no cached key carries is off unless a test turns it on.
    overrides.setdefault("unauthenticated_per_second", 0.0)
    overrides.setdefault("access_log", False)
    span_exporter: Any = overrides.pop("span_exporter", None)
    settings = Settings(
        database_url=url,
        auto_migrate=True,
        **overrides,  # type: ignore[arg-type]
    )
    app = await build_app(settings, clock=clock, span_exporter=span_exporter)
    await prepare_database(app)
    server = await start_server(app, "127.0.0.1:0")
    return Harness(app=app, server=server, clock=clock, backend=backend, url=url)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def harness(request: pytest.FixtureRequest, tmp_root: Path) -> AsyncIterator[Harness]:
    """One server per backend for the whole session; tests isolate by tenant."""
    url = database_url(request.param, tmp_root, request)
    h = await start_harness(url, request.param, secret_keys=generate_key())
    yield h
    await h.server.stop(0)
    await h.app.close()


@pytest.fixture(autouse=True)
async def _ledger_invariant_after_each_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """The ledger invariant holds after every test that used the shared servers."""
    if "harness" not in request.fixturenames:
        yield
        return
    h: Harness = request.getfixturevalue("harness")
    before = len(h.created)
    yield
    for tenant_id in h.created[before:]:
        await ledger_invariant(h, tenant_id)


async def ledger_invariant(h: Harness | AsyncEngine, tenant_id: str) -> None:
    """For every wallet of the tenant: total - used - reserved == available >= 0,
    and the entries' deltas sum to the wallet's columns. Read in one snapshot, so a
    write still in flight (an execution that outlived its call) is seen whole or not
    at all."""
    engine = h.app.engine if isinstance(h, Harness) else h
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        wallets = (
            await conn.execute(
                text(
                    "SELECT id, total_tokens, used_tokens, reserved_tokens, arrears_tokens"
                    " FROM business_tokens WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            )
        ).all()
        for w in wallets:
            sums = (
                await conn.execute(
                    text(
                        "SELECT COALESCE(SUM(total_delta),0), COALESCE(SUM(used_delta),0),"
                        " COALESCE(SUM(reserved_delta),0), COALESCE(SUM(arrears_delta),0)"
                        " FROM token_usage_logs WHERE wallet_id = :w"
                    ),
                    {"w": w.id},
                )
            ).one()
            pending = (
                await conn.execute(
                    text(
                        "SELECT COALESCE(SUM(amount),0) FROM reservations"
                        " WHERE wallet_id = :w AND state = 'pending'"
                    ),
                    {"w": w.id},
                )
            ).scalar_one()
            assert tuple(int(s) for s in sums) == (
                w.total_tokens,
                w.used_tokens,
                w.reserved_tokens,
                w.arrears_tokens,
            ), f"entries do not sum to wallet {w.id}"
            assert int(pending) == w.reserved_tokens, "reserved != pending reservations"
            available = w.total_tokens - w.used_tokens - w.reserved_tokens
            assert available >= 0, f"wallet {w.id} overdrawn"
