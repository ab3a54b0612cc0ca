"""The ledger kernel: unit tests of its rules, and property tests (hypothesis) of its
invariants over any sequence of writes, applied by the in-memory reference store.

Invariants, after every step: no wallet below zero; purchased − used − reserved =
available; the entries' deltas sum to each wallet's columns and their after-values
follow them; reserved = the pending reservations; a replayed request id returns its
first result and changes nothing; a reservation ends once; the fee once a month.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    Conflict,
    DomainError,
    FailedPrecondition,
    InsufficientTokens,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.ledger import Debit, EndRequest, EntryKind, ReservationState
from agentserver.domain.ledger_kernel import (
    Columns,
    Delta,
    Fresh,
    IdSource,
    Purchase,
    Snapshot,
    Wallet,
    crosses_threshold,
    plan_debits,
    plan_purchase,
)
from tests.fakes.ledger import MemoryLedger

T = TypeVar("T")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (the memory store's methods)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the memory store suspended")


def counter() -> IdSource:
    n = iter(range(1, 10**9))
    return IdSource(lambda prefix: f"{prefix}_{next(n)}")


def debit(amount: int, rid: str, kind: EntryKind = EntryKind.CHARGE, location: str = "") -> Debit:
    return Debit("t", location, OperationType.SMS, amount, rid, kind=kind)


def wallet(available: int, threshold: int = 0, location: str = "") -> Wallet:
    return Wallet(f"w{location}", "t", location, Columns(available, 0, 0, 0, threshold))


# -- the rules, one by one -----------------------------------------------------------


def test_debits_fit_in_arrival_order_and_a_refusal_blocks_no_smaller_one() -> None:
    snap = Snapshot("t", (wallet(5),))
    plan = plan_debits(snap, "", [debit(2, "a"), debit(4, "b"), debit(3, "c")], NOW, counter())
    assert isinstance(plan.outcomes[0], Fresh) and isinstance(plan.outcomes[2], Fresh)
    refused = plan.outcomes[1]
    assert isinstance(refused, InsufficientTokens)
    assert (refused.violation.requested, refused.violation.available) == (4, 3)
    (move,) = plan.moves
    assert (move.delta, move.need, move.blind) == (Delta(used=5), 5, False)
    finals = {"w": Columns(5, 5, 0, 0, 0)}
    entries = [
        plan.entries[o.entry].entry("t", finals["w"], NOW)
        for o in plan.outcomes
        if isinstance(o, Fresh)
    ]
    assert [e.available_after for e in entries] == [3, 0]


def test_a_blind_plan_accepts_all_and_guards_the_need() -> None:
    snap = Snapshot("t", (Wallet("w", "t", "", None),))
    plan = plan_debits(snap, "", [debit(2, "a"), debit(9, "b", EntryKind.RESERVE)], NOW, counter())
    assert all(isinstance(o, Fresh) for o in plan.outcomes)
    (move,) = plan.moves
    assert (move.need, move.blind, move.delta) == (11, True, Delta(used=2, reserved=9))
    assert not plan.events, "a blind plan records no crossing; its guard refuses one"


def test_which_wallet_pays_and_the_guard_when_a_location_has_none() -> None:
    tenant, lobby = wallet(10), wallet(10, location="lobby")
    own = plan_debits(
        Snapshot("t", (tenant, lobby)), "lobby", [debit(1, "a", location="lobby")], NOW, counter()
    )
    assert own.moves[0].wallet_id == "wlobby" and own.moves[0].absent_location == ""
    fallback = plan_debits(
        Snapshot("t", (tenant,)), "bar", [debit(1, "b", location="bar")], NOW, counter()
    )
    assert fallback.moves[0].wallet_id == "w"
    assert fallback.moves[0].absent_location == "bar", "guarded: bar still has no wallet"
    assert isinstance(
        plan_debits(Snapshot("t", ()), "", [debit(1, "c")], NOW, counter()).outcomes[0], NotFound
    )


def test_a_repeated_request_id_in_one_batch_shares_the_first_result_or_conflicts() -> None:
    plan = plan_debits(
        Snapshot("t", (wallet(10),)),
        "",
        [debit(1, "a"), debit(1, "a"), debit(2, "a")],
        NOW,
        counter(),
    )
    assert plan.outcomes[0] is plan.outcomes[1]
    assert isinstance(plan.outcomes[2], Conflict)
    assert len(plan.entries) == 1


def test_crossing_the_threshold_is_an_event_once() -> None:
    plan = plan_debits(
        Snapshot("t", (wallet(60, threshold=50),)),
        "",
        [debit(5, "a"), debit(10, "b")],
        NOW,
        counter(),
    )
    assert [(e.type, e.payload["available"]) for e in plan.events] == [("ledger.low_balance", 45)]
    assert crosses_threshold(50, 49, 50) and not crosses_threshold(49, 40, 50)
    assert not crosses_threshold(60, 50, 50)


def test_ends_capture_at_most_the_reservation_and_end_once() -> None:
    ledger = MemoryLedger()
    ledger.create_tenant("t", NOW)
    run(ledger.add_tokens("t", "", 10, "buy", "", NOW))
    (held,) = run(ledger.apply_debits("t", "", [debit(4, "r", EntryKind.RESERVE)], NOW))
    assert not isinstance(held, DomainError) and held.reservation
    rid = held.reservation.id
    too_much = EndRequest(rid, "c1", capture=True, amount=5)
    part = EndRequest(rid, "c2", capture=True, amount=3)
    again = EndRequest(rid, "r3", capture=False)
    results = run(ledger.end_reservations("t", [too_much, part, again], NOW))
    assert isinstance(results[0], InvalidArgument)
    assert not isinstance(results[1], DomainError)
    assert results[1][0].state is ReservationState.CAPTURED and results[1][0].captured_amount == 3
    assert isinstance(results[2], FailedPrecondition)
    balance = run(ledger.balance("t", ""))
    assert (balance.used, balance.reserved, balance.available) == (3, 0, 7)


def test_a_late_end_expires_the_reservation_and_fails() -> None:
    ledger = MemoryLedger()
    ledger.create_tenant("t", NOW)
    run(ledger.add_tokens("t", "", 10, "buy", "", NOW))
    (held,) = run(
        ledger.apply_debits(
            "t",
            "",
            [
                Debit(
                    "t",
                    "",
                    OperationType.SMS,
                    4,
                    "r",
                    kind=EntryKind.RESERVE,
                    ttl=timedelta(minutes=1),
                )
            ],
            NOW,
        )
    )
    assert not isinstance(held, DomainError) and held.reservation
    with pytest.raises(FailedPrecondition, match="expired"):
        run(ledger.capture("t", held.reservation.id, None, "late", NOW + timedelta(minutes=2)))
    assert run(ledger.get_reservation("t", held.reservation.id)).state is ReservationState.EXPIRED
    assert run(ledger.balance("t", "")).available == 10


def test_a_purchase_settles_arrears_first() -> None:
    snap = Snapshot("t", (Wallet("w", "t", "", Columns(100, 100, 0, 150, 0)),))
    plan = plan_purchase(snap, Purchase("", 120, "p", ""), NOW, counter())
    assert [(e.kind, e.tokens) for e in plan.entries] == [
        (EntryKind.PURCHASE, 120),
        (EntryKind.CHARGE, 120),
    ]
    assert plan.moves[0].delta == Delta(total=120, used=120, arrears=-120)


# -- the invariants, over any sequence -------------------------------------------------

AMOUNTS = st.integers(min_value=0, max_value=40)
KEYS = st.sampled_from([f"k{i}" for i in range(12)])  # few keys: replays and conflicts happen
LOCATIONS = st.sampled_from(["", "", "front", "bar"])


class LedgerMachine(RuleBasedStateMachine):
    blind = False

    def __init__(self) -> None:
        super().__init__()
        self.ledger = MemoryLedger(low_balance_threshold=20, blind=self.blind)
        self.ledger.create_tenant("t", NOW)
        self.now = NOW
        self.results: dict[str, object] = {}  # request id -> first result
        self.fees: Counter[str] = Counter()

    def _remember(self, request_id: str, result: object) -> None:
        if isinstance(result, DomainError):
            return
        if request_id in self.results:
            assert result == self.results[request_id], "a replay returns the first result"
        else:
            self.results[request_id] = result

    @rule(amount=st.integers(min_value=1, max_value=60), key=KEYS, location=LOCATIONS)
    def purchase(self, amount: int, key: str, location: str) -> None:
        try:
            entry, _ = run(
                self.ledger.add_tokens("t", location, amount, f"buy-{key}", "", self.now)
            )
        except DomainError:
            return
        self._remember(f"buy-{key}", entry)

    @rule(
        batch=st.lists(
            st.tuples(st.integers(min_value=1, max_value=40), KEYS, st.booleans()),
            min_size=1,
            max_size=6,
        ),
        location=LOCATIONS,
    )
    def debits(self, batch: list[tuple[int, str, bool]], location: str) -> None:
        debits = [
            Debit(
                "t",
                location,
                OperationType.SMS,
                amount,
                f"d-{key}",
                kind=EntryKind.RESERVE if hold else EntryKind.CHARGE,
                ttl=timedelta(minutes=10),
            )
            for amount, key, hold in batch
        ]
        before = self._state()
        results = run(self.ledger.apply_debits("t", location, debits, self.now))
        for d, result in zip(debits, results, strict=True):
            if not isinstance(result, DomainError):
                self._remember(d.request_id, result.entry)
        if all(isinstance(r, Conflict | InsufficientTokens | NotFound) for r in results):
            assert self._state() == before, "nothing written for a batch that wrote nothing"

    @precondition(
        lambda self: any(
            r.state is ReservationState.PENDING for r in self.ledger.reservations.values()
        )
    )
    @rule(data=st.data(), key=KEYS, capture=st.booleans(), amount=st.one_of(st.none(), AMOUNTS))
    def end(self, data: st.DataObject, key: str, capture: bool, amount: int | None) -> None:
        rid = data.draw(st.sampled_from(sorted(self.ledger.reservations)))
        req = EndRequest(rid, f"e-{key}", capture=capture, amount=amount if capture else None)
        (result,) = run(self.ledger.end_reservations("t", [req], self.now))
        if not isinstance(result, DomainError):
            self._remember(req.request_id, result[1])

    @rule(minutes=st.integers(min_value=1, max_value=30))
    def time_passes_and_the_sweep_runs(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        for tenant, rid in run(self.ledger.expired_reservations(self.now, 100)):
            run(self.ledger.release(tenant, rid, f"expire:{rid}", self.now, expired=True))

    @rule(fee=st.integers(min_value=1, max_value=300))
    def monthly_fee(self, fee: int) -> None:
        month = f"{self.now.year}-{self.now.month:02d}"
        result = run(self.ledger.charge_monthly_fee("t", month, fee, self.now))
        if not result.already_charged:
            self.fees[month] += 1

    @rule(days=st.integers(min_value=20, max_value=40))
    def a_month_passes(self, days: int) -> None:
        self.now += timedelta(days=days)
        self.time_passes_and_the_sweep_runs(1)

    def _state(self) -> tuple[object, ...]:
        return (
            tuple((w.id, w.columns) for w in self.ledger.wallets.values()),
            len(self.ledger.entries),
            tuple(sorted((r.id, r.state) for r in self.ledger.reservations.values())),
        )

    @invariant()
    def balances_hold(self) -> None:
        for w in self.ledger.wallets.values():
            c = w.columns
            assert c.available >= 0 and c.arrears >= 0 and c.reserved >= 0
            assert c.total - c.used - c.reserved == c.available
            entries = [e for e in self.ledger.entries if e.wallet_id == w.id]
            total = Delta()
            for e in entries:
                total = total + e.delta
                after = e.entry
                assert (after.total_after, after.used_after, after.reserved_after) == (
                    total.total,
                    total.used,
                    total.reserved,
                ), "after-values follow the entries"
                assert e.arrears_after == total.arrears
            assert (total.total, total.used, total.reserved, total.arrears) == (
                c.total,
                c.used,
                c.reserved,
                c.arrears,
            )
            pending = sum(
                r.amount
                for r in self.ledger.reservations.values()
                if r.state is ReservationState.PENDING and r.wallet_location_id == w.location_id
            )
            assert pending == c.reserved

    @invariant()
    def reservations_end_once_and_fees_once_a_month(self) -> None:
        ends = Counter(
            e.entry.reservation_id
            for e in self.ledger.entries
            if e.entry.kind in (EntryKind.CAPTURE, EntryKind.RELEASE, EntryKind.EXPIRE)
        )
        assert all(n == 1 for n in ends.values())
        assert all(n == 1 for n in self.fees.values())
        keys = Counter(e.entry.request_id for e in self.ledger.entries)
        assert all(n == 1 for n in keys.values()), "one entry per request id"
        told = [p["entry_id"] for _, kind, p in self.ledger.events if kind == "ledger.entry"]
        assert told == [e.entry.id for e in self.ledger.entries], "one event per entry, in order"


class BlindLedgerMachine(LedgerMachine):
    """The same, with debits planned without reading the wallet (the hot path)."""

    blind = True


PROPERTY_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerInvariants = LedgerMachine.TestCase
TestLedgerInvariants.settings = PROPERTY_SETTINGS
TestBlindLedgerInvariants = BlindLedgerMachine.TestCase
TestBlindLedgerInvariants.settings = PROPERTY_SETTINGS
