"""The composition root: builds every piece from Settings. No I/O at import time."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.audit import BufferedAuditLog
from agentserver.adapters.channels.retry import with_retries
from agentserver.adapters.db.admin_store import SqlAdminStore
from agentserver.adapters.db.agent_store import SqlAgentStore
from agentserver.adapters.db.business_store import SqlBusinessStore
from agentserver.adapters.db.engine import create_engine, group_commit_linger_s
from agentserver.adapters.db.event_store import NATS, WEBHOOKS, SqlEventStore
from agentserver.adapters.db.ledger_store import SqlLedgerStore
from agentserver.adapters.db.migrate import pending_revisions, upgrade
from agentserver.adapters.db.notify import OutboxSignal, OutboxWatcher
from agentserver.adapters.db.personal_store import SqlPersonalDataStore
from agentserver.adapters.db.pg import PgEventWriter, PgPool
from agentserver.adapters.db.pg_agent import PgAgentStore
from agentserver.adapters.db.pg_ledger import PgLedgerStore
from agentserver.adapters.db.process_writes import PgProcessWrites, SqlProcessWrites
from agentserver.adapters.db.settle_writes import PgSettler, SqlSettler
from agentserver.adapters.db.webhook_store import SqlWebhookStore
from agentserver.adapters.db.window_store import SqlConversationWindows
from agentserver.adapters.nats_relay import NatsRelay, StreamSettings
from agentserver.adapters.runner import ActionRunner, ReportWriter
from agentserver.adapters.secrets import SecretBox
from agentserver.adapters.telemetry import build_telemetry, shutdown_tracing
from agentserver.adapters.webhooks import WebhookDeliverer
from agentserver.config import Settings
from agentserver.domain.admin import Administration, Rule
from agentserver.domain.agent import AgentService
from agentserver.domain.channel_settings import Naming
from agentserver.domain.clock import Clock, SystemClock
from agentserver.domain.costs import CostTable
from agentserver.domain.decision.crosscheck import CheckedEngine
from agentserver.domain.decision.engine import DecisionEngine
from agentserver.domain.decision.offline import OfflineEngine
from agentserver.domain.event_feed import EventFeed
from agentserver.domain.executor import Executor
from agentserver.domain.identity import (
    MAX_USER_ID,
    Authenticator,
    Caller,
)
from agentserver.domain.ledger import LedgerService
from agentserver.domain.personal_data import PersonalData
from agentserver.domain.policy_source import CachedPolicySource
from agentserver.domain.ratelimit import InProcessRateLimiter, NoRateLimit, RateLimiter
from agentserver.domain.registry import Registry, default_registry
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry
from agentserver.domain.webhooks import WebhookEndpoints, parse_networks
from agentserver.domain.windows import KEPT_AFTER_LAPSE

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from agentserver.adapters.llm import LlmSettings

log = logging.getLogger("agentserver")

AUDIT_PRUNE_EVERY = timedelta(minutes=1)
AUDIT_PRUNE_BATCH = 5000
NEVER = datetime.min.replace(tzinfo=UTC)

DEMO_TENANT = "demo"
DEMO_RESOURCES = (
    ("room", "Blue Room", {"capacity": "8"}),
    ("room", "Green Room", {"capacity": "4"}),
    ("court", "Court 1", {"surface": "clay"}),
)
DEMO_TOKENS = 1000


@dataclass
class App:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    costs: CostTable
    admin: SqlAdminStore
    administration: Administration
    personal: PersonalData
    ledger: LedgerService
    auth: Authenticator
    registry: Registry
    agent_store: SqlAgentStore
    runner: ActionRunner
    executor: Executor
    agent: AgentService
    secret_box: SecretBox | None
    limiter: RateLimiter
    audit: BufferedAuditLog
    events: SqlEventStore
    signal: OutboxSignal
    feed: EventFeed
    webhook_store: SqlWebhookStore
    windows: SqlConversationWindows
    webhooks: WebhookEndpoints
    deliverer: WebhookDeliverer
    watcher: OutboxWatcher
    relay: NatsRelay | None = None
    telemetry: Telemetry = NO_TELEMETRY
    pg_pool: PgPool | None = None
    _next_prune: datetime = NEVER
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        self.feed.stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # Executions still in flight (their rpcs gone with the server's grace) get
        # the same grace to finish; the rest record what they know and stop.
        await self.executor.drain(self.settings.grace_seconds)
        await self.audit.close()
        await self.deliverer.aclose()
        if self.relay is not None:
            await self.relay.aclose()
        await self.limiter.aclose()
        for closable in (self.agent.engine, self.runner.report_writer):
            close = getattr(closable, "aclose", None)
            if close is not None:
                await close()
        if self.pg_pool is not None:
            await self.pg_pool.close()
        await self.engine.dispose()
        shutdown_tracing(self.telemetry)

    def start_background(self) -> None:
        """Reservation and action sweeps and the monthly fee, on every replica (all
        are safe to run concurrently: each write is keyed or compare-and-set)."""
        self._tasks.append(
            asyncio.create_task(
                self._every(self.settings.sweep_interval_seconds, self._sweep),
                name="sweep",
            )
        )
        self._tasks.append(asyncio.create_task(self.audit.run(), name="audit"))
        # Events out: wake-ups, webhook fan-out and delivery, and the NATS relay.
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="outbox-watch"))
        self._tasks.append(asyncio.create_task(self.deliverer.run(), name="webhooks"))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="nats-relay"))
        if self.settings.monthly_fee_interval_seconds > 0:  # 0 leaves the fee to cron
            self._tasks.append(
                asyncio.create_task(
                    self._every(
                        self.settings.monthly_fee_interval_seconds, self.ledger.charge_monthly_fees
                    ),
                    name="monthly-fee",
                )
            )

    async def set_channel(
        self, tenant_id: str, kind: str, config: dict[str, Any], secrets: dict[str, Any]
    ) -> None:
        """Store a tenant's provider settings as an operator (validated, audited;
        `secrets` encrypted at rest)."""
        operator = operator_caller()
        await self.administration.set_channel(
            operator, tenant_id, kind, config, secrets, naming=Naming("config", "secrets")
        )
        self.record(operator, "set_channel")

    def record(self, caller: Caller, operation: str) -> None:
        """Audit what an operator (the CLI, a bootstrap) changed outside any rpc."""
        for change in caller.changes:
            self.audit.record(
                tenant_id=change.tenant_id or None,
                actor=f"{caller.key_id}/{caller.user_id}",
                operation=change.type,
                outcome="OK",
                request_id=operation,
                key_id=caller.key_id,
                user_id=caller.user_id,
                object=change.object,
                payload={
                    "rpc": operation,
                    "before": change.before,
                    "after": change.after,
                    "reason": change.reason,
                },
            )
        caller.changes.clear()

    async def _sweep(self) -> None:
        await self.agent.sweep()
        await self.ledger.sweep_expired()
        if self.clock.now() >= self._next_prune:
            await self.prune_audit()
            await self.apply_retention()
            await self.prune_events()
            await self.prune_windows()
            self._next_prune = self.clock.now() + AUDIT_PRUNE_EVERY

    async def apply_retention(self, *, batches: int = 20) -> int:
        """Remove conversations past each tenant's retention (at most `batches` x
        5,000 rows of each kind per tenant a call); returns how many rows changed."""
        changed = 0
        for tenant_id, days in await self.admin.retention_days():
            for _ in range(batches):
                done = await self.personal.apply_retention(tenant_id, days)
                changed += done.total
                if done.total == 0:
                    break
        if changed:
            log.info("conversation retention removed or redacted %d rows", changed)
        return changed

    async def prune_audit(self, *, batches: int = 20) -> int:
        """Delete audit events past `audit_retention_days` (0 keeps them), at most
        `batches` x 5,000 a call so a large backlog is worked off over several sweeps."""
        days = self.settings.audit_retention_days
        if days <= 0:
            return 0
        before = self.clock.now() - timedelta(days=days)
        pruned = await _in_batches(
            lambda: self.admin.prune_audit_events(before, AUDIT_PRUNE_BATCH), batches
        )
        if pruned:
            log.info("pruned %d audit events older than %g days", pruned, days)
        return pruned

    async def prune_events(self, *, batches: int = 20) -> int:
        """Delete outbox events past `event_retention_days` (0 keeps them) that no
        consumer still needs: the webhook fan-out, the NATS relay when configured,
        and pending webhook deliveries."""
        days = self.settings.event_retention_days
        if days <= 0:
            return 0
        before = self.clock.now() - timedelta(days=days)
        consumers = [WEBHOOKS, NATS] if self.relay is not None else [WEBHOOKS]
        pruned = await _in_batches(
            lambda: self.events.prune(before, consumers, AUDIT_PRUNE_BATCH), batches
        )
        if pruned:
            log.info("pruned %d events older than %g days", pruned, days)
        return pruned

    async def prune_windows(self, *, batches: int = 20) -> int:
        """Delete conversation windows that lapsed over a day ago (domain/windows.py),
        at most `batches` x 5,000 a call."""
        before = self.clock.now() - KEPT_AFTER_LAPSE
        pruned = await _in_batches(lambda: self.windows.prune(before, AUDIT_PRUNE_BATCH), batches)
        if pruned:
            log.info("deleted %d lapsed conversation windows", pruned)
        return pruned

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


def operator_caller() -> Caller:
    """Who an operator at the database host is (the `agentserver` CLI): the platform,
    with every scope, named `cli` and their login in the audit trail."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        login = f"uid-{os.getuid()}"
    return Caller(
        key_id="cli",
        key_tenant_id=None,
        scopes=frozenset({"*"}),
        tenant_id="",
        user_id=login[:MAX_USER_ID],
    )


async def _in_batches(delete: Callable[[], Awaitable[int]], batches: int) -> int:
    """Run `delete` (one batch of at most AUDIT_PRUNE_BATCH rows) until a batch comes
    back short, at most `batches` times: a backlog is worked off over several sweeps.
    Returns how many rows went."""
    total = 0
    for _ in range(batches):
        deleted = await delete()
        total += deleted
        if deleted < AUDIT_PRUNE_BATCH:
            break
    return total


async def build_app(
    settings: Settings, *, clock: Clock | None = None, span_exporter: SpanExporter | None = None
) -> App:
    """Every piece, from `settings`. `span_exporter` receives the spans (tests), as if
    traces were configured."""
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    costs = CostTable.parse(settings.costs)
    admin = SqlAdminStore(engine, low_balance_threshold=settings.low_balance_threshold)
    threshold = settings.low_balance_threshold
    pg_pool: PgPool | None = None
    ledger_store: SqlLedgerStore
    agent_store: SqlAgentStore
    writes: SqlProcessWrites
    if settings.is_sqlite:
        ledger_store = SqlLedgerStore(engine, low_balance_threshold=threshold)
        agent_store = SqlAgentStore(engine)
        writes = SqlProcessWrites(engine, ledger_store, agent_store)
    else:  # the hot writes as single asyncpg statements (adapters/db/pg.py)
        pg_pool = PgPool(settings.database_url, max_size=settings.db_pool_size)
        pg_ledger = PgLedgerStore(engine, pg_pool, low_balance_threshold=threshold)
        agent_store = PgAgentStore(engine, pg_pool)
        writes = PgProcessWrites(engine, pg_pool, pg_ledger, agent_store)
        ledger_store = pg_ledger
    ledger = LedgerService(
        store=ledger_store, clock=clock, costs=costs, linger_s=group_commit_linger_s(engine)
    )
    registry = default_registry()
    secret_box = SecretBox.from_optional_env_value(settings.secret_keys)
    runner = ActionRunner(
        admin, SqlBusinessStore(engine), clock, secret_box, report_writer=build_writer(settings)
    )
    windows = SqlConversationWindows(engine)
    executor = Executor(
        actions=agent_store,
        ledger=ledger,
        runner=runner,
        clock=clock,
        retry=lambda fn: with_retries(fn, attempts=3),
        reservation_ttl=timedelta(seconds=settings.action_ttl_seconds) + timedelta(hours=1),
        lease=timedelta(seconds=settings.execution_lease_seconds),
        settler=(
            PgSettler(engine, ledger_store, agent_store)
            if isinstance(ledger_store, PgLedgerStore)
            else SqlSettler(engine, ledger_store, agent_store)
        ),
        windows=windows,
    )
    offline = OfflineEngine(default_country_code=settings.default_country_code)
    policy_cache = CachedPolicySource(admin, ttl=settings.policy_cache_seconds)
    agent = AgentService(
        store=agent_store,
        policy=policy_cache,
        ledger=ledger,
        executor=executor,
        registry=registry,
        costs=costs,
        clock=clock,
        engine=build_engine(settings, registry, offline),
        offline=offline,
        action_ttl=timedelta(seconds=settings.action_ttl_seconds),
        writes=writes,
    )
    audit = BufferedAuditLog(PgEventWriter(pg_pool) if pg_pool is not None else admin, clock)
    telemetry = build_telemetry(
        audit=audit,
        metrics=bool(settings.metrics_listen),
        tenant_label=settings.metrics_tenant_label,
        traces=settings.traces,
        span_exporter=span_exporter,
    )
    ledger.telemetry = agent.telemetry = executor.telemetry = runner.telemetry = telemetry
    auth = Authenticator(
        admin,
        clock=clock,
        unvouched=(
            InProcessRateLimiter(
                settings.unauthenticated_per_second, settings.unauthenticated_burst
            )
            if settings.unauthenticated_per_second > 0
            else None
        ),
    )
    administration = Administration(
        store=admin,
        registry=registry,
        clock=clock,
        sealer=secret_box,
        forget_keys=auth.forget,
        forget_channels=runner.forget,
        forget_policy=policy_cache.forget,
        flush_audit=audit.flush,
    )
    signal = OutboxSignal()
    events = SqlEventStore(engine)
    webhook_store = SqlWebhookStore(engine)
    try:
        allowed = parse_networks(settings.webhook_allowed_networks)
    except ValueError as err:
        raise SystemExit(f"AGENTSERVER_WEBHOOK_ALLOWED_NETWORKS: {err}") from None
    timeout = settings.webhook_timeout_seconds
    poll = settings.event_poll_seconds or (0.2 if settings.is_sqlite else 0.05)
    return App(
        settings=settings,
        engine=engine,
        clock=clock,
        costs=costs,
        admin=admin,
        ledger=ledger,
        auth=auth,
        administration=administration,
        personal=PersonalData(
            store=SqlPersonalDataStore(engine),
            clock=clock,
            withdraw=agent.withdraw,
            flush_audit=audit.flush,
            tenant_of=administration.tenant_of,
        ),
        registry=registry,
        agent_store=agent_store,
        runner=runner,
        executor=executor,
        agent=agent,
        secret_box=secret_box,
        limiter=build_limiter(settings),
        audit=audit,
        telemetry=telemetry,
        events=events,
        signal=signal,
        feed=EventFeed(
            events, signal, clock, max_streams_per_tenant=settings.event_streams_per_tenant
        ),
        webhook_store=webhook_store,
        windows=windows,
        webhooks=WebhookEndpoints(webhook_store, secret_box, clock, allowed),
        deliverer=WebhookDeliverer(
            webhook_store,
            signal,
            secret_box,
            clock,
            allowed_networks=allowed,
            timeout=timeout,
            lease=timedelta(seconds=timeout + 15),
            concurrency=settings.webhook_concurrency,
        ),
        watcher=OutboxWatcher(
            engine,
            signal,
            poll_seconds=poll,
            listen_url="" if settings.is_sqlite else settings.database_url,
            pool=pg_pool,
        ),
        relay=(
            NatsRelay(
                engine,
                signal,
                clock,
                settings.nats_url,
                StreamSettings(
                    name=settings.nats_stream, max_age_seconds=settings.nats_max_age_seconds
                ),
            )
            if settings.nats_url
            else None
        ),
        pg_pool=pg_pool,
    )


def build_limiter(settings: Settings) -> RateLimiter:
    """Redis when configured (shared by replicas), else in-process; 0 disables."""
    if settings.rate_limit_per_second <= 0:
        return NoRateLimit()
    if settings.redis_url:
        from agentserver.adapters.redis_ratelimit import RedisRateLimiter

        return RedisRateLimiter(
            settings.redis_url,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            timeout=settings.redis_timeout_seconds,
            open_seconds=settings.redis_retry_seconds,
        )
    return InProcessRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)


def llm_settings(settings: Settings) -> LlmSettings | None:
    if not (settings.llm_base_url or settings.llm_model):
        return None
    from agentserver.adapters.llm import LlmSettings

    return LlmSettings(
        base_url=settings.llm_base_url or None,
        api_key=settings.llm_api_key,
        model=settings.llm_model or "gpt-4o-mini",
        timeout_seconds=settings.llm_timeout_seconds,
        deadline_seconds=settings.llm_deadline_seconds,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
    )


def build_writer(settings: Settings) -> ReportWriter | None:
    """Reports are phrased by the LLM when one is configured."""
    llm = llm_settings(settings)
    if llm is None:
        return None
    from agentserver.adapters.llm.report_writer import OpenAIReportWriter

    return OpenAIReportWriter(llm)


def build_engine(settings: Settings, registry: Registry, offline: DecisionEngine) -> DecisionEngine:
    """The LLM engine when an endpoint or model is configured, else the offline one."""
    llm = llm_settings(settings)
    if llm is None:
        return offline
    from agentserver.adapters.llm import OpenAIEngine, ToolSpec

    tools = [ToolSpec(d.name, d.description, d.parameters_schema) for d in registry.all()]
    model = OpenAIEngine(
        llm,
        tools,
        offline,
        validate=lambda name, params: [
            f"{v.field}: {v.description}" for v in registry.validate(name, params)
        ],
    )
    return CheckedEngine(model, offline)


# The hot connections set `plan_cache_mode` (adapters/db/pg.py), new in 12.
MIN_POSTGRES = 120000


def postgres_too_old(version_num: int, version: str) -> str | None:
    """Why this PostgreSQL cannot serve (`server_version_num`), or None."""
    if version_num >= MIN_POSTGRES:
        return None
    return f"PostgreSQL 12 or newer is needed; this server is {version}"


async def prepare_database(app: App) -> None:
    """Upgrade the embedded default in place; refuse to run a stale PostgreSQL schema
    or a PostgreSQL too old for the hot statements' settings."""
    if not app.settings.is_sqlite:
        async with app.engine.connect() as conn:
            row = (
                (
                    await conn.exec_driver_sql(
                        "SELECT current_setting('server_version_num') AS num,"
                        " current_setting('server_version') AS version"
                    )
                )
                .mappings()
                .one()
            )
        if why := postgres_too_old(int(row["num"]), str(row["version"])):
            raise SystemExit(why)
    if app.settings.should_migrate:
        await upgrade(app.engine)
    else:
        pending = await pending_revisions(app.engine)
        if pending:
            raise SystemExit(
                f"the database schema is behind ({len(pending)} revisions): "
                "run `agentserver migrate`"
            )
    sealed_webhooks = await app.webhook_store.sealed_secrets()
    if app.secret_box is None:
        if sealed_webhooks:
            raise SystemExit(
                "webhook endpoints have encrypted signing secrets but AGENTSERVER_SECRET_KEYS "
                "is not set"
            )
        if await app.admin.any_channel_secrets():
            raise SystemExit(
                "tenants have encrypted provider secrets but AGENTSERVER_SECRET_KEYS is not set"
            )
        return
    # A wrong key would start and then fail every send: refuse to start instead.
    unreadable = [
        f"{tenant}/{channel}"
        for tenant, channel, token in await app.admin.channel_secrets()
        if not app.secret_box.can_decrypt(token)
    ]
    channels = len(unreadable)
    unreadable += [
        f"webhook {endpoint}"
        for endpoint, token in sealed_webhooks
        if not app.secret_box.can_decrypt(token)
    ]
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        what = [f"{channels} channel setting(s)"] if channels else []
        if len(unreadable) > channels:
            what.append(f"{len(unreadable) - channels} webhook endpoint(s)")
        raise SystemExit(
            f"AGENTSERVER_SECRET_KEYS cannot decrypt the stored secrets of "
            f"{' and '.join(what)} ({shown}): a key is wrong or missing from the list"
        )


# The tables every call updates: their dead row versions pile up fastest.
HOT_TABLES = ("actions", "reservations", "business_tokens", "sessions", "messages")


async def warn_about_upkeep(app: App) -> str | None:
    """On PostgreSQL with autovacuum off, a warning (logged, and returned): the tables
    every call updates grow dead rows until someone runs VACUUM, and every call slows
    down with them (measured: 640/s to 270/s in five minutes; bench/soak.py)."""
    if app.settings.is_sqlite:
        return None
    async with app.engine.connect() as conn:
        setting = (await conn.exec_driver_sql("SHOW autovacuum")).scalar_one()
    if str(setting).lower() in ("on", "true", "1"):
        return None
    warning = (
        "autovacuum is off on this PostgreSQL server: the tables every call updates ("
        + ", ".join(HOT_TABLES)
        + ") fill with dead rows and every call slows down; turn autovacuum on"
        " (the migrations set per-table thresholds for it) or VACUUM them on a schedule"
    )
    log.warning(warning)
    return warning


async def bootstrap_demo(app: App, credentials_file: Path | None) -> dict[str, str] | None:
    """On an empty embedded database, create a demo tenant with tokens and keys.

    Returns the keys (shown once) or None when the database already had tenants.
    """
    if await app.admin.count_tenants() > 0:
        return None
    operator = operator_caller()
    admin = app.administration
    await admin.create_tenant(operator, DEMO_TENANT, "Demo business", "demo bootstrap")
    await admin.add_rule(operator, DEMO_TENANT, Rule("business", "", "allow", "*:*"))
    _, tenant_key = await admin.create_key(
        operator, DEMO_TENANT, description="demo tenant key", reason="demo bootstrap"
    )
    _, platform_key = await admin.create_key(
        operator, platform=True, description="demo platform key", reason="demo bootstrap"
    )
    app.record(operator, "bootstrap demo")
    await app.ledger.add_tokens(DEMO_TENANT, "", DEMO_TOKENS, "demo-initial-tokens", "demo")
    # What the README's examples book and look up.
    for kind, name, attributes in DEMO_RESOURCES:
        await app.runner.business.create_resource(
            DEMO_TENANT, "", kind, name, attributes, app.clock.now()
        )
    keys = {"tenant_id": DEMO_TENANT, "tenant_key": tenant_key, "platform_key": platform_key}
    if credentials_file is not None:
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        credentials_file.chmod(0o600)
    return keys
