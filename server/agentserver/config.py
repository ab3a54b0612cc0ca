"""Configuration from environment variables, each with a documented default.

docs/configuration.md lists the same variables; keep them in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/agentserver.db"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AGENTSERVER_{name}", default)


def _off_or(value: str) -> str:
    """A setting that may be switched off: '', off, false, no and 0 all mean off."""
    return "" if value.strip().lower() in {"", "off", "false", "no", "0"} else value.strip()


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = 20
    redis_url: str = ""
    redis_timeout_seconds: float = 0.5
    redis_retry_seconds: float = 10.0  # after a Redis failure, limit in-process this long
    rate_limit_per_second: float = 5000.0
    rate_limit_burst: float = 10000.0
    unauthenticated_per_second: float = 20.0
    unauthenticated_burst: float = 100.0
    # Behind a proxy, the metadata header in which it names the client's address
    # (Envoy: x-envoy-external-address); empty: the connection's peer.
    client_address_header: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    access_log: bool = True
    costs: str = ""
    low_balance_threshold: int = 50
    sweep_interval_seconds: float = 5.0
    audit_retention_days: float = 90.0  # 0 keeps audit events forever
    monthly_fee_interval_seconds: float = 3600.0
    grace_seconds: float = 10.0
    drain_seconds: float = 5.0  # on SIGTERM, before the grace period
    auto_migrate: bool | None = None  # None: yes for SQLite, no for PostgreSQL
    bootstrap_demo: bool = True
    secret_keys: str = ""
    llm_base_url: str = ""
    llm_api_key: str = ""
    llm_model: str = ""
    llm_timeout_seconds: float = 20.0
    llm_deadline_seconds: float = 30.0
    llm_temperature: float | None = 0.0
    llm_max_tokens: int = 1024
    action_ttl_seconds: float = 24 * 3600.0
    execution_lease_seconds: float = 300.0
    policy_cache_seconds: float = 5.0
    default_country_code: str = "+1"
    web_listen: str = "127.0.0.1:8080"  # '' turns the console and gRPC-web off
    web_origins: tuple[str, ...] = ()  # other origins allowed to call gRPC-web (CORS)
    console_dir: str = ""  # '' means web/dist beside the sources
    console_api_url: str = ""  # where the console sends its calls; '' is its own origin
    # Prometheus metrics on their own HTTP listener ('' is off: see docs/operating.md for why).
    metrics_listen: str = ""
    metrics_tenant_label: bool = False  # a tenant label on per-tenant counters
    traces: str = ""  # '' off, "otlp" (OTEL_EXPORTER_OTLP_* variables) or "console"
    # Events out (issue 12): the outbox's retention, watch streams, webhooks, NATS.
    event_retention_days: float = 7.0  # 0 keeps events forever
    event_streams_per_tenant: int = 20
    event_poll_seconds: float | None = None  # None: 0.2 s on SQLite, 0.05 s on PostgreSQL
    webhook_allowed_networks: str = ""  # e.g. "127.0.0.0/8": private targets allowed
    webhook_timeout_seconds: float = 15.0
    webhook_concurrency: int = 32
    nats_url: str = ""
    nats_stream: str = "AGENTSERVER_EVENTS"
    nats_max_age_seconds: float = 7 * 86400.0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @classmethod
    def from_env(cls) -> Settings:
        auto = _env("AUTO_MIGRATE", "")
        return cls(
            listen=_env("LISTEN", cls.listen),
            database_url=_env("DATABASE_URL", DEFAULT_DATABASE_URL),
            db_pool_size=int(_env("DB_POOL_SIZE", str(cls.db_pool_size))),
            redis_url=_env("REDIS_URL", ""),
            redis_timeout_seconds=float(_env("REDIS_TIMEOUT_SECONDS", "0.5")),
            redis_retry_seconds=float(_env("REDIS_RETRY_SECONDS", "10")),
            rate_limit_per_second=float(_env("RATE_LIMIT_PER_SECOND", "5000")),
            rate_limit_burst=float(_env("RATE_LIMIT_BURST", "10000")),
            unauthenticated_per_second=float(_env("UNAUTHENTICATED_PER_SECOND", "20")),
            unauthenticated_burst=float(_env("UNAUTHENTICATED_BURST", "100")),
            client_address_header=_env("CLIENT_ADDRESS_HEADER", "").strip().lower(),
            log_level=_env("LOG_LEVEL", cls.log_level).upper(),
            log_format=_env("LOG_FORMAT", cls.log_format),
            access_log=_bool(_env("ACCESS_LOG", "true")),
            costs=_env("COSTS", ""),
            low_balance_threshold=int(_env("LOW_BALANCE_THRESHOLD", "50")),
            sweep_interval_seconds=float(_env("SWEEP_INTERVAL_SECONDS", "5")),
            audit_retention_days=float(_env("AUDIT_RETENTION_DAYS", "90")),
            monthly_fee_interval_seconds=float(_env("MONTHLY_FEE_INTERVAL_SECONDS", "3600")),
            grace_seconds=float(_env("GRACE_SECONDS", "10")),
            drain_seconds=float(_env("DRAIN_SECONDS", "5")),
            auto_migrate=_bool(auto) if auto else None,
            bootstrap_demo=_bool(_env("BOOTSTRAP_DEMO", "true")),
            secret_keys=_env("SECRET_KEYS", ""),
            llm_base_url=_env("LLM_BASE_URL", ""),
            llm_api_key=_env("LLM_API_KEY", ""),
            llm_model=_env("LLM_MODEL", ""),
            llm_timeout_seconds=float(_env("LLM_TIMEOUT_SECONDS", "20")),
            llm_deadline_seconds=float(_env("LLM_DEADLINE_SECONDS", "30")),
            llm_temperature=float(t) if (t := _env("LLM_TEMPERATURE", "0")) else None,
            llm_max_tokens=int(_env("LLM_MAX_TOKENS", "1024")),
            action_ttl_seconds=float(_env("ACTION_TTL_SECONDS", str(24 * 3600))),
            execution_lease_seconds=float(_env("EXECUTION_LEASE_SECONDS", "300")),
            default_country_code=_env("DEFAULT_COUNTRY_CODE", "+1"),
            policy_cache_seconds=float(_env("POLICY_CACHE_SECONDS", "5")),
            web_listen=_off_or(_env("WEB_LISTEN", cls.web_listen)),
            web_origins=tuple(o.strip() for o in _env("WEB_ORIGINS", "").split(",") if o.strip()),
            console_dir=_env("CONSOLE_DIR", ""),
            console_api_url=_env("CONSOLE_API_URL", ""),
            metrics_listen=_off_or(_env("METRICS_LISTEN", "")),
            metrics_tenant_label=_bool(_env("METRICS_TENANT_LABEL", "false")),
            traces=_off_or(_env("TRACES", "")).lower(),
            event_retention_days=float(_env("EVENT_RETENTION_DAYS", "7")),
            event_streams_per_tenant=int(_env("EVENT_STREAMS_PER_TENANT", "20")),
            event_poll_seconds=float(p) if (p := _env("EVENT_POLL_SECONDS", "")) else None,
            webhook_allowed_networks=_env("WEBHOOK_ALLOWED_NETWORKS", ""),
            webhook_timeout_seconds=float(_env("WEBHOOK_TIMEOUT_SECONDS", "15")),
            webhook_concurrency=int(_env("WEBHOOK_CONCURRENCY", "32")),
            nats_url=_env("NATS_URL", ""),
            nats_stream=_env("NATS_STREAM", "AGENTSERVER_EVENTS"),
            nats_max_age_seconds=float(_env("NATS_MAX_AGE_SECONDS", str(7 * 86400))),
        )
