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
from agentserver.adapters.db.ledger_store import SqlLedgerStore
from agentserver.domain.actions import ActionState
from agentserver.domain.conversations import Exchange
from agentserver.domain.errors import DomainError
from agentserver.domain.executor import Settled, Success
from agentserver.domain.ledger import Debit, DebitResult, EntryKind, request_hash

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
                results = await self._ledger.apply_debits_on(
                    conn, tenant_id, location_id, debits, now
                )
                if not all(_held_as_asked(r, d) for r, d in zip(results, debits, strict=True)):
                    raise _Undo  # refused, or a replay: the long way explains it
                await self._agent.insert_exchanges_on(conn, [exchange for exchange, _ in batch])
        except (_Undo, DomainError):
            return [False] * len(batch)  # does not fit whole, or no wallet: the long way
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


def _held_as_asked(result: DebitResult | DomainError, debit: Debit) -> bool:
    return (
        isinstance(result, DebitResult)
        and result.reservation is not None
        and result.reservation.id == debit.reservation_id
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
                return [await self._settle_one(conn, s) for s in batch]
        except IntegrityError:
            return [None] * len(batch)  # a reused key: the long way explains each

    async def _settle_one(self, conn: Any, s: Success) -> Settled | None:
        action, reservation_id = s.action, s.action.reservation_id
        if reservation_id is None:
            return None
        claimed = await self._ledger.claim_on(
            conn,
            action.tenant_id,
            reservation_id,
            s.capture_request_id,
            request_hash("capture", reservation_id, None),
            s.now,
            EntryKind.CAPTURE,
            None,
        )
        if claimed is None:
            return None  # ended, expired or unknown: the long way explains it
        if not await self._agent.advance_on(
            conn, action, _EXECUTING, ActionState.SUCCEEDED, s.now, s.changes
        ):
            return Settled(None)
        revised = False
        if s.revision is not None:
            rows = [(action.tenant_id, s.revision.message_id, s.revision.content)]
            revised = await self._agent.revise_on(conn, rows) == 1
        return Settled(action.moved(ActionState.SUCCEEDED, s.now, **s.changes), revised)
