"""Unit tests of the ledger's pure parts: fitting debits, coalescing, page tokens."""

from __future__ import annotations

import asyncio

import pytest

from agentserver.domain.batching import Coalescer
from agentserver.domain.errors import DomainError, InsufficientTokens, InvalidArgument
from agentserver.domain.ledger import fit_debits, request_hash
from agentserver.domain.paging import decode_token, encode_token, page_request


def test_fit_debits_in_arrival_order() -> None:
    assert fit_debits(5, [2, 2, 2, 1]) == [3, 1, None, 0]
    assert fit_debits(0, [1]) == [None]
    assert fit_debits(10, []) == []


def test_request_hash_tells_content_apart() -> None:
    assert request_hash("charge", 1, "sms") == request_hash("charge", 1, "sms")
    assert request_hash("charge", 1, "sms") != request_hash("charge", 2, "sms")


def test_request_hashes_stay_what_stored_entries_carry() -> None:
    """A replay is told from a reused key by comparing this fingerprint with the one
    stored with the entry, so it must never change: these were computed when entries
    were first written with it."""
    from datetime import timedelta

    from agentserver.domain.costs import OperationType
    from agentserver.domain.ledger import Attribution, Debit, EntryKind

    about = Attribution("u1", "s1", {"b": [1, 2.5, None], "a": "é"})
    d = Debit(
        "t", "loc-1", OperationType.SMS, 3, "r1", "café ☕", EntryKind.RESERVE,
        timedelta(minutes=5), attribution=about,
    )  # fmt: skip
    assert d.request_hash() == "260d89a65f7197a13145782d722028a7c621e1c67d3524456937f5eaeb4e95b4"
    assert (
        d.request_hash(with_attribution=False)
        == "26489958804f519658d9657e4afb21ea7b95e18c1551a19eda168dd73ad0cb6a"
    )
    plain = Debit("t", "", OperationType.EMAIL, 1, "x")
    assert (
        plain.request_hash() == "1caed1de3e3da8574629b158048c26cdd2ea3921a34e3e094ab11447fc2edcd3"
    )


def test_canonical_json_is_sorted_compact_unescaped_json() -> None:
    import json

    from hypothesis import given
    from hypothesis import strategies as st

    from agentserver.domain.ledger import canonical_json

    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )

    @given(values)
    def check(value: object) -> None:
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(value) == expected

    check()


async def test_coalescer_batches_concurrent_submissions_and_keeps_order() -> None:
    batches: list[list[int]] = []

    async def run(key: str, items: list[int]) -> list[int | DomainError]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 if i % 5 else InsufficientTokens("w", i, 0) for i in items]

    c: Coalescer[str, int, int] = Coalescer(run)
    results = await asyncio.gather(
        *(c.submit("k", i) for i in range(1, 21)), return_exceptions=True
    )
    assert results[0] == 10 and results[3] == 40
    assert isinstance(results[4], InsufficientTokens)
    assert len(batches) < 20  # concurrent submissions shared transactions
    assert [i for b in batches for i in b] == list(range(1, 21))


async def test_coalescer_delivers_a_batch_failure_to_every_waiter() -> None:
    async def run(key: str, items: list[int]) -> list[int | DomainError]:
        raise RuntimeError("database down")

    c: Coalescer[str, int, int] = Coalescer(run)
    results = await asyncio.gather(*(c.submit("k", i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await asyncio.gather(c.submit("k", 1), return_exceptions=True)  # still usable


def test_page_tokens_round_trip_and_reject_foreign_ones() -> None:
    token = encode_token("usage", {"id": "ent_1"})
    assert decode_token(token, "usage") == {"id": "ent_1"}
    with pytest.raises(InvalidArgument):
        decode_token(token, "sessions")
    with pytest.raises(InvalidArgument):
        decode_token("!!!", "usage")
    with pytest.raises(InvalidArgument):
        page_request(-1, "", default=10, maximum=100, kind="usage")
    assert page_request(0, "", default=10, maximum=100, kind="usage").size == 10


async def test_a_cancelled_caller_does_not_stop_its_batch() -> None:
    done: list[int] = []

    async def run(key: str, items: list[int]) -> list[int | DomainError]:
        await asyncio.sleep(0.02)
        done.extend(items)
        return items

    c: Coalescer[str, int, int] = Coalescer(run)
    waiter = asyncio.ensure_future(c.submit("k", 1))
    other = asyncio.ensure_future(c.submit("k", 2))
    await asyncio.sleep(0.005)
    waiter.cancel()
    assert await other == 2
    await asyncio.sleep(0.03)
    assert sorted(done) == [1, 2]  # the cancelled caller's write still happened


def test_ids_are_unique_and_sort_by_time() -> None:
    from agentserver.domain.ids import new_id

    ids = [new_id("t") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)  # the time part never goes back
