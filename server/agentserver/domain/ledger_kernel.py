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

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    Conflict,
    DomainError,
    FailedPrecondition,
    InsufficientTokens,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.events import (
    FEE_CHARGED,
    LEDGER_ENTRY,
    LOW_BALANCE,
    TOKENS_ADDED,
    DomainEvent,
)
from agentserver.domain.ledger import (
    DEFAULT_RESERVATION_TTL,
    Debit,
    DebitResult,
    EndRequest,
    Entry,
    EntryKind,
    MonthlyFeeResult,
    Reservation,
    ReservationState,
    request_hash,
)

# --- what a store read ------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    """A change of a wallet's four columns."""

    total: int = 0
    used: int = 0
    reserved: int = 0
    arrears: int = 0

    def __add__(self, other: Delta) -> Delta:
        return Delta(
            self.total + other.total,
            self.used + other.used,
            self.reserved + other.reserved,
            self.arrears + other.arrears,
        )

    @property
    def available(self) -> int:
        """What it does to the available tokens."""
        return self.total - self.used - self.reserved


_ZERO = Delta()


@dataclass(frozen=True)
class Columns:
    """A wallet's balance columns."""

    total: int
    used: int
    reserved: int
    arrears: int
    low_balance_threshold: int

    @property
    def available(self) -> int:
        return self.total - self.used - self.reserved

    def moved(self, delta: Delta) -> Columns:
        return replace(
            self,
            total=self.total + delta.total,
            used=self.used + delta.used,
            reserved=self.reserved + delta.reserved,
            arrears=self.arrears + delta.arrears,
        )

    def before(self, delta: Delta) -> Columns:
        """These columns as they were before `delta` was applied to them."""
        return replace(
            self,
            total=self.total - delta.total,
            used=self.used - delta.used,
            reserved=self.reserved - delta.reserved,
            arrears=self.arrears - delta.arrears,
        )


@dataclass(frozen=True)
class Wallet:
    """A wallet the tenant has: its own location ('' for the tenant-wide wallet) and,
    when the store read them, its columns."""

    id: str
    tenant_id: str
    location_id: str
    columns: Columns | None = None


@dataclass(frozen=True)
class Prior:
    """What a request id already wrote: its fingerprint, its entry (with the deltas
    it made), and the reservation it made or ended, as it is now (if any)."""

    request_hash: str
    entry: Entry
    wallet_id: str
    delta: Delta = Delta()
    arrears_after: int = 0
    reservation: Reservation | None = None


@dataclass(frozen=True)
class Snapshot:
    tenant_id: str
    wallets: tuple[Wallet, ...]  # every wallet of the tenant (none: it has no wallet)
    prior: Mapping[str, Prior] = field(default_factory=dict)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    # The reservations above were not read but expected by the caller: their ends
    # are guarded as such (the store checks state, amount, wallet and expiry).
    tenant_exists: bool = True

    @property
    def blind(self) -> bool:
        return any(w.columns is None for w in self.wallets)

    def wallet(self, location_id: str) -> Wallet | None:
        """The location's own wallet, or the tenant's for ''."""
        for w in self.wallets:
            if w.location_id == location_id:
                return w
        return None

    def paying_wallet(self, location_id: str) -> Wallet | None:
        """Which wallet pays for work at `location_id`: its own if it has one, else
        the tenant's."""
        return (self.wallet(location_id) if location_id else None) or self.wallet("")

    def wallet_by_id(self, wallet_id: str) -> Wallet | None:
        for w in self.wallets:
            if w.id == wallet_id:
                return w
        return None


class IdSource:
    """Where a plan's new ids come from (the store's `new_id`; a counter in tests)."""

    def __init__(self, new: Callable[[str], str]) -> None:
        self._new = new

    def __call__(self, prefix: str) -> str:
        return self._new(prefix)


# --- the plan ---------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """A wallet's change, applied only while its guard holds (see the module)."""

    wallet_id: str
    delta: Delta
    need: int = 0  # tokens that must be available before it
    blind: bool = False  # made without the columns: must not cross the threshold either
    absent_location: str = ""  # a location that must still have no wallet of its own
    create: Wallet | None = None  # the wallet does not exist yet: insert it first
    purchase: bool = False  # sets the wallet's last purchase time


@dataclass(frozen=True)
class PlannedEntry:
    """An entry to append. Its after-values are the wallet's final columns minus what
    the plan's later entries of the same wallet add (`later`), so a store that learns
    the final columns only from its write (RETURNING) can still fill them in."""

    id: str
    wallet_id: str
    wallet_location_id: str
    location_id: str
    operation_type: OperationType
    kind: EntryKind
    tokens: int
    delta: Delta
    later: Delta
    description: str
    request_id: str
    request_hash: str
    reservation_id: str | None = None

    def after(self, final: Columns) -> Columns:
        return final.before(self.later)

    def entry(self, tenant_id: str, final: Columns, now: datetime) -> Entry:
        later = self.later
        return Entry(
            id=self.id,
            tenant_id=tenant_id,
            location_id=self.location_id,
            wallet_location_id=self.wallet_location_id,
            operation_type=self.operation_type,
            kind=self.kind,
            tokens=self.tokens,
            description=self.description,
            request_id=self.request_id,
            reservation_id=self.reservation_id,
            total_after=final.total - later.total,
            used_after=final.used - later.used,
            reserved_after=final.reserved - later.reserved,
            created_at=now,
        )


@dataclass(frozen=True)
class PlannedEnd:
    """A reservation ending: guarded as still pending, of `amount`, on `wallet_id`,
    and (unless `expiring`) unexpired."""

    reservation: Reservation  # as it will be once ended
    wallet_id: str
    amount: int
    expiring: bool


@dataclass(frozen=True)
class Fresh:
    """A request this plan writes: its entry (index into `Plan.entries`) and the
    reservation it made or ended."""

    entry: int
    reservation: Reservation | None = None


@dataclass(frozen=True)
class Replay:
    """A request written before: the first result, unchanged."""

    prior: Prior


Outcome = Fresh | Replay | DomainError


@dataclass
class Plan:
    tenant_id: str
    now: datetime
    moves: list[Move] = field(default_factory=list)
    entries: list[PlannedEntry] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)  # new, pending
    ends: list[PlannedEnd] = field(default_factory=list)
    events: list[DomainEvent] = field(default_factory=list)  # for the outbox
    outcomes: list[Outcome] = field(default_factory=list)  # one per request, in order
    wallets: dict[str, Wallet] = field(default_factory=dict)  # every wallet it touches

    @property
    def writes(self) -> bool:
        return bool(self.entries)

    def outbox(self) -> list[DomainEvent]:
        """Everything this plan tells other systems: each entry, then the rest."""
        return [entry_event(e) for e in self.entries] + self.events

    def move(self, wallet_id: str) -> Move | None:
        for m in self.moves:
            if m.wallet_id == wallet_id:
                return m
        return None

    def entry_of(self, outcome: Fresh, finals: Mapping[str, Columns]) -> Entry:
        planned = self.entries[outcome.entry]
        return planned.entry(self.tenant_id, finals[planned.wallet_id], self.now)


def subject(tenant_id: str, location_id: str) -> str:
    """The wallet's name in refusals and events."""
    return f"tenants/{tenant_id}/wallets/{location_id or '-'}"


def crosses_threshold(before: int, after: int, threshold: int) -> bool:
    """A low balance is recorded when available tokens go from at or above the
    wallet's threshold to below it."""
    return before >= threshold > after


def _conflict(request_id: str) -> Conflict:
    return Conflict(f"request_id {request_id!r} was already used for a different request")


def entry_event(e: PlannedEntry) -> DomainEvent:
    """A balance changed: the entry as planned (its after-values are in the usage log
    under `entry_id`)."""
    return DomainEvent(
        LEDGER_ENTRY,
        "wallet",
        e.wallet_id,
        {
            "entry_id": e.id,
            "kind": e.kind.value,
            "operation_type": e.operation_type.value,
            "tokens": e.tokens,
            "location_id": e.location_id,
            "wallet_location_id": e.wallet_location_id,
            "request_id": e.request_id,
            "reservation_id": e.reservation_id,
            "delta": {
                "total": e.delta.total,
                "used": e.delta.used,
                "reserved": e.delta.reserved,
                "arrears": e.delta.arrears,
            },
        },
    )


def _laters(steps: Sequence[tuple[str, Delta]]) -> list[Delta]:
    """For each (wallet, delta) in order: what the ones after it add to its wallet."""
    running: dict[str, Delta] = {}
    out: list[Delta] = []
    for wallet_id, delta in reversed(steps):
        later = running.get(wallet_id, _ZERO)
        out.append(later)
        running[wallet_id] = later + delta
    out.reverse()
    return out


def _entries_with_later(entries: list[PlannedEntry]) -> list[PlannedEntry]:
    """Fill each entry's `later`: what the entries after it add to its wallet."""
    laters = _laters([(e.wallet_id, e.delta) for e in entries])
    return [replace(e, later=later) for e, later in zip(entries, laters, strict=True)]


def _low_balance(plan: Plan, wallet: Wallet, delta: Delta) -> None:
    if wallet.columns is None:
        return  # a blind plan: its guard refuses a crossing
    before = wallet.columns.available
    after = before + delta.available
    threshold = wallet.columns.low_balance_threshold
    if crosses_threshold(before, after, threshold):
        plan.events.append(
            DomainEvent(
                LOW_BALANCE,
                "wallet",
                wallet.id,
                {
                    "wallet": subject(wallet.tenant_id, wallet.location_id),
                    "location_id": wallet.location_id,
                    "available": after,
                    "threshold": threshold,
                },
            )
        )


def _settle_duplicates(
    requests: Sequence[str], hashes: Sequence[str], first: Mapping[str, int], plan: Plan
) -> None:
    """A request id repeated inside one batch gets the first one's outcome, or a
    conflict when its content differs."""
    for i, request_id in enumerate(requests):
        if plan.outcomes[i] is _PENDING:
            j = first[request_id]
            plan.outcomes[i] = plan.outcomes[j] if hashes[i] == hashes[j] else _conflict(request_id)


_PENDING: DomainError = DomainError("pending")  # a placeholder, never returned


# --- debits -----------------------------------------------------------------


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
    plan = Plan(snapshot.tenant_id, now, outcomes=[_PENDING] * len(debits))
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
                if prior.request_hash == hashes[i]
                else _conflict(debit.request_id)
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
        _settle_duplicates([d.request_id for d in debits], hashes, first, plan)
        return plan
    laters = _laters([(wallet.id, step) for _, step in accepted])
    delta = _ZERO
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
    _low_balance(plan, wallet, delta)
    _settle_duplicates([d.request_id for d in debits], hashes, first, plan)
    return plan


def _as_debit_replay(prior: Prior, debit: Debit) -> Prior:
    """A replayed reservation returns its reservation as it is now; a replayed
    charge none."""
    if debit.kind is not EntryKind.RESERVE:
        return replace(prior, reservation=None)
    return prior


# --- reservation ends ---------------------------------------------------------


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
    plan = Plan(snapshot.tenant_id, now, outcomes=[_PENDING] * len(requests))
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
            plan.outcomes[i] = Replay(prior) if same else _conflict(req.request_id)
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
    plan.entries = _entries_with_later(entries)
    for wallet_id, delta in deltas.items():
        plan.moves.append(Move(wallet_id, delta))
    _settle_duplicates([r.request_id for r in requests], hashes, first, plan)
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
    done = replace(reservation, state=state, captured_amount=captured, ended_at=plan.now)
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
        )
    )
    return done


def _reservation_wallet(snapshot: Snapshot, reservation: Reservation) -> Wallet:
    """The wallet a reservation holds tokens of: the one of its wallet location."""
    wallet = snapshot.wallet(reservation.wallet_location_id)
    if wallet is None:  # wallets are never deleted; a snapshot lists all of them
        raise AssertionError(f"no wallet for reservation {reservation.id}")
    return wallet


# --- purchases and the monthly fee --------------------------------------------


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
    plan = Plan(snapshot.tenant_id, now, outcomes=[_PENDING])
    req_hash = purchase.request_hash()
    prior = snapshot.prior.get(purchase.request_id)
    if prior is not None:
        plan.outcomes = [
            Replay(prior) if prior.request_hash == req_hash else _conflict(purchase.request_id)
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
    plan.entries = _entries_with_later(entries)
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
    plan = Plan(snapshot.tenant_id, now, outcomes=[_PENDING])
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
    _low_balance(plan, wallet, delta)
    plan.outcomes = [Fresh(0)]
    return plan


# --- what callers get back --------------------------------------------------------


def debit_results(plan: Plan, finals: Mapping[str, Columns]) -> list[DebitResult | DomainError]:
    """Each debit's result, once the plan is written and its wallets' final columns
    are known."""
    out: list[DebitResult | DomainError] = []
    for outcome in plan.outcomes:
        if isinstance(outcome, Fresh):
            out.append(DebitResult(plan.entry_of(outcome, finals), outcome.reservation))
        elif isinstance(outcome, Replay):
            out.append(DebitResult(outcome.prior.entry, outcome.prior.reservation))
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
            out.append((outcome.prior.reservation, outcome.prior.entry))
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
