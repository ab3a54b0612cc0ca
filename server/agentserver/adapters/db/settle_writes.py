"""The unit of work of an action's success: its reservation ended (captured, or
released when it cost nothing after all), the action moved from executing to
succeeded with its event, and the reply that reports it rewritten, together.
Concurrent successes of a tenant are batched; what a batch does not carry goes
through again alone.

* Any backend (`SqlSettler`): one transaction. The kernel plans each end from the
  reservation as read under its lock. A hold that ended meanwhile (it expired) is
  charged instead from the wallet, locked, if the tokens are there; if they are
  not, the success records why it was not charged: the send happened, and no
  balance goes below zero.
* PostgreSQL (`PgSettler`): one statement for the common case (a capture, only the
  result changing): planned from what the executor knows of each reservation and
  guarded end by end; what it could not settle goes the way above.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.agent_store import SqlAgentStore
from agentserver.adapters.db.engine import group_commit_linger_s
from agentserver.adapters.db.ledger_store import IDS, GuardFailed, SqlLedgerStore
from agentserver.adapters.db.outbox import write_outbox
from agentserver.adapters.db.pg_ledger import PgLedgerStore, SuccessItem
from agentserver.adapters.db.process_writes import reused_key
from agentserver.domain.actions import Action, ActionState, transition_events
from agentserver.domain.batching import Coalescer, each_alone_on_failure
from agentserver.domain.costs import OperationType
from agentserver.domain.errors import DomainError, Unavailable
from agentserver.domain.events import DomainEvent
from agentserver.domain.executor import Settled, Success, action_debit
from agentserver.domain.ledger import EndRequest
from agentserver.domain.ledger_kernel import Fresh, Replay, plan_debits, plan_ends
from agentserver.domain.ledger_kernel.plan import Outcome

_EXECUTING = frozenset({ActionState.EXECUTING})
_RETRIES = 5


class SqlSettler:
    """Successes in one SQLAlchemy transaction per batch (any backend)."""

    def __init__(self, engine: AsyncEngine, ledger: SqlLedgerStore, agent: SqlAgentStore) -> None:
        self._engine = engine
        self._ledger = ledger
        self._agent = agent
        self._batches: Coalescer[str, Success, Settled] = Coalescer(
            self._batch, linger_s=group_commit_linger_s(engine)
        )

    async def succeed(self, success: Success) -> Settled:
        return await self._batches.submit(success.action.tenant_id, success)

    async def _batch(self, tenant_id: str, batch: list[Success]) -> list[Settled | Exception]:
        async def settle(items: list[Success]) -> Sequence[Settled]:
            return await self.settle(tenant_id, items)

        return await each_alone_on_failure(settle, batch)

    async def settle(self, tenant_id: str, batch: Sequence[Success]) -> list[Settled]:
        now = max(s.now for s in batch)
        for attempt in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    events: list[DomainEvent] = []
                    outcomes = await self._end_all_on(
                        conn, tenant_id, batch, now, events, quick=attempt == 0
                    )
                    settled = [
                        await self._settle_on(conn, s, outcome, events)
                        for s, outcome in zip(batch, outcomes, strict=True)
                    ]
                    await write_outbox(conn, tenant_id, events, now)
                    return settled
            except (GuardFailed, IntegrityError) as err:
                if isinstance(err, IntegrityError) and not reused_key(err):
                    raise
        raise Unavailable("too much contention on this tenant's ledger right now; retry")

    async def _end_all_on(
        self,
        conn: Any,
        tenant_id: str,
        batch: Sequence[Success],
        now: datetime,
        events: list[DomainEvent],
        *,
        quick: bool,
    ) -> list[Outcome | None]:
        """The batch's reservation ends, planned and written together (a first attempt
        reads quickly, see `end_snapshot_on`): per success, its end's outcome (None
        when it holds nothing)."""
        at: list[int] = []
        ends: list[EndRequest] = []
        for i, s in enumerate(batch):
            if s.action.reservation_id:
                at.append(i)
                ends.append(EndRequest(s.action.reservation_id, s.end_request_id, s.capture))
        outcomes: list[Outcome | None] = [None] * len(batch)
        if ends:
            snap = await self._ledger.end_snapshot_on(
                conn, tenant_id, ends, quick=now if quick else None
            )
            plan = plan_ends(snap, ends, now, IDS)
            if plan.writes:  # the ends themselves, or (for a late one) its expiry
                await self._ledger.apply_on(conn, plan)
                events += plan.outbox()
            for i, outcome in zip(at, plan.outcomes, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _settle_on(
        self, conn: Any, s: Success, outcome: Outcome | None, events: list[DomainEvent]
    ) -> Settled:
        action, changes = s.action, dict(s.changes)
        # Fresh: ended now; Replay: ended before, by this same key (a retry); an
        # error: the hold had ended some other way.
        if isinstance(outcome, DomainError) and s.capture:
            note = await self._charge_instead(conn, s, events, outcome)
            if note:
                changes["result"] = {**changes.get("result", action.result), "settlement": note}
        if not await self._agent.advance_on(
            conn, action, _EXECUTING, ActionState.SUCCEEDED, s.now, changes
        ):
            return Settled(None)
        done = action.moved(ActionState.SUCCEEDED, s.now, **changes)
        events += transition_events(done)
        revised = False
        if s.revision is not None:
            rows = [(action.tenant_id, s.revision.message_id, s.revision.content)]
            revised = await self._agent.revise_on(conn, rows) == 1
        return Settled(done, revised)

    async def _charge_instead(
        self, conn: Any, s: Success, events: list[DomainEvent], why: DomainError
    ) -> str:
        """The hold ended before the success was settled: charge the action's cost
        from its wallet now. '' when charged; else why it was not."""
        action = s.action
        charge = action_debit(
            action, action.token_cost, f"action:{action.id}:charge", note="its hold had ended"
        )
        snap = await self._ledger.debit_snapshot_on(
            conn, action.tenant_id, action.location_id, [charge]
        )
        plan = plan_debits(snap, action.location_id, [charge], s.now, IDS)
        outcome = plan.outcomes[0]
        if isinstance(outcome, Fresh):
            await self._ledger.apply_on(conn, plan)
            events += plan.outbox()
            return ""
        if isinstance(outcome, Replay):
            return ""
        return f"not charged: {why.message}; {outcome.message}"


class PgSettler(SqlSettler):
    """Successes in one PostgreSQL statement per batch where the common case holds."""

    def __init__(self, engine: AsyncEngine, ledger: PgLedgerStore, agent: SqlAgentStore) -> None:
        super().__init__(engine, ledger, agent)
        self._pg_ledger = ledger

    async def settle(self, tenant_id: str, batch: Sequence[Success]) -> list[Settled]:
        out: list[Settled | None] = [None] * len(batch)
        # Only the result may change in the statement; anything else goes the other way.
        eligible = [
            i
            for i, s in enumerate(batch)
            if s.action.reservation_id and s.capture and set(s.changes) <= {"result"}
        ]
        if eligible:
            now = max(batch[i].now for i in eligible)
            # One statement may change a message once: a second revision of it waits.
            last_of = {r.message_id: i for i in eligible if (r := batch[i].revision)}
            succeeded = {i: _succeeded(batch[i], now) for i in eligible}
            items = [_item(batch[i], i, succeeded[i], last_of) for i in eligible]
            done = await self._pg_ledger.succeed_actions(tenant_id, items, now)
            for i, written in zip(eligible, done, strict=True):
                if written is not None:
                    advanced, revised = written
                    out[i] = Settled(succeeded[i] if advanced else None, revised)
        rest = [i for i, settled in enumerate(out) if settled is None]
        if rest:
            settled_rest = await super().settle(tenant_id, [batch[i] for i in rest])
            for i, settled in zip(rest, settled_rest, strict=True):
                out[i] = settled
        return [s for s in out if s is not None]


def _succeeded(s: Success, now: datetime) -> Action:
    return s.action.moved(ActionState.SUCCEEDED, now, **s.changes)


def _item(s: Success, i: int, succeeded: Action, last_of: dict[str, int]) -> SuccessItem:
    action = s.action
    assert action.reservation_id is not None
    revise = s.revision if s.revision and last_of[s.revision.message_id] == i else None
    return SuccessItem(
        end=EndRequest(action.reservation_id, s.end_request_id, capture=True),
        amount=action.token_cost,
        location_id=action.location_id,
        operation_type=OperationType(action.operation_type or OperationType.CUSTOM),
        action_id=action.id,
        result=json.dumps(s.changes["result"]) if "result" in s.changes else None,
        message_id=revise.message_id if revise else None,
        content=revise.content if revise else None,
        events=transition_events(succeeded),
    )
