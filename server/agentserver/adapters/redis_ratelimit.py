"""A token bucket per key in Redis, shared by every replica (one Lua script, atomic)."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
    """Fails open: if Redis is unreachable the call is admitted and a warning logged,
    because refusing all traffic when the limiter is down is worse than not limiting."""

    def __init__(
        self, url: str, rate: float, burst: float, prefix: str = "agentserver:rl:"
    ) -> None:
        self._redis: Any = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(_SCRIPT)
        self._rate = rate
        self._burst = burst
        self._prefix = prefix

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        try:
            wait = await self._script(
                keys=[self._prefix + key], args=[self._rate, self._burst, cost]
            )
        except (RedisError, OSError) as err:
            log.warning("rate limiter unavailable, admitting: %s", err)
            return 0.0
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()
