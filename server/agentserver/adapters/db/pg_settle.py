"""An action's success settled in one PostgreSQL statement: the reservation captured,
the wallet moved, the entry appended and the action marked succeeded, for all the
concurrent successes of a tenant at once (see `PgLedgerStore.succeed_actions`).

Besides saving a round trip, this closes the window in which an action's tokens
were captured while its row still said `executing`."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from agentserver.adapters.db.pg_ledger import PgLedgerStore
from agentserver.domain.actions import Action, ActionState
from agentserver.domain.batching import Coalescer
from agentserver.domain.executor import Settled
from agentserver.domain.ledger import EndRequest

Item = tuple[Action, str, datetime, dict[str, Any]]


class PgSettler:
    """The executor's Settler on PostgreSQL, coalesced per tenant."""

    def __init__(self, ledger: PgLedgerStore) -> None:
        self._ledger = ledger
        self._batches: Coalescer[str, Item, Settled | None] = Coalescer(self._settle)

    async def succeed(
        self, action: Action, capture_request_id: str, now: datetime, changes: dict[str, Any]
    ) -> Settled | None:
        if not action.reservation_id or set(changes) - {"result"}:
            return None
        return await self._batches.submit(
            action.tenant_id, (action, capture_request_id, now, changes)
        )

    async def _settle(self, tenant_id: str, items: list[Item]) -> list[Settled | None]:
        now = max(item[2] for item in items)
        requests = []
        for action, capture_request_id, _, changes in items:
            assert action.reservation_id is not None
            result = json.dumps(changes["result"]) if "result" in changes else None
            requests.append(
                (
                    EndRequest(action.reservation_id, capture_request_id, capture=True),
                    action.id,
                    result,
                )
            )
        done = await self._ledger.succeed_actions(tenant_id, requests, now)
        out: list[Settled | None] = []
        for (action, _, _, changes), advanced in zip(items, done, strict=True):
            if advanced is None:
                out.append(None)
            elif advanced:
                out.append(
                    Settled(
                        replace(
                            action,
                            state=ActionState.SUCCEEDED,
                            updated_at=now,
                            version=action.version + 1,
                            **changes,
                        )
                    )
                )
            else:
                out.append(Settled(None))
        return out
