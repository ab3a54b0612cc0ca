"""An action's success settled in one PostgreSQL statement: the reservation captured,
the wallet moved, the entry appended, the action marked succeeded and the reply that
reports it rewritten, for all the concurrent successes of a tenant at once (see
`PgLedgerStore.succeed_actions`).

Besides saving round trips, this closes the window in which an action's tokens
were captured while its row still said `executing`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from agentserver.adapters.db.pg_ledger import PgLedgerStore, SuccessItem
from agentserver.domain.actions import Action, ActionState
from agentserver.domain.batching import Coalescer
from agentserver.domain.executor import Revision, Settled
from agentserver.domain.ledger import EndRequest

Item = tuple[Action, str, datetime, dict[str, Any], Revision | None]


class PgSettler:
    """The executor's Settler on PostgreSQL, coalesced per tenant."""

    def __init__(self, ledger: PgLedgerStore) -> None:
        self._ledger = ledger
        self._batches: Coalescer[str, Item, Settled | None] = Coalescer(self._settle)

    async def succeed(
        self,
        action: Action,
        capture_request_id: str,
        now: datetime,
        changes: dict[str, Any],
        revision: Revision | None = None,
    ) -> Settled | None:
        if not action.reservation_id or set(changes) - {"result"}:
            return None
        return await self._batches.submit(
            action.tenant_id, (action, capture_request_id, now, changes, revision)
        )

    async def _settle(self, tenant_id: str, items: list[Item]) -> list[Settled | None]:
        now = max(item[2] for item in items)
        # One statement may change a message once: a second revision of it waits.
        last_of: dict[str, int] = {}
        for i, item in enumerate(items):
            if item[4] is not None:
                last_of[item[4].message_id] = i
        successes = []
        for i, (action, capture_request_id, _, changes, revision) in enumerate(items):
            assert action.reservation_id is not None
            revise = revision is not None and last_of[revision.message_id] == i
            successes.append(
                SuccessItem(
                    end=EndRequest(action.reservation_id, capture_request_id, capture=True),
                    action_id=action.id,
                    result=json.dumps(changes["result"]) if "result" in changes else None,
                    message_id=revision.message_id if revise and revision else None,
                    content=revision.content if revise and revision else None,
                )
            )
        done = await self._ledger.succeed_actions(tenant_id, successes, now)
        out: list[Settled | None] = []
        for (action, _, _, changes, _), outcome in zip(items, done, strict=True):
            if outcome is None:
                out.append(None)
                continue
            advanced, revised = outcome
            succeeded = action.moved(ActionState.SUCCEEDED, now, **changes)
            out.append(Settled(succeeded if advanced else None, revised))
        return out
