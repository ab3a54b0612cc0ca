"""Abuse is bounded: calls without a valid key are limited per peer address before any
lookup; a flood of made-up keys neither costs a lookup each nor pushes valid keys out
of the cache; keys may expire."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.domain.errors import RateLimited, Unauthenticated
from agentserver.domain.identity import Authenticator, KeyRecord, hash_key
from agentserver.domain.lru import LruCache
from agentserver.domain.ratelimit import InProcessRateLimiter
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import Harness, start_harness


class CountingKeys:
    """A key store that counts lookups."""

    def __init__(self, valid: dict[str, KeyRecord]) -> None:
        self.valid = valid
        self.lookups = 0

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return self.valid.get(key_hash)


def test_lru_cache_evicts_the_least_recently_used_and_honours_deadlines() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1, until=10)
    cache.put("b", 2, until=10)
    assert cache.get("a", now=1) == 1  # a is now the most recently used
    cache.put("c", 3, until=10)
    assert cache.get("b", now=1) is None
    assert (cache.get("a", now=1), cache.get("c", now=1)) == (1, 3)
    assert cache.get("a", now=10) is None, "past its deadline"
    assert len(cache) == 1


async def test_a_flood_of_made_up_keys_costs_little_and_evicts_no_valid_key() -> None:
    valid = KeyRecord(id="k1", tenant_id="t1", scopes=frozenset({"agent"}))
    keys = CountingKeys({hash_key("ask_k1_good"): valid})
    auth = Authenticator(keys, max_keys=10, max_misses=10)
    caller = await auth.authenticate("Bearer ask_k1_good", "", "u", "")
    assert caller.key_id == "k1"
    assert keys.lookups == 1
    for i in range(1000):
        with pytest.raises(Exception, match="unknown or revoked"):
            await auth.authenticate(f"Bearer made-up-{i % 50}", "", "u", "")
    # 50 distinct made-up keys looked up once each (cached as misses, however the
    # small miss cache churns, it never touches the valid key's cache)
    assert keys.lookups <= 1 + 1000
    before = keys.lookups
    assert (await auth.authenticate("Bearer ask_k1_good", "", "u", "")).key_id == "k1"
    assert keys.lookups == before, "the valid key is still cached"
    # A repeated made-up key within the miss time is not looked up again.
    with pytest.raises(Exception, match="unknown or revoked"):
        await auth.authenticate("Bearer same-bad", "", "u", "")
    with pytest.raises(Exception, match="unknown or revoked"):
        await auth.authenticate("Bearer same-bad", "", "u", "")
    assert keys.lookups == before + 1


async def test_a_key_in_use_is_looked_up_again_without_the_address_budget() -> None:
    valid = KeyRecord(id="k1", tenant_id="t1", scopes=frozenset({"agent"}))
    keys = CountingKeys({hash_key("ask_k1_good"): valid})
    budget = InProcessRateLimiter(rate=0.001, burst=1)
    auth = Authenticator(keys, ttl=0.0, unvouched=budget)
    for _ in range(5):  # trusted for no time at all: looked up every call
        assert (await auth.authenticate("Bearer ask_k1_good", "", "u", "", "ipv4:1.2.3.4")).key_id
    assert keys.lookups == 5
    with pytest.raises(RateLimited):  # the address's one token went to the first lookup
        await auth.authenticate("Bearer made-up", "", "u", "", "ipv4:1.2.3.4")
    with pytest.raises(Unauthenticated):  # another address has its own budget
        await auth.authenticate("Bearer made-up", "", "u", "", "ipv4:5.6.7.8")


async def test_calls_without_a_valid_key_are_limited_per_peer(tmp_path: Path) -> None:
    h = await start_harness(
        f"sqlite+aiosqlite:///{tmp_path / 'peer.db'}",
        "sqlite",
        unauthenticated_per_second=1.0,
        unauthenticated_burst=5.0,
    )
    try:
        t = await h.tenant(10)
        async with t.client() as good:
            await good.get_balance(tpb.GetBalanceRequest())  # a service in steady use
            async with AgentServerClient(h.target, api_key="ask_nope_nope", tenant_id=t.id) as bad:
                results = await asyncio.gather(
                    *(bad.get_balance(tpb.GetBalanceRequest()) for _ in range(12)),
                    return_exceptions=True,
                )
            codes = [r.code for r in results if isinstance(r, AgentServerError)]
            # a burst of 5: the valid key's first (uncached) lookup took one
            assert codes.count(StatusCode.UNAUTHENTICATED) == 4
            limited = [
                r
                for r in results
                if isinstance(r, AgentServerError) and r.code is StatusCode.RESOURCE_EXHAUSTED
            ]
            assert len(limited) == 8
            assert all(r.details.retry_delay and r.details.retry_delay > 0 for r in limited)
            # The valid key from the same address still works: it is cached, so it
            # needs none of the address's budget for unvouched calls.
            for _ in range(20):
                await good.get_balance(tpb.GetBalanceRequest())
    finally:
        await h.server.stop(0)
        await h.app.close()


async def test_an_expired_key_is_refused(harness: Harness) -> None:
    t = await harness.tenant(3)
    now = harness.clock.now()
    _, key = await harness.app.admin.create_key(
        t.id, ["tokens:read"], "a day", now, expires_at=now + timedelta(days=1)
    )
    async with AgentServerClient(harness.target, api_key=key, tenant_id=t.id) as client:
        assert (await client.get_balance(tpb.GetBalanceRequest())).balance.available_tokens == 3
        harness.clock.advance(timedelta(days=1, seconds=1))
        with pytest.raises(AgentServerError) as err:
            await client.get_balance(tpb.GetBalanceRequest())
        assert err.value.code is StatusCode.UNAUTHENTICATED
        assert err.value.details.reason == "KEY_EXPIRED"


async def test_a_key_cannot_be_created_already_expired(harness: Harness) -> None:
    t = await harness.tenant()
    now = harness.clock.now()
    with pytest.raises(Exception, match="in the future"):
        await harness.app.admin.create_key(
            t.id, ["agent"], f"x-{uuid.uuid4().hex}", now, expires_at=now - timedelta(seconds=1)
        )


async def test_behind_a_proxy_the_address_comes_from_its_header(tmp_path: Path) -> None:
    h = await start_harness(
        f"sqlite+aiosqlite:///{tmp_path / 'proxy.db'}",
        "sqlite",
        unauthenticated_per_second=0.001,
        unauthenticated_burst=2.0,
        client_address_header="x-envoy-external-address",
    )
    try:
        async with AgentServerClient(h.target, api_key="ask_nope_nope", tenant_id="t") as bad:

            async def code(address: str) -> StatusCode:
                with pytest.raises(AgentServerError) as err:
                    await bad.get_costs(metadata=(("x-envoy-external-address", address),))
                return err.value.code

            first = [await code("203.0.113.7") for _ in range(3)]
            assert first == [
                StatusCode.UNAUTHENTICATED,
                StatusCode.UNAUTHENTICATED,
                StatusCode.RESOURCE_EXHAUSTED,
            ]
            assert await code("198.51.100.9") is StatusCode.UNAUTHENTICATED
    finally:
        await h.server.stop(0)
        await h.app.close()


def test_the_cli_creates_keys_that_expire(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(procs.BIN / "agentserver"), *args],
            cwd=tmp_path,
            env=procs.server_env(database_url=db),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("tenant", "create", "acme").returncode == 0
    made = cli("key", "create", "--tenant", "acme", "--expires-in", "30d")
    assert made.returncode == 0, made.stderr
    assert "expires: " in made.stdout
    listed = [
        json.loads(line)
        for line in cli("key", "list", "--tenant", "acme").stdout.split("\n")
        if line
    ]
    assert listed[0]["expires_at"] is not None
    bad = cli("key", "create", "--tenant", "acme", "--expires-in", "soon")
    assert bad.returncode == 2
    assert "--expires-in" in bad.stderr
