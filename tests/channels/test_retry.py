"""with_retries: retries transient errors only, backs off exponentially with jitter."""

from __future__ import annotations

import pytest

from agentserver.adapters.channels.retry import with_retries
from agentserver.domain.channels import PermanentChannelError, TransientChannelError


class Flaky:
    """Fails with the given errors in order, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_succeeds_first_time_without_sleeping() -> None:
    fn, sleep = Flaky(), Sleeps()
    assert await with_retries(fn, sleep=sleep) == "ok"
    assert fn.calls == 1
    assert sleep.delays == []


async def test_retries_transient_then_succeeds() -> None:
    fn, sleep = Flaky(TransientChannelError("503"), TransientChannelError("timeout")), Sleeps()
    assert await with_retries(fn, attempts=3, sleep=sleep, rand=lambda: 1.0) == "ok"
    assert fn.calls == 3
    assert sleep.delays == [0.2, 0.4]


async def test_reraises_last_transient_error_when_attempts_run_out() -> None:
    last = TransientChannelError("third")
    fn = Flaky(TransientChannelError("first"), TransientChannelError("second"), last)
    sleep = Sleeps()
    with pytest.raises(TransientChannelError) as caught:
        await with_retries(fn, attempts=3, sleep=sleep)
    assert caught.value is last
    assert fn.calls == 3
    assert len(sleep.delays) == 2  # no sleep after the final attempt


async def test_permanent_error_propagates_at_once() -> None:
    fn, sleep = Flaky(PermanentChannelError("550 no such user")), Sleeps()
    with pytest.raises(PermanentChannelError):
        await with_retries(fn, attempts=5, sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []


async def test_other_exceptions_are_not_retried() -> None:
    fn, sleep = Flaky(ValueError("bug")), Sleeps()
    with pytest.raises(ValueError):
        await with_retries(fn, attempts=5, sleep=sleep)
    assert fn.calls == 1


async def test_backoff_is_capped_and_jittered() -> None:
    errors = [TransientChannelError(str(i)) for i in range(6)]
    sleep = Sleeps()
    assert (
        await with_retries(
            Flaky(*errors), attempts=7, base_delay=0.5, max_delay=3.0, sleep=sleep, rand=lambda: 1.0
        )
        == "ok"
    )
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]

    # With real randomness every delay stays within [0, cap].
    sleep = Sleeps()
    errors = [TransientChannelError(str(i)) for i in range(6)]
    await with_retries(Flaky(*errors), attempts=7, base_delay=0.5, max_delay=3.0, sleep=sleep)
    caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert all(0 <= d <= cap for d, cap in zip(sleep.delays, caps, strict=True))

    sleep = Sleeps()
    errors = [TransientChannelError(str(i)) for i in range(2)]
    await with_retries(Flaky(*errors), attempts=3, sleep=sleep, rand=lambda: 0.25)
    assert sleep.delays == [pytest.approx(0.05), pytest.approx(0.1)]


async def test_rejects_nonsense_arguments() -> None:
    with pytest.raises(ValueError):
        await with_retries(Flaky(), attempts=0)
    with pytest.raises(ValueError):
        await with_retries(Flaky(), base_delay=-1)
