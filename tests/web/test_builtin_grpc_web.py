"""The built-in gRPC-web endpoint (connectrpc over uvicorn) calls the same servicers
as the gRPC server: the same answers, the same google.rpc details byte for byte, the
same identity and rate limits; bad HTTP input is a 4xx or a gRPC status, never a 500,
and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from agentserver.entrypoints.web.server import RunningWeb, start_web
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2, token_service_pb2_grpc
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import token_service_pb2 as tpb
from tests import grpcweb
from tests.conftest import Harness

TOKEN = "agentserver.v1.TokenService"


@pytest.fixture(scope="module")
async def web(harness: Harness) -> AsyncIterator[str]:
    running: RunningWeb = await start_web(harness.app, harness.server, "127.0.0.1:0")
    yield f"http://127.0.0.1:{running.port}"
    await running.stop(0)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_success_matches_native_grpc(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(42)
    reply = await grpcweb.call(
        http,
        web,
        f"{TOKEN}/GetBalance",
        tpb.GetBalanceRequest(tenant_id=t.id),
        grpcweb.headers(t.key),
    )
    assert reply.http_status == 200
    assert reply.headers["content-type"].startswith("application/grpc-web")
    assert reply.grpc_status == 0
    balance = reply.message(tpb.GetBalanceResponse).balance
    async with t.client() as client:
        native = await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))
    assert balance == native.balance
    assert balance.available_tokens == 42


async def test_error_details_are_the_native_bytes(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(1)
    request = tpb.ChargeTokensRequest(
        tenant_id=t.id, operation_type=common_pb2.OPERATION_TYPE_SMS, amount=5, request_id="x-1"
    )
    reply = await grpcweb.call(http, web, f"{TOKEN}/ChargeTokens", request, grpcweb.headers(t.key))
    assert reply.http_status == 200
    assert reply.grpc_status == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    status = reply.status_details()
    quota = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota) for d in status.details)
    assert quota.violations[0].description == "needs 5 tokens, 1 available"
    # The native server's trailing status, for the same request, is the same message.
    async with grpc.aio.insecure_channel(harness.target) as channel:
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        call = stub.ChargeTokens(request, metadata=(("authorization", f"Bearer {t.key}"),))
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        native = dict(await call.trailing_metadata())["grpc-status-details-bin"]
    assert status.SerializeToString() == native


async def test_metadata_and_identity_pass_through(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(10)
    hdrs = grpcweb.headers(t.key, t.id, "alice", **{"x-request-id": "web-req-1"})
    reply = await grpcweb.call(
        http,
        web,
        "agentserver.v1.AgentService/Process",
        apb.ProcessRequest(message="Email jo@example.com that the order shipped"),
        hdrs,
    )
    assert reply.grpc_status == 0, reply.grpc_message
    sid = reply.message(apb.ProcessResponse).session_id
    async with t.client("alice") as client:
        session = (await client.get_session(cpb.GetSessionRequest(session_id=sid))).session
    assert session.user_id == "alice"
    await harness.app.audit.flush()
    events = await harness.app.admin.events(t.id, "audit.")
    assert any(
        e["kind"] == "audit.Process"
        and e["subject"] == "web-req-1"
        and e["actor"].endswith("/alice")
        for e in events
    )
    # No key: UNAUTHENTICATED, as on the gRPC port.
    anonymous = await grpcweb.call(
        http, web, f"{TOKEN}/GetBalance", tpb.GetBalanceRequest(tenant_id=t.id), grpcweb.headers()
    )
    assert anonymous.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_a_deadline_passes_through(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(10)
    hdrs = grpcweb.headers(t.key, t.id, "alice", **{"grpc-timeout": "1u"})
    reply = await grpcweb.call(
        http,
        web,
        "agentserver.v1.AgentService/Process",
        apb.ProcessRequest(message="Email jo@example.com that the order shipped"),
        hdrs,
    )
    assert reply.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_the_connect_protocol_speaks_json(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(3)
    ok = await http.post(
        f"{web}/{TOKEN}/GetBalance",
        json={"tenantId": t.id},
        headers={"authorization": f"Bearer {t.key}"},
    )
    assert ok.status_code == 200
    assert ok.json()["balance"]["availableTokens"] == "3"
    bad = await http.post(
        f"{web}/{TOKEN}/ChargeTokens",
        json={
            "tenantId": t.id,
            "operationType": "OPERATION_TYPE_SMS",
            "amount": "0",
            "requestId": "c",
        },
        headers={"authorization": f"Bearer {t.key}"},
    )
    assert bad.status_code == 400
    body = bad.json()
    assert body["code"] == "invalid_argument"
    assert any(d["type"] == "google.rpc.BadRequest" for d in body["details"])


async def test_bad_http_input_is_refused_and_changes_nothing(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    t = await harness.tenant(7)
    hdrs = grpcweb.headers(t.key)
    charge = tpb.ChargeTokensRequest(
        tenant_id=t.id, operation_type=common_pb2.OPERATION_TYPE_SMS, amount=1, request_id="bad-1"
    )
    good = grpcweb.frame(charge.SerializeToString())
    cases: list[tuple[str, bytes, dict[str, str], int | None, int | None]] = [
        # (path, body, headers, HTTP status expected, gRPC status expected)
        (f"{TOKEN}/ChargeTokens", b"\x7f" + good[1:], hdrs, 200, 3),  # bad frame flags
        (f"{TOKEN}/ChargeTokens", good[:-3], hdrs, 200, 3),  # truncated frame
        (f"{TOKEN}/ChargeTokens", grpcweb.frame(b"\xff\xff\xff"), hdrs, 200, 3),  # not protobuf
        (f"{TOKEN}/ChargeTokens", grpcweb.frame(b"\x0a" * (5 * 1024 * 1024)), hdrs, 200, 8),
        (f"{TOKEN}/ChargeTokens", good + good, hdrs, 200, 12),  # two messages for a unary rpc
        (f"{TOKEN}/ChargeTokens", good, {**hdrs, "content-type": "text/plain"}, 415, None),
        (f"{TOKEN}/ChargeTokens", good, {**hdrs, "content-type": "application/grpc"}, 415, None),
        (f"{TOKEN}/ChargeTokens", good, {**hdrs, "grpc-timeout": "soon"}, 200, 3),
        (f"{TOKEN}/NoSuchMethod", good, hdrs, 404, None),
        ("agentserver.v1.NoSuchService/Get", good, hdrs, 404, None),
        ("../../etc/passwd", b"", hdrs, 404, None),
    ]
    for path, body, h, http_status, grpc_status in cases:
        response = await http.post(f"{web}/{path}", content=body, headers=h)
        reply = grpcweb.parse(response)
        assert response.status_code < 500, (path, h.get("content-type"), response.status_code)
        assert response.status_code == http_status, (path, response.status_code, response.text)
        assert reply.grpc_status == grpc_status, (path, reply.grpc_status, reply.grpc_message)
    # A body that does not parse is answered as the gRPC server answers it (same parser).
    garbled = await grpcweb.call(
        http, web, f"{TOKEN}/ChargeTokens", grpcweb.frame(b"\xff\xff\xff"), hdrs
    )
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in garbled.status_details().details)
    assert bad_request.field_violations[0].field == "request"
    get = await http.get(f"{web}/{TOKEN}/ChargeTokens", headers=hdrs)
    assert 400 <= get.status_code < 500
    async with t.client() as client:
        balance = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
    assert (balance.used_tokens, balance.available_tokens) == (0, 7)


async def test_cors_allows_the_configured_origins_only(harness: Harness) -> None:
    settings = replace(harness.app.settings, web_origins=("http://console.example",))
    app = replace(harness.app, settings=settings)
    running = await start_web(app, harness.server, "127.0.0.1:0")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            url = f"http://127.0.0.1:{running.port}/{TOKEN}/GetBalance"
            preflight = {
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-id",
            }
            ok = await http.options(url, headers={"origin": "http://console.example", **preflight})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "http://console.example"
            assert "x-user-id" in ok.headers["access-control-allow-headers"].lower()
            refused = await http.options(
                url, headers={"origin": "http://evil.example", **preflight}
            )
            assert refused.status_code == 400
            assert "access-control-allow-origin" not in refused.headers
    finally:
        await running.stop(0)


async def test_calls_without_a_valid_key_share_the_address_budget(
    harness: Harness, web: str, http: httpx.AsyncClient
) -> None:
    # The built-in endpoint tells @rpc the caller's address the way grpc does, so the
    # per-address budget for calls no valid key carries applies to it as well.
    seen: list[str] = []

    class Budget:
        async def acquire(self, key: str) -> float:
            seen.append(key)
            return 0.0

    auth = harness.app.auth
    before, auth.unvouched = auth.unvouched, Budget()  # type: ignore[assignment]
    try:
        reply = await grpcweb.call(
            http, web, f"{TOKEN}/GetCosts", tpb.GetCostsRequest(), grpcweb.headers("ask_nope")
        )
    finally:
        auth.unvouched = before
    assert reply.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert seen == ["ipv4:127.0.0.1"]
