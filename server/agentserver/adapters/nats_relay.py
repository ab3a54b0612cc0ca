"""Relaying every outbox event to NATS JetStream (when AGENTSERVER_NATS_URL is set).

Subject `agentserver.<tenant>.<type>` (so `agentserver.t1.>` is one tenant and
`agentserver.*.action.>` one area everywhere), the event's JSON as the body
(adapters/event_format.py) and `Nats-Msg-Id` = the event id: a republish after a
crash, within the stream's duplicate window, is dropped by JetStream itself.

Each tenant has a `nats` cursor over its outbox. A replica locks it (FOR UPDATE
SKIP LOCKED: replicas share tenants, never a tenant's events), publishes the
events after it in order, waits for JetStream's acknowledgements, and only then
moves the cursor and commits. A crash between the two republishes the same ids.
Woken by new events (LISTEN/NOTIFY on PostgreSQL, polling on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.event_store import (
    NATS,
    advance_cursor,
    behind,
    claim_cursor,
    ensure_cursors,
    read_events,
    tenants_without_cursor,
)
from agentserver.adapters.db.notify import OutboxSignal
from agentserver.adapters.event_format import to_json, to_proto
from agentserver.domain.clock import Clock
from agentserver.domain.events import StoredEvent

log = logging.getLogger("agentserver.nats")

SUBJECT_PREFIX = "agentserver"
BATCH = 500
# After a wake-up, how long to let more commits gather before a round.
GATHER_SECONDS = 0.02
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def subject_token(text: str) -> str:
    """`text` as one NATS subject token: kept when it is letters, digits, `-` and
    `_`; otherwise each other character becomes `~XX` (UTF-8 hex)."""
    if _SAFE_TOKEN.match(text):
        return text
    return "".join(
        c if re.match(r"[A-Za-z0-9_-]", c) else "".join(f"~{b:02X}" for b in c.encode())
        for c in text
    )


def subject(event: StoredEvent) -> str:
    kind = ".".join(subject_token(part) for part in event.type.split("."))
    return f"{SUBJECT_PREFIX}.{subject_token(event.tenant_id)}.{kind}"


@dataclass(frozen=True)
class StreamSettings:
    name: str = "AGENTSERVER_EVENTS"
    max_age_seconds: float = 7 * 86400.0  # 0: kept until the limits below
    max_bytes: int = -1
    duplicate_window_seconds: float = 120.0


class NatsRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        signal: OutboxSignal,
        clock: Clock,
        url: str,
        stream: StreamSettings,
        *,
        idle_poll: float = 1.0,
    ) -> None:
        self._engine = engine
        self._read = reader(engine)
        self.signal = signal
        self.clock = clock
        self.url = url
        self.stream = stream
        self.idle_poll = idle_poll
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    async def connect(self) -> JetStreamContext:
        if self._js is None or self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(
                self.url, connect_timeout=2, max_reconnect_attempts=-1, allow_reconnect=True
            )
            self._js = self._nc.jetstream()
            await ensure_stream(self._js, self.stream)
        return self._js

    async def aclose(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = self._js = None

    async def run(self) -> None:
        """Relay until cancelled; a NATS or database outage is waited out."""
        delay = 0.5
        while True:
            woken = self.signal.any_waiter("nats")
            try:
                sent = await self.relay_once()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("relaying events to NATS failed (retrying): %s", err)
                await self.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if sent:
                continue  # more may have come meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self.idle_poll)
            await asyncio.sleep(GATHER_SECONDS)  # a burst of commits: one round

    async def relay_once(self, *, tenants: int = 100) -> int:
        """Publish what every tenant's cursor has not reached; returns how many."""
        js = await self.connect()
        now = self.clock.now()
        async with self._read.connect() as conn:
            fresh = await tenants_without_cursor(conn, NATS, 1000)
        if fresh:
            async with self._engine.begin() as conn:
                await ensure_cursors(conn, NATS, fresh, "first", now)
        async with self._read.connect() as conn:
            pending = await behind(conn, NATS, tenants)
        sent = 0
        for tenant_id, _cursor, head in pending:
            async with self._engine.begin() as conn:
                cursor = await claim_cursor(conn, NATS, tenant_id)
                if cursor is None or cursor >= head:
                    continue  # another replica has it, or it is done
                upto = min(head, cursor + BATCH)
                events = await read_events(conn, tenant_id, cursor, upto, (), BATCH)
                await publish(js, events, self.stream.name)
                await advance_cursor(conn, NATS, tenant_id, upto, self.clock.now())
                sent += len(events)
        return sent


async def publish(js: JetStreamContext, events: list[StoredEvent], stream: str) -> None:
    """Publish in order, pipelined, and wait for every acknowledgement."""
    acks = [
        await js.publish_async(
            subject(e),
            to_json(to_proto(e)),
            stream=stream,
            headers={
                "Nats-Msg-Id": e.id,
                "Content-Type": "application/json",
                "Agentserver-Tenant": e.tenant_id,
                "Agentserver-Seq": str(e.seq),
            },
        )
        for e in events
    ]
    for ack in acks:
        await asyncio.wait_for(ack, 10.0)


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the stream when missing (subjects `agentserver.>`); an existing one is
    left as the operator configured it."""
    try:
        await js.stream_info(settings.name)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=settings.name,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            max_age=settings.max_age_seconds or None,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window_seconds,
        )
    )
