"""The rate-limiter port: a token bucket per key (tenant), checked on every rpc.

The in-process bucket is the zero-config default; with AGENTSERVER_REDIS_URL set
every replica shares one bucket per tenant in Redis, so N replicas do not admit
N times the rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket: 0.0 if admitted, else the seconds
        to wait before retrying (nothing is taken then)."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class InProcessRateLimiter:
    rate: float  # tokens per second
    burst: float  # bucket size
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate

    async def aclose(self) -> None:
        return None


class NoRateLimit:
    async def acquire(self, key: str, cost: float = 1.0) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None
