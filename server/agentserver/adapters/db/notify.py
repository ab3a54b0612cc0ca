"""Waking whoever waits for new outbox events: watch streams, the webhook fan-out,
the NATS relay.

On PostgreSQL a trigger on `outbox` (migration 0009) sends `NOTIFY
agentserver_outbox, '<tenant>'` with each writing statement; one connection per
replica LISTENs and wakes that tenant's waiters. A slow poll of the outbox's
highest id backs it up (a notification lost while the listening connection was
away); on SQLite the poll is all there is, and it is fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.event_store import max_outbox_id
from agentserver.adapters.db.pg import asyncpg_dsn

log = logging.getLogger("agentserver.events")

CHANNEL = "agentserver_outbox"


class OutboxSignal:
    """Per-tenant wake-ups, plus one for consumers of every tenant. A waiter takes the
    current event *before* it reads, so a wake-up between its read and its wait is
    never lost."""

    def __init__(self) -> None:
        self._tenants: dict[str, asyncio.Event] = {}
        self._any = asyncio.Event()

    def waiter(self, tenant_id: str) -> asyncio.Event:
        event = self._tenants.get(tenant_id)
        if event is None:
            event = self._tenants[tenant_id] = asyncio.Event()
        return event

    def any_waiter(self) -> asyncio.Event:
        return self._any

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


class OutboxWatcher:
    """Feeds an OutboxSignal: LISTEN on PostgreSQL, polling everywhere."""

    def __init__(
        self, engine: AsyncEngine, signal: OutboxSignal, *, poll_seconds: float, listen_url: str
    ) -> None:
        self._read = reader(engine)
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
        last = -1
        while True:
            try:
                async with self._read.connect() as conn:
                    current = await max_outbox_id(conn)
                if current != last:
                    if last >= 0:
                        self._signal.wake()
                    last = current
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the database is away: try again later
                log.debug("outbox poll failed: %s", err)
            await asyncio.sleep(self._poll_seconds)

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
