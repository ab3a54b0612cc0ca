"""The ledger on SQL (any SQLAlchemy backend): read a snapshot, ask the kernel for a
plan (domain/ledger_kernel.py), apply the plan with its guards.

Each write is one transaction: read what the kernel needs (the wallet that pays,
locked on PostgreSQL, and on SQLite every writer is serialised by BEGIN IMMEDIATE;
the reservations it ends, locked, in id order, before any wallet; what its request
ids already wrote), plan, apply. Under those locks the guards hold; when they do
not (a unique key taken by a concurrent writer: a request id, a new location
wallet), the transaction rolls back and the next attempt reads the new state. The
CHECK constraints refuse an overdrawn wallet whatever the code above them does.

The rules live in the kernel; what is here is reading, writing and the guards.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.ledger_rows import (
    columns_of,
    entry_rows,
    prior_of,
    reservation_rows,
    to_balance,
    to_entry,
    to_reservation,
    to_wallet,
)
from agentserver.adapters.db.outbox import write_outbox
from agentserver.domain.errors import DomainError, NotFound, Unavailable
from agentserver.domain.ids import new_id
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
    IdSource,
    Plan,
    Prior,
    Purchase,
    Snapshot,
    Wallet,
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

W = models.wallets
E = models.ledger_entries
RS = models.reservations
T = models.tenants

_RETRIES = 5
IDS = IdSource(new_id)
_PENDING = ReservationState.PENDING.value

# Statements built once with bind parameters: building one per call costs more CPU
# than executing it (SQLAlchemy caches the compiled form by the statement object).
_b = bindparam
_TENANT_WALLETS = select(W).where(W.c.tenant_id == _b("tenant_id"))
_LOCK_WALLET = select(W).where(W.c.id == _b("wallet_id")).with_for_update()
_ENTRIES_BY_REQUEST = select(E).where(
    E.c.tenant_id == _b("tenant_id"), E.c.request_id.in_(_b("request_ids", expanding=True))
)
_RESERVATIONS = (
    select(RS)
    .where(RS.c.tenant_id == _b("tenant_id"), RS.c.id.in_(_b("ids", expanding=True)))
    .order_by(RS.c.id)
)
_INSERT_ENTRIES = insert(E)
_INSERT_RESERVATIONS = insert(RS)
_INSERT_WALLET = insert(W)
_END = (
    update(RS)
    .where(
        RS.c.tenant_id == _b("p_tenant_id"),
        RS.c.id == _b("p_reservation_id"),
        RS.c.state == _PENDING,
        RS.c.amount == _b("p_amount"),
        RS.c.wallet_id == _b("p_wallet_id"),
    )
    .values(state=_b("p_to_state"), captured_amount=_b("p_captured"), ended_at=_b("p_now"))
)
# An end's guard: pending, of the planned amount and wallet, and (unless it is the
# expiry itself) unexpired.
_ENDS = {True: _END, False: _END.where(RS.c.expires_at > _b("p_now"))}


@functools.cache
def _move_statement(*, absent: bool, purchase: bool) -> Any:
    """A wallet's move with its guards: `need` available before it, and (`absent`)
    no wallet of its own yet for the location the plan charged the tenant's for.
    (Plans made here read the wallet under its lock, so they are never blind.)"""
    available = W.c.total_tokens - W.c.used_tokens - W.c.reserved_tokens
    statement = update(W).where(W.c.id == _b("p_wallet_id"), available >= _b("p_need"))
    if absent:
        other = W.alias("other")
        statement = statement.where(
            ~exists().where(
                and_(other.c.tenant_id == _b("p_tenant_id"), other.c.location_id == _b("p_absent"))
            )
        )
    values: dict[str, Any] = {
        "total_tokens": W.c.total_tokens + _b("p_d_total"),
        "used_tokens": W.c.used_tokens + _b("p_d_used"),
        "reserved_tokens": W.c.reserved_tokens + _b("p_d_reserved"),
        "arrears_tokens": W.c.arrears_tokens + _b("p_d_arrears"),
        "updated_at": _b("p_now"),
    }
    if purchase:
        values["last_purchase_at"] = _b("p_now")
    return statement.values(**values).returning(*W.c)


class GuardFailed(Exception):
    """A plan's guard did not hold when it was written: nothing of it stays."""


class SqlLedgerStore:
    def __init__(self, engine: AsyncEngine, *, low_balance_threshold: int = 50) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._low_balance_threshold = low_balance_threshold

    # -- reading a snapshot ----------------------------------------------------------

    async def snapshot_on(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        lock_wallet: str | None = None,
        own_wallet: bool = False,
        request_ids: Sequence[str] = (),
        reservation_ids: Sequence[str] = (),
    ) -> Snapshot:
        """The tenant's wallets, what `request_ids` wrote and the reservations named.

        Locks, in this order so writers never wait on each other in a cycle: the named
        reservations (in id order), then the wallet that pays for `lock_wallet` (or
        with `own_wallet`, that location's own). The kernel then plans against state
        nobody else can change until the transaction ends."""
        reservations: dict[str, Reservation] = {}
        if reservation_ids:
            rows = await conn.execute(
                _RESERVATIONS.with_for_update(),
                {"tenant_id": tenant_id, "ids": sorted(set(reservation_ids))},
            )
            reservations = {r.id: to_reservation(r) for r in rows}
        wallets = {
            row.location_id: to_wallet(row)
            for row in await conn.execute(_TENANT_WALLETS, {"tenant_id": tenant_id})
        }
        if lock_wallet is not None:
            directory = Snapshot(tenant_id, tuple(wallets.values()))
            target = (
                directory.wallet(lock_wallet)
                if own_wallet
                else directory.paying_wallet(lock_wallet)
            )
            # SQLite's writers hold the database from BEGIN IMMEDIATE (engine.py): the
            # rows just read are current and stay so; elsewhere the row is locked and
            # read again.
            if target is not None and conn.dialect.name != "sqlite":
                row = (await conn.execute(_LOCK_WALLET, {"wallet_id": target.id})).one()
                wallets[row.location_id] = to_wallet(row)
        prior: dict[str, Prior] = {}
        if request_ids:
            written = (
                await conn.execute(
                    _ENTRIES_BY_REQUEST,
                    {"tenant_id": tenant_id, "request_ids": sorted(set(request_ids))},
                )
            ).all()
            replayed = {r.reservation_id for r in written if r.reservation_id} - set(reservations)
            if replayed:  # a replay answers with the reservation as it is now
                more = await conn.execute(
                    _RESERVATIONS, {"tenant_id": tenant_id, "ids": sorted(replayed)}
                )
                reservations.update({r.id: to_reservation(r) for r in more})
            prior = {
                r.request_id: prior_of(r, reservations.get(r.reservation_id or "")) for r in written
            }
        # Every tenant has its tenant-wide wallet from the start: no wallet, no tenant.
        return Snapshot(
            tenant_id, tuple(wallets.values()), prior, reservations, tenant_exists=bool(wallets)
        )

    # -- applying a plan ------------------------------------------------------------------

    async def apply_on(self, conn: AsyncConnection, plan: Plan) -> dict[str, Columns]:
        """Write `plan` with its guards inside the caller's transaction; the moved
        wallets' final columns. Raises GuardFailed (the caller rolls back). The
        caller writes the plan's events to the outbox last (see outbox.py)."""
        for end in plan.ends:
            result = await conn.execute(
                _ENDS[end.expiring],
                {
                    "p_tenant_id": plan.tenant_id,
                    "p_reservation_id": end.reservation.id,
                    "p_amount": end.amount,
                    "p_wallet_id": end.wallet_id,
                    "p_to_state": end.reservation.state.value,
                    "p_captured": end.reservation.captured_amount,
                    "p_now": plan.now,
                },
            )
            if result.rowcount != 1:
                raise GuardFailed(f"reservation {end.reservation.id} changed")
        finals: dict[str, Columns] = {}
        for move in plan.moves:
            if move.create is not None:
                await conn.execute(
                    _INSERT_WALLET,
                    {
                        "id": move.wallet_id,
                        "tenant_id": plan.tenant_id,
                        "location_id": move.create.location_id,
                        "low_balance_threshold": self._low_balance_threshold,
                        "created_at": plan.now,
                        "updated_at": plan.now,
                    },
                )
            if move.blind:
                raise AssertionError("a plan made here is never blind")
            row = (
                await conn.execute(
                    _move_statement(absent=bool(move.absent_location), purchase=move.purchase),
                    {
                        "p_wallet_id": move.wallet_id,
                        "p_tenant_id": plan.tenant_id,
                        "p_absent": move.absent_location,
                        "p_need": move.need,
                        "p_d_total": move.delta.total,
                        "p_d_used": move.delta.used,
                        "p_d_reserved": move.delta.reserved,
                        "p_d_arrears": move.delta.arrears,
                        "p_now": plan.now,
                    },
                )
            ).first()
            if row is None:
                raise GuardFailed(f"wallet {move.wallet_id} changed")
            finals[move.wallet_id] = columns_of(row)
        if plan.reservations:
            await conn.execute(_INSERT_RESERVATIONS, reservation_rows(plan))
        if plan.entries:
            await conn.execute(_INSERT_ENTRIES, entry_rows(plan, finals))
        return finals

    async def _write(
        self,
        read: Callable[[AsyncConnection], Awaitable[Snapshot]],
        plan_of: Callable[[Snapshot], Plan],
    ) -> tuple[Plan, Snapshot, dict[str, Columns]]:
        """Read, plan and apply in one transaction, again while a guard fails."""
        for _ in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    snap = await read(conn)
                    plan = plan_of(snap)
                    finals = await self.apply_on(conn, plan)
                    await write_outbox(conn, plan.tenant_id, plan.outbox(), plan.now)
                    return plan, snap, finals
            except (IntegrityError, GuardFailed):
                continue  # a concurrent writer got there first: read again
        raise Unavailable("the ledger is too busy with this wallet right now; retry")

    # -- debits -------------------------------------------------------------------------

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]:
        plan, _, finals = await self._write(
            lambda conn: self.debit_snapshot_on(conn, tenant_id, location_id, debits),
            lambda snap: plan_debits(snap, location_id, debits, now, IDS),
        )
        return debit_results(plan, finals)

    async def debit_snapshot_on(
        self, conn: AsyncConnection, tenant_id: str, location_id: str, debits: Sequence[Debit]
    ) -> Snapshot:
        return await self.snapshot_on(
            conn, tenant_id, lock_wallet=location_id, request_ids=[d.request_id for d in debits]
        )

    # -- purchases and the monthly fee --------------------------------------------------

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
        plan, snap, finals = await self._write(
            lambda conn: self.snapshot_on(
                conn,
                tenant_id,
                lock_wallet=location_id,
                own_wallet=True,
                request_ids=[request_id, purchase.settle_request_id],
            ),
            lambda snap: plan_purchase(snap, purchase, now, IDS),
        )
        entry, after = purchase_result(plan, snap, finals, purchase)
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(W).where(W.c.tenant_id == tenant_id, W.c.location_id == location_id)
                )
            ).one()
        balance = Balance(
            tenant_id=tenant_id,
            location_id=location_id,
            total=after.total,
            used=after.used,
            reserved=after.reserved,
            arrears=after.arrears,
            low_balance_threshold=row.low_balance_threshold,
            last_purchase_at=row.last_purchase_at,
            created_at=row.created_at,
            updated_at=now if plan.writes else entry.created_at,
        )
        return entry, balance

    async def charge_monthly_fee(
        self, tenant_id: str, month: str, fee: int, now: datetime
    ) -> MonthlyFeeResult:
        plan, _, _ = await self._write(
            lambda conn: self.snapshot_on(
                conn, tenant_id, lock_wallet="", request_ids=[monthly_fee_request(month)]
            ),
            lambda snap: plan_monthly_fee(snap, month, fee, now, IDS),
        )
        return fee_result(plan, month)

    # -- reservation ends -----------------------------------------------------------------

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
            tenant_id,
            EndRequest(reservation_id, request_id, capture=False),
            now,
            expiring=expired,
        )

    async def _end_one(
        self, tenant_id: str, req: EndRequest, now: datetime, *, expiring: bool = False
    ) -> tuple[Reservation, Entry]:
        (result,) = await self.end_reservations(tenant_id, [req], now, expiring=expiring)
        if isinstance(result, DomainError):
            raise result
        return result

    async def end_reservations(
        self,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        *,
        expiring: bool = False,
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        """Capture or release several reservations of a tenant in one transaction."""
        tries = 0

        async def read(conn: AsyncConnection) -> Snapshot:
            nonlocal tries
            tries += 1  # a retry reads everything
            quick = now if tries == 1 and not expiring else None
            return await self.end_snapshot_on(conn, tenant_id, requests, quick=quick)

        plan, _, finals = await self._write(
            read, lambda snap: plan_ends(snap, requests, now, IDS, expiring=expiring)
        )
        return end_results(plan, finals)

    async def end_snapshot_on(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        requests: Sequence[EndRequest],
        *,
        quick: datetime | None = None,
    ) -> Snapshot:
        """The reservations locked; no wallet locked (ends never need tokens).

        `quick` (the time of the ends): when every reservation read is still pending
        and unexpired then, none of the ends was written before (an end's entry is
        written with its reservation's end), so the snapshot is the reservations alone,
        with their wallets as the rows name them. A request id some other write took
        meets the entries' unique key; the caller then reads again without `quick`."""
        ids = [r.reservation_id for r in requests]
        if quick is not None:
            rows = (
                await conn.execute(
                    _RESERVATIONS.with_for_update(),
                    {"tenant_id": tenant_id, "ids": sorted(set(ids))},
                )
            ).all()
            read = {r.id: to_reservation(r) for r in rows}
            if len(read) == len(set(ids)) and all(
                r.state is ReservationState.PENDING and r.expires_at > quick for r in read.values()
            ):
                wallets = {
                    r.wallet_id: Wallet(r.wallet_id, tenant_id, r.wallet_location_id) for r in rows
                }
                return Snapshot(tenant_id, tuple(wallets.values()), reservations=read)
        return await self.snapshot_on(
            conn,
            tenant_id,
            request_ids=[r.request_id for r in requests]
            + [expiry_request(i).request_id for i in ids],
            reservation_ids=ids,
        )

    # -- reads --------------------------------------------------------------------------

    async def get_reservation(self, tenant_id: str, reservation_id: str) -> Reservation:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(RS).where(RS.c.tenant_id == tenant_id, RS.c.id == reservation_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"reservation {reservation_id!r} not found")
        return to_reservation(row)

    async def extend_reservation(
        self, tenant_id: str, reservation_id: str, until: datetime, now: datetime
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(RS)
                .where(
                    RS.c.tenant_id == tenant_id,
                    RS.c.id == reservation_id,
                    RS.c.state == _PENDING,
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
                .where(RS.c.state == _PENDING, RS.c.expires_at <= now)
                .order_by(RS.c.expires_at)
                .limit(limit)
            )
            return [(row.tenant_id, row.id) for row in rows]

    async def _paying_row(
        self, conn: AsyncConnection, tenant_id: str, location_id: str
    ) -> Row[Any]:
        rows = {
            r.location_id: r for r in await conn.execute(_TENANT_WALLETS, {"tenant_id": tenant_id})
        }
        row = (rows.get(location_id) if location_id else None) or rows.get("")
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} has no token wallet")
        return row

    async def balance(self, tenant_id: str, location_id: str) -> Balance:
        async with self._read.connect() as conn:
            return to_balance(await self._paying_row(conn, tenant_id, location_id))

    async def list_entries(
        self, tenant_id: str, which: UsageFilter, page: PageRequest
    ) -> tuple[list[Entry], str]:
        query = select(E).where(E.c.tenant_id == tenant_id)
        if which.location_id:
            query = query.where(E.c.location_id == which.location_id)
        if which.wallet_location_id is not None:
            query = query.where(E.c.wallet_location_id == which.wallet_location_id)
        if which.user_id:
            query = query.where(E.c.user_id == which.user_id, E.c.user_id != "")
        if which.operation_types:
            query = query.where(
                E.c.operation_type.in_(sorted(op.value for op in which.operation_types))
            )
        if which.start is not None:
            query = query.where(E.c.created_at >= which.start)
        if which.end is not None:
            query = query.where(E.c.created_at < which.end)
        async with self._read.connect() as conn:
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
            wallet = await self._paying_row(conn, tenant_id, location_id)
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
            wallet = await self._paying_row(conn, tenant_id, location_id)
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
