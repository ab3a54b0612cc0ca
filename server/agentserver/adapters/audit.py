"""The audit trail: one event per rpc (who, what, on which tenant, outcome).

Events are buffered and written in batches (every second, or 500 at a time) so
auditing never sits on the hot path. None is lost silently:

* values are cut to what the table holds before they are buffered, so one
  over-long value cannot fail a batch;
* a batch that fails because the database is away stays in the buffer and is
  written when it is back;
* a batch that fails for another reason is split until the row that cannot be
  written stands alone; that row is logged and counted, its neighbours are written;
* the buffer is bounded (`max_buffered`): past it new events are shed, counted and
  logged (a flood cannot exhaust memory, nor push out what was recorded before it).

Calls that no key vouched for go to a trail of their own (`audit.unauthenticated.*`
kinds, no tenant): a caller who cannot prove a tenant cannot write into its trail.
A crash can lose at most the events not yet written, never a ledger entry (the
ledger is its own record).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from agentserver.adapters.db.errors import is_unavailable
from agentserver.domain.clock import Clock

log = logging.getLogger(__name__)

# Column sizes of the events table (models.Event).
_LIMITS = {
    "tenant_id": 64,
    "kind": 60,
    "actor": 200,
    "subject": 200,
    "outcome": 40,
    "key_id": 40,
    "user_id": 120,
    "object": 200,
}
# The most a payload (before and after of a change) may take, serialized; a larger
# one is kept as its size and digest (the limits of every setting keep real ones far
# below it).
MAX_PAYLOAD_BYTES = 64 * 1024
UNAUTHENTICATED_KIND = "audit.unauthenticated."


class EventWriter(Protocol):
    async def write_events(self, events: Sequence[dict[str, Any]]) -> None: ...


def _bounded(value: str, limit: int) -> str:
    return value.replace("\x00", "")[:limit]


# Built once (json.dumps with an option builds an encoder per call; one audit record
# per rpc).
_LENIENT = json.JSONEncoder(default=str)


def _bounded_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` as the table can hold it: JSON (what is not JSON becomes text), no
    NUL characters (PostgreSQL's jsonb refuses them), at most MAX_PAYLOAD_BYTES."""
    loaded: dict[str, Any] = json.loads(_LENIENT.encode(_without_nul(payload)))
    size = len(json.dumps(loaded))
    if size > MAX_PAYLOAD_BYTES:
        digest = hashlib.sha256(json.dumps(loaded, sort_keys=True).encode()).hexdigest()
        return {"truncated": True, "bytes": size, "sha256": digest}
    return loaded


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


class BufferedAuditLog:
    def __init__(
        self,
        store: EventWriter,
        clock: Clock,
        *,
        max_batch: int = 500,
        max_buffered: int = 100_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._buffer: deque[dict[str, Any]] = deque()
        self._max_batch = max_batch
        self._max_buffered = max_buffered
        self.shed = 0  # events dropped because the buffer was full
        self.rejected = 0  # events the store refused on their own
        self._shed_reported = 0
        # One flush at a time: a flush returns once what was recorded before it is
        # written (or kept), even when another flush had already taken it to write.
        self._flushing = asyncio.Lock()

    def record(
        self,
        *,
        tenant_id: str | None,
        actor: str,
        operation: str,
        outcome: str,
        request_id: str,
        authenticated: bool = True,
        payload: dict[str, Any] | None = None,
        key_id: str = "",
        user_id: str = "",
        object: str = "",
    ) -> None:
        if len(self._buffer) >= self._max_buffered:
            self.shed += 1
            return
        kind = f"audit.{operation}" if authenticated else UNAUTHENTICATED_KIND + operation
        self._buffer.append(
            {
                "tenant_id": _bounded(tenant_id, _LIMITS["tenant_id"]) if tenant_id else None,
                "kind": _bounded(kind, _LIMITS["kind"]),
                "actor": _bounded(actor, _LIMITS["actor"]),
                "subject": _bounded(request_id, _LIMITS["subject"]),
                "outcome": _bounded(outcome, _LIMITS["outcome"]),
                "payload": _bounded_payload(payload) if payload else {},
                "created_at": self._clock.now(),
                "key_id": _bounded(key_id, _LIMITS["key_id"]),
                "user_id": _bounded(user_id, _LIMITS["user_id"]),
                "object": _bounded(object, _LIMITS["object"]),
            }
        )

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Write what is buffered; stop (keeping the rest) while the database is away."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        self._report_shed()
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))]
            unwritten = await self._write(batch)
            if unwritten:
                self._buffer.extendleft(reversed(unwritten))
                log.warning(
                    "audit events kept for later (%d buffered): the database is unavailable",
                    len(self._buffer),
                )
                return

    async def _write(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write `batch`, isolating a row that cannot be written (not its neighbours);
        returns the rows left unwritten because the database went away."""
        parts = [batch]
        while parts:
            part = parts.pop(0)
            try:
                await self._store.write_events(part)
            except Exception as err:
                if is_unavailable(err):
                    return [row for rest in (part, *parts) for row in rest]
                if len(part) == 1:
                    self.rejected += 1
                    log.error("an audit event could not be written and was dropped: %r", part[0])
                    continue
                middle = len(part) // 2
                parts[:0] = [part[:middle], part[middle:]]
        return []

    def _report_shed(self) -> None:
        if self.shed > self._shed_reported:
            log.error(
                "audit buffer full (%d events): %d events shed since the last report",
                self._max_buffered,
                self.shed - self._shed_reported,
            )
            self._shed_reported = self.shed

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing audit events failed; retrying")

    async def close(self) -> None:
        """Last flush at shutdown; says how many events could not be written."""
        await self.flush()
        if self._buffer:
            log.error("%d audit events were not written before shutdown", len(self._buffer))
