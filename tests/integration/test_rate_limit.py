"""Rate limits per tenant: RESOURCE_EXHAUSTED with a retry delay; shared across
replicas through Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agentserver.adapters.redis_ratelimit import RedisRateLimiter
from agentserver.client import AgentServerError, StatusCode
from agentserver.domain.paging import PageRequest
from agentserver.domain.ratelimit import InProcessRateLimiter
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import start_harness


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
        assert not (await h.app.ledger.usage(t.id, "", PageRequest(10, None)))[0]
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


async def test_redis_down_fails_open() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", rate=1, burst=1)
    try:
        assert await limiter.acquire("t") == 0.0
    finally:
        await limiter.aclose()
