"""Domain events: what changed, for other systems, written in the same transaction as
the change (the outbox; see adapters/db/outbox.py) and delivered later.

Names are `<area>.<what happened>`; each has an aggregate (the thing it is about)
and a JSON payload. A store gives each a per-tenant sequence number in commit
order, so a reader resuming from the last number it saw misses nothing.

    ledger.entry            a balance changed (one per usage entry)    wallet
    ledger.tokens_added     a purchase                                 wallet
    ledger.low_balance      available tokens fell below the threshold  wallet
    ledger.fee_charged      this month's fee (and any arrears)         wallet
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEDGER_ENTRY = "ledger.entry"
TOKENS_ADDED = "ledger.tokens_added"
LOW_BALANCE = "ledger.low_balance"
FEE_CHARGED = "ledger.fee_charged"


@dataclass(frozen=True)
class DomainEvent:
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
