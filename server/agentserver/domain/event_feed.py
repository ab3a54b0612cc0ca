"""Watching a tenant's events: what WatchEvents streams.

A watcher reads the outbox itself, from its own cursor, a batch at a time, and
only reads the next batch once the last one has been sent: a slow reader falls
behind in the database, never in the server's memory (at most one batch per
stream). When it has caught up it waits for a wake-up (PostgreSQL's NOTIFY, or
polling on SQLite), with a heartbeat carrying its cursor when nothing matched for
a while. A server that stops ends every watch with UNAVAILABLE so the client
reconnects, here or elsewhere, from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from agentserver.domain.clock import Clock
from agentserver.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    RateLimited,
    Unavailable,
)
from agentserver.domain.events import StoredEvent, check_type_filters

BATCH = 100
# At most this many sequence numbers are examined per read, so a narrow filter over
# a busy tenant costs bounded work per query (and heartbeats still move forward).
WINDOW = 5000
DEFAULT_HEARTBEAT = timedelta(seconds=15)
MIN_HEARTBEAT = timedelta(seconds=1)
MAX_HEARTBEAT = timedelta(seconds=300)
RECHECK_SECONDS = 1.0


class EventReader(Protocol):
    async def head(self, tenant_id: str) -> int | None:
        """The tenant's last sequence number (None: no such tenant)."""
        ...

    async def has_seq(self, tenant_id: str, seq: int) -> bool: ...

    async def read(
        self, tenant_id: str, after: int, upto: int, types: Sequence[str], limit: int
    ) -> list[StoredEvent]:
        """Events with `after < seq <= upto` of the given types, in order."""
        ...


class Wakeup(Protocol):
    """Wakes watchers when a tenant's outbox grows."""

    def waiter(self, tenant_id: str) -> asyncio.Event: ...


@dataclass(frozen=True)
class Heartbeat:
    cursor: int
    time: datetime


@dataclass
class EventFeed:
    reader: EventReader
    wakeup: Wakeup
    clock: Clock
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    max_streams_per_tenant: int = 20
    _open: dict[str, int] = field(default_factory=dict)

    async def start(self, tenant_id: str, after: int | None) -> int:
        """The cursor a watch starts from; refuses one whose events are gone."""
        head = await self.reader.head(tenant_id)
        if head is None:
            head = 0
        if after is None:
            return head
        if after < 0:
            raise InvalidArgument.field("after_seq", "must not be negative")
        if after > head:
            raise InvalidArgument.field(
                "after_seq", f"is past the tenant's last event ({head}): not this server's cursor"
            )
        if after < head and not await self.reader.has_seq(tenant_id, after + 1):
            raise FailedPrecondition(
                f"the events after {after} are no longer kept (retention): "
                "restart from now, without after_seq",
                reason="CURSOR_EXPIRED",
            )
        return after

    async def watch(
        self,
        tenant_id: str,
        types: Sequence[str],
        after: int | None,
        heartbeat: timedelta = DEFAULT_HEARTBEAT,
    ) -> AsyncIterator[StoredEvent | Heartbeat]:
        """A heartbeat with the starting cursor, the tenant's events after `after`
        (None: from now), then new ones as they commit, with heartbeats while idle;
        ends with UNAVAILABLE when the server stops."""
        if violations := check_type_filters("types", types):
            raise InvalidArgument(violations)
        if not MIN_HEARTBEAT <= heartbeat <= MAX_HEARTBEAT:
            raise InvalidArgument.field("heartbeat_interval", "must be between 1 and 300 seconds")
        if self._open.get(tenant_id, 0) >= self.max_streams_per_tenant:
            raise RateLimited(
                f"the tenant already has {self.max_streams_per_tenant} open event streams",
                5.0,
            )
        cursor = await self.start(tenant_id, after)
        self._open[tenant_id] = self._open.get(tenant_id, 0) + 1
        try:
            loop = asyncio.get_running_loop()
            # The first message says where the stream starts (and that it has).
            yield Heartbeat(cursor, self.clock.now())
            quiet_since = loop.time()
            while True:
                if self.stopping.is_set():
                    raise Unavailable(
                        f"the server is shutting down: reconnect with after_seq={cursor}"
                    )
                woken = self.wakeup.waiter(tenant_id)
                head = await self.reader.head(tenant_id) or 0
                if head > cursor:
                    upto = min(head, cursor + WINDOW)
                    batch = await self.reader.read(tenant_id, cursor, upto, types, BATCH)
                    for event in batch:
                        yield event
                        cursor = event.seq
                    if batch:
                        quiet_since = loop.time()
                    if len(batch) < BATCH:
                        cursor = upto  # examined through `upto`: nothing else matched
                    continue
                left = heartbeat.total_seconds() - (loop.time() - quiet_since)
                if left <= 0:
                    yield Heartbeat(cursor, self.clock.now())
                    quiet_since = loop.time()
                    continue
                # At least once a second, even unwoken: a row that committed after a
                # higher id was polled is found so (see adapters/db/notify.py).
                await _first(woken, self.stopping, within=min(left, RECHECK_SECONDS))
        finally:
            self._open[tenant_id] -= 1
            if not self._open[tenant_id]:
                del self._open[tenant_id]


async def _first(*events: asyncio.Event, within: float) -> None:
    """Wait until one of `events` is set or `within` seconds pass."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for w in waits:
            with contextlib.suppress(asyncio.CancelledError):
                await w
