"""In-memory twins of the agent's ports: conversations and actions, Process's unit of
work, the settler, conversation windows, a channel runner and a policy source. With
`tests/fakes/ledger.py` and `tests/fakes/clock.py` they run AgentService and the
executor with no database at all; each write also records its outbox events, as the
real stores do in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agentserver.domain.actions import (
    WAITING,
    Action,
    ActionFilter,
    ActionState,
    transition_events,
)
from agentserver.domain.agent import AgentService, Drafted
from agentserver.domain.channels import ChannelResult, PermanentChannelError
from agentserver.domain.conversations import (
    Exchange,
    Message,
    Session,
    exchange_events,
    message_events,
)
from agentserver.domain.costs import CostTable
from agentserver.domain.decision.offline import OfflineEngine
from agentserver.domain.errors import DomainError, NotFound
from agentserver.domain.events import DomainEvent
from agentserver.domain.executor import Executor, PendingStatus, Settled, Success
from agentserver.domain.ledger import Debit, EndRequest, EntryKind, LedgerService
from agentserver.domain.ledger_kernel import Fresh, Replay, plan_debits, plan_ends
from agentserver.domain.paging import PageRequest, encode_token
from agentserver.domain.registry import default_registry
from agentserver.domain.windows import WindowKey
from tests.fakes.clock import FakeClock
from tests.fakes.ledger import MemoryLedger


@dataclass
class MemoryAgentStore:
    """Conversations and actions in dicts; every change records its events."""

    sessions: dict[str, Session] = field(default_factory=dict)
    messages: dict[str, list[Message]] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    events: list[tuple[str, DomainEvent]] = field(default_factory=list)

    def tell(self, tenant_id: str, events: Sequence[DomainEvent]) -> None:
        self.events += [(tenant_id, e) for e in events]

    def insert(self, exchanges: Sequence[Exchange]) -> None:
        for ex in exchanges:
            if ex.new_session:
                self.sessions[ex.session.id] = replace(ex.session, message_count=0)
            elif ex.session.id not in self.sessions:
                raise NotFound(f"session {ex.session.id!r} not found")
            session = self.sessions[ex.session.id]
            self.sessions[session.id] = replace(
                session, message_count=session.message_count + len(ex.messages), updated_at=ex.now
            )
            self.messages.setdefault(session.id, []).extend(ex.messages)
            for action in ex.actions:
                self.actions[action.id] = action
            self.tell(ex.tenant_id, exchange_events(ex))

    # ConversationStore
    async def get_session(self, tenant_id: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.tenant_id != tenant_id:
            raise NotFound(f"session {session_id!r} not found")
        return session

    async def list_sessions(
        self, tenant_id: str, user_id: str, page: PageRequest
    ) -> tuple[list[Session], str]:
        found = [
            s for s in self.sessions.values() if (s.tenant_id, s.user_id) == (tenant_id, user_id)
        ]
        return sorted(found, key=lambda s: s.updated_at, reverse=True)[: page.size], ""

    async def list_messages(
        self, tenant_id: str, session_id: str, before: datetime | None, page: PageRequest
    ) -> tuple[list[Message], str]:
        await self.get_session(tenant_id, session_id)
        found = [
            m for m in self.messages.get(session_id, []) if before is None or m.created_at < before
        ]
        return list(reversed(found))[: page.size], ""

    async def recent_messages(self, tenant_id: str, session_id: str, limit: int) -> list[Message]:
        return self.messages.get(session_id, [])[-limit:]

    async def revise_messages(self, revisions: Sequence[tuple[str, str, str]]) -> None:
        for _tenant, message_id, content in revisions:
            self._revise(message_id, content)

    def _revise(self, message_id: str, content: str) -> bool:
        for msgs in self.messages.values():
            for i, m in enumerate(msgs):
                if m.id == message_id:
                    msgs[i] = replace(m, content=content)
                    return True
        return False

    async def append_messages(
        self, tenant_id: str, session_id: str, messages: Sequence[Message], now: datetime
    ) -> None:
        session = await self.get_session(tenant_id, session_id)
        self.messages.setdefault(session_id, []).extend(messages)
        self.sessions[session_id] = replace(
            session, message_count=session.message_count + len(messages), updated_at=now
        )
        self.tell(tenant_id, message_events(tenant_id, session, messages))

    # ActionStore
    async def get(self, tenant_id: str, action_id: str) -> Action:
        action = self.actions.get(action_id)
        if action is None or action.tenant_id != tenant_id:
            raise NotFound(f"action {action_id!r} not found")
        return action

    async def find(
        self, tenant_id: str, flt: ActionFilter, page: PageRequest
    ) -> tuple[list[Action], str]:
        found = [
            a
            for a in self.actions.values()
            if a.tenant_id == tenant_id
            and (not flt.states or a.state in flt.states)
            and (not flt.session_id or a.session_id == flt.session_id)
            and (not flt.levels or a.level in flt.levels)
            and (not flt.requested_by or a.requested_by == flt.requested_by)
        ]
        found.sort(key=lambda a: a.id, reverse=True)
        if page.after:
            found = [a for a in found if a.id < str(page.after["id"])]
        out = found[: page.size]
        return out, encode_token("actions", {"id": out[-1].id}) if len(found) > page.size else ""

    async def transition(
        self,
        tenant_id: str,
        action_id: str,
        from_states: frozenset[ActionState],
        to_state: ActionState,
        now: datetime,
        **changes: Any,
    ) -> Action | None:
        action = self.actions.get(action_id)
        if action is None or action.tenant_id != tenant_id or action.state not in from_states:
            return None
        moved = action.moved(to_state, now, **changes)
        self.actions[action_id] = moved
        self.tell(tenant_id, transition_events(moved))
        return moved

    async def update(self, tenant_id: str, action_id: str, now: datetime, **changes: Any) -> Action:
        action = await self.get(tenant_id, action_id)
        updated = replace(action, updated_at=now, version=action.version + 1, **changes)
        self.actions[action_id] = updated
        return updated

    async def due_for_expiry(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        due = [
            (a.tenant_id, a.id)
            for a in self.actions.values()
            if a.state in WAITING and a.expires_at is not None and a.expires_at <= now
        ]
        return due[:limit]

    async def dependents(self, tenant_id: str, action_id: str) -> list[Action]:
        return sorted(
            (
                a
                for a in self.actions.values()
                if a.tenant_id == tenant_id and a.depends_on == action_id
            ),
            key=lambda a: (a.created_at, a.id),
        )

    async def stale(
        self, state: ActionState, before: datetime, limit: int
    ) -> list[tuple[str, str]]:
        found = [
            (a.tenant_id, a.id)
            for a in self.actions.values()
            if a.state is state and a.updated_at < before
        ]
        return found[:limit]


@dataclass
class MemoryProcessWrites:
    """Process's unit of work: each draft decided with the balance available (the
    memory ledger's), its holds and exchange written together, or none of them."""

    ledger: MemoryLedger
    store: MemoryAgentStore

    async def hold_and_record(
        self, tenant_id: str, location_id: str, draft: Callable[[int | None], Drafted]
    ) -> Drafted:
        snap = self.ledger.snapshot(tenant_id, [])
        wallet = snap.paying_wallet(location_id)
        available = wallet.columns.available if wallet and wallet.columns else 0
        drafted = draft(available)
        if drafted.holds:
            plan = plan_debits(
                snap, location_id, drafted.holds, drafted.exchange.now, self.ledger.ids
            )
            assert all(isinstance(o, Fresh) for o in plan.outcomes), plan.outcomes
            self.ledger.apply(plan)
        self.store.insert([drafted.exchange])
        return drafted


@dataclass
class MemorySettler:
    """A success: the reservation ended (or, when it ended before, charged instead if
    it fits), the action moved to succeeded, its reply rewritten."""

    ledger: MemoryLedger
    store: MemoryAgentStore

    async def succeed(self, s: Success) -> Settled:
        action, changes = s.action, dict(s.changes)
        if action.reservation_id:
            end = EndRequest(action.reservation_id, s.end_request_id, capture=s.capture)
            snap = self.ledger.snapshot(action.tenant_id, [end.request_id], [action.reservation_id])
            plan = plan_ends(snap, [end], s.now, self.ledger.ids)
            if plan.writes:
                self.ledger.apply(plan)
            outcome = plan.outcomes[0]
            if isinstance(outcome, DomainError) and s.capture:
                charge = Debit(
                    action.tenant_id,
                    action.location_id,
                    plan.ends[0].reservation.operation_type if plan.ends else _op(action),
                    action.token_cost,
                    f"action:{action.id}:charge",
                    kind=EntryKind.CHARGE,
                )
                csnap = self.ledger.snapshot(action.tenant_id, [charge.request_id])
                cplan = plan_debits(csnap, action.location_id, [charge], s.now, self.ledger.ids)
                if isinstance(cplan.outcomes[0], Fresh):
                    self.ledger.apply(cplan)
                elif not isinstance(cplan.outcomes[0], Replay):
                    result = changes.get("result", action.result)
                    changes["result"] = {**result, "settlement": f"not charged: {outcome.message}"}
        moved = await self.store.transition(
            action.tenant_id,
            action.id,
            frozenset({ActionState.EXECUTING}),
            ActionState.SUCCEEDED,
            s.now,
            **changes,
        )
        if moved is None:
            return Settled(None)
        revised = bool(s.revision and self.store._revise(s.revision.message_id, s.revision.content))
        return Settled(moved, revised)


def _op(action: Action) -> Any:
    from agentserver.domain.costs import OperationType

    return OperationType(action.operation_type or OperationType.CUSTOM)


@dataclass
class MemoryWindows:
    open_windows: dict[WindowKey, tuple[str, datetime]] = field(default_factory=dict)
    heirs: dict[WindowKey, str] = field(default_factory=dict)

    async def open(self, key: WindowKey, opener: str, now: datetime, until: datetime) -> bool:
        current = self.open_windows.get(key)
        if current is not None and current[1] > now:
            return False
        self.open_windows[key] = (opener, until)
        self.heirs.pop(key, None)
        return True

    async def join(self, key: WindowKey, joiner: str, now: datetime) -> bool:
        current = self.open_windows.get(key)
        if current is None or current[1] <= now:
            return False
        self.heirs.setdefault(key, joiner)
        return True

    async def withdraw(self, key: WindowKey, opener: str) -> str | None:
        current = self.open_windows.get(key)
        if current is None or current[0] != opener:
            return None
        heir = self.heirs.pop(key, None)
        if heir is None:
            del self.open_windows[key]
        else:
            self.open_windows[key] = (heir, current[1])
        return heir


@dataclass
class FakeRunner:
    """A channel that records what it sends; `fail` names action types that fail
    permanently, `hang` makes a call wait until released."""

    sent: list[Action] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    hang: asyncio.Event | None = None

    async def run(self, action: Action) -> ChannelResult:
        if self.hang is not None:
            await self.hang.wait()
        if action.action_type in self.fail:
            raise PermanentChannelError(f"{action.action_type} refused by the provider")
        self.sent.append(action)
        return ChannelResult(channel="fake", provider_id=f"fake-{action.id}", detail={})

    async def poll(self, action: Action) -> PendingStatus:
        return PendingStatus(done=True, succeeded=True)


@dataclass
class StaticPolicy:
    """A PolicySource: the tenant allows `rules` business-wide, with `policy`."""

    allow: tuple[str, ...] = ("*:*",)
    user_rules: tuple[tuple[str, str, str], ...] = ()  # (user, effect, permission)
    policy: dict[str, Any] = field(default_factory=dict)

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]:
        business = [("business", "", "allow", p) for p in self.allow]
        return business + [("user", u, effect, p) for u, effect, p in self.user_rules]

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]:
        return self.policy


@dataclass
class World:
    """An AgentService over the memory twins, and everything it touches."""

    clock: FakeClock
    ledger: MemoryLedger
    store: MemoryAgentStore
    runner: FakeRunner
    policy: StaticPolicy
    executor: Executor
    agent: AgentService

    def events(self, tenant_id: str = "t") -> list[str]:
        return [e.type for t, e in self.store.events if t == tenant_id] + [
            kind for t, kind, _ in self.ledger.events if t == tenant_id
        ]


def world(tokens: int = 100, *, policy: StaticPolicy | None = None) -> World:
    clock = FakeClock()
    ledger = MemoryLedger()
    ledger.create_tenant("t", clock.now())
    if tokens:
        from tests.unit.test_ledger_kernel import run

        run(ledger.add_tokens("t", "", tokens, "seed", "seed", clock.now()))
    store = MemoryAgentStore()
    runner = FakeRunner()
    costs = CostTable.parse("")
    ledger_service = LedgerService(store=ledger, clock=clock, costs=costs)

    async def once(fn: Callable[[], Any]) -> Any:
        return await fn()

    executor = Executor(
        actions=store,
        ledger=ledger_service,
        runner=runner,
        clock=clock,
        retry=once,
        settler=MemorySettler(ledger, store),
        windows=MemoryWindows(),
    )
    offline = OfflineEngine()
    rules = policy or StaticPolicy()
    agent = AgentService(
        store=store,
        policy=rules,
        ledger=ledger_service,
        executor=executor,
        registry=default_registry(),
        costs=costs,
        clock=clock,
        engine=offline,
        offline=offline,
        writes=MemoryProcessWrites(ledger, store),
    )
    return World(clock, ledger, store, runner, rules, executor, agent)
