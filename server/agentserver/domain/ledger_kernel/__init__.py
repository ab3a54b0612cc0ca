"""The ledger's rules as pure functions: what a store read, and a batch, in; a plan out.

    plan_debits(snapshot, location, debits)        charges and reservations
    plan_ends(snapshot, ends)                      captures, releases, expiries
    plan_purchase(snapshot, purchase)              tokens added (arrears settled first)
    plan_monthly_fee(snapshot, month, fee)         the fee, or what fits of it, once a month

A `Snapshot` is what the store read before asking: the tenant's wallets (which exist
and, when read, their columns), what the batch's request ids already wrote, and the
reservations the batch names. A `Plan` says everything the store must write: each
wallet's move, the entries with their deltas, new and ended reservations, events (a
low balance crossed, a fee charged), and a result per request (a fresh write, a
replay, or a refusal with its reason). No I/O, no SQL, no clock: ids come from an
`IdSource` and time from the caller.

A snapshot may leave the wallets' columns unread (a *blind* snapshot: the hot path
writes in one statement without reading first). The plan then assumes every debit
fits and that no low-balance threshold is crossed, and says so in its guards.

Guards are the only rules a store applies itself, atomically with its write:

* a wallet move: at least `need` tokens are available before it; a blind move also
  must not take the wallet below its low-balance threshold from at or above it;
* a wallet chosen for a location that has none of its own: it still has none;
* a reservation end: the reservation is still pending, holds the planned amount on
  the planned wallet and, unless it is expiring, has not expired;
* an entry: its request id is unused (the unique key of the entries).

When a guard fails the state moved under the plan: the store reads a fresh, full
snapshot and asks again. A plan from a full snapshot read under the wallets' locks
never fails its guards.
"""

from agentserver.domain.ledger_kernel.debits import plan_debits
from agentserver.domain.ledger_kernel.ends import end_hash, expiry_request, plan_ends
from agentserver.domain.ledger_kernel.plan import (
    Fresh,
    Move,
    Outcome,
    Plan,
    PlannedEnd,
    PlannedEntry,
    Replay,
    crosses_threshold,
    entry_event,
    subject,
)
from agentserver.domain.ledger_kernel.purchases import (
    Purchase,
    monthly_fee_request,
    plan_monthly_fee,
    plan_purchase,
)
from agentserver.domain.ledger_kernel.results import (
    debit_results,
    end_results,
    fee_result,
    purchase_result,
)
from agentserver.domain.ledger_kernel.state import (
    Columns,
    Delta,
    IdSource,
    Prior,
    Snapshot,
    Wallet,
)

__all__ = [
    "Columns",
    "Delta",
    "Fresh",
    "IdSource",
    "Move",
    "Outcome",
    "Plan",
    "PlannedEnd",
    "PlannedEntry",
    "Prior",
    "Purchase",
    "Replay",
    "Snapshot",
    "Wallet",
    "crosses_threshold",
    "debit_results",
    "end_hash",
    "end_results",
    "entry_event",
    "expiry_request",
    "fee_result",
    "monthly_fee_request",
    "plan_debits",
    "plan_ends",
    "plan_monthly_fee",
    "plan_purchase",
    "purchase_result",
    "subject",
]
