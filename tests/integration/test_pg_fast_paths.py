"""The PostgreSQL single-statement writes against the general path they stand in for
(and Process's one-transaction writes on SQLite, where the tests say `any_app`).

Every scenario runs the same batch twice on one database: through the general
SQLAlchemy path (`SqlLedgerStore`, `SqlAgentStore`) for one tenant and through
the fast path (`PgLedgerStore`, `PgAgentStore`) for another set up identically.
Results, wallets, entries, reservations and events must match, with tenant names
and generated ids taken out. Each scenario also checks which path did the work,
so a fast path that always fell back would fail here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from agentserver.adapters.db.ledger_store import SqlLedgerStore
from agentserver.adapters.db.pg import PgPool, asyncpg_dsn
from agentserver.adapters.db.pg_ledger import PgLedgerStore
from agentserver.adapters.db.process_writes import PgProcessWrites, SqlProcessWrites
from agentserver.adapters.db.settle_writes import PgSettler, SqlSettler
from agentserver.app import App, build_app, prepare_database
from agentserver.config import Settings
from agentserver.domain.actions import Action, ActionState
from agentserver.domain.agent import AgentService, Drafted, ProcessInput
from agentserver.domain.conversations import Exchange, Message, Role, Session
from agentserver.domain.costs import OperationType
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.decision.policy import PolicyOutcome
from agentserver.domain.errors import DomainError, Unavailable
from agentserver.domain.executor import Revision, Settled, Success
from agentserver.domain.identity import TENANT_DEFAULT_SCOPES, Caller
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import Debit, EndRequest, EntryKind
from tests.conftest import PgDatabases, ledger_invariant
from tests.fakes.clock import FakeClock

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SMS = OperationType.SMS


@pytest.fixture(scope="module")
async def app(pg_databases: PgDatabases) -> AsyncIterator[App]:
    """One database for the module: every scenario uses tenants of its own."""
    settings = Settings(database_url=pg_databases.create(), access_log=False, auto_migrate=True)
    application = await build_app(settings, clock=FakeClock(NOW))
    await prepare_database(application)
    assert isinstance(application.ledger.store, PgLedgerStore)
    yield application
    await application.close()


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
async def any_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[App]:
    """An app per backend: PostgreSQL's single statements, SQLite's one transactions."""
    if request.param == "postgres":
        yield request.getfixturevalue("app")
        return
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('writes') / 'writes.db'}"
    application = await build_app(
        Settings(database_url=url, access_log=False, auto_migrate=True), clock=FakeClock(NOW)
    )
    await prepare_database(application)
    yield application
    await application.close()


class Pair:
    """Two tenants set up alike: `general` for the SQLAlchemy path, `fast` for asyncpg."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.general_store = SqlLedgerStore(app.engine, low_balance_threshold=50)
        store = app.ledger.store
        assert isinstance(store, PgLedgerStore)
        self.fast_store = store
        suffix = uuid.uuid4().hex[:8]
        self.general = f"gen-{suffix}"
        self.fast = f"fst-{suffix}"

    async def setup(self, tokens: int, *, location_tokens: int = 0) -> None:
        for tenant in (self.general, self.fast):
            await self.app.admin.create_tenant(tenant, tenant, NOW)
            if tokens:
                await self.app.ledger.add_tokens(tenant, "", tokens, "seed", "seed")
            if location_tokens:
                await self.app.ledger.add_tokens(tenant, "loc-1", location_tokens, "seed-l", "")

    def debits(self, tenant: str, specs: Sequence[tuple[Any, ...]]) -> list[Debit]:
        """(request_id, amount, kind[, location]) tuples as Debits of `tenant`."""
        out = []
        for spec in specs:
            request_id, amount, kind = spec[:3]
            location = spec[3] if len(spec) > 3 else ""
            out.append(
                Debit(
                    tenant_id=tenant,
                    location_id=location,
                    operation_type=SMS,
                    amount=amount,
                    request_id=request_id,
                    description=f"d {request_id}",
                    kind=kind,
                    ttl=timedelta(minutes=10) if kind is EntryKind.RESERVE else None,
                )
            )
        return out

    async def both_debits(
        self, specs: Sequence[tuple[Any, ...]], location: str = ""
    ) -> tuple[list[Any], list[Any]]:
        general = await self.general_store.apply_debits(
            self.general, location, self.debits(self.general, specs), NOW
        )
        fast = await self.fast_store.apply_debits(
            self.fast, location, self.debits(self.fast, specs), NOW
        )
        return [self.norm(r, self.general) for r in general], [
            self.norm(r, self.fast) for r in fast
        ]

    def norm(self, value: Any, tenant: str) -> Any:
        """A result with tenant names and generated ids taken out."""
        if isinstance(value, DomainError):
            return (type(value).__name__, self.norm(value.message, tenant), value.reason)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                k: self.norm(v, tenant)
                for k, v in dataclasses.asdict(value).items()
                if k not in ("id", "reservation_id", "tenant_id")
            }
        if isinstance(value, dict):
            return {
                k: self.norm(v, tenant)
                for k, v in value.items()
                if k not in ("id", "reservation_id", "tenant_id")
            }
        if isinstance(value, tuple | list):
            return [self.norm(v, tenant) for v in value]
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, str):
            value = re.sub(r"\b(res|ent)_[0-9a-f]{24}\b", r"\1_*", value.replace(tenant, "T"))
            return value
        return value

    async def rows(self, tenant: str) -> dict[str, Any]:
        """Everything the ledger holds for `tenant`, comparable across tenants."""
        async with self.app.engine.connect() as conn:
            wallets = (
                await conn.execute(
                    text(
                        "SELECT location_id, total_tokens, used_tokens, reserved_tokens,"
                        " arrears_tokens FROM business_tokens WHERE tenant_id = :t"
                        " ORDER BY location_id"
                    ),
                    {"t": tenant},
                )
            ).all()
            entries = (
                await conn.execute(
                    text(
                        "SELECT location_id, wallet_location_id, operation_type, kind, tokens,"
                        " total_delta, used_delta, reserved_delta, arrears_delta, total_after,"
                        " used_after, reserved_after, arrears_after, description, request_id,"
                        # an end's hash covers its reservation's (random) id
                        " CASE WHEN reservation_id IS NULL OR kind = 'reserve'"
                        " THEN request_hash END, reservation_id IS NULL, created_at"
                        " FROM token_usage_logs WHERE tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).all()
            reservations = (
                await conn.execute(
                    text(
                        "SELECT location_id, wallet_location_id, operation_type, amount,"
                        " captured_amount, state, description, expires_at, created_at, ended_at"
                        " FROM reservations WHERE tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).all()
            events = (
                await conn.execute(
                    text(
                        "SELECT seq, aggregate_type, type, payload::text, created_at"
                        " FROM outbox WHERE tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).all()
        await ledger_invariant(self.app.engine, tenant)

        def rows(found: Sequence[Any]) -> list[tuple[Any, ...]]:
            return sorted(tuple(self.norm(v, tenant) for v in r) for r in found)

        return {
            "wallets": rows(wallets),
            "entries": rows(entries),
            "reservations": rows(reservations),
            "events": rows(events),
        }

    async def assert_same_rows(self) -> None:
        general, fast = await self.rows(self.general), await self.rows(self.fast)
        for table in general:  # a readable diff: the rows found on one side only
            only_general = [r for r in general[table] if r not in fast[table]]
            only_fast = [r for r in fast[table] if r not in general[table]]
            assert (table, only_general) == (table, only_fast)
        assert general == fast


@pytest.fixture
def general_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the general path's batch bodies ran."""
    calls = {"debits": 0, "ends": 0}
    debits, ends = SqlLedgerStore.debit_snapshot_on, SqlLedgerStore.end_snapshot_on

    async def counting_debits(self: SqlLedgerStore, *args: Any, **kw: Any) -> Any:
        calls["debits"] += 1
        return await debits(self, *args, **kw)

    async def counting_ends(self: SqlLedgerStore, *args: Any, **kw: Any) -> Any:
        calls["ends"] += 1
        return await ends(self, *args, **kw)

    monkeypatch.setattr(SqlLedgerStore, "debit_snapshot_on", counting_debits)
    monkeypatch.setattr(SqlLedgerStore, "end_snapshot_on", counting_ends)
    return calls


R, C = EntryKind.RESERVE, EntryKind.CHARGE


async def test_debits_that_fit_take_one_statement(app: App, general_calls: dict[str, int]) -> None:
    pair = Pair(app)
    await pair.setup(100)
    await pair.general_store.apply_debits(pair.general, "", [], NOW)  # warm nothing
    specs = [("a", 5, C), ("b", 7, R), ("c", 1, C), ("d", 30, R)]
    before = general_calls["debits"]
    general = await pair.general_store.apply_debits(
        pair.general, "", pair.debits(pair.general, specs), NOW
    )
    assert general_calls["debits"] == before + 1
    fast = await pair.fast_store.apply_debits(pair.fast, "", pair.debits(pair.fast, specs), NOW)
    assert general_calls["debits"] == before + 1, "the fast path fell back"
    assert [pair.norm(r, pair.general) for r in general] == [pair.norm(r, pair.fast) for r in fast]
    await pair.assert_same_rows()


@pytest.mark.parametrize(
    "name, tokens, first, batch",
    [
        # A replay of an earlier debit inside a batch of new ones.
        ("replay", 100, [("a", 5, C)], [("b", 3, C), ("a", 5, C), ("c", 2, R)]),
        # The same key with other content.
        ("conflict", 100, [("a", 5, C)], [("b", 3, C), ("a", 6, C)]),
        # A retry inside the batch, and a reuse with other content.
        ("in-batch", 100, [], [("a", 5, C), ("a", 5, C), ("b", 1, R), ("b", 2, R)]),
        # The batch does not fit whole: the greedy fit refuses the big one only.
        ("partial", 20, [], [("a", 8, C), ("b", 15, R), ("c", 9, C), ("d", 4, C)]),
        # Nothing fits.
        ("empty", 3, [], [("a", 8, C), ("b", 15, R)]),
        # No wallet at all.
        ("no-wallet", 0, [], [("a", 1, C)]),
        # Crossing the low-balance threshold (50) records one event.
        ("low-balance", 60, [], [("a", 5, C), ("b", 7, R), ("c", 3, C)]),
        # Already below it: no second event.
        ("below", 40, [], [("a", 5, C), ("b", 7, R)]),
    ],
)
async def test_debits_match_the_general_path(
    app: App,
    general_calls: dict[str, int],
    name: str,
    tokens: int,
    first: list[tuple[Any, ...]],
    batch: list[tuple[Any, ...]],
) -> None:
    pair = Pair(app)
    await pair.setup(tokens)
    if first:
        await pair.both_debits(first)
    general, fast = await pair.both_debits(batch)
    assert general == fast, name
    await pair.assert_same_rows()


async def test_debits_of_a_location_wallet_and_its_fallback(
    app: App, general_calls: dict[str, int]
) -> None:
    pair = Pair(app)
    await pair.setup(100, location_tokens=10)
    general, fast = await pair.both_debits([("a", 4, C, "loc-1"), ("b", 3, R, "loc-1")], "loc-1")
    assert general == fast
    # loc-2 has no wallet of its own: the tenant's wallet pays.
    general, fast = await pair.both_debits([("c", 4, C, "loc-2")], "loc-2")
    assert general == fast
    assert fast[0]["entry"]["wallet_location_id"] == ""
    await pair.assert_same_rows()


async def reserve_both(pair: Pair, amounts: Sequence[int]) -> tuple[list[str], list[str]]:
    ids: tuple[list[str], list[str]] = ([], [])
    for tenant, store, out in (
        (pair.general, pair.general_store, ids[0]),
        (pair.fast, pair.fast_store, ids[1]),
    ):
        specs = [(f"r{i}", amount, R) for i, amount in enumerate(amounts)]
        for result in await store.apply_debits(tenant, "", pair.debits(tenant, specs), NOW):
            assert not isinstance(result, DomainError)
            assert result.reservation is not None
            out.append(result.reservation.id)
    return ids


async def end_both(
    pair: Pair,
    ids: tuple[list[str], list[str]],
    specs: Sequence[tuple[int | str, str, bool, int | None]],
    when: datetime = NOW,
    counts: dict[str, int] | None = None,
) -> tuple[list[Any], list[Any]]:
    """(reservation index or literal id, request_id, capture, amount) per request."""
    out = []
    for tenant, store, own in (
        (pair.general, pair.general_store, ids[0]),
        (pair.fast, pair.fast_store, ids[1]),
    ):
        requests = [
            EndRequest(own[ref] if isinstance(ref, int) else ref, request_id, capture, amount)
            for ref, request_id, capture, amount in specs
        ]
        if counts is not None and isinstance(store, PgLedgerStore):
            counts["before fast"] = counts["ends"]
        results = await store.end_reservations(tenant, requests, when)
        out.append([pair.norm(r, tenant) for r in results])
    return out[0], out[1]


async def test_ends_that_can_be_claimed_take_one_statement(
    app: App, general_calls: dict[str, int]
) -> None:
    pair = Pair(app)
    await pair.setup(100)
    ids = await reserve_both(pair, [5, 8, 3, 10])
    general, fast = await end_both(
        pair,
        ids,
        [(2, "e2", True, None), (0, "e0", True, 2), (3, "e3", False, None), (1, "e1", True, 8)],
        counts=general_calls,
    )
    assert general_calls["ends"] == general_calls["before fast"], "the fast path fell back"
    assert general == fast
    await pair.assert_same_rows()


async def test_ends_that_cannot_be_claimed_are_explained_alike(
    app: App, general_calls: dict[str, int]
) -> None:
    pair = Pair(app)
    await pair.setup(100)
    ids = await reserve_both(pair, [5, 8, 3, 10, 4])
    await end_both(pair, ids, [(4, "done", True, None)])
    general, fast = await end_both(
        pair,
        ids,
        [
            (0, "e0", True, None),
            (1, "too-much", True, 9),  # more than reserved
            ("res_unknown", "e-unknown", True, None),
            (4, "done", True, None),  # a replay of an end
            (4, "e4-again", False, None),  # already ended
            (2, "e2", False, None),
            (2, "e2-twice", True, None),  # the same reservation twice in the batch
        ],
    )
    assert general == fast
    assert [type(r) for r in fast].count(list) < len(fast)  # some are errors
    await pair.assert_same_rows()


async def test_ends_with_a_reused_request_id_and_after_expiry(
    app: App, general_calls: dict[str, int]
) -> None:
    pair = Pair(app)
    await pair.setup(100)
    ids = await reserve_both(pair, [5, 8, 3])
    # A request_id already used by a debit: the statement fails whole, each is explained.
    general, fast = await end_both(pair, ids, [(0, "e0", True, None), (1, "r2", True, None)])
    assert general == fast
    # Past the reservations' expiry (10 min): they expire instead.
    later = NOW + timedelta(minutes=11)
    general, fast = await end_both(pair, ids, [(1, "late", True, None)], later)
    assert general == fast
    await pair.assert_same_rows()


# -- the agent store ------------------------------------------------------------


def exchange(tenant: str, session: Session, new: bool, n_actions: int) -> Exchange:
    actions = [
        Action(
            id=new_id("act"),
            tenant_id=tenant,
            session_id=session.id,
            location_id="",
            action_type="email.send",
            category="communication",
            parameters={"to": "a@example.com", "subject": "Hi", "body": f"n {i}"},
            level=DecisionLevel.AUTOMATIC,
            state=ActionState.EXECUTING,
            executable=True,
            blocked=[],
            token_cost=1,
            operation_type="email",
            confidence=90,
            reasoning="r",
            requested_by="u",
            created_at=NOW,
            updated_at=NOW,
        )
        for i in range(n_actions)
    ]
    messages = [
        Message(new_id("msg"), session.id, Role.USER, "hi", NOW),
        Message(
            new_id("msg"),
            session.id,
            Role.ASSISTANT,
            "ok",
            NOW,
            decision_level=1,
            action_ids=[a.id for a in actions],
        ),
    ]
    return Exchange(tenant, session, new, messages, actions, NOW)


def session_of(tenant: str) -> Session:
    return Session(new_id("ses"), tenant, "u", "", "title", 0, NOW, NOW)


async def agent_rows(app: App, tenant: str) -> dict[str, Any]:
    async with app.engine.connect() as conn:
        sessions = (
            await conn.execute(
                text(
                    "SELECT id, user_id, title, message_count, created_at, updated_at"
                    " FROM sessions WHERE tenant_id = :t"
                ),
                {"t": tenant},
            )
        ).all()
        messages = (
            await conn.execute(
                text("SELECT * FROM messages WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            )
        ).all()
        actions = (
            await conn.execute(
                text("SELECT * FROM actions WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            )
        ).all()
    return {
        "sessions": sorted(tuple(r) for r in sessions),
        "messages": [r._asdict() for r in messages],
        "actions": [r._asdict() for r in actions],
    }


def drafted(ex: Exchange, holds: Sequence[Debit] = ()) -> Drafted:
    """What the domain hands the unit of work for an exchange decided elsewhere."""
    outcome = PolicyOutcome([], DecisionLevel.AUTOMATIC, "")
    return Drafted(
        outcome, list(ex.actions), DecisionLevel.AUTOMATIC, "", ex.messages[-1], ex, list(holds)
    )


def held_exchange(app: App, tenant: str, session: Session, new: bool, n: int) -> Drafted:
    """An exchange whose `n` actions hold their tokens (stored executing)."""
    ex = exchange(tenant, session, new, n)
    actions, holds = [], []
    for action in ex.actions:
        debit = app.executor.hold(action, new_id("res"))
        assert debit is not None
        holds.append(debit)
        actions.append(dataclasses.replace(action, reservation_id=debit.reservation_id))
    return drafted(dataclasses.replace(ex, actions=actions), holds)


async def outbox_rows(app: App, tenant: str) -> list[tuple[Any, ...]]:
    """The tenant's events without ids and times."""
    strip = re.compile(r"\b(act|msg|ses|res|ent|wal)_[0-9a-f]{24}\b")
    return [
        (
            e["seq"],
            e["aggregate_type"],
            e["type"],
            strip.sub("id", json.dumps(e["payload"], sort_keys=True)),
        )
        for e in await app.admin.outbox(tenant)
    ]


async def test_exchanges_are_written_alike_both_ways(app: App) -> None:
    """One statement (PostgreSQL) and one transaction (any backend) store the same
    rows and events."""
    fast = app.agent.writes
    assert isinstance(fast, PgProcessWrites)
    general = SqlProcessWrites(app.engine, app.ledger.store, app.agent_store)  # type: ignore[arg-type]
    results = []
    for writes in (general, fast):
        tenant = f"ag-{uuid.uuid4().hex[:8]}"
        await app.admin.create_tenant(tenant, tenant, NOW)
        first = session_of(tenant)
        opening = drafted(exchange(tenant, first, True, 1))
        await writes.write(tenant, "", [lambda _a, d=opening: d])
        batch = [
            exchange(tenant, session_of(tenant), True, 2),
            exchange(tenant, first, False, 1),
            exchange(tenant, first, False, 0),
            exchange(tenant, session_of(tenant), True, 0),
        ]
        await writes.write(tenant, "", [lambda _a, ex=ex: drafted(ex) for ex in batch])
        rows = await agent_rows(app, tenant)
        for table in ("messages", "actions"):
            for row in rows[table]:
                row.pop("tenant_id")
        results.append((rows, await outbox_rows(app, tenant)))
    (g, g_events), (f, f_events) = results
    counts = sorted(r[3] for r in g["sessions"])  # message counts
    assert counts == sorted(r[3] for r in f["sessions"]) == [2, 2, 6]
    strip = {"id", "session_id", "action_ids", "depends_on"}
    for table in ("messages", "actions"):
        assert [{k: v for k, v in r.items() if k not in strip} for r in g[table]] == [
            {k: v for k, v in r.items() if k not in strip} for r in f[table]
        ]
    assert g_events == f_events
    assert [e[2] for e in g_events].count("action.created") == 4
    assert [e[2] for e in g_events].count("message.stored") == 10


async def test_a_bad_exchange_fails_alone(any_app: App) -> None:
    tenant = f"ag-{uuid.uuid4().hex[:8]}"
    await any_app.admin.create_tenant(tenant, tenant, NOW)
    await any_app.ledger.add_tokens(tenant, "", 100, "seed", "seed")
    good = held_exchange(any_app, tenant, session_of(tenant), True, 1)
    # Continues a session that does not exist: its messages break the foreign key.
    bad = held_exchange(any_app, tenant, session_of(tenant), False, 1)
    other = drafted(exchange(tenant, session_of(tenant), True, 0))
    results = await asyncio.gather(
        *(
            any_app.agent.writes.hold_and_record(tenant, "", lambda _a, d=d: d)
            for d in (good, bad, other)
        ),
        return_exceptions=True,
    )
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert isinstance(results[1], Exception)
    rows = await agent_rows(any_app, tenant)
    assert len(rows["sessions"]) == 2 and len(rows["messages"]) == 4
    assert len(rows["actions"]) == 1
    assert (await any_app.ledger.balance(tenant)).reserved == 1
    kinds = [e[2] for e in await outbox_rows(any_app, tenant)]
    assert kinds.count("action.created") == 1 and kinds.count("message.stored") == 4
    await ledger_invariant(any_app.engine, tenant)


# -- an action's success: capture and state change together ---------------------------


async def settle_scenario(app: App, settler: SqlSettler) -> tuple[list[Settled], str, Drafted]:
    """Four executing actions: `a` settles with a reply; `b` was finished by someone
    else; `c`'s capture was made before (a retry of its key); `d` changes nothing."""
    tenant = f"ag-{uuid.uuid4().hex[:8]}"
    await app.admin.create_tenant(tenant, tenant, NOW)
    await app.ledger.add_tokens(tenant, "", 100, "seed", "seed")
    d = held_exchange(app, tenant, session_of(tenant), True, 4)
    await app.agent.writes.hold_and_record(tenant, "", lambda _a: d)
    a, b, c, e = d.actions
    asked, reply = d.exchange.messages
    await app.agent_store.transition(
        tenant, b.id, frozenset({ActionState.EXECUTING}), ActionState.FAILED, NOW
    )
    assert c.reservation_id is not None
    await app.ledger.capture(tenant, c.reservation_id, None, f"action:{c.id}:capture")
    later = NOW + timedelta(seconds=2)
    settled = await settler.settle(
        tenant,
        [
            Success(
                a,
                f"action:{a.id}:capture",
                later,
                {"result": {"ok": 1}},
                Revision(reply.id, "done"),
            ),
            Success(
                b, f"action:{b.id}:capture", later, {"result": {"ok": 2}}, Revision(asked.id, "no")
            ),
            Success(c, f"action:{c.id}:capture", later, {"result": {"ok": 3}}),
            Success(e, f"action:{e.id}:capture", later, {}),
        ],
    )
    return settled, tenant, d


async def test_success_captures_and_changes_state_together(app: App) -> None:
    settler = app.executor.settler
    assert isinstance(settler, PgSettler)
    (settled_a, settled_b, settled_c, settled_d), tenant, d = await settle_scenario(app, settler)
    a, b, c, e = d.actions
    asked, reply = d.exchange.messages
    store = app.agent_store
    assert settled_a.action == await store.get(tenant, a.id)
    assert settled_a.action is not None and settled_a.action.state is ActionState.SUCCEEDED
    assert settled_a.action.result == {"ok": 1} and settled_a.revised
    assert settled_b == Settled(None, revised=False)  # captured, but it had left executing
    assert (await store.get(tenant, b.id)).state is ActionState.FAILED
    # `c`: the statement could not claim it; the transaction saw the capture done under
    # its key and only moved the action.
    assert settled_c.action is not None and settled_c.action.state is ActionState.SUCCEEDED
    assert settled_d.action is not None and not settled_d.revised
    assert (await store.get(tenant, e.id)).result == {}
    contents = {
        m.id: m.content for m in await store.recent_messages(tenant, d.exchange.session.id, 9)
    }
    assert contents == {asked.id: "hi", reply.id: "done"}
    for action in (a, b, c, e):
        assert action.reservation_id is not None
        assert await app.ledger.reservation_state(tenant, action.reservation_id) == "captured"
    succeeded = [x for x in await app.admin.outbox(tenant) if x["type"] == "action.succeeded"]
    assert sorted(x["aggregate_id"] for x in succeeded) == sorted([a.id, c.id, e.id])
    await ledger_invariant(app.engine, tenant)


async def test_the_statement_and_the_transaction_settle_alike(app: App) -> None:
    pg = app.executor.settler
    assert isinstance(pg, PgSettler)
    general = SqlSettler(app.engine, app.ledger.store, app.agent_store)  # type: ignore[arg-type]
    outcomes = []
    for settler in (general, pg):
        settled, tenant, _ = await settle_scenario(app, settler)
        rows = await agent_rows(app, tenant)
        states = sorted(
            (r["action_type"], r["state"], json.dumps(r["result"])) for r in rows["actions"]
        )
        balance = await app.ledger.balance(tenant)
        outcomes.append(
            (
                [(s.action is not None, s.revised) for s in settled],
                states,
                (balance.used, balance.reserved),
                # the same events; within one batch their order may differ
                sorted(e[1:] for e in await outbox_rows(app, tenant)),
            )
        )
        await ledger_invariant(app.engine, tenant)
    assert outcomes[0] == outcomes[1]


async def test_a_success_whose_hold_ended_is_charged_instead(any_app: App) -> None:
    tenant = f"ag-{uuid.uuid4().hex[:8]}"
    await any_app.admin.create_tenant(tenant, tenant, NOW)
    await any_app.ledger.add_tokens(tenant, "", 2, "seed", "seed")
    d = held_exchange(any_app, tenant, session_of(tenant), True, 2)
    await any_app.agent.writes.hold_and_record(tenant, "", lambda _a: d)
    a, b = d.actions
    for action in (a, b):  # the holds end (the sweep found them expired, say)
        assert action.reservation_id is not None
        await any_app.ledger.release(tenant, action.reservation_id, f"gone-{action.id}")
    await any_app.ledger.charge(
        Debit(tenant, "", SMS, 1, "someone-else", description="spent meanwhile")
    )
    later = NOW + timedelta(seconds=1)
    settler = any_app.executor.settler
    first = await settler.succeed(Success(a, f"action:{a.id}:capture", later, {"result": {}}))
    second = await settler.succeed(Success(b, f"action:{b.id}:capture", later, {"result": {}}))
    assert first.action is not None and second.action is not None
    assert first.action.state is second.action.state is ActionState.SUCCEEDED
    assert "settlement" not in first.action.result  # charged from what was left
    assert second.action.result["settlement"].startswith("not charged")
    balance = await any_app.ledger.balance(tenant)
    assert (balance.used, balance.reserved, balance.available) == (2, 0, 0)
    await ledger_invariant(any_app.engine, tenant)


async def test_a_database_that_is_gone_is_unavailable() -> None:
    from tests import procs

    pool = PgPool(f"postgresql+asyncpg://postgres@127.0.0.1:{procs.free_port()}/none")
    with pytest.raises(Unavailable):
        await pool.fetch("SELECT 1")
    with pytest.raises(Unavailable):
        await pool.execute("SELECT 1")
    await pool.close()


# -- Process: holds and exchange in one statement ----------------------------------------


def caller_of(tenant: str, user: str = "u") -> Caller:
    return Caller(
        key_id="k",
        key_tenant_id=tenant,
        scopes=frozenset(TENANT_DEFAULT_SCOPES),
        tenant_id=tenant,
        user_id=user,
    )


MESSAGES = [
    "Email ann@example.com that the order shipped",
    "Text +15551234567 that we open at 9 and email bob@example.com the same",
    "Delete the resource called Room 4",  # destructive: waits for an approver
    "Hello there",  # nothing to hold
]


async def process_rows(app: App, tenant: str) -> dict[str, Any]:
    """What Process left behind, without ids and times."""
    async with app.engine.connect() as conn:
        actions = (
            await conn.execute(
                text(
                    "SELECT action_type, state, decision_level, executable, token_cost,"
                    " reservation_id IS NULL, attempts, decided_by, CAST(parameters AS TEXT)"
                    " FROM actions WHERE tenant_id = :t"
                ),
                {"t": tenant},
            )
        ).all()
        messages = (
            await conn.execute(
                text("SELECT role, content, decision_level FROM messages WHERE tenant_id = :t"),
                {"t": tenant},
            )
        ).all()
        entries = (
            await conn.execute(
                text(
                    "SELECT kind, tokens, used_delta, reserved_delta, description IS NULL"
                    " FROM token_usage_logs WHERE tenant_id = :t AND kind <> 'purchase'"
                ),
                {"t": tenant},
            )
        ).all()
        wallet = (
            await conn.execute(
                text(
                    "SELECT total_tokens, used_tokens, reserved_tokens FROM business_tokens"
                    " WHERE tenant_id = :t"
                ),
                {"t": tenant},
            )
        ).all()
    await ledger_invariant(app.engine, tenant)
    return {
        "actions": sorted(tuple(r) for r in actions),
        "messages": sorted(tuple(r) for r in messages),
        "entries": sorted(tuple(r) for r in entries),
        "wallet": [tuple(r) for r in wallet],
    }


async def run_messages(
    app: App, agent: AgentService, tokens: int, together: bool
) -> tuple[list[Any], str]:
    tenant = f"pr-{uuid.uuid4().hex[:8]}"
    await app.admin.create_tenant(tenant, tenant, NOW)
    await app.admin.set_rule(tenant, "business", "", "allow", "*:*")
    if tokens:
        await app.ledger.add_tokens(tenant, "", tokens, "seed", "seed")
    calls = [agent.process(caller_of(tenant), ProcessInput(message=m)) for m in MESSAGES]
    if together:  # one batch
        results = await asyncio.gather(*calls)
    else:  # in order: who gets the last tokens is then known
        results = [await call for call in calls]
    summary = [
        (r.reply, int(r.level), [(a.action_type, a.state.value, a.token_cost) for a in r.actions])
        for r in results
    ]
    return summary, tenant


@pytest.mark.parametrize("tokens, together", [(100, True), (1, False), (0, True)])
async def test_process_blind_and_under_the_lock_end_alike(
    any_app: App, monkeypatch: pytest.MonkeyPatch, tokens: int, together: bool
) -> None:
    """Funded, short (the batch does not fit whole) and empty wallets: deciding as if
    the holds fit and checking in one statement ends where deciding with the balance
    read under the wallet's lock does."""
    fell_back = 0  # batches PostgreSQL's statement left to the transaction
    write = SqlProcessWrites.write

    async def counting(self: SqlProcessWrites, *args: Any, **kw: Any) -> Any:
        nonlocal fell_back
        fell_back += isinstance(self, PgProcessWrites)
        return await write(self, *args, **kw)

    monkeypatch.setattr(SqlProcessWrites, "write", counting)
    fast, fast_tenant = await run_messages(any_app, any_app.agent, tokens, together)
    under_lock = dataclasses.replace(
        any_app.agent,
        writes=SqlProcessWrites(any_app.engine, any_app.ledger.store, any_app.agent_store),  # type: ignore[arg-type]
    )
    slow, slow_tenant = await run_messages(any_app, under_lock, tokens, together)
    assert fast == slow
    assert await process_rows(any_app, fast_tenant) == await process_rows(any_app, slow_tenant)
    # The same events (concurrent calls may be numbered in another order).
    fast_events = sorted(e[1:] for e in await outbox_rows(any_app, fast_tenant))
    assert fast_events == sorted(e[1:] for e in await outbox_rows(any_app, slow_tenant))
    if isinstance(any_app.agent.writes, PgProcessWrites):
        if tokens >= 100:
            assert fell_back == 0, "a funded wallet took the transaction"
        elif tokens == 1:
            assert fell_back > 0, "the statement cannot have held what did not fit"


def test_the_asyncpg_url_drops_what_only_sqlalchemy_understands() -> None:
    url = (
        "postgresql+asyncpg://u:p%40ss@db.example:6432/app"
        "?prepared_statement_cache_size=0&ssl=require&application_name=agentserver"
    )
    assert asyncpg_dsn(url) == (
        "postgresql://u:p%40ss@db.example:6432/app?application_name=agentserver&sslmode=require"
    )
    assert asyncpg_dsn("postgresql+asyncpg://u@h/db") == "postgresql://u@h/db"
