"""A token bucket per key in Redis, shared by every replica (one Lua script, atomic),
behind a circuit breaker.

A Redis that is down answers at once (connection refused); a Redis that hangs (not
down, stopped) answers nothing, and every call would wait for the socket timeout.
So after a failure the breaker opens: for `open_seconds` Redis is not asked at all
and an in-process bucket per key limits instead (per replica, so N replicas admit up
to N times the rate meanwhile), then one call probes Redis again. The log says when
the breaker opens and closes, and `on_health` tells the server's health service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentserver.domain.ratelimit import InProcessRateLimiter

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV rate, burst, cost. Time comes from Redis itself, so replicas
# with skewed clocks still share one consistent bucket.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisRateLimiter:
    def __init__(
        self,
        url: str,
        rate: float,
        burst: float,
        prefix: str = "agentserver:rl:",
        *,
        timeout: float = 0.5,
        open_seconds: float = 10.0,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        self._redis: Any = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._redis.register_script(_SCRIPT)
        self._rate = rate
        self._burst = burst
        self._prefix = prefix
        self._timeout = timeout
        self._open_seconds = open_seconds
        self._fallback = InProcessRateLimiter(rate, burst)
        self._open_until = 0.0  # monotonic; while in the future, Redis is not asked
        self._probing = False
        self.on_health = on_health
        self.redis_calls = 0  # how often Redis was asked (tests, metrics)

    @property
    def healthy(self) -> bool:
        return self._open_until == 0.0

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        if self._open_until:
            if time.monotonic() < self._open_until or self._probing:
                return await self._fallback.acquire(key, cost)
            self._probing = True  # this call asks Redis again; the others do not wait
        try:
            self.redis_calls += 1
            async with asyncio.timeout(self._timeout * 2):
                wait = await self._script(
                    keys=[self._prefix + key], args=[self._rate, self._burst, cost]
                )
        except (RedisError, OSError, TimeoutError) as err:
            self._open(err)
            return await self._fallback.acquire(key, cost)
        finally:
            self._probing = False
        if self._open_until:
            self._open_until = 0.0
            log.warning("rate limiter: Redis answers again; buckets shared across replicas")
            self._tell(healthy=True)
        return float(wait)

    def _open(self, err: BaseException) -> None:
        was_closed = not self._open_until
        self._open_until = time.monotonic() + self._open_seconds
        if was_closed:
            log.error(
                "rate limiter: Redis failed (%s); limiting in this process for %gs before "
                "asking it again",
                err or type(err).__name__,
                self._open_seconds,
            )
            self._tell(healthy=False)

    def _tell(self, *, healthy: bool) -> None:
        if self.on_health is not None:
            self.on_health(healthy)

    async def aclose(self) -> None:
        await self._redis.aclose()
