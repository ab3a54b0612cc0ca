"""Process's unit of work: a message's actions' tokens held and its exchange stored
(session, messages, actions), with their outbox events, all or nothing.

The domain hands over a *draft*: a function from the balance available (None:
assume everything fits) to the exchange it decides for that balance and the holds
its actions need. Concurrent Process calls for one wallet are coalesced into one
write; what a batch does not carry goes through again alone.

* Any backend (`SqlProcessWrites`): one transaction. The paying wallet is locked
  and read; each draft decides with what is available after the drafts before it;
  the kernel plans the holds (which then fit), the exchanges are inserted and the
  events written. Under the lock nothing is refused.
* PostgreSQL (`PgProcessWrites`): one statement. Every draft decides as if its
  holds fit; the kernel plans them blind and the statement writes holds, exchanges
  and events only if the wallet's guards held. When they did not (the holds do not
  fit, a threshold is crossed), the batch goes the way above, which decides again
  with the balance read under the lock. The two end alike when everything fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.agent_store import SqlAgentStore
from agentserver.adapters.db.engine import group_commit_linger_s
from agentserver.adapters.db.ledger_store import IDS, GuardFailed, SqlLedgerStore
from agentserver.adapters.db.outbox import outbox_args, outbox_ctes, write_outbox
from agentserver.adapters.db.pg import RETRY_ALONE, PgPool
from agentserver.adapters.db.pg_agent import exchange_arrays, exchange_ctes
from agentserver.adapters.db.pg_ledger import (
    DEBIT_CTES,
    DEBIT_OUTBOX,
    DEBIT_PARAMS,
    PgLedgerStore,
    debit_args,
)
from agentserver.domain.agent import Drafted
from agentserver.domain.batching import Coalescer, each_alone_on_failure
from agentserver.domain.conversations import exchange_events
from agentserver.domain.errors import Unavailable
from agentserver.domain.ledger_kernel import Fresh, plan_debits

Draft = Callable[[int | None], Drafted]
_RETRIES = 5


class SqlProcessWrites:
    """The unit of work in one SQLAlchemy transaction per batch (any backend)."""

    def __init__(self, engine: AsyncEngine, ledger: SqlLedgerStore, agent: SqlAgentStore) -> None:
        self._engine = engine
        self._ledger = ledger
        self._agent = agent
        self._batches: Coalescer[tuple[str, str], Draft, Drafted] = Coalescer(
            self._batch, linger_s=group_commit_linger_s(engine)
        )

    async def hold_and_record(self, tenant_id: str, location_id: str, draft: Draft) -> Drafted:
        return await self._batches.submit((tenant_id, location_id), draft)

    async def _batch(self, key: tuple[str, str], drafts: list[Draft]) -> list[Drafted | Exception]:
        async def write(items: list[Draft]) -> Sequence[Drafted]:
            return await self.write(key[0], key[1], items)

        return await each_alone_on_failure(write, drafts)

    async def write(
        self, tenant_id: str, location_id: str, drafts: Sequence[Draft]
    ) -> list[Drafted]:
        """Decide, hold and record `drafts` in one transaction, again if a concurrent
        writer got in the way (a new location wallet, say)."""
        for _ in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    return await self._write_on(conn, tenant_id, location_id, drafts)
            except (GuardFailed, IntegrityError) as err:
                if isinstance(err, IntegrityError) and not reused_key(err):
                    raise  # a foreign key, say: each alone shows whose
        raise Unavailable("too much contention on this wallet right now; retry")

    async def _write_on(
        self, conn: Any, tenant_id: str, location_id: str, drafts: Sequence[Draft]
    ) -> list[Drafted]:
        snap = await self._ledger.snapshot_on(conn, tenant_id, lock_wallet=location_id)
        wallet = snap.paying_wallet(location_id)
        available = wallet.columns.available if wallet and wallet.columns else 0
        drafted: list[Drafted] = []
        for draft in drafts:
            d = draft(available)
            available -= sum(h.amount for h in d.holds)
            drafted.append(d)
        holds = [h for d in drafted for h in d.holds]
        now = max(d.exchange.now for d in drafted)
        events = []
        if holds:
            plan = plan_debits(snap, location_id, holds, now, IDS)
            if not all(isinstance(o, Fresh) for o in plan.outcomes):
                raise AssertionError(f"the policy and the ledger disagree: {plan.outcomes}")
            await self._ledger.apply_on(conn, plan)
            events += plan.outbox()
        exchanges = [d.exchange for d in drafted]
        await self._agent.insert_exchanges_on(conn, exchanges)
        events += [e for ex in exchanges for e in exchange_events(ex)]
        await write_outbox(conn, tenant_id, events, now)
        return drafted


def reused_key(err: IntegrityError) -> bool:
    """A unique key was taken (23505, or SQLite's "UNIQUE constraint failed")."""
    orig = err.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "23505" if code else "UNIQUE" in str(orig)


# Exchanges with no holds: the exchanges' parameters, then the outbox's.
_EXCHANGE_PARAMS = len(exchange_arrays([]))
_RECORD = f"WITH {exchange_ctes(1, 'TRUE')}, {outbox_ctes(_EXCHANGE_PARAMS + 1, 'TRUE')} SELECT 1"
# With holds: DEBIT_CTES take the first DEBIT_PARAMS, then the outbox 7; the exchange
# CTEs follow and write only if `w` (the wallet's guarded update) matched.
_HOLD_AND_RECORD = (
    f"WITH {DEBIT_CTES}, {DEBIT_OUTBOX}, "
    f"{exchange_ctes(DEBIT_PARAMS + 8, 'EXISTS (SELECT 1 FROM w)')}\n"
    "SELECT count(*) AS held FROM w"
)


class PgProcessWrites(SqlProcessWrites):
    """The unit of work in one PostgreSQL statement per batch, when its guards hold."""

    def __init__(
        self, engine: AsyncEngine, pool: PgPool, ledger: PgLedgerStore, agent: SqlAgentStore
    ) -> None:
        super().__init__(engine, ledger, agent)
        self._pool = pool
        self._pg_ledger = ledger

    async def write(
        self, tenant_id: str, location_id: str, drafts: Sequence[Draft]
    ) -> list[Drafted]:
        drafted = [draft(None) for draft in drafts]
        if await self._blind(tenant_id, location_id, drafted):
            return drafted
        return await super().write(tenant_id, location_id, drafts)

    async def _blind(self, tenant_id: str, location_id: str, drafted: Sequence[Drafted]) -> bool:
        """Write `drafted` in one statement as decided blind; False when nothing was
        written (a guard or a used key refused it)."""
        exchanges = [d.exchange for d in drafted]
        events = [e for ex in exchanges for e in exchange_events(ex)]
        now = max(ex.now for ex in exchanges)
        holds = [h for d in drafted for h in d.holds]
        if not holds:
            await self._pool.execute(
                _RECORD, *exchange_arrays(exchanges), *outbox_args(tenant_id, now, events)
            )
            return True
        plan = await self._pg_ledger.blind_debits(tenant_id, location_id, holds, now)
        if plan is None:
            return False
        try:
            rows = await self._pool.fetch(
                _HOLD_AND_RECORD,
                *debit_args(plan),
                *outbox_args(tenant_id, now, plan.outbox() + events),
                *exchange_arrays(exchanges),
            )
        except RETRY_ALONE:
            return False
        if not rows[0]["held"]:
            self._pg_ledger.forget(tenant_id)
            return False
        return True
