"""The rate-limiter port: a token bucket per key (tenant), checked on every rpc.

The in-process bucket is the zero-config default; with AGENTSERVER_REDIS_URL set
every replica shares one bucket per tenant in Redis, so N replicas do not admit
N times the rate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
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
    """Token buckets in this process, at most `max_keys` of them: the least recently
    used bucket goes first (it would be full again by then, or nearly)."""

    rate: float  # tokens per second
    burst: float  # bucket size
    max_keys: int = 100_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    async def aclose(self) -> None:
        return None


class NoRateLimit:
    async def acquire(self, key: str, cost: float = 1.0) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None
