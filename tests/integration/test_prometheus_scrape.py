"""The metrics as the real Prometheus server sees them (Debian's `prometheus`,
installed by the test when absent; in CI a missing one is a failure): it scrapes a
real server after real calls, and a query of the handled calls summed by code
answers what was called."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agentserver.client import AgentServerError, StatusCode
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import IN_CI, database_url, start_harness

pytestmark = pytest.mark.slow

PROMETHEUS = Path("/usr/bin/prometheus")
QUERY = 'sum by (grpc_code) (grpc_server_handled_total{grpc_method="ChargeTokens"})'


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def start_prometheus(
    binary: Path, config: Path, workdir: Path, port: int
) -> subprocess.Popen[bytes]:
    with (workdir / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_prometheus_scrapes_the_server_and_sums_calls_by_code(
    tmp_path: Path, tmp_root: Path, request: pytest.FixtureRequest
) -> None:
    binary = await asyncio.to_thread(procs.ensure_debian_binary, PROMETHEUS, "prometheus")
    if binary is None:
        message = "Debian prometheus is not installed and could not be installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    h = await start_harness(
        database_url("sqlite", tmp_root, request), "sqlite", metrics_listen="127.0.0.1:0"
    )
    prometheus = None
    try:
        assert h.server.metrics is not None
        t = await h.tenant(5)
        async with t.client() as client:
            for i in range(4):
                await client.charge_tokens(
                    tpb.ChargeTokensRequest(operation_type=2, amount=1, request_id=f"p-{i}")
                )
            for i in range(3):  # one token left: 3 refusals
                with pytest.raises(AgentServerError) as refused:
                    await client.charge_tokens(
                        tpb.ChargeTokensRequest(operation_type=2, amount=2, request_id=f"q-{i}")
                    )
                assert refused.value.code is StatusCode.FAILED_PRECONDITION

        port = procs.free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: agentserver\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{h.server.metrics.port}']\n"
        )
        prometheus = start_prometheus(binary, config, tmp_path, port)
        found: dict[str, float] = {}
        for _ in range(120):  # up to a minute: start-up, then the first scrapes
            await asyncio.sleep(0.5)
            if prometheus.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:])
            try:
                result = await asyncio.to_thread(query, port, QUERY)
            except OSError:
                continue  # not listening yet
            found = {r["metric"]["grpc_code"]: float(r["value"][1]) for r in result}
            if found:
                break
        assert found == {"OK": 4.0, "FAILED_PRECONDITION": 3.0}
        up = await asyncio.to_thread(query, port, 'up{job="agentserver"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
        await h.server.stop(0)
        await h.app.close()
