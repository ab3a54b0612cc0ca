"""The typed client against a real grpc.aio server running a test TokenService.

The test servicer echoes the metadata it receives (ListUsage), fails with a rich
status (ChargeTokens), fails without details or with a corrupt details trailer
(GetCosts, ReleaseReservation) and sleeps on request (ReserveTokens), so identity
headers, error translation and deadlines are checked over the wire.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    code_pb2,
    error_details_pb2,
    status_pb2,
)
from grpc_status import rpc_status

from agentserver.client import (
    AgentServerClient,
    AgentServerError,
    ErrorDetails,
    FieldViolation,
    PreconditionViolation,
    QuotaViolation,
    StatusCode,
)
from agentserver.v1 import agent_service_pb2, token_service_pb2, token_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


RICH_STATUS = status_pb2.Status(
    code=code_pb2.FAILED_PRECONDITION,
    message="wallet t1 cannot cover 500 tokens",
    details=[
        _packed(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="amount", description="must be at most 100"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="request_id", description="must not be empty"
                    ),
                ]
            )
        ),
        _packed(
            error_details_pb2.ErrorInfo(
                reason="INSUFFICIENT_TOKENS",
                domain="agentserver",
                metadata={"available": "120", "requested": "500"},
            )
        ),
        _packed(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject="tenant:t1", description="380 tokens short"
                    )
                ]
            )
        ),
        _packed(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=2, nanos=250_000_000)
            )
        ),
        _packed(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="BALANCE", subject="tenant:t1", description="balance too low"
                    )
                ]
            )
        ),
        # A detail type the client does not parse is skipped.
        _packed(error_details_pb2.DebugInfo(detail="stack")),
    ],
)


class EchoTokenService(token_service_pb2_grpc.TokenServiceServicer):
    """Each rpc exercises one behaviour of the client."""

    async def ListUsage(
        self, request: token_service_pb2.ListUsageRequest, context: Context
    ) -> token_service_pb2.ListUsageResponse:
        # Echo: one entry per received metadata pair, key in `id`, value in `description`.
        entries = [
            token_service_pb2.UsageEntry(id=key, description=value)
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        ]
        return token_service_pb2.ListUsageResponse(entries=entries)

    async def ChargeTokens(
        self, request: token_service_pb2.ChargeTokensRequest, context: Context
    ) -> token_service_pb2.ChargeTokensResponse:
        status = rpc_status.to_status(RICH_STATUS)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def GetCosts(
        self, request: token_service_pb2.GetCostsRequest, context: Context
    ) -> token_service_pb2.GetCostsResponse:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no price list")

    async def ReleaseReservation(
        self, request: token_service_pb2.ReleaseReservationRequest, context: Context
    ) -> token_service_pb2.ReleaseReservationResponse:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "ledger down",
            (("grpc-status-details-bin", b"\xff\xff not a status"),),
        )

    async def ReserveTokens(
        self, request: token_service_pb2.ReserveTokensRequest, context: Context
    ) -> token_service_pb2.ReserveTokensResponse:
        # Sleeps `amount` milliseconds, to let deadlines expire.
        await asyncio.sleep(request.amount / 1000)
        return token_service_pb2.ReserveTokensResponse(
            reservation=token_service_pb2.Reservation(id="r1", amount=request.amount)
        )


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # The rpcs it leaves out answer UNIMPLEMENTED at runtime.
    servicer = EchoTokenService()  # type: ignore[abstract]
    token_service_pb2_grpc.add_TokenServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def client(address: str) -> AsyncIterator[AgentServerClient]:
    async with AgentServerClient(
        address,
        api_key="key-1",
        tenant_id="t1",
        user_id="u1",
        location_id="loc1",
        default_timeout=5.0,
    ) as client:
        yield client


IDENTITY_KEYS = {"authorization", "x-tenant-id", "x-user-id", "x-location-id", "x-request-tag"}


async def _echoed(client: AgentServerClient, **kwargs: Any) -> list[tuple[str, str]]:
    response = await client.list_usage(token_service_pb2.ListUsageRequest(tenant_id="t1"), **kwargs)
    return sorted((e.id, e.description) for e in response.entries if e.id in IDENTITY_KEYS)


async def test_identity_is_sent_on_every_call(client: AgentServerClient) -> None:
    expected = [
        ("authorization", "Bearer key-1"),
        ("x-location-id", "loc1"),
        ("x-tenant-id", "t1"),
        ("x-user-id", "u1"),
    ]
    assert await _echoed(client) == expected
    assert await _echoed(client) == expected


async def test_per_call_metadata_replaces_the_default_key_and_adds_others(
    client: AgentServerClient,
) -> None:
    echoed = await _echoed(client, metadata=[("X-User-Id", "u2"), ("x-request-tag", "abc")])

    assert echoed == [
        ("authorization", "Bearer key-1"),
        ("x-location-id", "loc1"),
        ("x-request-tag", "abc"),
        ("x-tenant-id", "t1"),
        ("x-user-id", "u2"),
    ]
    # The override was for one call only.
    assert ("x-user-id", "u1") in await _echoed(client)


async def test_per_call_empty_value_removes_the_default_key(client: AgentServerClient) -> None:
    echoed = await _echoed(client, metadata=[("x-location-id", "")])

    assert [key for key, _ in echoed] == ["authorization", "x-tenant-id", "x-user-id"]


async def test_with_identity_shares_the_channel_and_leaves_the_original_alone(
    client: AgentServerClient,
) -> None:
    other = client.with_identity(user_id="u9", location_id="")

    assert other.channel is client.channel
    assert await _echoed(other) == [
        ("authorization", "Bearer key-1"),
        ("x-tenant-id", "t1"),
        ("x-user-id", "u9"),
    ]
    await other.close()  # does not close the shared channel
    assert ("x-user-id", "u1") in await _echoed(client)


async def test_from_channel_does_not_close_the_callers_channel(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        async with AgentServerClient.from_channel(
            channel, api_key="key-2", tenant_id="t2", user_id="u2"
        ) as borrowed:
            assert await _echoed(borrowed) == [
                ("authorization", "Bearer key-2"),
                ("x-tenant-id", "t2"),
                ("x-user-id", "u2"),
            ]
        again = AgentServerClient.from_channel(channel, api_key="key-3", tenant_id="t3")
        assert ("authorization", "Bearer key-3") in await _echoed(again)


async def test_rich_status_details_are_parsed(client: AgentServerClient) -> None:
    request = token_service_pb2.ChargeTokensRequest(tenant_id="t1", amount=500, request_id="r")
    with pytest.raises(AgentServerError) as caught:
        await client.charge_tokens(request)

    error = caught.value
    assert error.code is StatusCode.FAILED_PRECONDITION
    assert error.message == "wallet t1 cannot cover 500 tokens"
    assert str(error) == "FAILED_PRECONDITION: wallet t1 cannot cover 500 tokens"
    assert error.details == ErrorDetails(
        field_violations=[
            FieldViolation("amount", "must be at most 100"),
            FieldViolation("request_id", "must not be empty"),
        ],
        reason="INSUFFICIENT_TOKENS",
        domain="agentserver",
        metadata={"available": "120", "requested": "500"},
        quota_violations=[QuotaViolation("tenant:t1", "380 tokens short")],
        retry_delay=2.25,
        precondition_violations=[PreconditionViolation("BALANCE", "tenant:t1", "balance too low")],
    )
    # The server attached a retry delay, so a retry may help.
    assert error.is_retryable


async def test_status_without_details_has_empty_details(client: AgentServerClient) -> None:
    with pytest.raises(AgentServerError) as caught:
        await client.get_costs()

    assert caught.value.code is StatusCode.NOT_FOUND
    assert caught.value.message == "no price list"
    assert caught.value.details == ErrorDetails()
    assert not caught.value.is_retryable


async def test_corrupt_details_trailer_yields_empty_details(client: AgentServerClient) -> None:
    request = token_service_pb2.ReleaseReservationRequest(tenant_id="t1", reservation_id="r1")
    with pytest.raises(AgentServerError) as caught:
        await client.release_reservation(request)

    assert caught.value.code is StatusCode.UNAVAILABLE
    assert caught.value.details == ErrorDetails()
    assert caught.value.is_retryable


async def test_per_call_timeout_becomes_deadline_exceeded(client: AgentServerClient) -> None:
    slow = token_service_pb2.ReserveTokensRequest(tenant_id="t1", amount=2000)
    with pytest.raises(AgentServerError) as caught:
        await client.reserve_tokens(slow, timeout=0.1)

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details == ErrorDetails()
    assert caught.value.is_retryable


async def test_default_timeout_applies_and_none_disables_it(client: AgentServerClient) -> None:
    hasty = AgentServerClient.from_channel(
        client.channel, api_key="key-1", tenant_id="t1", default_timeout=0.05
    )
    request = token_service_pb2.ReserveTokensRequest(tenant_id="t1", amount=300)

    with pytest.raises(AgentServerError) as caught:
        await hasty.reserve_tokens(request)
    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED

    response = await hasty.reserve_tokens(request, timeout=None)
    assert response.reservation.amount == 300


async def test_unimplemented_service_is_an_agent_server_error(client: AgentServerClient) -> None:
    with pytest.raises(AgentServerError) as caught:
        await client.process(agent_service_pb2.ProcessRequest(message="hello"))

    assert caught.value.code is StatusCode.UNIMPLEMENTED
    assert not caught.value.is_retryable


async def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` any more.
    async with AgentServerClient(f"127.0.0.1:{port}", api_key="k", tenant_id="t") as client:
        with pytest.raises(AgentServerError) as caught:
            await client.get_costs(timeout=5.0)

    assert caught.value.code is StatusCode.UNAVAILABLE
    assert caught.value.is_retryable


def test_status_code_mirrors_grpc_status_code() -> None:
    assert [(c.name, c.value) for c in StatusCode] == [
        (c.name, c.value[0]) for c in grpc.StatusCode
    ]
    for code in grpc.StatusCode:
        assert StatusCode.from_grpc(code).name == code.name


def test_error_pickles_with_its_details() -> None:
    error = AgentServerError(
        StatusCode.INVALID_ARGUMENT,
        "bad amount",
        ErrorDetails(field_violations=[FieldViolation("amount", "must be positive")]),
    )

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.code, copy.message, copy.details) == (error.code, error.message, error.details)


def test_secure_only_options_need_secure() -> None:
    with pytest.raises(ValueError, match="secure"):
        AgentServerClient("localhost:1", api_key="k", tenant_id="t", root_certificates=b"pem")


async def test_repr_does_not_leak_the_api_key(client: AgentServerClient) -> None:
    assert "key-1" not in repr(client)
    assert "t1" in repr(client)


async def test_close_is_idempotent_and_a_closed_client_is_misuse(address: str) -> None:
    client = AgentServerClient(address, api_key="k", tenant_id="t")
    await client.close()
    await client.close()

    # Calling a closed client is a programming error, not an rpc failure.
    with pytest.raises(grpc.aio.UsageError):
        await client.get_costs()


def test_every_rpc_of_every_service_has_a_method() -> None:
    import re

    from agentserver.entrypoints.grpc.server import SERVICES

    for service in SERVICES:
        for method in service.methods:
            name = re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
            assert callable(getattr(AgentServerClient, name, None)), f"no client.{name}"
