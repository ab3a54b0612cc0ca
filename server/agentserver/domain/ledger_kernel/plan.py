"""A plan: what a store must write, the guards it writes under, and what each request gets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    Conflict,
    DomainError,
)
from agentserver.domain.events import (
    LEDGER_ENTRY,
    LOW_BALANCE,
    DomainEvent,
)
from agentserver.domain.ledger import (
    NOBODY,
    Attribution,
    Entry,
    EntryKind,
    Reservation,
)
from agentserver.domain.ledger_kernel.state import (
    ZERO,
    Columns,
    Delta,
    Prior,
    Wallet,
)


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
    attribution: Attribution = NOBODY

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
            attribution=self.attribution,
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


def conflict(request_id: str) -> Conflict:
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


def offsets_after(steps: Sequence[tuple[str, Delta]]) -> list[Delta]:
    """For each (wallet, delta) in order: what the ones after it add to its wallet."""
    running: dict[str, Delta] = {}
    out: list[Delta] = []
    for wallet_id, delta in reversed(steps):
        later = running.get(wallet_id, ZERO)
        out.append(later)
        running[wallet_id] = later + delta
    out.reverse()
    return out


def entries_with_later(entries: list[PlannedEntry]) -> list[PlannedEntry]:
    """Fill each entry's `later`: what the entries after it add to its wallet."""
    laters = offsets_after([(e.wallet_id, e.delta) for e in entries])
    return [replace(e, later=later) for e, later in zip(entries, laters, strict=True)]


def low_balance(plan: Plan, wallet: Wallet, delta: Delta) -> None:
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


def settle_duplicates(
    requests: Sequence[str], hashes: Sequence[str], first: Mapping[str, int], plan: Plan
) -> None:
    """A request id repeated inside one batch gets the first one's outcome, or a
    conflict when its content differs."""
    for i, request_id in enumerate(requests):
        if plan.outcomes[i] is UNDECIDED:
            j = first[request_id]
            plan.outcomes[i] = plan.outcomes[j] if hashes[i] == hashes[j] else conflict(request_id)


UNDECIDED: DomainError = DomainError("pending")  # a placeholder, never returned
