"""The agent: Process a message (here), read conversations and actions (reading.py),
decide actions (deciding.py), over the ports in agent_base.py.

Process reads as decide -> hold -> record -> run -> settle. The engine proposes;
`policy.decide` disposes; the unit of work (`ProcessWrites`) holds the tokens and
records the exchange with its events, deciding again with the balance when the
holds did not fit; the executor runs what is automatic and settles each success.
Nothing the engine returns can widen a permission or skip a level: permissions come
from the tenant's rules (narrowed by what the caller asserts), levels from the policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain import people
from agentserver.domain.actions import (
    WAITING_STATE_FOR_LEVEL,
    Action,
    ActionState,
)
from agentserver.domain.agent_base import AgentStore
from agentserver.domain.batching import Coalescer
from agentserver.domain.clock import Clock
from agentserver.domain.conversations import (
    Exchange,
    Message,
    Role,
    Session,
    title_of,
    validate_message,
)
from agentserver.domain.costs import CostTable, OperationType
from agentserver.domain.deciding import Deciding
from agentserver.domain.decision.engine import (
    DecisionEngine,
    EngineRequest,
    HistoryMessage,
    Proposal,
)
from agentserver.domain.decision.levels import DecisionLevel, strictest
from agentserver.domain.decision.policy import (
    PREREQUISITE_BLOCKED,
    ActionDecision,
    BlockedReason,
    PolicyOutcome,
    decide,
)
from agentserver.domain.errors import (
    InsufficientTokens,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.executor import (
    Executor,
    Revision,
)
from agentserver.domain.identity import MAX_LOCATION_ID, Caller, check_lengths
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import Attribution, Debit, LedgerService, validate_debit
from agentserver.domain.policy_source import PolicySource, policy_settings
from agentserver.domain.reading import Reading
from agentserver.domain.registry import Registry
from agentserver.domain.replies import done
from agentserver.domain.replies import reply as reply_to
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry
from agentserver.domain.values import evolve

log = logging.getLogger(__name__)

HISTORY_MESSAGES = 10


@dataclass(frozen=True)
class Drafted:
    """A message's exchange as decided for a balance: what Process stores, and the
    tokens its actions hold."""

    outcome: PolicyOutcome
    actions: list[Action]
    level: DecisionLevel
    reply: str
    assistant: Message
    exchange: Exchange
    holds: list[Debit]


class ProcessWrites(Protocol):
    """Process's unit of work: a message's holds and exchange, with their events,
    written all or nothing (the store batches concurrent calls below this port)."""

    async def hold_and_record(
        self, tenant_id: str, location_id: str, draft: Callable[[int | None], Drafted]
    ) -> Drafted:
        """Decide with `draft` (given the balance available, or None to assume the
        holds fit: the store then checks, and decides again with the balance if
        they did not), hold the tokens and store the exchange; the draft written."""
        ...


@dataclass(frozen=True)
class _Draft:
    """What Process knows about an exchange before deciding."""

    tenant: str
    session: Session
    new_session: bool
    user_message: Message
    location: str
    user: str
    now: datetime


@dataclass(frozen=True)
class ProcessInput:
    message: str
    session_id: str = ""
    location_id: str = ""
    user_permissions: list[str] = field(default_factory=list)
    business_context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessResult:
    reply: str
    level: DecisionLevel
    actions: list[Action]
    reasoning: str
    confidence: int
    session_id: str
    engine: str


@dataclass
class AgentService(Reading, Deciding):
    store: AgentStore
    policy: PolicySource
    ledger: LedgerService
    executor: Executor
    registry: Registry
    costs: CostTable
    clock: Clock
    engine: DecisionEngine
    offline: DecisionEngine
    writes: ProcessWrites
    action_ttl: timedelta = timedelta(hours=24)
    telemetry: Telemetry = NO_TELEMETRY
    _revisions: Coalescer[str, tuple[str, str, str], None] = field(init=False)

    def __post_init__(self) -> None:
        self._revisions = Coalescer(self._revise)

    async def _revise(self, _key: str, batch: list[tuple[str, str, str]]) -> list[None]:
        await self.store.revise_messages(batch)
        return [None] * len(batch)

    # -- Process -------------------------------------------------------------

    async def process(self, caller: Caller, request: ProcessInput) -> ProcessResult:
        text = validate_message(request.message)
        check_lengths(("context.location_id", request.location_id, MAX_LOCATION_ID))
        tenant = caller.tenant()
        user = caller.user_id
        if not user:
            raise InvalidArgument.field("x-user-id", "metadata is required to process a message")
        now = self.clock.now()
        history: list[HistoryMessage] = []
        if request.session_id:
            session = await self.store.get_session(tenant, request.session_id)
            people.check_may_write(caller, session.user_id)
            new_session = False
            recent = await self.store.recent_messages(tenant, session.id, HISTORY_MESSAGES)
            history = [HistoryMessage(m.role.value, m.content) for m in recent]
        else:
            session = Session(
                id=new_id("ses"),
                tenant_id=tenant,
                user_id=user,
                location_id=request.location_id or caller.location_id,
                title=title_of(text),
                message_count=0,
                created_at=now,
                updated_at=now,
            )
            new_session = True
        location = request.location_id or caller.location_id or session.location_id

        permissions = await self.permissions_for(
            tenant, user, location, request.user_permissions or None
        )
        settings = policy_settings(await self.policy.tenant_policy(tenant))

        user_message = Message(new_id("msg"), session.id, Role.USER, text, now)
        engine_request = EngineRequest(
            message=text,
            now=now,
            history=history,
            business_context=request.business_context,
            tenant_id=tenant,
            location_id=location,
        )
        about = Attribution(user, session.id, {"message_id": user_message.id})
        proposal = await self._propose(engine_request, tenant, location, user_message.id, about)
        d = _Draft(tenant, session, new_session, user_message, location, user, now)

        def draft(available: int | None) -> Drafted:
            outcome = decide(
                proposal,
                self.registry,
                self.costs,
                permissions,
                available,
                settings=settings,
                message=text,
            )
            actions, holds = self._holding_actions(outcome, d)
            level, reply, assistant = self._answer(proposal, actions, session.id)
            messages = [user_message, assistant]
            exchange = Exchange(tenant, session, new_session, messages, actions, now)
            return Drafted(outcome, actions, level, reply, assistant, exchange, holds)

        with self.telemetry.span("ledger.hold"):
            drafted = await self.writes.hold_and_record(tenant, location, draft)
        outcome, actions, level, reply, assistant = (
            drafted.outcome,
            drafted.actions,
            drafted.level,
            drafted.reply,
            drafted.assistant,
        )
        # The stored reply was written before the automatic actions ran ("in
        # progress"). Each success rewrites it to the reply as it reads if that
        # action is done, in the same step where the store can; what is still
        # different at the end (a failure, a store that cannot) is rewritten after.
        finished = list(actions)
        written = reply
        followed = {a.depends_on for a in actions if a.depends_on}
        for i, action in enumerate(actions):
            if action.state is not ActionState.EXECUTING:
                continue
            hoped = reply_to(proposal, [*finished[:i], done(action), *finished[i + 1 :]])
            finished[i], revised = await self.executor.run_revising(
                action, Revision(assistant.id, hoped)
            )
            if revised:
                written = hoped
            if action.id in followed:
                await self.executor.follow(finished[i])
        if followed:  # the dependents moved on their own: read where they are now
            finished = [await self.store.get(tenant, a.id) if a.depends_on else a for a in finished]
        final_reply = reply_to(proposal, finished)
        if final_reply != written:
            try:
                await self._revisions.submit("all", (tenant, assistant.id, final_reply))
            except Exception:  # the actions' own rows are the record; the text may lag
                log.warning("could not update reply %s", assistant.id, exc_info=True)
        parts = [proposal.reasoning, outcome.reasoning]
        parts += [f"[{a.action_type}] {a.reasoning}" for a in finished]
        reasoning = " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)
        self.telemetry.decided(
            tenant, level.name.lower(), [(a.action_type, a.level.name.lower()) for a in finished]
        )
        return ProcessResult(
            reply=final_reply,
            level=level,
            actions=finished,
            reasoning=reasoning,
            confidence=max(0, min(100, proposal.confidence)),
            session_id=session.id,
            engine=proposal.engine,
        )

    def _answer(
        self, proposal: Proposal, actions: list[Action], session_id: str
    ) -> tuple[DecisionLevel, str, Message]:
        """The response's level (the strictest of the actions as they are: a refused
        hold makes one stricter), the reply, and the assistant message storing it."""
        level = strictest(*(a.level for a in actions))
        reply = reply_to(proposal, actions)
        assistant = Message(
            new_id("msg"),
            session_id,
            Role.ASSISTANT,
            reply,
            self.clock.now(),
            decision_level=int(level),
            action_ids=[a.id for a in actions],
        )
        return level, reply, assistant

    async def _propose(
        self,
        request: EngineRequest,
        tenant: str,
        location: str,
        message_id: str,
        about: Attribution,
    ) -> Proposal:
        """Ask the configured engine; an LLM decision is paid first (1 token), and
        with no balance left the offline engine decides instead."""
        with self.telemetry.span("engine.propose", {"engine": self.engine.name}):
            proposal = await self._ask_engine(request, tenant, location, message_id, about)
        self.telemetry.engine_used(
            "offline" if proposal.engine.startswith("offline") else "llm", proposal.fallback
        )
        return proposal

    async def _ask_engine(
        self,
        request: EngineRequest,
        tenant: str,
        location: str,
        message_id: str,
        about: Attribution,
    ) -> Proposal:
        if self.engine is self.offline:
            return await self.offline.propose(request)
        cost = self.costs.tokens(OperationType.INTERNAL_API_LLM)
        try:
            if cost > 0:
                await self.ledger.charge(
                    Debit(
                        tenant_id=tenant,
                        location_id=location,
                        operation_type=OperationType.INTERNAL_API_LLM,
                        amount=cost,
                        request_id=f"llm:{message_id}",
                        description=f"decision by {self.engine.name}",
                        attribution=about,
                    )
                )
        except (InsufficientTokens, NotFound):
            proposal = await self.offline.propose(request)
            note = f"offline ({self.engine.name} skipped: no tokens left for the LLM)"
            return replace(proposal, engine=note, fallback="no_tokens")
        return await self.engine.propose(request)

    def _holding_actions(
        self, outcome: PolicyOutcome, d: _Draft
    ) -> tuple[list[Action], list[Debit]]:
        """The decided actions, each executable one with the hold of its tokens."""
        actions: list[Action] = []
        holds: list[Debit] = []
        for decision in outcome.actions:
            action = self._draft_action(_after_prerequisite(decision, actions), d, actions)
            if action.executable:
                reservation_id = new_id("res") if action.token_cost > 0 else None
                hold = self.executor.hold(action, reservation_id)
                if hold is not None:
                    validate_debit(hold)
                    holds.append(hold)
                action = self._holding(action, reservation_id, d.now)
            actions.append(action)
        return actions, holds

    def _draft_action(self, decision: ActionDecision, d: _Draft, earlier: list[Action]) -> Action:
        """The action as proposed, before any tokens are held; `earlier` are the
        message's actions before it (what `depends_on` may point at)."""
        known = decision.action_type in self.registry
        definition = self.registry.get(decision.action_type) if known else None
        return Action(
            id=new_id("act"),
            tenant_id=d.tenant,
            session_id=d.session.id,
            location_id=d.location,
            action_type=decision.action_type,
            category=definition.category if definition else "unknown",
            parameters=decision.parameters,
            level=decision.level,
            state=ActionState.PROPOSED,
            executable=decision.executable,
            blocked=[_blocked_dict(b) for b in decision.blocked],
            token_cost=decision.token_cost,
            operation_type=(
                definition.operation_type.value if definition and definition.operation_type else ""
            ),
            confidence=decision.confidence,
            reasoning=decision.reasoning,
            requested_by=d.user,
            created_at=d.now,
            updated_at=d.now,
            depends_on=(
                earlier[decision.depends_on].id if decision.depends_on is not None else None
            ),
        )

    def _holding(self, action: Action, reservation_id: str | None, now: datetime) -> Action:
        """An executable action once its tokens are held. Automatic ones are stored
        already executing (one write fewer); waiting ones hold them so an approval
        never finds them spent."""
        if action.level is DecisionLevel.AUTOMATIC and action.depends_on:
            # Runs when the action it follows has succeeded (`Executor.follow`).
            return _replace(
                action,
                state=ActionState.APPROVED,
                decided_by="policy:automatic",
                reservation_id=reservation_id,
            )
        if action.level is DecisionLevel.AUTOMATIC:
            return _replace(
                action,
                state=ActionState.EXECUTING,
                decided_by="policy:automatic",
                reservation_id=reservation_id,
                attempts=1,
            )
        return _replace(
            action,
            state=WAITING_STATE_FOR_LEVEL[action.level],
            reservation_id=reservation_id,
            expires_at=now + self.action_ttl,
        )


def _replace(action: Action, **changes: Any) -> Action:
    return evolve(action, **changes)


def _after_prerequisite(decision: ActionDecision, earlier: list[Action]) -> ActionDecision:
    """A dependent whose prerequisite the ledger refused after the policy allowed it
    cannot run either (the policy already blocks one whose prerequisite it blocked)."""
    if decision.depends_on is None or not decision.executable:
        return decision
    before = earlier[decision.depends_on]
    if before.executable:
        return decision
    blocked = BlockedReason(
        PREREQUISITE_BLOCKED,
        f"it follows {before.action_type}, which cannot run as asked",
        before.action_type,
    )
    return replace(
        decision,
        executable=False,
        blocked=[*decision.blocked, blocked],
        level=max(decision.level, DecisionLevel.SUGGESTION),
    )


def _blocked_dict(b: BlockedReason) -> dict[str, str]:
    return {"reason": b.reason, "message": b.message, "subject": b.subject}


def _with_engine(proposal: Proposal, engine: str) -> Proposal:
    return replace(proposal, engine=engine)
