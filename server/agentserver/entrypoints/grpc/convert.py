"""Domain values to proto messages and back."""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from agentserver.domain.actions import Action, ActionState
from agentserver.domain.conversations import Message, Role, Session
from agentserver.domain.costs import CostTable, OperationCost, OperationType
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.ledger import (
    Attribution,
    Balance,
    Entry,
    EntryKind,
    Reservation,
    ReservationState,
    UsageFilter,
)
from agentserver.domain.people import DecisionRight
from agentserver.domain.registry import ActionDefinition, Registry
from agentserver.v1 import (
    agent_service_pb2,
    common_pb2,
    conversation_service_pb2,
    token_service_pb2,
)

# google.protobuf.Duration's range: about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000

E = TypeVar("E", bound=enum.Enum)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """`when` as a Timestamp (what `Timestamp.FromDatetime` gives, a quarter of its
    cost: every answer carries a few). A naive datetime is taken as local time."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.astimezone(UTC)
    since = when - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def from_ts(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A request's timestamp; INVALID_ARGUMENT naming `field` when it is not a valid
    Timestamp (years 1 to 9999) or Python cannot hold it."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(
            field, "is not a valid timestamp (years 0001 to 9999 UTC)"
        ) from None


def from_duration(value: duration_pb2.Duration, field: str) -> timedelta:
    """A request's duration; INVALID_ARGUMENT naming `field` when it is not a valid
    Duration (at most 10,000 years, seconds and nanos of one sign)."""
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) >= 1_000_000_000
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument.field(field, "is not a valid duration")
    return value.ToTimedelta()


def op_to_pb(op: OperationType) -> common_pb2.OperationType.ValueType:
    return _OPERATION_TYPES[op]


def _prefix(wrapper: Any) -> str:
    """A proto enum's value prefix: its UPPER_SNAKE type name (`ActionState`:
    `ACTION_STATE_`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", wrapper.DESCRIPTOR.name).upper() + "_"


def _to_pb(domain: type[E], wrapper: Any) -> dict[E, Any]:
    """Each member of a domain enum and the proto value named alike, built once at
    import (a member without one fails the import)."""
    prefix = _prefix(wrapper)
    return {member: wrapper.Value(prefix + member.name) for member in domain}


_OPERATION_TYPES: dict[OperationType, common_pb2.OperationType.ValueType] = _to_pb(
    OperationType, common_pb2.OperationType
)
_ENTRY_KINDS: dict[EntryKind, token_service_pb2.EntryKind.ValueType] = _to_pb(
    EntryKind, token_service_pb2.EntryKind
)
_RESERVATION_STATES: dict[ReservationState, token_service_pb2.ReservationState.ValueType] = _to_pb(
    ReservationState, token_service_pb2.ReservationState
)


def enum_name(wrapper: Any, value: int, prefix: str, field: str, hint: str) -> str:
    """The member name (without `prefix`) of a set proto enum value; INVALID_ARGUMENT
    for the UNSPECIFIED zero or a number the enum does not have."""
    name = _names(wrapper).get(value, "")
    if not name or value == 0:
        raise InvalidArgument.field(field, hint)
    return name.removeprefix(prefix)


@functools.cache  # the enums are module singletons; build each map once
def _names(wrapper: Any) -> dict[int, str]:
    return {int(v): n for n, v in wrapper.items()}


def op_from_pb(value: int, field: str = "operation_type") -> OperationType:
    return OperationType[
        enum_name(
            common_pb2.OperationType,
            value,
            "OPERATION_TYPE_",
            field,
            "is required (an OPERATION_TYPE_* value)",
        )
    ]


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
        kind=_ENTRY_KINDS[EntryKind(e.kind)],
        tokens=e.tokens,
        description=e.description,
        request_id=e.request_id,
        reservation_id=e.reservation_id or "",
        available_after=e.available_after,
        create_time=ts(e.created_at),
        user_id=e.attribution.user_id,
        session_id=e.attribution.session_id,
        metadata=dict_to_struct(dict(e.attribution.metadata)),
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
        state=_RESERVATION_STATES[ReservationState(r.state)],
        expire_time=ts(r.expires_at),
        create_time=ts(r.created_at),
        end_time=ts(r.ended_at),
        description=r.description,
        user_id=r.attribution.user_id,
        session_id=r.attribution.session_id,
        metadata=dict_to_struct(dict(r.attribution.metadata)),
    )


def usage_filter_from_pb(request: token_service_pb2.ListUsageRequest) -> UsageFilter:
    return UsageFilter(
        location_id=request.location_id,
        wallet_location_id=(
            request.wallet_location_id if request.HasField("wallet_location_id") else None
        ),
        user_id=request.user_id,
        operation_types=frozenset(
            op_from_pb(op, f"operation_types[{i}]") for i, op in enumerate(request.operation_types)
        ),
        start=from_ts(request.start_time, "start_time") if request.HasField("start_time") else None,
        end=from_ts(request.end_time, "end_time") if request.HasField("end_time") else None,
    )


def attribution_from_pb(
    request: token_service_pb2.ChargeTokensRequest | token_service_pb2.ReserveTokensRequest,
) -> Attribution:
    return Attribution(
        user_id=request.user_id,
        session_id=request.session_id,
        metadata=struct_to_dict(request.metadata, "metadata")
        if request.HasField("metadata")
        else {},
    )


def cost_to_pb(c: OperationCost) -> token_service_pb2.OperationCost:
    return token_service_pb2.OperationCost(
        operation_type=op_to_pb(c.operation_type), tokens=c.tokens, description=c.description
    )


# --- agent and conversations --------------------------------------------------


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A request's Struct as plain JSON values; whole floats become ints (Struct has
    no ints). NaN and infinities have no JSON form: INVALID_ARGUMENT naming where."""
    return {k: _plain(v, f"{field}.{k}") for k, v in value.fields.items()}


def _plain(value: struct_pb2.Value, path: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument.field(path, "must be a finite number (not NaN or infinity)")
        return int(number) if number.is_integer() else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _plain(v, f"{path}.{k}") for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with nothing set


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    try:
        out.update(value)
    except (TypeError, ValueError):  # not plain JSON values (a datetime, say): stringify
        out = struct_pb2.Struct()
        out.update(json.loads(json.dumps(value, default=str)))
    return out


def level_to_pb(level: int) -> common_pb2.DecisionLevel.ValueType:
    if not level:
        return common_pb2.DECISION_LEVEL_UNSPECIFIED
    return common_pb2.DecisionLevel.Value(f"DECISION_LEVEL_{DecisionLevel(level).name}")


def state_to_pb(state: ActionState) -> agent_service_pb2.ActionState.ValueType:
    return _ACTION_STATES[state]


_ACTION_STATES: dict[ActionState, agent_service_pb2.ActionState.ValueType] = _to_pb(
    ActionState, agent_service_pb2.ActionState
)


def _from_pb(domain: type[E], wrapper: Any, value: int, field: str, what: str) -> E:
    """The domain enum member of a proto enum value named alike (the proto's prefix
    is its UPPER_SNAKE type name); INVALID_ARGUMENT naming `field` otherwise."""
    return domain[enum_name(wrapper, value, _prefix(wrapper), field, f"{value} is not {what}")]


def state_from_pb(value: int) -> ActionState:
    return _from_pb(ActionState, agent_service_pb2.ActionState, value, "states", "an action state")


def level_from_pb(value: int) -> DecisionLevel:
    return _from_pb(DecisionLevel, common_pb2.DecisionLevel, value, "levels", "a decision level")


def reservation_state_from_pb(value: int) -> ReservationState:
    return _from_pb(
        ReservationState, token_service_pb2.ReservationState, value, "states", "a reservation state"
    )


def right_to_pb(r: DecisionRight) -> agent_service_pb2.DecisionRight:
    return agent_service_pb2.DecisionRight(
        allowed=r.allowed, reason=r.reason, explanation=r.explanation, deciders=r.deciders
    )


def action_to_pb(a: Action, right: DecisionRight | None = None) -> agent_service_pb2.Action:
    result = a.result or {}
    return agent_service_pb2.Action(
        id=a.id,
        session_id=a.session_id,
        action_type=a.action_type,
        category=a.category,
        parameters=dict_to_struct(a.parameters),
        decision_level=level_to_pb(a.level),
        state=state_to_pb(a.state),
        executable=a.executable,
        blocked_reasons=[
            agent_service_pb2.BlockedReason(
                reason=b.get("reason", ""),
                message=b.get("message", ""),
                subject=b.get("subject", ""),
            )
            for b in a.blocked
        ],
        token_cost=a.token_cost,
        confidence=a.confidence,
        reasoning=a.reasoning,
        requested_by=a.requested_by,
        decided_by=a.decided_by,
        rejection_reason=a.rejection_reason,
        result=agent_service_pb2.ActionResult(
            channel=str(result.get("channel", "")),
            provider_id=str(result.get("provider_id", "")),
            detail=dict_to_struct(dict(result.get("detail") or {})),
            error=str(result.get("error", "")),
        )
        if result
        else None,
        location_id=a.location_id,
        create_time=ts(a.created_at),
        update_time=ts(a.updated_at),
        expire_time=ts(a.expires_at),
        depends_on=a.depends_on or "",
        decision_right=right_to_pb(right) if right is not None else None,
    )


def definition_to_pb(
    d: ActionDefinition, costs: CostTable, registry: Registry
) -> agent_service_pb2.ActionDefinition:
    return agent_service_pb2.ActionDefinition(
        name=d.name,
        category=d.category,
        description=d.description,
        parameters_json_schema=json.dumps(d.parameters_schema, sort_keys=True),
        required_permissions=list(d.required_permissions),
        token_cost=registry.token_cost(d.name, costs),
        operation_type=(
            op_to_pb(d.operation_type)
            if d.operation_type
            else common_pb2.OPERATION_TYPE_UNSPECIFIED
        ),
        default_decision_level=level_to_pb(d.default_level),
        requires_approval=d.requires_approval,
        read_only=d.read_only,
        destructive=d.destructive,
        idempotent=d.idempotent,
        **{"async": d.is_async},
    )


def session_to_pb(s: Session) -> conversation_service_pb2.Session:
    return conversation_service_pb2.Session(
        id=s.id,
        tenant_id=s.tenant_id,
        user_id=s.user_id,
        location_id=s.location_id,
        title=s.title,
        message_count=s.message_count,
        create_time=ts(s.created_at),
        update_time=ts(s.updated_at),
    )


_ROLES = {
    Role.USER: conversation_service_pb2.MESSAGE_ROLE_USER,
    Role.ASSISTANT: conversation_service_pb2.MESSAGE_ROLE_ASSISTANT,
    Role.SYSTEM: conversation_service_pb2.MESSAGE_ROLE_SYSTEM,
}


def message_to_pb(m: Message) -> conversation_service_pb2.Message:
    return conversation_service_pb2.Message(
        id=m.id,
        session_id=m.session_id,
        role=_ROLES[m.role],
        content=m.content,
        decision_level=level_to_pb(m.decision_level),
        action_ids=m.action_ids,
        create_time=ts(m.created_at),
    )
