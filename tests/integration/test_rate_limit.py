"""Rate limits per tenant: RESOURCE_EXHAUSTED with a retry delay; shared across
replicas through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentserver.adapters.redis_ratelimit import RedisRateLimiter
from agentserver.client import AgentServerError, StatusCode
from agentserver.domain.ledger import EVERY_ENTRY
from agentserver.domain.paging import PageRequest
from agentserver.domain.ratelimit import InProcessRateLimiter
from agentserver.entrypoints.grpc.server import REDIS_HEALTH
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import IN_CI, start_harness


async def test_in_process_bucket_refills() -> None:
    limiter = InProcessRateLimiter(rate=1000.0, burst=3)
    assert [await limiter.acquire("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.acquire("t")
    assert 0 < wait <= 0.001
    assert await limiter.acquire("other") == 0.0  # buckets are per key
    await asyncio.sleep(0.005)
    assert await limiter.acquire("t") == 0.0


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_over_the_limit_is_resource_exhausted_with_retry_info(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    overrides: dict[str, object] = {"rate_limit_per_second": 1.0, "rate_limit_burst": 5.0}
    if backend == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    h = await start_harness(f"sqlite+aiosqlite:///{tmp_path / 'rl.db'}", "sqlite", **overrides)
    try:
        t = await h.tenant(prefix=f"rl{uuid.uuid4().hex[:4]}")
        async with t.client() as client:
            results = await asyncio.gather(
                *(client.get_costs() for _ in range(8)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, AgentServerError)]
            assert len(refused) == 3
            for err in refused:
                assert err.code is StatusCode.RESOURCE_EXHAUSTED
                assert err.details.retry_delay is not None and err.details.retry_delay > 0
                assert err.is_retryable
            # a refused write changes nothing
            with pytest.raises(AgentServerError) as exc:
                await client.charge_tokens(
                    tpb.ChargeTokensRequest(
                        tenant_id=t.id, operation_type=2, amount=1, request_id="x"
                    )
                )
            assert exc.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert not (await h.app.ledger.usage(t.id, EVERY_ENTRY, PageRequest(10, None)))[0]
    finally:
        await h.server.stop(0)
        await h.app.close()


async def test_redis_bucket_is_shared_by_replicas(redis_url: str) -> None:
    key = f"shared-{uuid.uuid4().hex}"
    replicas = [RedisRateLimiter(redis_url, rate=0.001, burst=10) for _ in range(2)]
    try:
        waits = await asyncio.gather(*(replicas[i % 2].acquire(key) for i in range(30)))
        assert sum(1 for w in waits if w == 0.0) == 10
    finally:
        for r in replicas:
            await r.aclose()


async def test_redis_down_limits_in_process() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", rate=0.001, burst=1)
    try:
        assert await limiter.acquire("t") == 0.0
        assert await limiter.acquire("t") > 0, "still limited, by this process"
        assert not limiter.healthy
    finally:
        await limiter.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A Redis server of this test's own, which it may stop (SIGSTOP) and resume."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; CI requires it")
        pytest.skip("redis-server is not installed")
    port = procs.free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            break
        time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(10)


async def test_a_hung_redis_opens_the_breaker_and_limits_in_process(
    own_redis: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    proc, url = own_redis
    h = await start_harness(
        f"sqlite+aiosqlite:///{tmp_path / 'hung.db'}",
        "sqlite",
        redis_url=url,
        rate_limit_per_second=0.001,
        rate_limit_burst=5.0,
        redis_timeout_seconds=0.2,
        redis_retry_seconds=1.0,
    )
    limiter = h.app.limiter
    assert isinstance(limiter, RedisRateLimiter)
    try:
        t = await h.tenant()
        async with t.client() as client, grpc.aio.insecure_channel(h.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def redis_health() -> int:
                check = health_pb2.HealthCheckRequest(service=REDIS_HEALTH)
                return (await health.Check(check)).status

            assert await redis_health() == health_pb2.HealthCheckResponse.SERVING
            await client.get_costs()
            proc.send_signal(signal.SIGSTOP)  # hung, not down: connections just wait
            await client.get_costs()  # waits for the timeout once, then the breaker opens
            assert not limiter.healthy
            asked = limiter.redis_calls
            results = await asyncio.gather(
                *(client.get_costs() for _ in range(8)), return_exceptions=True
            )
            assert limiter.redis_calls == asked, "Redis is not asked while the breaker is open"
            refused = [r for r in results if isinstance(r, AgentServerError)]
            # The in-process bucket (burst 5) limits meanwhile: the call that timed out
            # took one of it, four of these eight fit.
            assert len(refused) == 4
            assert all(r.code is StatusCode.RESOURCE_EXHAUSTED for r in refused)
            assert await redis_health() == health_pb2.HealthCheckResponse.NOT_SERVING
            proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.1)
            with contextlib.suppress(AgentServerError):
                await client.get_costs()  # the probe: Redis answers again
            assert limiter.healthy
            assert await redis_health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        await h.server.stop(0)
        await h.app.close()
