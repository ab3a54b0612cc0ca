"""Process's common case in one PostgreSQL statement: the tokens of a batch of
exchanges' actions held (one conditional update of their wallet, the reservations
and entries) and the exchanges stored (sessions, actions, messages), only if the
holds fit the wallet whole. Otherwise nothing is written, and Process takes the
long way (hold by hold, then the exchange)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agentserver.adapters.db.pg import RETRY_ALONE, PgPool
from agentserver.adapters.db.pg_agent import exchange_arrays, exchange_ctes
from agentserver.adapters.db.pg_ledger import DEBIT_CTES, DebitPlan
from agentserver.domain.conversations import Exchange
from agentserver.domain.ledger import Debit

# DEBIT_CTES take $1..$18; the exchange CTEs follow and write only if `w` (the
# wallet's conditional update) matched.
_HOLD_AND_RECORD = (
    f"WITH {DEBIT_CTES}, {exchange_ctes(19, 'EXISTS (SELECT 1 FROM w)')}\n"
    "SELECT count(*) AS held FROM w"
)


class PgExchangeHolder:
    """The agent's ExchangeHolder on PostgreSQL."""

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    async def hold_and_record(
        self,
        tenant_id: str,
        location_id: str,
        batch: Sequence[tuple[Exchange, Sequence[Debit]]],
        now: datetime,
    ) -> list[bool]:
        debits = [d for _, held in batch for d in held]
        if len({d.request_id for d in debits}) != len(debits):
            return [False] * len(batch)  # the long way pairs up a repeated key
        plan = DebitPlan.of(debits, now)
        try:
            rows = await self._pool.fetch(
                _HOLD_AND_RECORD,
                *plan.args(tenant_id, location_id, now),
                *exchange_arrays([exchange for exchange, _ in batch]),
            )
        except RETRY_ALONE:
            return [False] * len(batch)  # a key used before: the long way explains it
        return [bool(rows[0]["held"])] * len(batch)
