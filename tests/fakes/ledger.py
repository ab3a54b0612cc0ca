"""The ledger store in memory: the reference applier of the kernel's plans.

It reads a snapshot (full, or blind when asked), asks the kernel for a plan, checks
every guard the plan carries and applies it all or nothing, exactly as the SQL
stores must. Unit tests of the ledger service, the executor and the agent use it
instead of a database; the property tests use it to check the kernel's invariants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agentserver.domain.errors import DomainError, NotFound
from agentserver.domain.ledger import (
    Balance,
    Debit,
    DebitResult,
    EndRequest,
    Entry,
    MonthlyFeeResult,
    Reservation,
    ReservationState,
    UsageFilter,
)
from agentserver.domain.ledger_kernel import (
    Columns,
    Delta,
    IdSource,
    Plan,
    Prior,
    Purchase,
    Snapshot,
    Wallet,
    crosses_threshold,
    debit_results,
    end_results,
    expiry_request,
    fee_result,
    monthly_fee_request,
    plan_debits,
    plan_ends,
    plan_monthly_fee,
    plan_purchase,
    purchase_result,
)
from agentserver.domain.paging import PageRequest, encode_token


class GuardFailed(Exception):
    """The state moved under a plan: nothing was written."""


@dataclass
class _Wallet:
    id: str
    tenant_id: str
    location_id: str
    columns: Columns
    created_at: datetime
    updated_at: datetime
    last_purchase_at: datetime | None = None


@dataclass
class _Entry:
    entry: Entry
    wallet_id: str
    request_hash: str
    delta: Delta
    arrears_after: int


@dataclass
class MemoryLedger:
    """A LedgerStore over dicts. `blind=True` makes debits plan without reading the
    wallet first (as the PostgreSQL hot path does), falling back to a full snapshot
    when a guard fails."""

    low_balance_threshold: int = 50
    blind: bool = False
    tenants: set[str] = field(default_factory=set)
    wallets: dict[str, _Wallet] = field(default_factory=dict)
    entries: list[_Entry] = field(default_factory=list)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    guard_failures: int = 0
    _count: int = 0

    # -- set-up ------------------------------------------------------------------

    def create_tenant(self, tenant_id: str, now: datetime) -> None:
        self.tenants.add(tenant_id)
        wallet_id = self._id("wal")
        self.wallets[wallet_id] = _Wallet(
            wallet_id, tenant_id, "", Columns(0, 0, 0, 0, self.low_balance_threshold), now, now
        )

    def _id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count:08d}"

    @property
    def ids(self) -> IdSource:
        return IdSource(self._id)

    # -- snapshots -----------------------------------------------------------------

    def snapshot(
        self,
        tenant_id: str,
        request_ids: Sequence[str] = (),
        reservation_ids: Sequence[str] = (),
        *,
        blind: bool = False,
    ) -> Snapshot:
        wallets = tuple(
            Wallet(w.id, w.tenant_id, w.location_id, None if blind else w.columns)
            for w in self.wallets.values()
            if w.tenant_id == tenant_id
        )
        prior = {}
        if not blind:
            wanted = set(request_ids)
            for e in self.entries:
                if e.entry.tenant_id == tenant_id and e.entry.request_id in wanted:
                    reservation = None
                    if e.entry.reservation_id in self.reservations:
                        reservation = self.reservations[e.entry.reservation_id]
                    prior[e.entry.request_id] = Prior(
                        e.request_hash,
                        e.entry,
                        e.wallet_id,
                        e.delta,
                        e.arrears_after,
                        reservation,
                    )
        reservations = {
            rid: self.reservations[rid]
            for rid in reservation_ids
            if rid in self.reservations and self.reservations[rid].tenant_id == tenant_id
        }
        return Snapshot(
            tenant_id, wallets, prior, reservations, tenant_exists=tenant_id in self.tenants
        )

    # -- the applier ---------------------------------------------------------------

    def apply(self, plan: Plan) -> dict[str, Columns]:
        """Check every guard, then write everything; the wallets' final columns."""
        finals: dict[str, Columns] = {}
        for move in plan.moves:
            if move.create is not None:
                if any(
                    w.tenant_id == plan.tenant_id and w.location_id == move.create.location_id
                    for w in self.wallets.values()
                ):
                    raise GuardFailed("the wallet was created meanwhile")
                continue
            w = self.wallets[move.wallet_id]
            available = w.columns.available
            if available < move.need:
                raise GuardFailed("not enough available")
            if move.blind and crosses_threshold(
                available, available + move.delta.available, w.columns.low_balance_threshold
            ):
                raise GuardFailed("a blind plan would cross the threshold")
            if move.absent_location and any(
                o.tenant_id == plan.tenant_id and o.location_id == move.absent_location
                for o in self.wallets.values()
            ):
                raise GuardFailed("the location has a wallet of its own now")
        for end in plan.ends:
            current = self.reservations.get(end.reservation.id)
            if (
                current is None
                or current.state is not ReservationState.PENDING
                or current.amount != end.amount
                or self._wallet_of(current) != end.wallet_id
                or (not end.expiring and current.expires_at <= plan.now)
            ):
                raise GuardFailed("the reservation changed")
        used = {(e.entry.tenant_id, e.entry.request_id) for e in self.entries}
        if any((plan.tenant_id, e.request_id) in used for e in plan.entries):
            raise GuardFailed("a request id was used meanwhile")
        # Every guard holds: write.
        for move in plan.moves:
            if move.create is not None:
                self.wallets[move.wallet_id] = _Wallet(
                    move.wallet_id,
                    plan.tenant_id,
                    move.create.location_id,
                    Columns(0, 0, 0, 0, self.low_balance_threshold),
                    plan.now,
                    plan.now,
                )
            w = self.wallets[move.wallet_id]
            w.columns = w.columns.moved(move.delta)
            w.updated_at = plan.now
            if move.purchase:
                w.last_purchase_at = plan.now
            assert w.columns.available >= 0 and w.columns.arrears >= 0
            finals[w.id] = w.columns
        for reservation in plan.reservations:
            self.reservations[reservation.id] = reservation
        for end in plan.ends:
            self.reservations[end.reservation.id] = end.reservation
        for planned in plan.entries:
            final = finals[planned.wallet_id]
            self.entries.append(
                _Entry(
                    planned.entry(plan.tenant_id, final, plan.now),
                    planned.wallet_id,
                    planned.request_hash,
                    planned.delta,
                    planned.after(final).arrears,
                )
            )
        for event in plan.outbox():
            self.events.append((plan.tenant_id, event.type, event.payload))
        return finals

    def _wallet_of(self, reservation: Reservation) -> str:
        return next(
            w.id
            for w in self.wallets.values()
            if w.tenant_id == reservation.tenant_id
            and w.location_id == reservation.wallet_location_id
        )

    def _debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> Plan:
        ids = [d.request_id for d in debits]
        if self.blind:
            plan = plan_debits(
                self.snapshot(tenant_id, blind=True), location_id, debits, now, self.ids
            )
            try:
                self.apply(plan)
                return plan
            except GuardFailed:
                self.guard_failures += 1
        plan = plan_debits(self.snapshot(tenant_id, ids), location_id, debits, now, self.ids)
        self.apply(plan)
        return plan

    # -- the LedgerStore port ----------------------------------------------------------

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]:
        plan = self._debits(tenant_id, location_id, debits, now)
        return debit_results(plan, self._finals(plan))

    def _finals(self, plan: Plan) -> dict[str, Columns]:
        return {
            wallet_id: self.wallets[wallet_id].columns
            for wallet_id in plan.wallets
            if wallet_id in self.wallets
        }

    async def add_tokens(
        self,
        tenant_id: str,
        location_id: str,
        amount: int,
        request_id: str,
        description: str,
        now: datetime,
    ) -> tuple[Entry, Balance]:
        purchase = Purchase(location_id, amount, request_id, description)
        snap = self.snapshot(tenant_id, [request_id, purchase.settle_request_id])
        plan = plan_purchase(snap, purchase, now, self.ids)
        self.apply(plan)
        entry, after = purchase_result(plan, snap, self._finals(plan), purchase)
        wallet = next(
            w
            for w in self.wallets.values()
            if w.tenant_id == tenant_id and w.location_id == location_id
        )
        balance = Balance(
            tenant_id=tenant_id,
            location_id=location_id,
            total=after.total,
            used=after.used,
            reserved=after.reserved,
            arrears=after.arrears,
            low_balance_threshold=wallet.columns.low_balance_threshold,
            last_purchase_at=wallet.last_purchase_at,
            created_at=wallet.created_at,
            updated_at=now if plan.writes else wallet.updated_at,
        )
        return entry, balance

    async def capture(
        self,
        tenant_id: str,
        reservation_id: str,
        amount: int | None,
        request_id: str,
        now: datetime,
    ) -> tuple[Reservation, Entry]:
        return await self._end_one(
            tenant_id, EndRequest(reservation_id, request_id, capture=True, amount=amount), now
        )

    async def release(
        self,
        tenant_id: str,
        reservation_id: str,
        request_id: str,
        now: datetime,
        *,
        expired: bool = False,
    ) -> tuple[Reservation, Entry]:
        return await self._end_one(
            tenant_id, EndRequest(reservation_id, request_id, capture=False), now, expiring=expired
        )

    async def _end_one(
        self, tenant_id: str, req: EndRequest, now: datetime, *, expiring: bool = False
    ) -> tuple[Reservation, Entry]:
        (result,) = self._ends(tenant_id, [req], now, expiring=expiring)
        if isinstance(result, DomainError):
            raise result
        return result

    def _ends(
        self,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        *,
        expiring: bool = False,
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        snap = self.snapshot(
            tenant_id,
            [r.request_id for r in requests]
            + [expiry_request(r.reservation_id).request_id for r in requests],
            [r.reservation_id for r in requests],
        )
        plan = plan_ends(snap, requests, now, self.ids, expiring=expiring)
        self.apply(plan)
        return end_results(plan, self._finals(plan))

    async def end_reservations(
        self, tenant_id: str, requests: Sequence[EndRequest], now: datetime
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        return self._ends(tenant_id, requests, now)

    async def balance(self, tenant_id: str, location_id: str) -> Balance:
        wallet = self.snapshot(tenant_id).paying_wallet(location_id)
        if wallet is None:
            raise NotFound(f"tenant {tenant_id!r} has no token wallet")
        w = self.wallets[wallet.id]
        return Balance(
            tenant_id=tenant_id,
            location_id=w.location_id,
            total=w.columns.total,
            used=w.columns.used,
            reserved=w.columns.reserved,
            arrears=w.columns.arrears,
            low_balance_threshold=w.columns.low_balance_threshold,
            last_purchase_at=w.last_purchase_at,
            created_at=w.created_at,
            updated_at=w.updated_at,
        )

    async def list_entries(
        self, tenant_id: str, which: UsageFilter, page: PageRequest
    ) -> tuple[list[Entry], str]:
        rows = sorted(
            (
                e.entry
                for e in self.entries
                if e.entry.tenant_id == tenant_id and which.admits(e.entry)
            ),
            key=lambda e: e.id,
            reverse=True,
        )
        if page.after:
            rows = [e for e in rows if e.id < str(page.after["id"])]
        out = rows[: page.size]
        token = encode_token("usage", {"id": out[-1].id}) if len(rows) > page.size else ""
        return out, token

    async def get_reservation(self, tenant_id: str, reservation_id: str) -> Reservation:
        found = self.reservations.get(reservation_id)
        if found is None or found.tenant_id != tenant_id:
            raise NotFound(f"reservation {reservation_id!r} not found")
        return found

    async def extend_reservation(
        self, tenant_id: str, reservation_id: str, until: datetime, now: datetime
    ) -> bool:
        r = self.reservations.get(reservation_id)
        if r is None or r.tenant_id != tenant_id:
            return False
        if r.state is not ReservationState.PENDING or r.expires_at <= now or r.expires_at >= until:
            return False
        self.reservations[reservation_id] = replace(r, expires_at=until)
        return True

    async def expired_reservations(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        due = [
            (r.tenant_id, r.id)
            for r in self.reservations.values()
            if r.state is ReservationState.PENDING and r.expires_at <= now
        ]
        return due[:limit]

    async def charge_monthly_fee(
        self, tenant_id: str, month: str, fee: int, now: datetime
    ) -> MonthlyFeeResult:
        snap = self.snapshot(tenant_id, [monthly_fee_request(month)])
        plan = plan_monthly_fee(snap, month, fee, now, self.ids)
        self.apply(plan)
        return fee_result(plan, month)

    async def tenant_ids(self) -> list[str]:
        return sorted(self.tenants)
