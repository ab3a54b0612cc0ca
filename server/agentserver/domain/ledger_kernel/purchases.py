"""Purchases (settling arrears first) and the monthly fee."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    NotFound,
)
from agentserver.domain.events import (
    FEE_CHARGED,
    TOKENS_ADDED,
    DomainEvent,
)
from agentserver.domain.ledger import (
    EntryKind,
    request_hash,
)
from agentserver.domain.ledger_kernel.plan import (
    UNDECIDED,
    Fresh,
    Move,
    Plan,
    PlannedEntry,
    Replay,
    conflict,
    entries_with_later,
    low_balance,
)
from agentserver.domain.ledger_kernel.state import Columns, Delta, IdSource, Snapshot, Wallet


@dataclass(frozen=True)
class Purchase:
    location_id: str
    amount: int
    request_id: str
    description: str

    def request_hash(self) -> str:
        return request_hash("purchase", self.location_id, self.amount, self.description)

    @property
    def settle_request_id(self) -> str:
        return f"{self.request_id}#arrears"


def plan_purchase(snapshot: Snapshot, purchase: Purchase, now: datetime, ids: IdSource) -> Plan:
    """Tokens added to the location's own wallet (created if it has none) or the
    tenant's; arrears of that wallet are settled first from what is then available.
    Needs the wallet's columns (a full snapshot)."""
    plan = Plan(snapshot.tenant_id, now, outcomes=[UNDECIDED])
    req_hash = purchase.request_hash()
    prior = snapshot.prior.get(purchase.request_id)
    if prior is not None:
        plan.outcomes = [
            Replay(prior) if prior.request_hash == req_hash else conflict(purchase.request_id)
        ]
        return plan
    if not snapshot.tenant_exists:
        plan.outcomes = [NotFound(f"tenant {snapshot.tenant_id!r} not found")]
        return plan
    wallet = snapshot.wallet(purchase.location_id)
    create = None
    if wallet is None:
        wallet = create = Wallet(ids("wal"), snapshot.tenant_id, purchase.location_id, None)
    columns = wallet.columns or Columns(0, 0, 0, 0, 0)
    plan.wallets[wallet.id] = wallet
    bought = Delta(total=purchase.amount)
    settle = min(columns.arrears, columns.available + purchase.amount)
    entries = [
        PlannedEntry(
            id=ids("ent"),
            wallet_id=wallet.id,
            wallet_location_id=wallet.location_id,
            location_id=purchase.location_id,
            operation_type=OperationType.PURCHASE,
            kind=EntryKind.PURCHASE,
            tokens=purchase.amount,
            delta=bought,
            later=Delta(),
            description=purchase.description,
            request_id=purchase.request_id,
            request_hash=req_hash,
        )
    ]
    delta = bought
    if settle > 0:
        step = Delta(used=settle, arrears=-settle)
        delta = delta + step
        entries.append(
            PlannedEntry(
                id=ids("ent"),
                wallet_id=wallet.id,
                wallet_location_id=wallet.location_id,
                location_id=purchase.location_id,
                operation_type=OperationType.MONTHLY_FEE,
                kind=EntryKind.CHARGE,
                tokens=settle,
                delta=step,
                later=Delta(),
                description="monthly fee arrears settled from purchase",
                request_id=purchase.settle_request_id,
                request_hash=req_hash,
            )
        )
    plan.entries = entries_with_later(entries)
    plan.moves.append(Move(wallet.id, delta, need=0, create=create, purchase=True))
    plan.events.append(
        DomainEvent(
            TOKENS_ADDED,
            "wallet",
            wallet.id,
            {
                "entry_id": plan.entries[0].id,
                "location_id": purchase.location_id,
                "amount": purchase.amount,
                "arrears_settled": settle if settle > 0 else 0,
                "available": columns.available + delta.available,
            },
        )
    )
    plan.outcomes = [Fresh(0)]
    return plan


def monthly_fee_request(month: str) -> str:
    return f"monthly-fee:{month}"


def plan_monthly_fee(
    snapshot: Snapshot, month: str, fee: int, now: datetime, ids: IdSource
) -> Plan:
    """This month's fee on the tenant-wide wallet, once per month (keyed by month):
    what is available is charged, the rest kept as arrears, never a negative balance.
    Needs the wallet's columns (a full snapshot)."""
    plan = Plan(snapshot.tenant_id, now, outcomes=[UNDECIDED])
    request_id = monthly_fee_request(month)
    prior = snapshot.prior.get(request_id)
    if prior is not None:
        plan.outcomes = [Replay(prior)]
        return plan
    wallet = snapshot.wallet("")
    if wallet is None or wallet.columns is None:
        plan.outcomes = [NotFound(f"tenant {snapshot.tenant_id!r} has no token wallet")]
        return plan
    plan.wallets[wallet.id] = wallet
    charged = max(0, min(fee, wallet.columns.available))
    owed = fee - charged
    delta = Delta(used=charged, arrears=owed)
    plan.entries = [
        PlannedEntry(
            id=ids("ent"),
            wallet_id=wallet.id,
            wallet_location_id="",
            location_id="",
            operation_type=OperationType.MONTHLY_FEE,
            kind=EntryKind.CHARGE,
            tokens=charged,
            delta=delta,
            later=Delta(),
            description=f"monthly fee {month}" + (f" ({owed} tokens in arrears)" if owed else ""),
            request_id=request_id,
            request_hash=request_hash("monthly-fee", month, fee),
        )
    ]
    plan.moves.append(Move(wallet.id, delta, need=charged))
    plan.events.append(
        DomainEvent(
            FEE_CHARGED,
            "wallet",
            wallet.id,
            {"month": month, "fee": fee, "charged": charged, "arrears": owed},
        )
    )
    low_balance(plan, wallet, delta)
    plan.outcomes = [Fresh(0)]
    return plan
