"""One rendering of an event for every path: the protobuf `Event` (the gRPC stream),
and JSON made from that same message (webhook bodies, NATS messages).

Each type with a typed payload has a message in event_service.proto; its outbox
payload is read into that message field by field (unknown keys ignored, enums
named from the domain's values). A type without one travels as `data` (a Struct)
so nothing is dropped while its message does not exist yet.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agentserver.domain import events as ev
from agentserver.domain.events import StoredEvent
from agentserver.v1 import event_service_pb2 as pb

# Outbox payload values of enum fields (the domain's words), as the protos' enum names.
_ENUMS: dict[str, str] = {
    "kind": "ENTRY_KIND_",
    "operation_type": "OPERATION_TYPE_",
    "state": "ACTION_STATE_",
    "decision_level": "DECISION_LEVEL_",
    "role": "MESSAGE_ROLE_",
}
# What every action event says about its action: the payload's top-level keys that
# the proto gathers into `action` (ActionSummary).
_ACTION_SUMMARY = (
    "action_type",
    "session_id",
    "location_id",
    "requested_by",
    "state",
    "decision_level",
    "token_cost",
)
_RENAMED = {"expires_at": "expire_time"}

# Event type -> the `payload` oneof field carrying it.
PAYLOAD_FIELDS: dict[str, str] = {
    ev.LEDGER_ENTRY: "ledger_entry",
    ev.TOKENS_ADDED: "tokens_added",
    ev.LOW_BALANCE: "low_balance",
    ev.FEE_CHARGED: "fee_charged",
    ev.ACTION_CREATED: "action_created",
    ev.ACTION_WAITING: "action_waiting",
    ev.ACTION_APPROVED: "action_approved",
    ev.ACTION_REJECTED: "action_rejected",
    ev.ACTION_SUCCEEDED: "action_succeeded",
    ev.ACTION_FAILED: "action_failed",
    ev.ACTION_OUTCOME_UNKNOWN: "action_outcome_unknown",
    ev.ACTION_EXPIRED: "action_expired",
    ev.ACTION_CANCELLED: "action_cancelled",
    ev.MESSAGE_STORED: "message_stored",
    ev.WEBHOOK_ENDPOINT_DISABLED: "webhook_endpoint_disabled",
    ev.WEBHOOK_TEST: "webhook_test",
}


def _shaped(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload in the proto's shape: an action event's summary fields nested
    under `action`, renamed keys renamed."""
    out = {_RENAMED.get(k, k): v for k, v in payload.items() if v is not None}
    if event_type.startswith("action."):
        out["action"] = {k: out.pop(k) for k in _ACTION_SUMMARY if k in out}
    return out


def _proto_ready(descriptor: Descriptor, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload's keys that the message has, enum values as enum names, nested
    messages likewise (Structs and Timestamps as they are)."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is None:
            continue
        if fd.enum_type is not None and isinstance(value, str) and key in _ENUMS:
            out[key] = _ENUMS[key] + value.upper()
        elif (
            fd.message_type is not None
            and not fd.message_type.full_name.startswith("google.protobuf.")
            and isinstance(value, dict)
        ):
            out[key] = _proto_ready(fd.message_type, value)
        else:
            out[key] = value
    return out


def to_proto(event: StoredEvent) -> pb.Event:
    out = pb.Event(
        id=event.id,
        tenant_id=event.tenant_id,
        seq=event.seq,
        type=event.type,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
    )
    out.create_time.FromDatetime(event.created_at)
    name = PAYLOAD_FIELDS.get(event.type)
    if name is None:
        out.data.update(event.payload)
        return out
    target = getattr(out, name)
    try:
        shaped = _shaped(event.type, event.payload)
        json_format.ParseDict(
            _proto_ready(target.DESCRIPTOR, shaped), target, ignore_unknown_fields=True
        )
    except json_format.ParseError:
        # A payload this version cannot type (written by a newer one): keep it whole.
        out.ClearField(name)  # type: ignore[arg-type]
        out.data.update(event.payload)
        return out
    target.SetInParent()
    return out


def payload_json(event: pb.Event) -> dict[str, Any]:
    """The event's payload as JSON: proto field names, every field present, enums by
    name, and (unlike proto3's JSON mapping, which quotes them) 64-bit integers as
    numbers, as receivers expect of counts of tokens."""
    which = event.WhichOneof("payload")
    if which is None:
        return {}
    message = getattr(event, which)
    rendered = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(message, rendered)


_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _numbers(message: Message, rendered: dict[str, Any]) -> dict[str, Any]:
    """64-bit integer fields as numbers again; a Struct's integral numbers as integers."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        return {k: _integral(v) for k, v in rendered.items()}
    for fd in message.DESCRIPTOR.fields:
        if fd.name not in rendered or fd.is_repeated:
            continue
        if fd.type in _INT64:
            rendered[fd.name] = int(rendered[fd.name])
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and isinstance(rendered[fd.name], dict):
            rendered[fd.name] = _numbers(getattr(message, fd.name), rendered[fd.name])
    return rendered


def _integral(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def to_json(event: pb.Event) -> bytes:
    """The JSON body of a webhook (and a NATS message): id, type, tenant, sequence,
    time and the typed payload as `data`."""
    body = {
        "id": event.id,
        "type": event.type,
        "tenant_id": event.tenant_id,
        "seq": event.seq,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "timestamp": _rfc3339(event.create_time.ToDatetime()),
        "data": payload_json(event),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
