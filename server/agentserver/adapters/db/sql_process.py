"""Process's two writes as one SQLAlchemy transaction each, on any backend (the
embedded SQLite default uses them; PostgreSQL has single statements, pg_process.py
and pg_settle.py). Same contracts: all or nothing, and None/False when the caller
must take the long way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.agent_store import SqlAgentStore
from agentserver.adapters.db.ledger_store import IDS, GuardFailed, SqlLedgerStore
from agentserver.adapters.db.outbox import write_outbox
from agentserver.domain.actions import ActionState
from agentserver.domain.conversations import Exchange
from agentserver.domain.events import DomainEvent
from agentserver.domain.executor import Settled, Success
from agentserver.domain.ledger import Debit, EndRequest
from agentserver.domain.ledger_kernel import Fresh, plan_debits, plan_ends

_EXECUTING = frozenset({ActionState.EXECUTING})


class _Undo(Exception):
    """Roll the transaction back: it cannot do all of its work."""


class SqlExchangeHolder:
    """The agent's ExchangeHolder in one transaction: the holds, then the exchanges."""

    def __init__(self, engine: AsyncEngine, ledger: SqlLedgerStore, agent: SqlAgentStore) -> None:
        self._engine = engine
        self._ledger = ledger
        self._agent = agent

    async def hold_and_record(
        self,
        tenant_id: str,
        location_id: str,
        batch: Sequence[tuple[Exchange, Sequence[Debit]]],
        now: datetime,
    ) -> list[bool]:
        debits = [d for _, held in batch for d in held]
        try:
            async with self._engine.begin() as conn:
                snap = await self._ledger.debit_snapshot_on(conn, tenant_id, location_id, debits)
                plan = plan_debits(snap, location_id, debits, now, IDS)
                if not all(
                    _held_as_asked(o, d) for o, d in zip(plan.outcomes, debits, strict=True)
                ):
                    raise _Undo  # refused, a replay or no wallet: the long way explains it
                await self._ledger.apply_on(conn, plan)
                await self._agent.insert_exchanges_on(conn, [exchange for exchange, _ in batch])
                await write_outbox(conn, tenant_id, plan.outbox(), now)
        except (_Undo, GuardFailed):
            return [False] * len(batch)
        except IntegrityError as err:
            if _reused_key(err):
                return [False] * len(batch)  # the long way explains it
            raise  # a foreign key, say: the caller tries each exchange alone
        return [True] * len(batch)


def _reused_key(err: IntegrityError) -> bool:
    """A unique key was taken (23505, or SQLite's "UNIQUE constraint failed")."""
    orig = err.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "23505" if code else "UNIQUE" in str(orig)


def _held_as_asked(outcome: object, debit: Debit) -> bool:
    return (
        isinstance(outcome, Fresh)
        and outcome.reservation is not None
        and outcome.reservation.id == debit.reservation_id
    )


class SqlSettler:
    """The executor's Settler in one transaction per batch: for each success, the
    capture, the state change and the reply."""

    def __init__(self, engine: AsyncEngine, ledger: SqlLedgerStore, agent: SqlAgentStore) -> None:
        self._engine = engine
        self._ledger = ledger
        self._agent = agent

    async def succeed(self, tenant_id: str, batch: Sequence[Success]) -> list[Settled | None]:
        try:
            async with self._engine.begin() as conn:
                events: list[DomainEvent] = []
                settled = [await self._settle_one(conn, s, events) for s in batch]
                await write_outbox(conn, tenant_id, events, max(s.now for s in batch))
                return settled
        except (IntegrityError, GuardFailed):
            return [None] * len(batch)  # a reused key: the long way explains each

    async def _settle_one(self, conn: Any, s: Success, events: list[DomainEvent]) -> Settled | None:
        action, reservation_id = s.action, s.action.reservation_id
        if reservation_id is None:
            return None
        capture = EndRequest(reservation_id, s.capture_request_id, capture=True)
        snap = await self._ledger.end_snapshot_on(conn, action.tenant_id, [capture])
        plan = plan_ends(snap, [capture], s.now, IDS)
        if not isinstance(plan.outcomes[0], Fresh):
            return None  # ended, expired, unknown or replayed: the long way explains it
        await self._ledger.apply_on(conn, plan)
        events += plan.outbox()
        if not await self._agent.advance_on(
            conn, action, _EXECUTING, ActionState.SUCCEEDED, s.now, s.changes
        ):
            return Settled(None)
        revised = False
        if s.revision is not None:
            rows = [(action.tenant_id, s.revision.message_id, s.revision.content)]
            revised = await self._agent.revise_on(conn, rows) == 1
        return Settled(action.moved(ActionState.SUCCEEDED, s.now, **s.changes), revised)
