"""Reservation ends: captures, releases, expiries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agentserver.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.ledger import (
    EndRequest,
    EntryKind,
    Reservation,
    ReservationState,
    request_hash,
)
from agentserver.domain.ledger_kernel.plan import (
    UNDECIDED,
    Fresh,
    Move,
    Plan,
    PlannedEnd,
    PlannedEntry,
    Replay,
    conflict,
    entries_with_later,
    settle_duplicates,
)
from agentserver.domain.ledger_kernel.state import Delta, IdSource, Snapshot, Wallet
from agentserver.domain.values import evolve


def end_hash(req: EndRequest) -> str:
    if req.capture:
        return request_hash("capture", req.reservation_id, req.amount)
    return request_hash("release", req.reservation_id)


def expiry_request(reservation_id: str) -> EndRequest:
    """The release the sweep (or a late request) makes of an expired reservation."""
    return EndRequest(reservation_id, f"expire:{reservation_id}", capture=False)


def plan_ends(
    snapshot: Snapshot,
    requests: Sequence[EndRequest],
    now: datetime,
    ids: IdSource,
    *,
    expiring: bool = False,
) -> Plan:
    """Captures (at most the reserved amount; the rest returns) and releases, each
    reservation ended once. A request past its reservation's expiry fails, and the
    plan expires the reservation (`expiring` plans are the sweep's: releases past
    expiry, recorded as expiries)."""
    plan = Plan(snapshot.tenant_id, now, outcomes=[UNDECIDED] * len(requests))
    hashes = [end_hash(r) for r in requests]
    first: dict[str, int] = {}
    ended: dict[str, Reservation] = {}
    entries: list[PlannedEntry] = []
    deltas: dict[str, Delta] = {}
    for i, req in enumerate(requests):
        prior = snapshot.prior.get(req.request_id)
        if prior is not None:
            same = prior.request_hash == hashes[i] and prior.entry.reservation_id == (
                req.reservation_id
            )
            plan.outcomes[i] = Replay(prior) if same else conflict(req.request_id)
            continue
        if req.request_id in first:
            continue
        first[req.request_id] = i
        reservation = ended.get(req.reservation_id) or snapshot.reservations.get(req.reservation_id)
        if reservation is None:
            plan.outcomes[i] = NotFound(f"reservation {req.reservation_id!r} not found")
            continue
        if reservation.state is not ReservationState.PENDING:
            plan.outcomes[i] = FailedPrecondition(
                f"reservation {req.reservation_id} has already ended ({reservation.state.value})",
                reason="RESERVATION_ENDED",
            )
            continue
        if req.capture and req.amount is not None and req.amount > reservation.amount:
            plan.outcomes[i] = InvalidArgument.field(
                "amount", f"must be at most the reserved {reservation.amount} tokens"
            )
            continue
        late = reservation.expires_at <= now
        if expiring and not late:
            plan.outcomes[i] = FailedPrecondition(
                f"reservation {req.reservation_id} has not expired", reason="NOT_EXPIRED"
            )
            continue
        if late and not expiring:
            # Past its expiry but not swept yet: it expires now, and the request fails.
            expiry = expiry_request(reservation.id)
            if expiry.request_id not in snapshot.prior:
                ended[reservation.id] = _end(
                    plan,
                    entries,
                    deltas,
                    snapshot,
                    reservation,
                    expiry,
                    end_hash(expiry),
                    ids,
                    state=ReservationState.EXPIRED,
                )
            plan.outcomes[i] = FailedPrecondition(
                f"reservation {req.reservation_id} has expired", reason="RESERVATION_ENDED"
            )
            continue
        if req.capture:
            state = ReservationState.CAPTURED
        else:
            state = ReservationState.EXPIRED if expiring else ReservationState.RELEASED
        ended[reservation.id] = _end(
            plan, entries, deltas, snapshot, reservation, req, hashes[i], ids, state=state
        )
        plan.outcomes[i] = Fresh(len(entries) - 1, ended[reservation.id])
    plan.entries = entries_with_later(entries)
    for wallet_id, delta in deltas.items():
        plan.moves.append(Move(wallet_id, delta))
    settle_duplicates([r.request_id for r in requests], hashes, first, plan)
    return plan


def _end(
    plan: Plan,
    entries: list[PlannedEntry],
    deltas: dict[str, Delta],
    snapshot: Snapshot,
    reservation: Reservation,
    req: EndRequest,
    req_hash: str,
    ids: IdSource,
    *,
    state: ReservationState,
) -> Reservation:
    """Plan one reservation's end: its new row, its entry and its wallet's change."""
    captured = 0
    if state is ReservationState.CAPTURED:
        captured = reservation.amount if req.amount is None else req.amount
    wallet = _reservation_wallet(snapshot, reservation)
    plan.wallets[wallet.id] = wallet
    done = evolve(reservation, state=state, captured_amount=captured, ended_at=plan.now)
    plan.ends.append(
        PlannedEnd(done, wallet.id, reservation.amount, expiring=state is ReservationState.EXPIRED)
    )
    step = Delta(used=captured, reserved=-reservation.amount)
    deltas[wallet.id] = deltas.get(wallet.id, Delta()) + step
    kind = {
        ReservationState.CAPTURED: EntryKind.CAPTURE,
        ReservationState.RELEASED: EntryKind.RELEASE,
        ReservationState.EXPIRED: EntryKind.EXPIRE,
    }[state]
    entries.append(
        PlannedEntry(
            id=ids("ent"),
            wallet_id=wallet.id,
            wallet_location_id=reservation.wallet_location_id,
            location_id=reservation.location_id,
            operation_type=reservation.operation_type,
            kind=kind,
            tokens=captured if kind is EntryKind.CAPTURE else reservation.amount,
            delta=step,
            later=Delta(),
            description=reservation.description,
            request_id=req.request_id,
            request_hash=req_hash,
            reservation_id=reservation.id,
            attribution=reservation.attribution,
        )
    )
    return done


def _reservation_wallet(snapshot: Snapshot, reservation: Reservation) -> Wallet:
    """The wallet a reservation holds tokens of: the one of its wallet location."""
    wallet = snapshot.wallet(reservation.wallet_location_id)
    if wallet is None:  # wallets are never deleted; a snapshot lists all of them
        raise AssertionError(f"no wallet for reservation {reservation.id}")
    return wallet
