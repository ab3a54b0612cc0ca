"""Domain values to proto messages and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from agentserver.domain.costs import OperationCost, OperationType
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.ledger import Balance, Entry, EntryKind, Reservation, ReservationState
from agentserver.v1 import common_pb2, token_service_pb2


def ts(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when.astimezone(UTC))
    return out


def from_ts(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def from_duration(value: duration_pb2.Duration) -> timedelta:
    return value.ToTimedelta()


def op_to_pb(op: OperationType) -> common_pb2.OperationType.ValueType:
    return common_pb2.OperationType.Value(f"OPERATION_TYPE_{op.name}")


def op_from_pb(value: int, field: str = "operation_type") -> OperationType:
    name = common_pb2.OperationType.Name(value) if value in common_pb2.OperationType.values() else ""
    if not name or value == common_pb2.OPERATION_TYPE_UNSPECIFIED:
        raise InvalidArgument.field(field, "is required (an OPERATION_TYPE_* value)")
    return OperationType[name.removeprefix("OPERATION_TYPE_")]


def balance_to_pb(b: Balance) -> token_service_pb2.Balance:
    return token_service_pb2.Balance(
        tenant_id=b.tenant_id,
        location_id=b.location_id,
        total_tokens=b.total,
        used_tokens=b.used,
        reserved_tokens=b.reserved,
        available_tokens=b.available,
        arrears_tokens=b.arrears,
        low_balance_threshold=b.low_balance_threshold,
        last_purchase_time=ts(b.last_purchase_at),
        create_time=ts(b.created_at),
        update_time=ts(b.updated_at),
    )


def entry_to_pb(e: Entry) -> token_service_pb2.UsageEntry:
    return token_service_pb2.UsageEntry(
        id=e.id,
        tenant_id=e.tenant_id,
        location_id=e.location_id,
        wallet_location_id=e.wallet_location_id,
        operation_type=op_to_pb(e.operation_type),
        kind=token_service_pb2.EntryKind.Value(f"ENTRY_KIND_{EntryKind(e.kind).name}"),
        tokens=e.tokens,
        description=e.description,
        request_id=e.request_id,
        reservation_id=e.reservation_id or "",
        available_after=e.available_after,
        create_time=ts(e.created_at),
    )


def reservation_to_pb(r: Reservation) -> token_service_pb2.Reservation:
    return token_service_pb2.Reservation(
        id=r.id,
        tenant_id=r.tenant_id,
        location_id=r.location_id,
        wallet_location_id=r.wallet_location_id,
        operation_type=op_to_pb(r.operation_type),
        amount=r.amount,
        captured_amount=r.captured_amount,
        state=token_service_pb2.ReservationState.Value(
            f"RESERVATION_STATE_{ReservationState(r.state).name}"
        ),
        expire_time=ts(r.expires_at),
        create_time=ts(r.created_at),
        end_time=ts(r.ended_at),
        description=r.description,
    )


def cost_to_pb(c: OperationCost) -> token_service_pb2.OperationCost:
    return token_service_pb2.OperationCost(
        operation_type=op_to_pb(c.operation_type), tokens=c.tokens, description=c.description
    )
