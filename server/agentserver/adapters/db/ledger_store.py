"""The ledger on SQL: conditional writes under the wallet's row lock.

PostgreSQL: `SELECT … FOR UPDATE` on the wallet row serialises writers of one
wallet across every server process. SQLite: every write transaction starts with
BEGIN IMMEDIATE (see engine.py), which serialises writers of the whole file. In
both, the UPDATE is conditional and the table has a CHECK constraint, so an
overdraft is impossible even if the code above it were wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    Conflict,
    DomainError,
    FailedPrecondition,
    InsufficientTokens,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import (
    DEFAULT_RESERVATION_TTL,
    Balance,
    Debit,
    DebitResult,
    EndRequest,
    Entry,
    EntryKind,
    MonthlyFeeResult,
    Reservation,
    ReservationState,
    fit_debits,
    request_hash,
)
from agentserver.domain.paging import PageRequest, encode_token

W = models.wallets
E = models.ledger_entries
RS = models.reservations
EV = models.events
T = models.tenants

_RETRIES = 3

# The hot statements, built once with bind parameters: building a statement per
# call costs more CPU than executing it (SQLAlchemy caches the compiled form by
# the statement object).
_b = bindparam


def _spending_query(*, located: bool, lock: bool) -> Any:
    query = select(W).where(W.c.tenant_id == _b("tenant_id"))
    if located:
        query = query.where(W.c.location_id.in_([_b("location_id"), ""]))
    else:
        query = query.where(W.c.location_id == "")
    query = query.order_by(W.c.location_id.desc()).limit(1)
    return query.with_for_update() if lock else query


_SPENDING = {
    (located, lock): _spending_query(located=located, lock=lock)
    for located in (False, True)
    for lock in (False, True)
}
_ENTRIES_BY_REQUEST = select(E).where(
    E.c.tenant_id == _b("tenant_id"), E.c.request_id.in_(_b("request_ids", expanding=True))
)
_DEBIT_WALLET = (
    update(W)
    .where(
        W.c.id == _b("wallet_id"),
        W.c.total_tokens - W.c.used_tokens - W.c.reserved_tokens >= _b("need"),
    )
    .values(
        used_tokens=W.c.used_tokens + _b("used_add"),
        reserved_tokens=W.c.reserved_tokens + _b("reserved_add"),
        updated_at=_b("now"),
    )
)
_MOVE_WALLET = (
    update(W)
    .where(W.c.id == _b("wallet_id"))
    .values(
        used_tokens=W.c.used_tokens + _b("used_add"),
        reserved_tokens=W.c.reserved_tokens - _b("reserved_sub"),
        updated_at=_b("now"),
    )
    .returning(*W.c)
)
_INSERT_ENTRIES = insert(E)
_INSERT_RESERVATIONS = insert(RS)


def _claim_query(state: str, *, expiring: bool, capture: str) -> Any:
    """End a pending reservation: `capture` is "all", "amount" or "none"."""
    claim = update(RS).where(
        RS.c.tenant_id == _b("p_tenant"),
        RS.c.id == _b("p_reservation"),
        RS.c.state == ReservationState.PENDING.value,
    )
    if not expiring:
        claim = claim.where(RS.c.expires_at > _b("now"))
    spent: Any = 0
    if capture == "all":
        spent = RS.c.amount
    elif capture == "amount":
        spent = _b("capture_amount")
        claim = claim.where(RS.c.amount >= _b("capture_amount"))
    return claim.values(state=state, captured_amount=spent, ended_at=_b("now")).returning(*RS.c)


_CLAIMS = {
    (EntryKind.CAPTURE, True): _claim_query("captured", expiring=False, capture="amount"),
    (EntryKind.CAPTURE, False): _claim_query("captured", expiring=False, capture="all"),
    (EntryKind.RELEASE, False): _claim_query("released", expiring=False, capture="none"),
    (EntryKind.EXPIRE, False): _claim_query("expired", expiring=True, capture="none"),
}


def _conflict(request_id: str) -> Conflict:
    return Conflict(
        f"request_id {request_id!r} was already used for a different request",
    )


def to_balance(row: Any) -> Balance:
    return Balance(
        tenant_id=row.tenant_id,
        location_id=row.location_id,
        total=row.total_tokens,
        used=row.used_tokens,
        reserved=row.reserved_tokens,
        arrears=row.arrears_tokens,
        low_balance_threshold=row.low_balance_threshold,
        last_purchase_at=row.last_purchase_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_entry(row: Any) -> Entry:
    return Entry(
        id=row.id,
        tenant_id=row.tenant_id,
        location_id=row.location_id,
        wallet_location_id=row.wallet_location_id,
        operation_type=OperationType(row.operation_type),
        kind=EntryKind(row.kind),
        tokens=row.tokens,
        description=row.description,
        request_id=row.request_id,
        reservation_id=row.reservation_id,
        total_after=row.total_after,
        used_after=row.used_after,
        reserved_after=row.reserved_after,
        created_at=row.created_at,
    )


def to_reservation(row: Any) -> Reservation:
    return Reservation(
        id=row.id,
        tenant_id=row.tenant_id,
        location_id=row.location_id,
        wallet_location_id=row.wallet_location_id,
        operation_type=OperationType(row.operation_type),
        amount=row.amount,
        captured_amount=row.captured_amount,
        state=ReservationState(row.state),
        description=row.description,
        expires_at=row.expires_at,
        created_at=row.created_at,
        ended_at=row.ended_at,
    )


def _wallet_subject(tenant_id: str, location_id: str) -> str:
    return f"tenants/{tenant_id}/wallets/{location_id or '-'}"


class SqlLedgerStore:
    def __init__(self, engine: AsyncEngine, *, low_balance_threshold: int = 50) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._low_balance_threshold = low_balance_threshold

    # -- helpers -------------------------------------------------------------

    async def _spending_wallet(
        self, conn: AsyncConnection, tenant_id: str, location_id: str, *, lock: bool
    ) -> Row[Any]:
        """The location's own wallet if it has one, else the tenant's."""
        params = {"tenant_id": tenant_id}
        if location_id:
            params["location_id"] = location_id
        row = (await conn.execute(_SPENDING[bool(location_id), lock], params)).first()
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} has no token wallet")
        return row

    async def _lock_wallet(self, conn: AsyncConnection, wallet_id: str) -> Row[Any]:
        row = (await conn.execute(select(W).where(W.c.id == wallet_id).with_for_update())).first()
        assert row is not None, "wallets are never deleted"
        return row

    async def _entries_by_request(
        self, conn: AsyncConnection, tenant_id: str, request_ids: Sequence[str]
    ) -> dict[str, Row[Any]]:
        rows = await conn.execute(
            _ENTRIES_BY_REQUEST, {"tenant_id": tenant_id, "request_ids": list(request_ids)}
        )
        return {row.request_id: row for row in rows}

    async def _reservation_row(
        self, conn: AsyncConnection, tenant_id: str, reservation_id: str, *, lock: bool = False
    ) -> Row[Any]:
        query = select(RS).where(RS.c.tenant_id == tenant_id, RS.c.id == reservation_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"reservation {reservation_id!r} not found")
        return row

    async def _low_balance_check(
        self,
        conn: AsyncConnection,
        wallet: Row[Any],
        before: int,
        after: int,
        now: datetime,
    ) -> None:
        threshold = wallet.low_balance_threshold
        if before >= threshold > after:
            await conn.execute(
                insert(EV).values(
                    tenant_id=wallet.tenant_id,
                    kind="ledger.low_balance",
                    subject=_wallet_subject(wallet.tenant_id, wallet.location_id),
                    payload={"available": after, "threshold": threshold},
                    created_at=now,
                )
            )

    @staticmethod
    def _entry_values(
        wallet: Row[Any],
        *,
        location_id: str,
        operation_type: str,
        kind: EntryKind,
        tokens: int,
        request_id: str,
        req_hash: str,
        now: datetime,
        total_after: int,
        used_after: int,
        reserved_after: int,
        arrears_after: int | None = None,
        total_delta: int = 0,
        used_delta: int = 0,
        reserved_delta: int = 0,
        arrears_delta: int = 0,
        description: str = "",
        reservation_id: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": new_id("ent"),
            "tenant_id": wallet.tenant_id,
            "location_id": location_id,
            "wallet_id": wallet.id,
            "wallet_location_id": wallet.location_id,
            "operation_type": operation_type,
            "kind": kind.value,
            "tokens": tokens,
            "total_delta": total_delta,
            "used_delta": used_delta,
            "reserved_delta": reserved_delta,
            "arrears_delta": arrears_delta,
            "total_after": total_after,
            "used_after": used_after,
            "reserved_after": reserved_after,
            "arrears_after": wallet.arrears_tokens if arrears_after is None else arrears_after,
            "description": description,
            "request_id": request_id,
            "request_hash": req_hash,
            "reservation_id": reservation_id,
            "created_at": now,
        }

    # -- debits (charge and reserve), coalesced ------------------------------

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]:
        try:
            async with self._engine.begin() as conn:
                return await self.apply_debits_on(conn, tenant_id, location_id, debits, now)
        except IntegrityError:
            if len(debits) == 1:
                raise
        # A request_id raced with another transaction (another wallet of the tenant,
        # or another replica): settle each debit alone, so the loser sees the winner.
        results: list[DebitResult | DomainError] = []
        for debit in debits:
            results.append(await self._apply_single(tenant_id, location_id, debit, now))
        return results

    async def _apply_single(
        self, tenant_id: str, location_id: str, debit: Debit, now: datetime
    ) -> DebitResult | DomainError:
        for _ in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    results = await self.apply_debits_on(conn, tenant_id, location_id, [debit], now)
                    return results[0]
            except IntegrityError:
                continue
        raise RuntimeError(f"request {debit.request_id!r} kept conflicting")

    async def apply_debits_on(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        location_id: str,
        debits: Sequence[Debit],
        now: datetime,
    ) -> list[DebitResult | DomainError]:
        wallet = await self._spending_wallet(conn, tenant_id, location_id, lock=True)
        existing = await self._entries_by_request(conn, tenant_id, [d.request_id for d in debits])
        results: list[DebitResult | DomainError | None] = [None] * len(debits)
        first_in_batch: dict[str, int] = {}
        fresh: list[int] = []
        for i, debit in enumerate(debits):
            if debit.request_id in existing:
                results[i] = await self._replay_debit(conn, existing[debit.request_id], debit)
            elif debit.request_id in first_in_batch:
                continue  # a concurrent retry inside this batch; resolved below
            else:
                first_in_batch[debit.request_id] = i
                fresh.append(i)

        total, used, reserved = wallet.total_tokens, wallet.used_tokens, wallet.reserved_tokens
        before = total - used - reserved
        fits = fit_debits(before, [debits[i].amount for i in fresh])
        entries: list[dict[str, Any]] = []
        reservations: list[dict[str, Any]] = []
        for i, available_after in zip(fresh, fits, strict=True):
            debit = debits[i]
            if available_after is None:
                results[i] = InsufficientTokens(
                    _wallet_subject(tenant_id, wallet.location_id),
                    requested=debit.amount,
                    available=total - used - reserved,
                )
                continue
            reservation_id = None
            if debit.kind is EntryKind.RESERVE:
                reserved += debit.amount
                reservation_id = debit.reservation_id or new_id("res")
                reservations.append(
                    {
                        "id": reservation_id,
                        "tenant_id": tenant_id,
                        "wallet_id": wallet.id,
                        "location_id": debit.location_id,
                        "wallet_location_id": wallet.location_id,
                        "operation_type": debit.operation_type.value,
                        "amount": debit.amount,
                        "captured_amount": 0,
                        "state": ReservationState.PENDING.value,
                        "description": debit.description,
                        "expires_at": now + (debit.ttl or DEFAULT_RESERVATION_TTL),
                        "created_at": now,
                        "ended_at": None,
                    }
                )
            else:
                used += debit.amount
            values = self._entry_values(
                wallet,
                location_id=debit.location_id,
                operation_type=debit.operation_type.value,
                kind=debit.kind,
                tokens=debit.amount,
                request_id=debit.request_id,
                req_hash=debit.request_hash(),
                now=now,
                total_after=total,
                used_after=used,
                reserved_after=reserved,
                used_delta=debit.amount if debit.kind is EntryKind.CHARGE else 0,
                reserved_delta=debit.amount if debit.kind is EntryKind.RESERVE else 0,
                description=debit.description,
                reservation_id=reservation_id,
            )
            entries.append(values)
            results[i] = DebitResult(
                entry=to_entry(_Obj(values)),
                reservation=to_reservation(_Obj(reservations[-1])) if reservation_id else None,
            )

        if entries:
            used_add = used - wallet.used_tokens
            reserved_add = reserved - wallet.reserved_tokens
            updated = await conn.execute(
                _DEBIT_WALLET,
                {
                    "wallet_id": wallet.id,
                    "need": used_add + reserved_add,
                    "used_add": used_add,
                    "reserved_add": reserved_add,
                    "now": now,
                },
            )
            if updated.rowcount != 1:  # impossible under the row lock; never overdraw
                raise RuntimeError(f"wallet {wallet.id} changed under its lock")
            if reservations:
                await conn.execute(_INSERT_RESERVATIONS, reservations)
            await conn.execute(_INSERT_ENTRIES, entries)
            await self._low_balance_check(conn, wallet, before, total - used - reserved, now)

        # Duplicates inside the batch get the first one's result (or a conflict).
        for i, debit in enumerate(debits):
            if results[i] is None:
                first = first_in_batch[debit.request_id]
                same = debits[first].request_hash() == debit.request_hash()
                results[i] = results[first] if same else _conflict(debit.request_id)
        return [r for r in results if r is not None]

    async def _replay_debit(
        self, conn: AsyncConnection, row: Row[Any], debit: Debit
    ) -> DebitResult | DomainError:
        if row.request_hash != debit.request_hash():
            return _conflict(debit.request_id)
        reservation = None
        if row.reservation_id and debit.kind is EntryKind.RESERVE:
            reservation = to_reservation(
                await self._reservation_row(conn, row.tenant_id, row.reservation_id)
            )
        return DebitResult(entry=to_entry(row), reservation=reservation)

    # -- purchases -----------------------------------------------------------

    async def add_tokens(
        self,
        tenant_id: str,
        location_id: str,
        amount: int,
        request_id: str,
        description: str,
        now: datetime,
    ) -> tuple[Entry, Balance]:
        req_hash = request_hash("purchase", location_id, amount, description)
        settle_id = f"{request_id}#arrears"
        for _ in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    existing = await self._entries_by_request(
                        conn, tenant_id, [request_id, settle_id]
                    )
                    if request_id in existing:
                        first = existing[request_id]
                        if first.request_hash != req_hash:
                            raise _conflict(request_id)
                        last = existing.get(settle_id, first)
                        wallet = await self._lock_wallet(conn, first.wallet_id)
                        return to_entry(first), self._snapshot(wallet, last)
                    return await self._add_tokens(
                        conn, tenant_id, location_id, amount, request_id, req_hash, description, now
                    )
            except IntegrityError:
                continue  # a concurrent first purchase created the wallet or used the key
        raise RuntimeError(f"request {request_id!r} kept conflicting")

    @staticmethod
    def _snapshot(wallet: Row[Any], entry: Row[Any]) -> Balance:
        return Balance(
            tenant_id=wallet.tenant_id,
            location_id=wallet.location_id,
            total=entry.total_after,
            used=entry.used_after,
            reserved=entry.reserved_after,
            arrears=entry.arrears_after,
            low_balance_threshold=wallet.low_balance_threshold,
            last_purchase_at=wallet.last_purchase_at,
            created_at=wallet.created_at,
            updated_at=entry.created_at,
        )

    async def _add_tokens(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        location_id: str,
        amount: int,
        request_id: str,
        req_hash: str,
        description: str,
        now: datetime,
    ) -> tuple[Entry, Balance]:
        query = select(W).where(W.c.tenant_id == tenant_id, W.c.location_id == location_id)
        wallet = (await conn.execute(query.with_for_update())).first()
        if wallet is None:
            if (await conn.execute(select(T.c.id).where(T.c.id == tenant_id))).first() is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            await conn.execute(
                insert(W).values(
                    id=new_id("wal"),
                    tenant_id=tenant_id,
                    location_id=location_id,
                    low_balance_threshold=self._low_balance_threshold,
                    created_at=now,
                    updated_at=now,
                )
            )
            wallet = (await conn.execute(query.with_for_update())).one()
        total = wallet.total_tokens + amount
        used, reserved, arrears = wallet.used_tokens, wallet.reserved_tokens, wallet.arrears_tokens
        purchase = self._entry_values(
            wallet,
            location_id=location_id,
            operation_type=OperationType.PURCHASE.value,
            kind=EntryKind.PURCHASE,
            tokens=amount,
            request_id=request_id,
            req_hash=req_hash,
            now=now,
            total_after=total,
            used_after=used,
            reserved_after=reserved,
            total_delta=amount,
            description=description,
        )
        rows = [purchase]
        settle = min(arrears, total - used - reserved)
        if settle > 0:
            used += settle
            arrears -= settle
            rows.append(
                self._entry_values(
                    wallet,
                    location_id=location_id,
                    operation_type=OperationType.MONTHLY_FEE.value,
                    kind=EntryKind.CHARGE,
                    tokens=settle,
                    request_id=f"{request_id}#arrears",
                    req_hash=req_hash,
                    now=now,
                    total_after=total,
                    used_after=used,
                    reserved_after=reserved,
                    arrears_after=arrears,
                    used_delta=settle,
                    arrears_delta=-settle,
                    description="monthly fee arrears settled from purchase",
                )
            )
        await conn.execute(
            update(W)
            .where(W.c.id == wallet.id)
            .values(
                total_tokens=total,
                used_tokens=used,
                arrears_tokens=arrears,
                last_purchase_at=now,
                updated_at=now,
            )
        )
        await conn.execute(insert(E), rows)
        balance = Balance(
            tenant_id=tenant_id,
            location_id=location_id,
            total=total,
            used=used,
            reserved=reserved,
            arrears=arrears,
            low_balance_threshold=wallet.low_balance_threshold,
            last_purchase_at=now,
            created_at=wallet.created_at,
            updated_at=now,
        )
        return to_entry(_Obj(purchase)), balance

    # -- reservations --------------------------------------------------------

    async def capture(
        self,
        tenant_id: str,
        reservation_id: str,
        amount: int | None,
        request_id: str,
        now: datetime,
    ) -> tuple[Reservation, Entry]:
        req_hash = request_hash("capture", reservation_id, amount)
        return await self._end_reservation(
            tenant_id, reservation_id, request_id, req_hash, now, EntryKind.CAPTURE, amount
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
        req_hash = request_hash("release", reservation_id)
        kind = EntryKind.EXPIRE if expired else EntryKind.RELEASE
        return await self._end_reservation(
            tenant_id, reservation_id, request_id, req_hash, now, kind, None
        )

    async def end_reservations(
        self, tenant_id: str, requests: Sequence[EndRequest], now: datetime
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        """Claim every reservation that can be claimed in one transaction (claims in
        reservation-id order, then one UPDATE per wallet, then one INSERT), so
        concurrent batches lock rows in the same order. Whatever was not claimed, or
        the whole batch if a request_id was reused, goes through `_end_reservation`,
        which explains it (replay, conflict, ended, expired, not found)."""
        results: list[tuple[Reservation, Entry] | DomainError | None] = [None] * len(requests)
        if len(requests) > 1:
            try:
                async with self._engine.begin() as conn:
                    await self._end_batch(conn, tenant_id, requests, now, results)
            except IntegrityError:
                results = [None] * len(requests)
        return await self._end_rest(tenant_id, requests, now, results)

    async def _end_rest(
        self,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        results: list[tuple[Reservation, Entry] | DomainError | None],
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        """Settle each request a batch left unsettled (None) alone, which explains it."""
        for i, req in enumerate(requests):
            if results[i] is None:
                try:
                    results[i] = await self._end_one(tenant_id, req, now)
                except DomainError as err:
                    results[i] = err
        return [r for r in results if r is not None]

    async def _end_one(
        self, tenant_id: str, req: EndRequest, now: datetime
    ) -> tuple[Reservation, Entry]:
        if req.capture:
            return await self.capture(
                tenant_id, req.reservation_id, req.amount, req.request_id, now
            )
        return await self.release(tenant_id, req.reservation_id, req.request_id, now)

    async def _end_batch(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        results: list[tuple[Reservation, Entry] | DomainError | None],
    ) -> None:
        claimed: list[tuple[int, Row[Any], str]] = []
        seen: set[str] = set()
        for i in sorted(range(len(requests)), key=lambda i: requests[i].reservation_id):
            req = requests[i]
            if req.reservation_id in seen:
                continue  # a second end of the same reservation: explained alone
            seen.add(req.reservation_id)
            kind = EntryKind.CAPTURE if req.capture else EntryKind.RELEASE
            res = await self._claim_row(conn, tenant_id, req.reservation_id, now, kind, req.amount)
            if res is not None:
                claimed.append((i, res, self._end_hash(req)))
        if not claimed:
            return
        totals: dict[str, list[int]] = {}
        for _, res, _ in claimed:
            t = totals.setdefault(res.wallet_id, [0, 0])
            t[0] += res.captured_amount
            t[1] += res.amount
        running: dict[str, list[int]] = {}
        wallets: dict[str, Row[Any]] = {}
        for wallet_id in sorted(totals):
            used_add, reserved_sub = totals[wallet_id]
            wallet = await self._move_wallet(conn, wallet_id, used_add, reserved_sub, now)
            wallets[wallet_id] = wallet
            running[wallet_id] = [
                wallet.used_tokens - used_add,
                wallet.reserved_tokens + reserved_sub,
            ]
        entries = []
        for i, res, req_hash in sorted(claimed, key=lambda c: c[0]):
            wallet = wallets[res.wallet_id]
            state = running[res.wallet_id]
            state[0] += res.captured_amount
            state[1] -= res.amount
            values = self._end_entry(
                wallet, res, requests[i].request_id, req_hash, now, state[0], state[1]
            )
            entries.append(values)
            results[i] = (to_reservation(res), to_entry(_Obj(values)))
        await conn.execute(_INSERT_ENTRIES, entries)

    @staticmethod
    def _end_hash(req: EndRequest) -> str:
        if req.capture:
            return request_hash("capture", req.reservation_id, req.amount)
        return request_hash("release", req.reservation_id)

    async def _end_reservation(
        self,
        tenant_id: str,
        reservation_id: str,
        request_id: str,
        req_hash: str,
        now: datetime,
        kind: EntryKind,
        amount: int | None,
    ) -> tuple[Reservation, Entry]:
        """End a pending reservation exactly once.

        Fast path, one transaction: claim the reservation with a conditional UPDATE
        (pending, not expired, big enough), move the wallet's columns, append the
        entry. Locks are always taken reservation first, then wallet, so ends never
        deadlock each other. When nothing was claimed, a read explains why: a replay
        of the same request, a reused key, an unknown, ended or expired reservation.
        """
        for _ in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    claimed = await self.claim_on(
                        conn,
                        tenant_id,
                        reservation_id,
                        request_id,
                        req_hash,
                        now,
                        kind,
                        amount,
                    )
                    if claimed is not None:
                        return claimed
            except IntegrityError:
                pass  # the request_id was used before: explained below
            async with self._read.connect() as conn:
                existing = await self._entries_by_request(conn, tenant_id, [request_id])
                res = await self._reservation_row(conn, tenant_id, reservation_id)
            if request_id in existing:
                first = existing[request_id]
                if first.request_hash != req_hash or first.reservation_id != reservation_id:
                    raise _conflict(request_id)
                return to_reservation(res), to_entry(first)
            if res.state != ReservationState.PENDING.value:
                raise FailedPrecondition(
                    f"reservation {reservation_id} has already ended ({res.state})",
                    reason="RESERVATION_ENDED",
                )
            if kind is EntryKind.CAPTURE and amount is not None and amount > res.amount:
                raise InvalidArgument.field(
                    "amount", f"must be at most the reserved {res.amount} tokens"
                )
            if kind is not EntryKind.EXPIRE and res.expires_at <= now:
                # Past its expiry but not swept yet: it expires now, and the request fails.
                with contextlib.suppress(FailedPrecondition):
                    await self._end_reservation(
                        tenant_id,
                        reservation_id,
                        f"expire:{reservation_id}",
                        request_hash("release", reservation_id),
                        now,
                        EntryKind.EXPIRE,
                        None,
                    )
                raise FailedPrecondition(
                    f"reservation {reservation_id} has expired", reason="RESERVATION_ENDED"
                )
            # Still pending and claimable: it changed between the claim and the read.
        raise RuntimeError(f"reservation {reservation_id} kept changing")

    async def _claim_row(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        reservation_id: str,
        now: datetime,
        kind: EntryKind,
        amount: int | None,
    ) -> Row[Any] | None:
        """End a pending reservation by a conditional UPDATE; None if it cannot be."""
        partial = kind is EntryKind.CAPTURE and amount is not None
        params: dict[str, Any] = {
            "p_tenant": tenant_id,
            "p_reservation": reservation_id,
            "now": now,
        }
        if partial:
            params["capture_amount"] = amount
        return (await conn.execute(_CLAIMS[kind, partial], params)).first()

    async def _move_wallet(
        self, conn: AsyncConnection, wallet_id: str, used_add: int, reserved_sub: int, now: datetime
    ) -> Row[Any]:
        params = {"wallet_id": wallet_id, "used_add": used_add, "reserved_sub": reserved_sub}
        return (await conn.execute(_MOVE_WALLET, {**params, "now": now})).one()

    def _end_entry(
        self,
        wallet: Row[Any],
        res: Row[Any],
        request_id: str,
        req_hash: str,
        now: datetime,
        used_after: int,
        reserved_after: int,
    ) -> dict[str, Any]:
        kind = {
            ReservationState.CAPTURED.value: EntryKind.CAPTURE,
            ReservationState.RELEASED.value: EntryKind.RELEASE,
            ReservationState.EXPIRED.value: EntryKind.EXPIRE,
        }[res.state]
        return self._entry_values(
            wallet,
            location_id=res.location_id,
            operation_type=res.operation_type,
            kind=kind,
            tokens=res.captured_amount if kind is EntryKind.CAPTURE else res.amount,
            request_id=request_id,
            req_hash=req_hash,
            now=now,
            total_after=wallet.total_tokens,
            used_after=used_after,
            reserved_after=reserved_after,
            used_delta=res.captured_amount,
            reserved_delta=-res.amount,
            reservation_id=res.id,
            description=res.description,
        )

    async def claim_on(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        reservation_id: str,
        request_id: str,
        req_hash: str,
        now: datetime,
        kind: EntryKind,
        amount: int | None,
    ) -> tuple[Reservation, Entry] | None:
        res = await self._claim_row(conn, tenant_id, reservation_id, now, kind, amount)
        if res is None:
            return None
        wallet = await self._move_wallet(conn, res.wallet_id, res.captured_amount, res.amount, now)
        values = self._end_entry(
            wallet, res, request_id, req_hash, now, wallet.used_tokens, wallet.reserved_tokens
        )
        await conn.execute(_INSERT_ENTRIES, values)
        return to_reservation(res), to_entry(_Obj(values))

    async def get_reservation(self, tenant_id: str, reservation_id: str) -> Reservation:
        async with self._read.connect() as conn:
            return to_reservation(await self._reservation_row(conn, tenant_id, reservation_id))

    async def extend_reservation(
        self, tenant_id: str, reservation_id: str, until: datetime, now: datetime
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(RS)
                .where(
                    RS.c.tenant_id == tenant_id,
                    RS.c.id == reservation_id,
                    RS.c.state == ReservationState.PENDING.value,
                    RS.c.expires_at > now,
                    RS.c.expires_at < until,
                )
                .values(expires_at=until)
            )
        return bool(result.rowcount == 1)

    async def expired_reservations(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(RS.c.tenant_id, RS.c.id)
                .where(RS.c.state == ReservationState.PENDING.value, RS.c.expires_at <= now)
                .order_by(RS.c.expires_at)
                .limit(limit)
            )
            return [(row.tenant_id, row.id) for row in rows]

    # -- reads ---------------------------------------------------------------

    async def balance(self, tenant_id: str, location_id: str) -> Balance:
        async with self._read.connect() as conn:
            return to_balance(await self._spending_wallet(conn, tenant_id, location_id, lock=False))

    async def list_entries(
        self, tenant_id: str, location_id: str, page: PageRequest
    ) -> tuple[list[Entry], str]:
        async with self._read.connect() as conn:
            wallet = await self._spending_wallet(conn, tenant_id, location_id, lock=False)
            query = select(E).where(E.c.tenant_id == tenant_id, E.c.wallet_id == wallet.id)
            if page.after:
                query = query.where(E.c.id < str(page.after.get("id", "")))
            rows = (await conn.execute(query.order_by(E.c.id.desc()).limit(page.size + 1))).all()
        entries = [to_entry(r) for r in rows[: page.size]]
        token = encode_token("usage", {"id": entries[-1].id}) if len(rows) > page.size else ""
        return entries, token

    async def list_reservations(
        self,
        tenant_id: str,
        location_id: str,
        states: frozenset[ReservationState],
        page: PageRequest,
    ) -> tuple[list[Reservation], str]:
        async with self._read.connect() as conn:
            wallet = await self._spending_wallet(conn, tenant_id, location_id, lock=False)
            query = select(RS).where(RS.c.tenant_id == tenant_id, RS.c.wallet_id == wallet.id)
            if states:
                query = query.where(RS.c.state.in_(sorted(s.value for s in states)))
            if page.after:
                query = query.where(RS.c.id < str(page.after.get("id", "")))
            rows = (await conn.execute(query.order_by(RS.c.id.desc()).limit(page.size + 1))).all()
        found = [to_reservation(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        return found, encode_token("reservations", {"id": found[-1].id}) if more else ""

    async def spent_by_day(
        self, tenant_id: str, location_id: str, since: datetime
    ) -> list[tuple[str, str, int]]:
        async with self._read.connect() as conn:
            wallet = await self._spending_wallet(conn, tenant_id, location_id, lock=False)
            if conn.dialect.name == "postgresql":
                day: Any = func.to_char(func.timezone("UTC", E.c.created_at), "YYYY-MM-DD")
            else:  # SQLite keeps UTC without a zone
                day = func.strftime("%Y-%m-%d", E.c.created_at)
            rows = await conn.execute(
                select(day.label("day"), E.c.operation_type, func.sum(E.c.used_delta))
                .where(
                    E.c.tenant_id == tenant_id,
                    E.c.wallet_id == wallet.id,
                    E.c.created_at >= since,
                    E.c.used_delta > 0,
                )
                .group_by(day, E.c.operation_type)
            )
            return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def tenant_ids(self) -> list[str]:
        async with self._read.connect() as conn:
            return list((await conn.execute(select(T.c.id).order_by(T.c.id))).scalars())

    # -- monthly fee ---------------------------------------------------------

    async def charge_monthly_fee(
        self, tenant_id: str, month: str, fee: int, now: datetime
    ) -> MonthlyFeeResult:
        request_id = f"monthly-fee:{month}"
        try:
            async with self._engine.begin() as conn:
                existing = await self._entries_by_request(conn, tenant_id, [request_id])
                if request_id in existing:
                    row = existing[request_id]
                    return MonthlyFeeResult(
                        tenant_id, month, row.tokens, row.arrears_delta, already_charged=True
                    )
                wallet = await self._spending_wallet(conn, tenant_id, "", lock=True)
                before = wallet.total_tokens - wallet.used_tokens - wallet.reserved_tokens
                charged = min(fee, before)
                owed = fee - charged
                used = wallet.used_tokens + charged
                await conn.execute(
                    update(W)
                    .where(W.c.id == wallet.id)
                    .values(
                        used_tokens=used,
                        arrears_tokens=W.c.arrears_tokens + owed,
                        updated_at=now,
                    )
                )
                await conn.execute(
                    insert(E).values(
                        **self._entry_values(
                            wallet,
                            location_id="",
                            operation_type=OperationType.MONTHLY_FEE.value,
                            kind=EntryKind.CHARGE,
                            tokens=charged,
                            request_id=request_id,
                            req_hash=request_hash("monthly-fee", month, fee),
                            now=now,
                            total_after=wallet.total_tokens,
                            used_after=used,
                            reserved_after=wallet.reserved_tokens,
                            arrears_after=wallet.arrears_tokens + owed,
                            used_delta=charged,
                            arrears_delta=owed,
                            description=f"monthly fee {month}"
                            + (f" ({owed} tokens in arrears)" if owed else ""),
                        )
                    )
                )
                await self._low_balance_check(conn, wallet, before, before - charged, now)
                return MonthlyFeeResult(tenant_id, month, charged, owed, already_charged=False)
        except IntegrityError:
            # Another replica charged it at the same moment: once per month holds.
            return MonthlyFeeResult(tenant_id, month, 0, 0, already_charged=True)


class _Obj:
    """Attribute access over a values dict, so fresh rows convert like fetched ones."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
