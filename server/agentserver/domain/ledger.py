"""The token ledger: wallets, append-only entries, two-phase reservations, fees.

Rules (see also the TokenService comments in protos/):

* Available = total (purchased) - used - reserved, and it never goes below zero.
  A debit is one conditional write under the wallet's row lock; the database
  also refuses an overdrawn row (CHECK constraint), whatever the concurrency and
  however many server processes share it.
* Spending for a location uses the location's own wallet if it has one, else the
  tenant's wallet. Purchases name the wallet explicitly.
* Every write carries a `request_id`, unique per tenant across all writes: a
  repeat returns the first result and changes nothing; the same id with other
  content raises `Conflict`.
* Concurrent debits of one wallet are coalesced into one transaction (one
  UPDATE by the sum, one multi-row INSERT), which is what lets a hot wallet pass
  a thousand charges a second; each debit still succeeds or fails on its own,
  in arrival order.
* Monthly fee: charged once per tenant per calendar month against the tenant
  wallet, keyed `monthly-fee:YYYY-MM`. What the balance cannot cover is kept as
  arrears, never as a negative balance; the next purchase settles arrears first.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.batching import Coalescer
from agentserver.domain.clock import Clock
from agentserver.domain.costs import CostTable, OperationType
from agentserver.domain.errors import DomainError, FieldViolation, InvalidArgument
from agentserver.domain.identity import (
    MAX_LOCATION_ID,
    MAX_TENANT_ID,
    MAX_USER_ID,
    check_lengths,
)
from agentserver.domain.paging import PageRequest
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

MAX_AMOUNT = 1_000_000_000
MAX_REQUEST_ID = 128
DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
MAX_RESERVATION_TTL = timedelta(days=7)
MAX_SUMMARY_DAYS = 366
MAX_SESSION_ID = 64
MAX_METADATA_BYTES = 16_384
# Operation types the server charges itself; callers may not.
SERVER_ONLY = frozenset({OperationType.PURCHASE, OperationType.MONTHLY_FEE})


class EntryKind(enum.StrEnum):
    PURCHASE = "purchase"
    CHARGE = "charge"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"


class ReservationState(enum.StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Balance:
    tenant_id: str
    location_id: str
    total: int
    used: int
    reserved: int
    arrears: int
    low_balance_threshold: int
    last_purchase_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def available(self) -> int:
        return self.total - self.used - self.reserved


@dataclass(frozen=True)
class Attribution:
    """Who and what a usage entry is for, beside its amounts: the user who asked, the
    conversation, and free metadata (a JSON object). A reservation's captures,
    releases and expiry carry its attribution."""

    user_id: str = ""
    session_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.user_id or self.session_id or self.metadata)

    def metadata_json(self) -> str:
        """The metadata as canonical JSON text (sorted keys)."""
        return canonical_json(self.metadata) if self.metadata else "{}"

    def validate(self) -> list[FieldViolation]:
        violations: list[FieldViolation] = []
        try:
            check_lengths(
                ("user_id", self.user_id, MAX_USER_ID),
                ("session_id", self.session_id, MAX_SESSION_ID),
            )
        except InvalidArgument as e:
            violations.extend(e.violations)
        if len(self.metadata_json().encode()) > MAX_METADATA_BYTES:
            violations.extend(
                InvalidArgument.field(
                    "metadata", f"must be at most {MAX_METADATA_BYTES:,} bytes as JSON"
                ).violations
            )
        return violations


NOBODY = Attribution()


# Built once: `json.dumps` with any option builds a new encoder on every call, which
# cost more than the encoding itself (three of them per debit).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def canonical_json(value: Any) -> str:
    """`value` as JSON text with sorted keys and no spaces (what
    `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives)."""
    return _CANONICAL.encode(value)


@dataclass(frozen=True)
class Entry:
    id: str
    tenant_id: str
    location_id: str
    wallet_location_id: str
    operation_type: OperationType
    kind: EntryKind
    tokens: int
    description: str
    request_id: str
    reservation_id: str | None
    total_after: int
    used_after: int
    reserved_after: int
    created_at: datetime
    # The first result of this request_id, returned again (nothing was written now);
    # not part of what the entry is, so a replay still equals the first result.
    replayed: bool = field(default=False, compare=False)
    attribution: Attribution = NOBODY

    @property
    def available_after(self) -> int:
        return self.total_after - self.used_after - self.reserved_after


@dataclass(frozen=True)
class Reservation:
    id: str
    tenant_id: str
    location_id: str
    wallet_location_id: str
    operation_type: OperationType
    amount: int
    captured_amount: int
    state: ReservationState
    description: str
    expires_at: datetime
    created_at: datetime
    ended_at: datetime | None
    attribution: Attribution = NOBODY


@dataclass(frozen=True)
class Debit:
    """A charge (spent now) or a reservation (held until capture, release or expiry)."""

    tenant_id: str
    location_id: str
    operation_type: OperationType
    amount: int
    request_id: str
    description: str = ""
    kind: EntryKind = EntryKind.CHARGE
    ttl: timedelta | None = None
    # A reservation's id chosen by the caller, who must name it before the write
    # (Process stores the action with it in the same statement); None: the store's.
    reservation_id: str | None = None
    attribution: Attribution = NOBODY

    def request_hash(self, *, with_attribution: bool = True) -> str:
        """The fingerprint of the debit's content. The attribution counts when given;
        `with_attribution=False` gives the fingerprint an entry written before entries
        had attributions carries (the kernel lets such an entry replay this debit)."""
        about = self.attribution if with_attribution else NOBODY
        return request_hash(
            self.kind.value,
            self.location_id,
            self.operation_type.value,
            self.amount,
            self.description,
            self.ttl.total_seconds() if self.ttl else None,
            *((about.user_id, about.session_id, about.metadata_json()) if about else ()),
        )


@dataclass(frozen=True)
class UsageFilter:
    """Which of a tenant's usage entries to list; an empty field admits any."""

    location_id: str = ""  # entries made for this location, whichever wallet paid
    wallet_location_id: str | None = None  # entries of one wallet ('' the tenant's)
    user_id: str = ""
    operation_types: frozenset[OperationType] = frozenset()
    start: datetime | None = None  # written at or after
    end: datetime | None = None  # written before

    def validate(self) -> None:
        check_lengths(
            ("location_id", self.location_id, MAX_LOCATION_ID),
            ("wallet_location_id", self.wallet_location_id or "", MAX_LOCATION_ID),
            ("user_id", self.user_id, MAX_USER_ID),
        )
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InvalidArgument.field("end_time", "must be after start_time")

    def admits(self, entry: Entry) -> bool:
        return (
            (not self.location_id or entry.location_id == self.location_id)
            and (
                self.wallet_location_id is None
                or entry.wallet_location_id == self.wallet_location_id
            )
            and (not self.user_id or entry.attribution.user_id == self.user_id)
            and (not self.operation_types or entry.operation_type in self.operation_types)
            and (self.start is None or entry.created_at >= self.start)
            and (self.end is None or entry.created_at < self.end)
        )


EVERY_ENTRY = UsageFilter()


@dataclass(frozen=True)
class DebitResult:
    entry: Entry
    reservation: Reservation | None = None


@dataclass(frozen=True)
class EndRequest:
    """Capture (amount None = all) or release of one reservation."""

    reservation_id: str
    request_id: str
    capture: bool
    amount: int | None = None


@dataclass(frozen=True)
class MonthlyFeeResult:
    tenant_id: str
    month: str
    charged: int
    arrears: int
    already_charged: bool


def request_hash(*parts: object) -> str:
    """A fingerprint of a write's content, to tell a replay from a reused key."""
    return hashlib.sha256(_COMPACT.encode(parts).encode()).hexdigest()


def month_key(when: datetime) -> str:
    return f"{when.year:04d}-{when.month:02d}"


def fit_debits(available: int, amounts: Sequence[int]) -> list[int | None]:
    """Accept debits in arrival order while they fit; returns each accepted debit's
    available-after, or None for a refused one. A refused debit does not block
    a later smaller one."""
    out: list[int | None] = []
    for amount in amounts:
        if amount <= available:
            available -= amount
            out.append(available)
        else:
            out.append(None)
    return out


# --- validation -------------------------------------------------------------


def validate_amount(amount: int, field_name: str = "amount", *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if amount < low or amount > MAX_AMOUNT:
        raise InvalidArgument.field(field_name, f"must be between {low} and {MAX_AMOUNT:,} tokens")


def validate_request_id(request_id: str) -> None:
    if not request_id:
        raise InvalidArgument.field("request_id", "is required (an idempotency key)")
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")


def validate_tenant(tenant_id: str, location_id: str = "") -> None:
    if not tenant_id:
        raise InvalidArgument.field("tenant_id", "is required")
    check_lengths(
        ("tenant_id", tenant_id, MAX_TENANT_ID), ("location_id", location_id, MAX_LOCATION_ID)
    )


def validate_debit(debit: Debit) -> None:
    violations: list[FieldViolation] = []
    checks: list[Callable[[], None]] = [
        lambda: validate_tenant(debit.tenant_id, debit.location_id),
        lambda: validate_amount(debit.amount),
        lambda: validate_request_id(debit.request_id),
    ]
    for check in checks:
        try:
            check()
        except InvalidArgument as e:
            violations.extend(e.violations)
    if debit.operation_type in SERVER_ONLY:
        violations.extend(
            InvalidArgument.field(
                "operation_type", f"{debit.operation_type.value} is charged by the server only"
            ).violations
        )
    violations.extend(debit.attribution.validate())
    if debit.ttl is not None and not (timedelta(seconds=1) <= debit.ttl <= MAX_RESERVATION_TTL):
        violations.extend(InvalidArgument.field("ttl", "must be between 1 s and 7 days").violations)
    if violations:
        raise InvalidArgument(violations)


# --- ports ------------------------------------------------------------------


class LedgerStore(Protocol):
    """Persistence of the ledger. Each method is one transaction."""

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]: ...

    async def add_tokens(
        self,
        tenant_id: str,
        location_id: str,
        amount: int,
        request_id: str,
        description: str,
        now: datetime,
    ) -> tuple[Entry, Balance]: ...

    async def capture(
        self,
        tenant_id: str,
        reservation_id: str,
        amount: int | None,
        request_id: str,
        now: datetime,
    ) -> tuple[Reservation, Entry]: ...

    async def release(
        self,
        tenant_id: str,
        reservation_id: str,
        request_id: str,
        now: datetime,
        *,
        expired: bool = False,
    ) -> tuple[Reservation, Entry]: ...

    async def end_reservations(
        self, tenant_id: str, requests: Sequence[EndRequest], now: datetime
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        """Capture or release several reservations of a tenant in one transaction."""
        ...

    async def balance(self, tenant_id: str, location_id: str) -> Balance: ...

    async def list_entries(
        self, tenant_id: str, which: UsageFilter, page: PageRequest
    ) -> tuple[list[Entry], str]: ...

    async def get_reservation(self, tenant_id: str, reservation_id: str) -> Reservation: ...

    async def extend_reservation(
        self, tenant_id: str, reservation_id: str, until: datetime, now: datetime
    ) -> bool:
        """Move a pending, unexpired reservation's expiry later, to `until`; False when
        it has ended, expired or already lasts that long."""
        ...

    async def list_reservations(
        self,
        tenant_id: str,
        location_id: str,
        states: frozenset[ReservationState],
        page: PageRequest,
    ) -> tuple[list[Reservation], str]: ...

    async def spent_by_day(
        self, tenant_id: str, location_id: str, since: datetime
    ) -> list[tuple[str, str, int]]:
        """(YYYY-MM-DD in UTC, operation type, tokens) of the spending wallet's entries
        since `since`: what its used_tokens grew by, per day and operation type."""
        ...

    async def expired_reservations(self, now: datetime, limit: int) -> list[tuple[str, str]]: ...

    async def charge_monthly_fee(
        self, tenant_id: str, month: str, fee: int, now: datetime
    ) -> MonthlyFeeResult: ...

    async def tenant_ids(self) -> list[str]: ...


# --- the service ------------------------------------------------------------


@dataclass
class LedgerService:
    """Use cases of the ledger, over a LedgerStore."""

    store: LedgerStore
    clock: Clock
    costs: CostTable
    telemetry: Telemetry = NO_TELEMETRY
    # How long a group commit may wait for more calls under load (`Coalescer`).
    linger_s: float = 0.0
    _coalescer: Coalescer[tuple[str, str], Debit, DebitResult] = field(init=False)
    _ends: Coalescer[str, EndRequest, tuple[Reservation, Entry]] = field(init=False)

    def __post_init__(self) -> None:
        self._coalescer = Coalescer(
            self._apply,
            sized=lambda n: self.telemetry.batch("debits", n),
            linger_s=self.linger_s,
        )
        # Captures and releases are coalesced per tenant the same way as debits.
        self._ends = Coalescer(
            self._end,
            sized=lambda n: self.telemetry.batch("reservation_ends", n),
            linger_s=self.linger_s,
        )

    def _spent(self, entry: Entry) -> Entry:
        """Count the tokens a charge or capture spent (once: not for a replay)."""
        if not entry.replayed and entry.kind in (EntryKind.CHARGE, EntryKind.CAPTURE):
            self.telemetry.tokens_charged(entry.tenant_id, entry.operation_type.value, entry.tokens)
        return entry

    async def _end(
        self, tenant_id: str, requests: list[EndRequest]
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        return await self.store.end_reservations(tenant_id, requests, self.clock.now())

    async def _apply(
        self, key: tuple[str, str], debits: list[Debit]
    ) -> list[DebitResult | DomainError]:
        return await self.store.apply_debits(key[0], key[1], debits, self.clock.now())

    async def charge(self, debit: Debit) -> Entry:
        """Spend tokens now. Raises InsufficientTokens (nothing changes) when they don't fit."""
        validate_debit(debit)
        with self.telemetry.span("ledger.charge", {"operation_type": debit.operation_type.value}):
            result = await self._coalescer.submit((debit.tenant_id, debit.location_id), debit)
        return self._spent(result.entry)

    async def reserve(self, debit: Debit) -> Reservation:
        """Hold tokens until capture, release or expiry."""
        debit = dataclasses.replace(debit, kind=EntryKind.RESERVE)
        validate_debit(debit)
        with self.telemetry.span("ledger.reserve", {"operation_type": debit.operation_type.value}):
            result = await self._coalescer.submit((debit.tenant_id, debit.location_id), debit)
        assert result.reservation is not None
        return result.reservation

    async def capture(
        self, tenant_id: str, reservation_id: str, amount: int | None, request_id: str
    ) -> tuple[Reservation, Entry]:
        validate_tenant(tenant_id)
        if not reservation_id:
            raise InvalidArgument.field("reservation_id", "is required")
        if amount is not None:
            validate_amount(amount, allow_zero=True)
        validate_request_id(request_id)
        with self.telemetry.span("ledger.capture"):
            reservation, entry = await self._ends.submit(
                tenant_id, EndRequest(reservation_id, request_id, capture=True, amount=amount)
            )
        return reservation, self._spent(entry)

    async def release(
        self, tenant_id: str, reservation_id: str, request_id: str
    ) -> tuple[Reservation, Entry]:
        validate_tenant(tenant_id)
        if not reservation_id:
            raise InvalidArgument.field("reservation_id", "is required")
        validate_request_id(request_id)
        with self.telemetry.span("ledger.release"):
            return await self._ends.submit(
                tenant_id, EndRequest(reservation_id, request_id, capture=False)
            )

    async def reservation_state(self, tenant_id: str, reservation_id: str) -> str:
        return (await self.store.get_reservation(tenant_id, reservation_id)).state.value

    async def hold_longer(self, tenant_id: str, reservation_id: str, ttl: timedelta) -> bool:
        """Keep a pending reservation until at least `ttl` from now (never shorter than
        it was); True when its expiry moved."""
        now = self.clock.now()
        return await self.store.extend_reservation(tenant_id, reservation_id, now + ttl, now)

    async def add_tokens(
        self, tenant_id: str, location_id: str, amount: int, request_id: str, description: str
    ) -> tuple[Entry, Balance]:
        validate_tenant(tenant_id, location_id)
        validate_amount(amount)
        validate_request_id(request_id)
        return await self.store.add_tokens(
            tenant_id, location_id, amount, request_id, description, self.clock.now()
        )

    async def balance(self, tenant_id: str, location_id: str = "") -> Balance:
        validate_tenant(tenant_id)
        return await self.store.balance(tenant_id, location_id)

    async def usage(
        self, tenant_id: str, which: UsageFilter, page: PageRequest
    ) -> tuple[list[Entry], str]:
        """The tenant's entries that `which` admits, newest first."""
        validate_tenant(tenant_id)
        which.validate()
        return await self.store.list_entries(tenant_id, which, page)

    async def reservations(
        self,
        tenant_id: str,
        location_id: str,
        states: frozenset[ReservationState],
        page: PageRequest,
    ) -> tuple[list[Reservation], str]:
        validate_tenant(tenant_id, location_id)
        return await self.store.list_reservations(tenant_id, location_id, states, page)

    async def spent_by_day(
        self, tenant_id: str, location_id: str, days: int
    ) -> list[tuple[str, OperationType, int]]:
        """Tokens spent per UTC day and operation type over the last `days` days
        (today included), oldest first; days without spending are left out."""
        validate_tenant(tenant_id, location_id)
        if not 1 <= days <= MAX_SUMMARY_DAYS:
            raise InvalidArgument.field("days", f"must be between 1 and {MAX_SUMMARY_DAYS}")
        today = self.clock.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=days - 1)
        rows = await self.store.spent_by_day(tenant_id, location_id, since)
        return [(day, OperationType(op), tokens) for day, op, tokens in sorted(rows) if tokens > 0]

    async def sweep_expired(self, limit: int = 500) -> int:
        """Release every pending reservation past its expiry; returns how many."""
        now = self.clock.now()
        done = 0
        for tenant_id, reservation_id in await self.store.expired_reservations(now, limit):
            try:
                await self.store.release(
                    tenant_id, reservation_id, f"expire:{reservation_id}", now, expired=True
                )
                done += 1
            except DomainError:
                # Captured or released meanwhile by a request or another replica.
                continue
        return done

    async def charge_monthly_fees(self) -> list[MonthlyFeeResult]:
        """Charge this calendar month's fee to every tenant that has not paid it yet."""
        now = self.clock.now()
        month = month_key(now)
        results = []
        for tenant_id in await self.store.tenant_ids():
            result = await self.store.charge_monthly_fee(
                tenant_id, month, self.costs.monthly_fee, now
            )
            if not result.already_charged:
                self.telemetry.tokens_charged(
                    tenant_id, OperationType.MONTHLY_FEE.value, result.charged
                )
            results.append(result)
        return results
