"""Retrying a channel call on transient errors, with capped exponential backoff and jitter.

Only `TransientChannelError` is retried: a permanent error (a refused recipient, bad
credentials) will not go away, and anything else is a bug that retrying would hide.

A word of caution for callers: a transient error raised *after* a request reached the
provider (a timeout waiting for the reply, a 5xx from a gateway that had already passed
the request on) leaves the outcome unknown. Every adapter here sends the action id as
its idempotency key where the provider has a place for one, but not every provider
honours it (see each adapter's docstring), so retrying can, rarely, send twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentserver.domain.channels import TransientChannelError

T = TypeVar("T")


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_delay: float = 0.2,
    max_delay: float = 2.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call `fn` up to `attempts` times while it raises `TransientChannelError`.

    Between attempts it waits a "full jitter" delay: a random fraction of
    `min(max_delay, base_delay * 2**n)` for the n-th retry (n from 0), so that many
    callers failing at once do not retry in lockstep. `sleep` and `rand` are injectable
    so tests need not wait. The last transient error is re-raised when attempts run out;
    any other exception (including `PermanentChannelError`) propagates at once.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if base_delay < 0 or max_delay < 0:
        raise ValueError("delays must not be negative")
    for attempt in range(attempts):
        try:
            return await fn()
        except TransientChannelError:
            if attempt == attempts - 1:
                raise
        cap = min(max_delay, base_delay * (2**attempt))
        await sleep(cap * rand())
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
