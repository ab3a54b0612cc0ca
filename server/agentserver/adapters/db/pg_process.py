"""Process's common case in one PostgreSQL statement: the tokens of a batch of
exchanges' actions held (a blind debit plan of their wallet, see pg_ledger.py) and
the exchanges stored (sessions, actions, messages), only if the plan's guards held.
Otherwise nothing is written, and Process takes the long way (hold by hold, then
the exchange)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agentserver.adapters.db.outbox import outbox_args
from agentserver.adapters.db.pg import RETRY_ALONE, PgPool
from agentserver.adapters.db.pg_agent import exchange_arrays, exchange_ctes
from agentserver.adapters.db.pg_ledger import DEBIT_CTES, DEBIT_OUTBOX, PgLedgerStore, debit_args
from agentserver.domain.conversations import Exchange
from agentserver.domain.ledger import Debit

# DEBIT_CTES take $1..$26 and the outbox $27..$33; the exchange CTEs follow and
# write only if `w` (the wallet's guarded update) matched.
_HOLD_AND_RECORD = (
    f"WITH {DEBIT_CTES}, {DEBIT_OUTBOX}, {exchange_ctes(34, 'EXISTS (SELECT 1 FROM w)')}\n"
    "SELECT count(*) AS held FROM w"
)


class PgExchangeHolder:
    """The agent's ExchangeHolder on PostgreSQL."""

    def __init__(self, pool: PgPool, ledger: PgLedgerStore) -> None:
        self._pool = pool
        self._ledger = ledger

    async def hold_and_record(
        self,
        tenant_id: str,
        location_id: str,
        batch: Sequence[tuple[Exchange, Sequence[Debit]]],
        now: datetime,
    ) -> list[bool]:
        debits = [d for _, held in batch for d in held]
        plan = await self._ledger.blind_debits(tenant_id, location_id, debits, now)
        if plan is None:
            return [False] * len(batch)  # the long way pairs up a repeated key
        try:
            rows = await self._pool.fetch(
                _HOLD_AND_RECORD,
                *debit_args(plan),
                *outbox_args(tenant_id, now, plan.outbox()),
                *exchange_arrays([exchange for exchange, _ in batch]),
            )
        except RETRY_ALONE:
            return [False] * len(batch)  # a key used before: the long way explains it
        held = bool(rows[0]["held"])
        if not held:
            self._ledger.forget(tenant_id)
        return [held] * len(batch)
