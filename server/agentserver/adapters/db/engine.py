"""Engine construction: the embedded SQLite default and PostgreSQL through asyncpg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentserver.adapters.db import sqlite_inline
from agentserver.domain.batching import LINGER_S


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 20, echo: bool = False) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    if is_sqlite(url):
        _ensure_sqlite_dir(url)
        # One connection: SQLite has one writer anyway, and queueing for the pool in
        # asyncio is fair and immediate, where waiting in SQLite's busy handler
        # sleeps in growing steps (seconds of tail latency under load). Other
        # processes on the same file still wait through the busy timeout.
        engine = create_async_engine(
            url,
            echo=echo,
            async_creator=sqlite_inline.async_creator(url, busy_timeout_s=30.0),
            pool_size=1,
            max_overflow=0,
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        echo=echo,
        # A fixed pool: overflow connections would be opened and closed under load,
        # each paying a connect (and TLS attempt) and a cold statement cache.
        pool_size=pool_size,
        max_overflow=0,
        # No pre-ping round trip per checkout; stale connections are recycled instead.
        pool_recycle=1800,
        connect_args={"statement_cache_size": 512},
    )


def group_commit_linger_s(engine: AsyncEngine) -> float:
    """How long a group commit may wait for more calls under load (`Coalescer`): on
    SQLite, whose statements run in place and give other calls few turns while a
    batch is written; not on PostgreSQL, where batches form while one is written."""
    return LINGER_S if engine.dialect.name == "sqlite" else 0.0


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same pool for reads that need no transaction: PostgreSQL in autocommit (no
    BEGIN/ROLLBACK round trips), SQLite with a deferred BEGIN (no write lock)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(agentserver_read=True)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The connection is autocommit at the driver (sqlite_inline): SQLAlchemy emits
        # BEGIN itself (below) instead of pysqlite's implicit one.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # What is deleted or overwritten is zeroed in the file, not left in free pages:
        # erased personal data (EraseUserData, retention) must not stay readable there.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock at BEGIN: a deferred transaction that reads and
        # then writes can fail with SQLITE_BUSY when another writer got there first.
        # Reads (see `reader`) begin deferred and never block writers (WAL).
        if conn.get_execution_options().get("agentserver_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
