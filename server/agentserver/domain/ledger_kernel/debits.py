"""Charges and reservations of one wallet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from agentserver.domain.errors import (
    InsufficientTokens,
    NotFound,
)
from agentserver.domain.ledger import (
    DEFAULT_RESERVATION_TTL,
    Debit,
    EntryKind,
    Reservation,
    ReservationState,
)
from agentserver.domain.ledger_kernel.plan import (
    UNDECIDED,
    Fresh,
    Move,
    Plan,
    PlannedEntry,
    Replay,
    conflict,
    low_balance,
    offsets_after,
    settle_duplicates,
    subject,
)
from agentserver.domain.ledger_kernel.state import ZERO, Delta, IdSource, Prior, Snapshot


def plan_debits(
    snapshot: Snapshot,
    location_id: str,
    debits: Sequence[Debit],
    now: datetime,
    ids: IdSource,
) -> Plan:
    """Charges and reservations of one wallet (the one that pays for `location_id`),
    accepted in arrival order while they fit; a refused one does not block a later
    smaller one. Blind: all are accepted and the guard decides."""
    plan = Plan(snapshot.tenant_id, now, outcomes=[UNDECIDED] * len(debits))
    wallet = snapshot.paying_wallet(location_id)
    if wallet is None:
        missing = NotFound(f"tenant {snapshot.tenant_id!r} has no token wallet")
        plan.outcomes = [missing] * len(debits)
        return plan
    plan.wallets[wallet.id] = wallet
    hashes = [d.request_hash() for d in debits]
    first: dict[str, int] = {}
    fresh: list[int] = []
    for i, debit in enumerate(debits):
        prior = snapshot.prior.get(debit.request_id)
        if prior is not None:
            plan.outcomes[i] = (
                Replay(_as_debit_replay(prior, debit))
                if _same_request(prior, debit, hashes[i])
                else conflict(debit.request_id)
            )
        elif debit.request_id not in first:
            first[debit.request_id] = i
            fresh.append(i)
    available = wallet.columns.available if wallet.columns is not None else None
    accepted: list[tuple[int, Delta]] = []
    for i in fresh:
        debit = debits[i]
        if available is not None:
            if debit.amount > available:
                plan.outcomes[i] = InsufficientTokens(
                    subject(snapshot.tenant_id, wallet.location_id),
                    requested=debit.amount,
                    available=available,
                )
                continue
            available -= debit.amount
        reserving = debit.kind is EntryKind.RESERVE
        accepted.append(
            (i, Delta(reserved=debit.amount) if reserving else Delta(used=debit.amount))
        )
    if not accepted:
        settle_duplicates([d.request_id for d in debits], hashes, first, plan)
        return plan
    laters = offsets_after([(wallet.id, step) for _, step in accepted])
    delta = ZERO
    for (i, step), later in zip(accepted, laters, strict=True):
        debit = debits[i]
        delta = delta + step
        reservation = None
        if debit.kind is EntryKind.RESERVE:
            reservation = Reservation(
                id=debit.reservation_id or ids("res"),
                tenant_id=snapshot.tenant_id,
                location_id=debit.location_id,
                wallet_location_id=wallet.location_id,
                operation_type=debit.operation_type,
                amount=debit.amount,
                captured_amount=0,
                state=ReservationState.PENDING,
                description=debit.description,
                expires_at=now + (debit.ttl or DEFAULT_RESERVATION_TTL),
                created_at=now,
                ended_at=None,
                attribution=debit.attribution,
            )
            plan.reservations.append(reservation)
        plan.outcomes[i] = Fresh(len(plan.entries), reservation)
        plan.entries.append(
            PlannedEntry(
                id=ids("ent"),
                wallet_id=wallet.id,
                wallet_location_id=wallet.location_id,
                location_id=debit.location_id,
                operation_type=debit.operation_type,
                kind=EntryKind.RESERVE if reservation else EntryKind.CHARGE,
                tokens=debit.amount,
                delta=step,
                later=later,
                description=debit.description,
                request_id=debit.request_id,
                request_hash=hashes[i],
                reservation_id=reservation.id if reservation else None,
                attribution=debit.attribution,
            )
        )
    plan.moves.append(
        Move(
            wallet.id,
            delta,
            need=-delta.available,
            blind=wallet.columns is None,
            absent_location=location_id if location_id != wallet.location_id else "",
        )
    )
    low_balance(plan, wallet, delta)
    settle_duplicates([d.request_id for d in debits], hashes, first, plan)
    return plan


def _as_debit_replay(prior: Prior, debit: Debit) -> Prior:
    """A replayed reservation returns its reservation as it is now; a replayed
    charge none."""
    if debit.kind is not EntryKind.RESERVE:
        return replace(prior, reservation=None)
    return prior


def _same_request(prior: Prior, debit: Debit, digest: str) -> bool:
    """Whether `prior` was written by this debit: the same fingerprint, or one made
    before entries had attributions (the prior names no one) of the same content."""
    if prior.request_hash == digest:
        return True
    return not prior.entry.attribution and prior.request_hash == debit.request_hash(
        with_attribution=False
    )
