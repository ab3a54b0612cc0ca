"""What callers get back once a plan is written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from agentserver.domain.errors import (
    DomainError,
)
from agentserver.domain.ledger import (
    DebitResult,
    Entry,
    MonthlyFeeResult,
    Reservation,
)
from agentserver.domain.ledger_kernel.plan import Fresh, Plan, Replay
from agentserver.domain.ledger_kernel.purchases import Purchase
from agentserver.domain.ledger_kernel.state import Columns, Snapshot


def debit_results(plan: Plan, finals: Mapping[str, Columns]) -> list[DebitResult | DomainError]:
    """Each debit's result, once the plan is written and its wallets' final columns
    are known."""
    out: list[DebitResult | DomainError] = []
    for outcome in plan.outcomes:
        if isinstance(outcome, Fresh):
            out.append(DebitResult(plan.entry_of(outcome, finals), outcome.reservation))
        elif isinstance(outcome, Replay):
            first = replace(outcome.prior.entry, replayed=True)
            out.append(DebitResult(first, outcome.prior.reservation))
        else:
            out.append(outcome)
    return out


def end_results(
    plan: Plan, finals: Mapping[str, Columns]
) -> list[tuple[Reservation, Entry] | DomainError]:
    """Each end's result: the reservation as ended and its entry (a replay: the
    reservation as it is now and the first entry)."""
    out: list[tuple[Reservation, Entry] | DomainError] = []
    for outcome in plan.outcomes:
        if isinstance(outcome, Fresh):
            assert outcome.reservation is not None
            out.append((outcome.reservation, plan.entry_of(outcome, finals)))
        elif isinstance(outcome, Replay):
            assert outcome.prior.reservation is not None
            out.append((outcome.prior.reservation, replace(outcome.prior.entry, replayed=True)))
        else:
            out.append(outcome)
    return out


def fee_result(plan: Plan, month: str) -> MonthlyFeeResult:
    """What charging this month's fee did (or had done, if charged before)."""
    (outcome,) = plan.outcomes
    if isinstance(outcome, Fresh):
        planned = plan.entries[outcome.entry]
        return MonthlyFeeResult(
            plan.tenant_id, month, planned.tokens, planned.delta.arrears, already_charged=False
        )
    if isinstance(outcome, Replay):
        prior = outcome.prior
        return MonthlyFeeResult(
            plan.tenant_id, month, prior.entry.tokens, prior.delta.arrears, already_charged=True
        )
    raise outcome


def purchase_result(
    plan: Plan, snapshot: Snapshot, finals: Mapping[str, Columns], purchase: Purchase
) -> tuple[Entry, Columns]:
    """The purchase's entry and its wallet's columns right after it (and after any
    arrears it settled): as written now, or as first written for a replay."""
    (outcome,) = plan.outcomes
    if isinstance(outcome, Fresh):
        planned = plan.entries[outcome.entry]
        final = finals[planned.wallet_id]
        return planned.entry(plan.tenant_id, final, plan.now), final
    if isinstance(outcome, Replay):
        first = outcome.prior
        last = snapshot.prior.get(purchase.settle_request_id, first)
        wallet = snapshot.wallet_by_id(first.wallet_id)
        threshold = wallet.columns.low_balance_threshold if wallet and wallet.columns else 0
        after = Columns(
            last.entry.total_after,
            last.entry.used_after,
            last.entry.reserved_after,
            last.arrears_after,
            threshold,
        )
        return first.entry, after
    raise outcome
