"""The composition root: builds every piece from Settings. No I/O at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.admin_store import SqlAdminStore
from agentserver.adapters.db.engine import create_engine
from agentserver.adapters.db.ledger_store import SqlLedgerStore
from agentserver.adapters.db.migrate import pending_revisions, upgrade
from agentserver.config import Settings
from agentserver.domain.clock import Clock, SystemClock
from agentserver.domain.costs import CostTable
from agentserver.domain.identity import (
    PLATFORM_DEFAULT_SCOPES,
    TENANT_DEFAULT_SCOPES,
    Authenticator,
)
from agentserver.domain.ledger import LedgerService

log = logging.getLogger("agentserver")

DEMO_TENANT = "demo"
DEMO_TOKENS = 1000


@dataclass
class App:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    costs: CostTable
    admin: SqlAdminStore
    ledger: LedgerService
    auth: Authenticator
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.engine.dispose()

    def start_background(self) -> None:
        """Reservation expiry sweep and the monthly fee, on every replica (both are
        safe to run concurrently: each write is keyed and conditional)."""
        self._tasks.append(
            asyncio.create_task(
                self._every(self.settings.sweep_interval_seconds, self.ledger.sweep_expired),
                name="reservation-sweep",
            )
        )
        if self.settings.monthly_fee_interval_seconds > 0:  # 0 leaves the fee to cron
            self._tasks.append(
                asyncio.create_task(
                    self._every(
                        self.settings.monthly_fee_interval_seconds, self.ledger.charge_monthly_fees
                    ),
                    name="monthly-fee",
                )
            )

    async def _every(self, seconds: float, job: object) -> None:
        assert callable(job)
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job failed; retrying later")
            await asyncio.sleep(seconds)


async def build_app(settings: Settings, *, clock: Clock | None = None) -> App:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    costs = CostTable.parse(settings.costs)
    admin = SqlAdminStore(engine, low_balance_threshold=settings.low_balance_threshold)
    ledger_store = SqlLedgerStore(engine, low_balance_threshold=settings.low_balance_threshold)
    ledger = LedgerService(store=ledger_store, clock=clock, costs=costs)
    return App(
        settings=settings,
        engine=engine,
        clock=clock,
        costs=costs,
        admin=admin,
        ledger=ledger,
        auth=Authenticator(admin),
    )


async def prepare_database(app: App) -> None:
    """Upgrade the embedded default in place; refuse to run a stale PostgreSQL schema."""
    if app.settings.should_migrate:
        await upgrade(app.engine)
        return
    pending = await pending_revisions(app.engine)
    if pending:
        raise SystemExit(
            f"the database schema is behind ({len(pending)} revisions): run `agentserver migrate`"
        )


async def bootstrap_demo(app: App, credentials_file: Path | None) -> dict[str, str] | None:
    """On an empty embedded database, create a demo tenant with tokens and keys.

    Returns the keys (shown once) or None when the database already had tenants.
    """
    if await app.admin.count_tenants() > 0:
        return None
    now = app.clock.now()
    await app.admin.create_tenant(DEMO_TENANT, "Demo business", now)
    for rule in ("*:*",):
        await app.admin.set_rule(DEMO_TENANT, "business", "", "allow", rule)
    _, tenant_key = await app.admin.create_key(
        DEMO_TENANT, TENANT_DEFAULT_SCOPES, "demo tenant key", now
    )
    _, platform_key = await app.admin.create_key(
        None, PLATFORM_DEFAULT_SCOPES, "demo platform key", now
    )
    await app.ledger.add_tokens(DEMO_TENANT, "", DEMO_TOKENS, "demo-initial-tokens", "demo")
    keys = {"tenant_id": DEMO_TENANT, "tenant_key": tenant_key, "platform_key": platform_key}
    if credentials_file is not None:
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        credentials_file.chmod(0o600)
    return keys
