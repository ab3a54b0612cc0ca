"""The protos state a limit for every free-text and repeated field of every request,
and the domain's own limits agree with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agentserver.domain.conversations import MAX_MESSAGE_CHARS
from agentserver.domain.deciding import MAX_REASON_CHARS
from agentserver.domain.identity import MAX_LOCATION_ID, MAX_TENANT_ID, MAX_USER_ID
from agentserver.domain.ledger import MAX_REQUEST_ID
from agentserver.entrypoints.grpc.requests import check_request
from agentserver.entrypoints.grpc.server import SERVICES
from agentserver.v1 import agent_service_pb2, common_pb2, token_service_pb2

WELL_KNOWN = ("google.protobuf.",)


def request_fields(
    message: Descriptor, seen: frozenset[str] = frozenset()
) -> Iterator[FieldDescriptor]:
    """Every field reachable from a request message, except inside well-known types
    (a Struct is bounded as a whole by `max_bytes`)."""
    for fd in message.fields:
        yield fd
        nested = fd.message_type
        if (
            nested is not None
            and not nested.full_name.startswith(WELL_KNOWN)
            and nested.full_name not in seen
        ):
            yield from request_fields(nested, seen | {nested.full_name})


def all_request_fields() -> list[FieldDescriptor]:
    out: dict[str, FieldDescriptor] = {}
    for service in SERVICES:
        for method in service.methods:
            for fd in request_fields(method.input_type):
                out[fd.full_name] = fd
    return list(out.values())


@pytest.mark.parametrize("fd", all_request_fields(), ids=lambda fd: fd.full_name)
def test_every_string_repeated_and_struct_field_has_limits(fd: FieldDescriptor) -> None:
    limits = fd.GetOptions().Extensions[common_pb2.limits]
    if fd.is_repeated:
        assert limits.max_items > 0, f"{fd.full_name} needs (limits).max_items"
    if fd.type == FieldDescriptor.TYPE_STRING:
        assert limits.max_chars > 0, f"{fd.full_name} needs (limits).max_chars"
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Struct":
        assert limits.max_bytes > 0, f"{fd.full_name} needs (limits).max_bytes"


def _max_chars(message: type, name: str) -> int:
    fd = message.DESCRIPTOR.fields_by_name[name]  # type: ignore[attr-defined]
    return int(fd.GetOptions().Extensions[common_pb2.limits].max_chars)


def test_the_domain_agrees_with_the_protos() -> None:
    assert _max_chars(token_service_pb2.ChargeTokensRequest, "tenant_id") == MAX_TENANT_ID
    assert _max_chars(token_service_pb2.ChargeTokensRequest, "location_id") == MAX_LOCATION_ID
    assert _max_chars(token_service_pb2.ChargeTokensRequest, "request_id") == MAX_REQUEST_ID
    assert _max_chars(agent_service_pb2.ProcessRequest, "message") == MAX_MESSAGE_CHARS
    assert _max_chars(agent_service_pb2.RejectActionRequest, "reason") == MAX_REASON_CHARS
    from agentserver.v1 import conversation_service_pb2

    assert _max_chars(conversation_service_pb2.ListUserSessionsRequest, "user_id") == MAX_USER_ID


def test_check_request_names_the_first_field_past_a_limit() -> None:
    ok = token_service_pb2.ChargeTokensRequest(tenant_id="t", description="x" * 500)
    assert check_request(ok) is None
    long = token_service_pb2.ChargeTokensRequest(tenant_id="t", description="x" * 501)
    violation = check_request(long)
    assert violation is not None
    assert violation.field == "description"
    assert "500" in violation.description
    nul = agent_service_pb2.ProcessRequest(message="hi")
    nul.context.business_context.update({"a": {"b": ["ok", "bad\x00"]}})
    found = check_request(nul)
    assert found is not None
    assert found.field.startswith("context.business_context")
    assert "NUL" in found.description
