"""Bad input of every kind is INVALID_ARGUMENT with the field named, never INTERNAL or
UNKNOWN, and changes nothing: bodies that do not parse, values out of range, NaN in a
Struct, oversized free text."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from agentserver.client import AgentServerError, StatusCode
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness

SMS = common_pb2.OPERATION_TYPE_SMS


def rid() -> str:
    return uuid.uuid4().hex


async def raw_call(
    h: Harness, method: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str, list[str]]:
    """Send `body` as it is to `method`; the status code, details and the fields
    named by a BadRequest detail."""
    async with grpc.aio.insecure_channel(h.target) as channel:
        call = channel.unary_unary(method)
        try:
            await call(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            fields: list[str] = []
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    status = status_pb2.Status.FromString(value)
                    for detail in status.details:
                        bad = error_details_pb2.BadRequest()
                        if detail.Unpack(bad):
                            fields += [v.field for v in bad.field_violations]
            return err.code(), err.details() or "", fields
    return grpc.StatusCode.OK, "", []


def deep_struct_bytes(depth: int) -> bytes:
    value = struct_pb2.Value()
    cursor = value
    for _ in range(depth):
        cursor = cursor.struct_value.fields["x"]
    context_struct = value.struct_value
    request = apb.ProcessRequest(message="hello")
    request.context.business_context.CopyFrom(context_struct)
    return request.SerializeToString()


# A string field (ProcessRequest.message, field 1) holding bytes that are not UTF-8.
INVALID_UTF8 = b"\x0a\x02\xff\xfe"


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/agentserver.v1.AgentService/Process", b"\xff\xff\xff\xff\x0f garbage"),
        ("/agentserver.v1.AgentService/Process", INVALID_UTF8),
        ("/agentserver.v1.AgentService/Process", deep_struct_bytes(150)),
        ("/agentserver.v1.TokenService/ChargeTokens", b"\x0a\x80"),
        ("/agentserver.v1.ConversationService/ListMessages", b"\x1a\x05\x08"),
    ],
)
async def test_a_body_that_does_not_parse_is_invalid_argument(
    harness: Harness, method: str, body: bytes
) -> None:
    # No key at all: the body is refused before anything else is looked at.
    code, details, fields = await raw_call(harness, method, body)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert fields == ["request"]
    assert "DecodeError" not in details and "upb" not in details and "Traceback" not in details


async def test_an_unparseable_body_is_not_logged_with_a_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await raw_call(harness, "/agentserver.v1.AgentService/Process", INVALID_UTF8)
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a client's mistake"


async def test_timestamp_out_of_range_names_the_field(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client("alice") as client:
        session = (await client.process(apb.ProcessRequest(message="hello"))).session_id
        for seconds in (253402300800, -62135596801, 2**62):
            with pytest.raises(AgentServerError) as err:
                await client.list_messages(
                    cpb.ListMessagesRequest(
                        session_id=session, before=timestamp_pb2.Timestamp(seconds=seconds)
                    )
                )
            assert err.value.code is StatusCode.INVALID_ARGUMENT
            assert [v.field for v in err.value.details.field_violations] == ["before"]


@pytest.mark.parametrize(
    "ttl",
    [
        duration_pb2.Duration(seconds=2**62),
        duration_pb2.Duration(seconds=315576000000),
        duration_pb2.Duration(seconds=-(2**62)),
        duration_pb2.Duration(seconds=1, nanos=-5),
    ],
)
async def test_duration_out_of_range_names_the_field(
    harness: Harness, ttl: duration_pb2.Duration
) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        with pytest.raises(AgentServerError) as err:
            await client.reserve_tokens(
                tpb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid(), ttl=ttl
                )
            )
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert "ttl" in [v.field for v in err.value.details.field_violations]
        balance = await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))
        assert balance.balance.reserved_tokens == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_nan_or_infinity_in_business_context_names_the_field(
    harness: Harness, bad: float
) -> None:
    t = await harness.tenant(10)
    async with t.client("alice") as client:
        context = apb.ProcessContext()
        context.business_context.update({"hours": {"open": [9, bad]}})
        with pytest.raises(AgentServerError) as err:
            await client.process(apb.ProcessRequest(message="hello", context=context))
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        fields = [v.field for v in err.value.details.field_violations]
        assert fields == ["context.business_context.hours.open[1]"]
        sessions = await client.list_user_sessions(cpb.ListUserSessionsRequest())
        assert not sessions.sessions, "nothing was stored"


async def test_nan_in_approval_parameters_names_the_field(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with t.client("alice") as client:
        resp = await client.process(
            apb.ProcessRequest(message="Book the Blue Room tomorrow at 3pm for 1 hour for Maria")
        )
        waiting = [a for a in resp.actions if a.state == apb.ACTION_STATE_AWAITING_USER]
        assert waiting, resp
        params = struct_pb2.Struct()
        params.update({"duration_minutes": float("nan")})
        with pytest.raises(AgentServerError) as err:
            await client.approve_action(
                apb.ApproveActionRequest(
                    action_id=waiting[0].id, parameters=params, request_id=rid()
                )
            )
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.details.field_violations] == [
            "parameters.duration_minutes"
        ]
        action = (await client.get_action(apb.GetActionRequest(action_id=waiting[0].id))).action
        assert action.state == apb.ACTION_STATE_AWAITING_USER


@pytest.mark.parametrize(
    ("field", "build"),
    [
        (
            "description",
            lambda t: tpb.ChargeTokensRequest(
                tenant_id=t, operation_type=SMS, amount=1, request_id=rid(), description="x" * 3000
            ),
        ),
        (
            "description",
            lambda t: tpb.ChargeTokensRequest(
                tenant_id=t,
                operation_type=SMS,
                amount=1,
                request_id=rid(),
                description="x" * 3_000_000,
            ),
        ),
    ],
)
async def test_free_text_is_bounded(harness: Harness, field: str, build: object) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        with pytest.raises(AgentServerError) as err:
            await client.charge_tokens(build(t.id))  # type: ignore[operator]
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.details.field_violations] == [field]
        balance = await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))
        assert balance.balance.available_tokens == 10


async def test_business_context_is_bounded(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client("alice") as client:
        context = apb.ProcessContext()
        context.business_context.update({"notes": "y" * 70_000})
        with pytest.raises(AgentServerError) as err:
            await client.process(apb.ProcessRequest(message="hello", context=context))
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.details.field_violations] == ["context.business_context"]


async def test_asserted_permissions_are_bounded(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client("alice") as client:
        context = apb.ProcessContext(user_permissions=[f"p{i}:read" for i in range(300)])
        with pytest.raises(AgentServerError) as err:
            await client.process(apb.ProcessRequest(message="hello", context=context))
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.details.field_violations] == ["context.user_permissions"]
