"""The ledger's rows as domain values, and a plan's writes as rows."""

from __future__ import annotations

import json
from typing import Any

from agentserver.domain.costs import OperationType
from agentserver.domain.ledger import (
    Attribution,
    Balance,
    Entry,
    EntryKind,
    Reservation,
    ReservationState,
)
from agentserver.domain.ledger_kernel import Columns, Delta, Plan, Prior, Wallet

_PENDING = ReservationState.PENDING.value


# --- rows to domain values ------------------------------------------------------------


def columns_of(row: Any) -> Columns:
    return Columns(
        row.total_tokens,
        row.used_tokens,
        row.reserved_tokens,
        row.arrears_tokens,
        row.low_balance_threshold,
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
        attribution=attribution_of(row),
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
        attribution=attribution_of(row),
    )


def attribution_of(row: Any) -> Attribution:
    meta = row.metadata
    if isinstance(meta, str):  # asyncpg hands json over as text
        meta = json.loads(meta)
    return Attribution(row.user_id, row.session_id, meta or {})


def attribution_columns(about: Attribution) -> dict[str, Any]:
    return {
        "user_id": about.user_id,
        "session_id": about.session_id,
        "metadata": dict(about.metadata),
    }


def to_wallet(row: Any, *, with_columns: bool = True) -> Wallet:
    return Wallet(row.id, row.tenant_id, row.location_id, columns_of(row) if with_columns else None)


# --- plan to rows -------------------------------------------------------------------


def entry_rows(plan: Plan, finals: dict[str, Columns]) -> list[dict[str, Any]]:
    """The plan's entries as rows, their after-values from the wallets' final columns."""
    rows = []
    for e in plan.entries:
        after = e.after(finals[e.wallet_id])
        rows.append(
            {
                "id": e.id,
                "tenant_id": plan.tenant_id,
                "location_id": e.location_id,
                "wallet_id": e.wallet_id,
                "wallet_location_id": e.wallet_location_id,
                "operation_type": e.operation_type.value,
                "kind": e.kind.value,
                "tokens": e.tokens,
                "total_delta": e.delta.total,
                "used_delta": e.delta.used,
                "reserved_delta": e.delta.reserved,
                "arrears_delta": e.delta.arrears,
                "total_after": after.total,
                "used_after": after.used,
                "reserved_after": after.reserved,
                "arrears_after": after.arrears,
                "description": e.description,
                "request_id": e.request_id,
                "request_hash": e.request_hash,
                "reservation_id": e.reservation_id,
                "created_at": plan.now,
                **attribution_columns(e.attribution),
            }
        )
    return rows


def reservation_rows(plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for r in plan.reservations:
        wallet = next(w for w in plan.wallets.values() if w.location_id == r.wallet_location_id)
        rows.append(
            {
                "id": r.id,
                "tenant_id": r.tenant_id,
                "wallet_id": wallet.id,
                "location_id": r.location_id,
                "wallet_location_id": r.wallet_location_id,
                "operation_type": r.operation_type.value,
                "amount": r.amount,
                "captured_amount": 0,
                "state": _PENDING,
                "description": r.description,
                "expires_at": r.expires_at,
                "created_at": r.created_at,
                "ended_at": None,
                **attribution_columns(r.attribution),
            }
        )
    return rows


def prior_of(row: Any, reservation: Reservation | None) -> Prior:
    return Prior(
        request_hash=row.request_hash,
        entry=to_entry(row),
        wallet_id=row.wallet_id,
        delta=Delta(row.total_delta, row.used_delta, row.reserved_delta, row.arrears_delta),
        arrears_after=row.arrears_after,
        reservation=reservation,
    )
