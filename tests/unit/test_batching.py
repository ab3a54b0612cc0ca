"""Group commit under load: a batch waits for more calls while they keep coming, and a
lone call waits for nothing (domain/batching.py)."""

from __future__ import annotations

import asyncio

from agentserver.domain.batching import Coalescer


def _recording(batches: list[list[int]]):  # type: ignore[no-untyped-def]
    async def run(key: str, items: list[int]) -> list[int]:
        # Returns without giving the loop a turn, as SQLite run in place nearly does.
        batches.append(items)
        return [i * 10 for i in items]

    return run


async def _arriving(c: Coalescer[str, int, int], n: int, every_s: float) -> list[int]:
    """`n` calls, two at once and then one every `every_s`, as a busy server sees them."""
    calls = [asyncio.create_task(c.submit("k", 0)), asyncio.create_task(c.submit("k", 1))]
    for i in range(2, n):
        await asyncio.sleep(every_s)
        calls.append(asyncio.create_task(c.submit("k", i)))
    return list(await asyncio.gather(*calls))


async def test_calls_that_keep_coming_gather_into_few_batches() -> None:
    batches: list[list[int]] = []
    c: Coalescer[str, int, int] = Coalescer(_recording(batches), linger_s=1.0, slice_s=0.05)
    results = await asyncio.wait_for(_arriving(c, 30, 0.002), 10)
    assert results == [i * 10 for i in range(30)]
    assert [i for b in batches for i in b] == list(range(30))
    assert len(batches) <= 3, batches


async def test_without_lingering_each_of_them_is_a_batch_of_its_own() -> None:
    """What the test above guards against: the run gives no turn, so nothing joins."""
    batches: list[list[int]] = []
    c: Coalescer[str, int, int] = Coalescer(_recording(batches), linger_s=0.0)
    await asyncio.wait_for(_arriving(c, 30, 0.002), 10)
    assert len(batches) >= 25


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_lone_call_waits_for_nothing() -> None:
    batches: list[list[int]] = []
    # Had the call waited for a slice, it would not have run within a few turns.
    c: Coalescer[str, int, int] = Coalescer(_recording(batches), linger_s=60.0, slice_s=30.0)
    for i in range(3):
        call = asyncio.create_task(c.submit("k", i))
        await _turns(5)
        assert call.done() and call.result() == i * 10
    assert batches == [[0], [1], [2]]


async def test_a_full_batch_does_not_wait() -> None:
    batches: list[list[int]] = []
    c: Coalescer[str, int, int] = Coalescer(
        _recording(batches), max_batch=4, linger_s=60.0, slice_s=0.05
    )
    calls = [asyncio.create_task(c.submit("k", i)) for i in range(4)]
    await _turns(5)
    assert batches == [[0, 1, 2, 3]]
    assert [call.result() for call in calls] == [0, 10, 20, 30]
    await asyncio.sleep(0.1)  # the drain's look for more after a full batch ends too


async def test_the_wait_ends_when_a_slice_brings_nothing() -> None:
    batches: list[list[int]] = []
    c: Coalescer[str, int, int] = Coalescer(_recording(batches), linger_s=60.0, slice_s=0.01)
    results = await asyncio.wait_for(asyncio.gather(*(c.submit("k", i) for i in range(3))), 5)
    assert results == [0, 10, 20]
    assert batches == [[0, 1, 2]]


async def test_without_lingering_a_batch_still_takes_the_calls_of_the_next_turn() -> None:
    """On PostgreSQL (no lingering) the drain gives the loop one turn before taking the
    next batch: callers answered by the last batch that call again at once, and calls
    already parsed, join the one waiting instead of trailing it a round trip later."""
    batches: list[list[int]] = []
    written = asyncio.Event()

    async def run(key: str, items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await written.wait()  # the network round trip of the first batch
        return [i * 10 for i in items]

    c: Coalescer[str, int, int] = Coalescer(run, linger_s=0.0)

    async def again(first: int, then: int) -> int:
        await c.submit("k", first)
        return await c.submit("k", then)

    calls = [asyncio.create_task(again(0, 3)), asyncio.create_task(again(1, 4))]
    await _turns(3)
    assert batches == [[0, 1]]
    calls.append(asyncio.create_task(c.submit("k", 2)))
    await _turns(1)
    written.set()
    assert await asyncio.wait_for(asyncio.gather(*calls), 5) == [30, 40, 20]
    assert batches == [[0, 1], [2, 3, 4]]
