"""A plain asyncpg pool beside SQLAlchemy's, for the PostgreSQL hot paths.

The Process and ledger hot paths on PostgreSQL write with one hand-written
statement per batch (data-modifying CTEs over `unnest` arrays): one round trip,
atomic on its own, no BEGIN/COMMIT. Through SQLAlchemy each statement costs about
2.5 times the CPU of the same statement on asyncpg directly, and the server's one
core is what limits Process throughput. Everything else (reads, the rare paths,
SQLite) stays on SQLAlchemy Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from agentserver.adapters.db.errors import is_unavailable
from agentserver.domain.errors import Unavailable

# Errors after which a batch is settled item by item on the general path, which
# explains each item (replay, conflict, ended reservation, ...). Nothing of a
# failed statement was written: a single statement is atomic.
RETRY_ALONE: tuple[type[Exception], ...] = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@contextlib.contextmanager
def _unavailable_when_gone() -> Iterator[None]:
    """The server went away or is restarting: retryable, answered UNAVAILABLE."""
    try:
        yield
    except Exception as err:
        if is_unavailable(err):
            raise Unavailable(f"the database is unavailable: {err}") from err
        raise


# URL options SQLAlchemy's asyncpg dialect consumes itself; asyncpg would send any
# option it does not know to the server as a setting, and the connection fails.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` (SQLAlchemy) as the libpq URL asyncpg takes: without
    SQLAlchemy's own options, and `ssl=` (SQLAlchemy's spelling) as `sslmode=`."""
    parsed = make_url(url)
    query = {k: v for k, v in parsed.query.items() if k not in _SQLALCHEMY_ONLY}
    if "ssl" in query and "sslmode" not in query:
        query["sslmode"] = query.pop("ssl")
    return parsed.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


# Every statement on this pool reaches its rows by key, and runs with one plan made
# once per connection, never planned again (planning each execution with its own
# values, `force_custom_plan`, cost Process on PostgreSQL a quarter of its calls/s
# at concurrency 1 and a tenth at 16: bench/README.md). A plan made without the
# values, perhaps while the tables were still empty, must stay an index lookup
# however they grow, so:
# * sequential scans are off: an empty table never looks cheaper to walk;
# * a condition beside the key that another index could serve (the tenant, a state)
#   is written `col IS NOT DISTINCT FROM value`, and a time compared as a difference
#   (`expires_at - $n > interval '0'`): no index serves either, so the key's unique
#   index is the only way in.
# tests/integration/test_pg_plans.py checks the plan of every statement here on a
# fresh database and on one with statistics.
SESSION_SETTINGS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


async def _keep_session(_conn: Any) -> None:
    """Returning a connection to the pool costs no round trip. asyncpg's default
    reset sends `RESET ALL`, `UNLISTEN *`, … each time; nothing here changes session
    state, and asyncpg itself still rolls back a transaction left open."""


class PgPool:
    """An asyncpg pool opened on first use (building the app does no I/O)."""

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self._dsn = asyncpg_dsn(url)
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._max_size,
                        reset=_keep_session,
                        server_settings=SESSION_SETTINGS,
                        # No idle timer armed on every release (a call_later each
                        # time); the pool is bounded, so idle connections just wait.
                        max_inactive_connection_lifetime=0,
                    )
        return self._pool

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        with _unavailable_when_gone():
            pool = await self._get()
            return list(await pool.fetch(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        with _unavailable_when_gone():
            pool = await self._get()
            return str(await pool.execute(query, *args))

    async def copy_records(
        self, table: str, columns: Sequence[str], records: Sequence[tuple[Any, ...]]
    ) -> None:
        """Append rows with COPY: the cheapest bulk insert PostgreSQL has."""
        with _unavailable_when_gone():
            pool = await self._get()
            async with pool.acquire() as conn:
                await conn.copy_records_to_table(table, records=records, columns=columns)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


_EVENT_COLUMNS = (
    "tenant_id",
    "kind",
    "actor",
    "subject",
    "outcome",
    "payload",
    "created_at",
    "key_id",
    "user_id",
    "object",
)


class PgEventWriter:
    """Audit events by COPY (one per rpc adds up: over a thousand rows a second at
    ledger-benchmark rates)."""

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    async def write_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            records = [
                tuple(json.dumps(e[c]) if c == "payload" else e[c] for c in _EVENT_COLUMNS)
                for e in events
            ]
            await self._pool.copy_records("events", _EVENT_COLUMNS, records)
