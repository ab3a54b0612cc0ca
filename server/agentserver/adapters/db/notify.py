"""Waking whoever waits for new outbox events: watch streams, the webhook fan-out,
the NATS relay.

Every replica polls the outbox for rows past the highest id it has seen (one
primary-key range scan, every 50 ms on PostgreSQL and 0.2 s on SQLite) and wakes
the tenants they belong to, while anyone waits for a wake-up. A row with a lower
id that commits after a higher one is not seen by the poll; its readers find it at
their next check (at most a second later: see EventFeed).

On PostgreSQL a trigger on `outbox` (migration 0010) can also send `NOTIFY
agentserver_outbox, '<tenant>'` with each writing statement, which one connection
per replica LISTENs for. It is created disabled: a notifying transaction takes the
notify lock at commit, which serialises every writer's commits (bench/events.py
measured the outbox write alone at a fifth of its rate at 16 clients).
`agentserver events notify on` enables it (`off` disables it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.event_store import (
    SINCE_LIMIT,
    max_outbox_id,
    outbox_since,
    since_result,
)
from agentserver.adapters.db.pg import PgPool, asyncpg_dsn

log = logging.getLogger("agentserver.events")

CHANNEL = "agentserver_outbox"
# `outbox_since` as one asyncpg statement (the poll runs 20 times a second).
OUTBOX_SINCE = (
    "SELECT tenant_id, max(id) AS last FROM"
    " (SELECT tenant_id, id FROM outbox WHERE id > $1 ORDER BY id LIMIT $2) AS o"
    " GROUP BY tenant_id"
)


class OutboxSignal:
    """Per-tenant wake-ups, plus one for consumers of every tenant. A waiter takes the
    current event *before* it reads, so a wake-up between its read and its wait is
    never lost."""

    def __init__(self) -> None:
        self._tenants: dict[str, asyncio.Event] = {}
        self._any = asyncio.Event()
        self._any_owners: set[str] = set()  # who holds the all-tenant wake-up

    def waiter(self, tenant_id: str) -> asyncio.Event:
        event = self._tenants.get(tenant_id)
        if event is None:
            event = self._tenants[tenant_id] = asyncio.Event()
        return event

    def any_waiter(self, owner: str) -> asyncio.Event:
        """The next wake-up of any tenant, for `owner` (one consumer of every tenant)."""
        self._any_owners.add(owner)
        return self._any

    def release_any(self, owner: str) -> None:
        """`owner` will not wait for the wake-up it took (it stopped listening)."""
        self._any_owners.discard(owner)

    def wanted(self) -> bool:
        """Whether anyone holds a wake-up not yet given: if not, no one needs the
        outbox watched (a waiter taken later still sees what commits after it)."""
        return bool(self._any_owners) or bool(self._tenants)

    def wake(self, tenant_id: str | None = None) -> None:
        """Wake `tenant_id`'s waiters (None: everyone's) and the all-tenant consumers."""
        if tenant_id is None:
            woken = list(self._tenants.values())
            self._tenants.clear()
        else:
            one = self._tenants.pop(tenant_id, None)
            woken = [one] if one is not None else []
        for event in woken:
            event.set()
        self._any.set()
        self._any = asyncio.Event()
        self._any_owners.clear()


class OutboxWatcher:
    """Feeds an OutboxSignal: LISTEN on PostgreSQL, polling everywhere."""

    def __init__(
        self,
        engine: AsyncEngine,
        signal: OutboxSignal,
        *,
        poll_seconds: float,
        listen_url: str,
        pool: PgPool | None = None,
    ) -> None:
        self._read = reader(engine)
        self._pool = pool  # PostgreSQL: poll on asyncpg directly (a tenth of the CPU)
        self._signal = signal
        self._poll_seconds = poll_seconds
        self._listen_url = listen_url  # '' on SQLite

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._poll(), name="outbox-poll")]
        if self._listen_url:
            tasks.append(asyncio.create_task(self._listen(), name="outbox-listen"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _poll(self) -> None:
        """Every `poll_seconds` while someone waits: with no watch stream open, no
        endpoint enabled and no NATS relay, nothing is read. Resuming, it goes on
        from the last id it saw, so a waiter misses nothing committed after it."""
        last: int | None = None
        while True:
            try:
                if last is None:
                    async with self._read.connect() as conn:
                        last = await max_outbox_id(conn)
                elif self._signal.wanted():
                    last, tenants = await self._since(last)
                    for tenant_id in tenants:
                        self._signal.wake(tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the database is away: try again later
                log.debug("outbox poll failed: %s", err)
            await asyncio.sleep(self._poll_seconds)

    async def _since(self, last: int) -> tuple[int, set[str]]:
        if self._pool is None:
            async with self._read.connect() as conn:
                return await outbox_since(conn, last)
        return since_result(last, await self._pool.fetch(OUTBOX_SINCE, last, SINCE_LIMIT))

    async def _listen(self) -> None:
        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            self._signal.wake(payload or None)

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self._listen_url))
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, on_notify)
                self._signal.wake()  # whatever committed while nobody listened
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("listening for outbox notifications failed: %s", err)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2.0)
            await asyncio.sleep(1.0)


async def set_notify(engine: AsyncEngine, on: bool) -> None:
    """Enable or disable the outbox's NOTIFY trigger (PostgreSQL only)."""
    if engine.dialect.name != "postgresql":
        raise SystemExit("NOTIFY is a PostgreSQL feature; SQLite polls")
    from sqlalchemy import text

    state = "ENABLE" if on else "DISABLE"
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE outbox {state} TRIGGER outbox_notify"))


async def notify_enabled(engine: AsyncEngine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    from sqlalchemy import text

    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'outbox_notify'")
        )
        return found.scalar() in ("O", "A")  # origin or always; D is disabled
