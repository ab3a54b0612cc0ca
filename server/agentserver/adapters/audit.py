"""The audit trail: one event per rpc (who, what, on which tenant, outcome).

Events are buffered and written in batches (one multi-row INSERT every second or
500 events) so auditing never sits on the hot path; a crash can lose at most the
last second of audit events, never a ledger entry (the ledger is its own record).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from agentserver.domain.clock import Clock

log = logging.getLogger(__name__)


class EventWriter(Protocol):
    async def write_events(self, events: Sequence[dict[str, Any]]) -> None: ...


class BufferedAuditLog:
    def __init__(self, store: EventWriter, clock: Clock, *, max_batch: int = 500) -> None:
        self._store = store
        self._clock = clock
        self._buffer: list[dict[str, Any]] = []
        self._max_batch = max_batch

    def record(
        self,
        *,
        tenant_id: str | None,
        actor: str,
        operation: str,
        outcome: str,
        request_id: str,
    ) -> None:
        self._buffer.append(
            {
                "tenant_id": tenant_id,
                "kind": f"audit.{operation}",
                "actor": actor,
                "subject": request_id,
                "outcome": outcome,
                "payload": {},
                "created_at": self._clock.now(),
            }
        )

    async def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[: self._max_batch], self._buffer[self._max_batch :]
            try:
                await self._store.write_events(batch)
            except Exception:
                log.exception("could not write %d audit events", len(batch))

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()
