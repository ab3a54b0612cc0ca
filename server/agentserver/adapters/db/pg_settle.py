"""An action's success settled in one PostgreSQL statement: the reservation captured,
the wallet moved, the entry appended, the action marked succeeded and the reply that
reports it rewritten, for all the concurrent successes of a tenant at once (see
`PgLedgerStore.succeed_actions`).

Besides saving round trips, this closes the window in which an action's tokens
were captured while its row still said `executing`."""

from __future__ import annotations

import json
from collections.abc import Sequence

from agentserver.adapters.db.pg_ledger import PgLedgerStore, SuccessItem
from agentserver.domain.actions import ActionState
from agentserver.domain.costs import OperationType
from agentserver.domain.executor import Settled, Success
from agentserver.domain.ledger import EndRequest


class PgSettler:
    """The executor's Settler on PostgreSQL: a batch of successes in one statement."""

    def __init__(self, ledger: PgLedgerStore) -> None:
        self._ledger = ledger

    async def succeed(self, tenant_id: str, batch: Sequence[Success]) -> list[Settled | None]:
        out: list[Settled | None] = [None] * len(batch)
        # Only the result can change in this statement; anything else goes the long way.
        eligible = [
            i
            for i, s in enumerate(batch)
            if s.action.reservation_id and set(s.changes) <= {"result"}
        ]
        if not eligible:
            return out
        now = max(batch[i].now for i in eligible)
        # One statement may change a message once: a second revision of it waits.
        last_of = {r.message_id: i for i in eligible if (r := batch[i].revision)}
        successes = []
        for i in eligible:
            s = batch[i]
            action = s.action
            assert action.reservation_id is not None
            revise = s.revision if s.revision and last_of[s.revision.message_id] == i else None
            successes.append(
                SuccessItem(
                    end=EndRequest(action.reservation_id, s.capture_request_id, capture=True),
                    amount=action.token_cost,
                    location_id=action.location_id,
                    operation_type=OperationType(action.operation_type or OperationType.CUSTOM),
                    action_id=action.id,
                    result=json.dumps(s.changes["result"]) if "result" in s.changes else None,
                    message_id=revise.message_id if revise else None,
                    content=revise.content if revise else None,
                )
            )
        done = await self._ledger.succeed_actions(tenant_id, successes, now)
        for i, outcome in zip(eligible, done, strict=True):
            if outcome is not None:
                advanced, revised = outcome
                moved = batch[i].action.moved(ActionState.SUCCEEDED, now, **batch[i].changes)
                out[i] = Settled(moved if advanced else None, revised)
        return out
