"""Domain events: what changed, for other systems, written in the same transaction as
the change (the outbox; see adapters/db/outbox.py) and delivered later.

Names are `<area>.<what happened>`; each has an aggregate (the thing it is about)
and a JSON payload. A store gives each a per-tenant sequence number in commit
order, so a reader resuming from the last number it saw misses nothing.

    ledger.entry            a balance changed (one per usage entry)    wallet
    ledger.tokens_added     a purchase                                 wallet
    ledger.low_balance      available tokens fell below the threshold  wallet
    ledger.fee_charged      this month's fee (and any arrears)         wallet
    action.created          an action was proposed                     action
    action.waiting          it waits for a person (who: user,          action
                            coordinator or approver)
    action.approved         a person approved it                       action
    action.rejected         a person rejected it (with the reason)     action
    action.succeeded        it ran                                     action
    action.failed           it did not run (with the error)            action
    action.expired          nobody decided in time                     action
    action.cancelled        its prerequisite did not succeed           action
    action.outcome_unknown  nobody knows whether it ran                action
    message.stored          a message joined a conversation            session
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEDGER_ENTRY = "ledger.entry"
TOKENS_ADDED = "ledger.tokens_added"
LOW_BALANCE = "ledger.low_balance"
FEE_CHARGED = "ledger.fee_charged"
ACTION_CREATED = "action.created"
ACTION_WAITING = "action.waiting"
MESSAGE_STORED = "message.stored"


@dataclass(frozen=True)
class DomainEvent:
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
