"""The agent's use cases: Process a message, read and decide actions.

The engine proposes; `policy.decide` disposes; the executor acts. Nothing the
engine returns can widen a permission or skip a level: permissions come from the
tenant's rules (narrowed by what the caller asserts), levels from the policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain import people
from agentserver.domain.actions import (
    WAITING,
    WAITING_STATE_FOR_LEVEL,
    Action,
    ActionFilter,
    ActionState,
    ActionStore,
)
from agentserver.domain.batching import Coalescer
from agentserver.domain.clock import Clock
from agentserver.domain.conversations import (
    ConversationStore,
    Exchange,
    Message,
    Role,
    Session,
    title_of,
    validate_message,
)
from agentserver.domain.costs import CostTable, OperationType
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
    PolicySettings,
    decide,
)
from agentserver.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InsufficientTokens,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agentserver.domain.executor import (
    OUTCOME_DID_NOT_HAPPEN,
    OUTCOME_HAPPENED,
    Executor,
    Revision,
)
from agentserver.domain.identity import MAX_LOCATION_ID, MAX_USER_ID, Caller, check_lengths
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import Debit, LedgerService, validate_debit, validate_request_id
from agentserver.domain.paging import PageRequest, encode_token
from agentserver.domain.people import DecisionRight
from agentserver.domain.permissions import (
    APPROVER_PERMISSION,
    COORDINATOR_PERMISSION,
    PermissionSet,
    effective_permissions,
)
from agentserver.domain.registry import Registry

log = logging.getLogger(__name__)

HISTORY_MESSAGES = 10
# The inbox filters by who may decide, which the store cannot: it scans pages of
# waiting actions, at most INBOX_SCAN per call.
INBOX_SCAN_PAGE = 200
INBOX_SCAN = 2000
MAX_REASON_CHARS = 2000


class PolicySource(Protocol):
    """Where a tenant's permission rules and policy settings come from."""

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]: ...

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]: ...


@dataclass
class CachedPolicySource:
    """A tenant's rules and policy, kept for `ttl` seconds: Process reads them on every
    call, operators change them rarely. A change reaches every replica within `ttl`."""

    source: PolicySource
    ttl: float = 5.0
    _rules: dict[str, tuple[float, list[tuple[str, str, str, str]]]] = field(default_factory=dict)
    _policies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]:
        hit = self._rules.get(tenant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        rules = await self.source.rules(tenant_id)
        self._rules[tenant_id] = (time.monotonic() + self.ttl, rules)
        return rules

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]:
        hit = self._policies.get(tenant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        policy = await self.source.tenant_policy(tenant_id)
        self._policies[tenant_id] = (time.monotonic() + self.ttl, policy)
        return policy


class AgentStore(ConversationStore, ActionStore, Protocol):
    """Conversations and actions together."""

    async def append_messages(
        self, tenant_id: str, session_id: str, messages: Sequence[Message], now: datetime
    ) -> None: ...


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


def policy_settings(raw: dict[str, Any]) -> PolicySettings:
    """A tenant's stored policy (JSON) as PolicySettings; unknown keys are ignored.
    Raises InvalidArgument for a policy the server could not apply (checked when set)."""
    known = {k: v for k, v in raw.items() if k in PolicySettings.__dataclass_fields__}
    try:
        if "level_overrides" in known:
            known["level_overrides"] = {
                name: DecisionLevel[str(level).upper()]
                for name, level in dict(known["level_overrides"]).items()
            }
        for key in ("destructive_min_level", "bypass_level"):
            if key in known:
                known[key] = DecisionLevel[str(known[key]).upper()]
        return PolicySettings(**known)
    except KeyError as err:
        raise InvalidArgument.field("policy", f"unknown decision level {err}") from None
    except (TypeError, ValueError) as err:
        raise InvalidArgument.field("policy", str(err)) from None


@dataclass
class AgentService:
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
    _revisions: Coalescer[str, tuple[str, str, str], None] = field(init=False)

    def __post_init__(self) -> None:
        self._revisions = Coalescer(self._revise)

    async def _revise(self, _key: str, batch: list[tuple[str, str, str]]) -> list[None]:
        await self.store.revise_messages(batch)
        return [None] * len(batch)

    # -- permissions ---------------------------------------------------------

    async def permissions_for(
        self, tenant_id: str, user_id: str, location_id: str, asserted: list[str] | None
    ) -> PermissionSet:
        """Business defaults + user grants − user (and location) denials, ∩ the
        location's policy when it has one, narrowed by what the caller asserts."""
        business: list[str] = []
        grants: list[str] = []
        denials: list[str] = []
        location_allow: list[str] = []
        for scope, subject, effect, permission in await self.policy.rules(tenant_id):
            if scope == "business" and effect == "allow":
                business.append(permission)
            elif scope == "business":
                denials.append(permission)
            elif scope == "user" and subject == user_id:
                (grants if effect == "allow" else denials).append(permission)
            elif scope == "location" and location_id and subject == location_id:
                (location_allow if effect == "allow" else denials).append(permission)
        return effective_permissions(
            business, grants, denials, location_allow or None, asserted or None
        )

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
        proposal = await self._propose(engine_request, tenant, location, user_message.id)
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
            hoped = _reply(proposal, [*finished[:i], _done(action), *finished[i + 1 :]])
            finished[i], revised = await self.executor.run_revising(
                action, Revision(assistant.id, hoped)
            )
            if revised:
                written = hoped
            if action.id in followed:
                await self.executor.follow(finished[i])
        if followed:  # the dependents moved on their own: read where they are now
            finished = [await self.store.get(tenant, a.id) if a.depends_on else a for a in finished]
        final_reply = _reply(proposal, finished)
        if final_reply != written:
            try:
                await self._revisions.submit("all", (tenant, assistant.id, final_reply))
            except Exception:  # the actions' own rows are the record; the text may lag
                log.warning("could not update reply %s", assistant.id, exc_info=True)
        parts = [proposal.reasoning, outcome.reasoning]
        parts += [f"[{a.action_type}] {a.reasoning}" for a in finished]
        reasoning = " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)
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
        reply = _reply(proposal, actions)
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
        self, request: EngineRequest, tenant: str, location: str, message_id: str
    ) -> Proposal:
        """Ask the configured engine; an LLM decision is paid first (1 token), and
        with no balance left the offline engine decides instead."""
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
                    )
                )
        except (InsufficientTokens, NotFound):
            proposal = await self.offline.propose(request)
            note = f"offline ({self.engine.name} skipped: no tokens left for the LLM)"
            return _with_engine(proposal, note)
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

    # -- reading conversations -------------------------------------------------

    async def _check_may_read(self, caller: Caller, owner: str) -> None:
        if owner == caller.user_id or caller.is_service:
            return
        perms = await self.permissions_for(caller.tenant(), caller.user_id, "", None)
        people.check_may_read(caller, owner, perms)

    async def get_session(self, caller: Caller, session_id: str) -> Session:
        if not session_id:
            raise InvalidArgument.field("session_id", "is required")
        session = await self.store.get_session(caller.tenant(), session_id)
        await self._check_may_read(caller, session.user_id)
        return session

    async def list_sessions(
        self, caller: Caller, user_id: str, page: PageRequest
    ) -> tuple[list[Session], str]:
        user = user_id or caller.user_id
        if not user:
            raise InvalidArgument.field("user_id", "is required (or send x-user-id)")
        check_lengths(("user_id", user, MAX_USER_ID))
        await self._check_may_read(caller, user)
        return await self.store.list_sessions(caller.tenant(), user, page)

    async def list_messages(
        self, caller: Caller, session_id: str, before: datetime | None, page: PageRequest
    ) -> tuple[list[Message], str]:
        session = await self.get_session(caller, session_id)
        return await self.store.list_messages(session.tenant_id, session.id, before, page)

    # -- reading actions -----------------------------------------------------

    async def get_action(self, caller: Caller, action_id: str) -> tuple[Action, DecisionRight]:
        """The action and whether the caller may decide it. Someone else's action is
        PERMISSION_DENIED unless the caller may read their conversation or decide it."""
        if not action_id:
            raise InvalidArgument.field("action_id", "is required")
        action = await self.store.get(caller.tenant(), action_id)
        (right,) = await self.decision_rights(caller, [action])
        if not right.allowed:
            await self._check_may_read(caller, action.requested_by)
        if action.state is ActionState.EXECUTING and action.result.get("pending"):
            action = await self.executor.poll_pending(action)
        return action, right

    async def list_actions(
        self, caller: Caller, flt: ActionFilter, page: PageRequest, *, decidable: bool = False
    ) -> tuple[list[tuple[Action, DecisionRight]], str]:
        """The tenant's actions newest first (a person without the right to read
        others' conversations sees their own), each with the caller's right to decide
        it. `decidable` keeps only waiting actions the caller may decide now: the
        inbox. Such a page scans at most `INBOX_SCAN` actions; a short page with a
        token means "more may follow"."""
        tenant = caller.tenant()
        if not caller.is_service:
            perms = await self.permissions_for(tenant, caller.user_id, "", None)
            if not people.reads_others(caller, perms) and not decidable:
                flt = replace(flt, requested_by=caller.user_id)
        if not decidable:
            actions, token = await self.store.find(tenant, flt, page)
            rights = await self.decision_rights(caller, actions)
            return list(zip(actions, rights, strict=True)), token
        flt = replace(flt, states=(flt.states & WAITING) if flt.states else WAITING)
        if not flt.states:
            return [], ""
        found: list[tuple[Action, DecisionRight]] = []
        after = page.after
        scanned = 0
        while True:
            actions, token = await self.store.find(tenant, flt, PageRequest(INBOX_SCAN_PAGE, after))
            for action, right in zip(
                actions, await self.decision_rights(caller, actions), strict=True
            ):
                scanned += 1
                if right.allowed:
                    found.append((action, right))
                    if len(found) == page.size:
                        last_of_all = not token and action is actions[-1]
                        return found, "" if last_of_all else _action_token(action)
            if not token:
                return found, ""
            after = {"id": actions[-1].id}
            if scanned >= INBOX_SCAN:
                return found, _action_token(actions[-1])

    async def decision_rights(self, caller: Caller, actions: list[Action]) -> list[DecisionRight]:
        """For each action, whether the caller may decide it now, and who may."""
        perms: dict[str, PermissionSet] = {}
        rights = []
        for action in actions:
            if action.state.waiting and action.location_id not in perms:
                perms[action.location_id] = await self.permissions_for(
                    action.tenant_id, caller.user_id, action.location_id, None
                )
            known = action.action_type in self.registry
            required = self.registry.get(action.action_type).required_permissions if known else []
            rights.append(
                people.decision_right(
                    caller.user_id,
                    perms.get(action.location_id, PermissionSet.nothing()),
                    action,
                    required,
                )
            )
        return rights

    # -- deciding ------------------------------------------------------------

    async def _may_decide(self, caller: Caller, action: Action) -> None:
        if not caller.user_id:
            raise InvalidArgument.field("x-user-id", "metadata is required to decide an action")
        (right,) = await self.decision_rights(caller, [action])
        if not right.allowed:
            raise PermissionDenied(right.explanation, reason=right.reason)

    async def _waiting(self, caller: Caller, action_id: str, request_id: str) -> Action:
        if not action_id:
            raise InvalidArgument.field("action_id", "is required")
        validate_request_id(request_id)
        return await self.store.get(caller.tenant(), action_id)

    def _not_waiting(self, action: Action) -> FailedPrecondition:
        if action.state is ActionState.PROPOSED:
            reasons = "; ".join(b.get("message", "") for b in action.blocked) or "not executable"
            return FailedPrecondition(
                f"action {action.id} cannot run: {reasons}", reason="ACTION_NOT_EXECUTABLE"
            )
        return FailedPrecondition(
            f"action {action.id} is {action.state.value}, not waiting for a decision",
            reason="ACTION_NOT_WAITING",
        )

    async def _expire_if_due(self, action: Action) -> Action | None:
        """Expire a waiting action past its time; returns it expired, or None if not due."""
        if action.expires_at is None or action.expires_at > self.clock.now():
            return None
        expired = await self.store.transition(
            action.tenant_id, action.id, WAITING, ActionState.EXPIRED, self.clock.now()
        )
        if expired is not None:
            await self.executor.release(expired)
            await self.executor.follow(expired)
        return expired or await self.store.get(action.tenant_id, action.id)

    async def approve(
        self,
        caller: Caller,
        action_id: str,
        parameters: dict[str, Any] | None,
        request_id: str,
    ) -> Action:
        action = await self._waiting(caller, action_id, request_id)
        if action.decision_request_id == request_id and action.decided_by == caller.user_id:
            # A repeat of the request that approved it: if its execution was cut short
            # before it began (approved, not yet executing), this repeat runs it.
            return await self._resume(action)
        if action.state not in WAITING:
            raise self._not_waiting(action)
        await self._may_decide(caller, action)
        if (expired := await self._expire_if_due(action)) is not None:
            raise self._not_waiting(expired)

        changes: dict[str, Any] = {}
        new_reservation: str | None = None
        if parameters is not None:
            violations = self.registry.validate(action.action_type, parameters)
            if violations:
                raise InvalidArgument(
                    [FieldViolation(f"parameters.{v.field}", v.description) for v in violations]
                )
            cost = self.registry.token_cost(action.action_type, self.costs)
            changes["parameters"] = parameters
            if cost != action.token_cost:
                # Re-priced: hold the new amount before letting go of the old one.
                repriced = _replace(action, token_cost=cost, id=f"{action.id}:{request_id}")
                new_reservation = await self.executor.reserve(repriced)
                changes.update(token_cost=cost, reservation_id=new_reservation)
        approved = await self.store.transition(
            action.tenant_id,
            action.id,
            WAITING,
            ActionState.APPROVED,
            self.clock.now(),
            decided_by=caller.user_id,
            decision_request_id=request_id,
            **changes,
        )
        if approved is None:
            if new_reservation:
                await self.ledger.release(
                    action.tenant_id, new_reservation, f"action:{action.id}:{request_id}:undo"
                )
            current = await self.store.get(action.tenant_id, action.id)
            if current.decision_request_id == request_id and current.decided_by == caller.user_id:
                return await self._resume(current)
            raise self._not_waiting(current)
        if new_reservation and action.reservation_id:
            await self.executor.release(action)
        return await self.executor.execute(approved)

    async def _resume(self, action: Action) -> Action:
        """An approved action as it is now, executing it if nobody has started to."""
        if action.state is ActionState.APPROVED:
            return await self.executor.execute(action)
        return action

    async def reject(self, caller: Caller, action_id: str, reason: str, request_id: str) -> Action:
        reason = reason.strip()
        if not reason:
            raise InvalidArgument.field("reason", "is required")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument.field("reason", f"must be at most {MAX_REASON_CHARS} characters")
        action = await self._waiting(caller, action_id, request_id)
        if action.decision_request_id == request_id and action.decided_by == caller.user_id:
            return action
        if action.state not in WAITING:
            raise self._not_waiting(action)
        await self._may_decide(caller, action)
        now = self.clock.now()
        rejected = await self.store.transition(
            action.tenant_id,
            action.id,
            WAITING,
            ActionState.REJECTED,
            now,
            decided_by=caller.user_id,
            decision_request_id=request_id,
            rejection_reason=reason,
        )
        if rejected is None:
            current = await self.store.get(action.tenant_id, action.id)
            if current.decision_request_id == request_id and current.decided_by == caller.user_id:
                return current
            raise self._not_waiting(current)
        await self.executor.release(rejected)
        await self.executor.follow(rejected)
        note = Message(
            new_id("msg"),
            rejected.session_id,
            Role.SYSTEM,
            f"{rejected.action_type} was rejected by {caller.user_id}: {reason}",
            now,
            action_ids=[rejected.id],
        )
        await self.store.append_messages(rejected.tenant_id, rejected.session_id, [note], now)
        return rejected

    # -- outcomes nobody knows ----------------------------------------------

    async def resolve_outcome(
        self,
        caller: Caller,
        action_id: str,
        happened: bool | None,
        note: str,
        request_id: str,
    ) -> Action:
        """A person who checked says whether an `outcome_unknown` action happened: it
        succeeds and its tokens are captured, or it fails and they are released. The
        answer is written into the conversation. Coordinators and approvers may."""
        if happened is None:
            raise InvalidArgument.field(
                "outcome", "is required: ACTION_OUTCOME_HAPPENED or ACTION_OUTCOME_DID_NOT_HAPPEN"
            )
        note = note.strip()
        if len(note) > MAX_REASON_CHARS:
            raise InvalidArgument.field("note", f"must be at most {MAX_REASON_CHARS} characters")
        action = await self._waiting(caller, action_id, request_id)
        if _resolved_by(action, caller, request_id):
            return await self._finish_resolution(action)
        if action.state is not ActionState.OUTCOME_UNKNOWN:
            raise _outcome_known(action)
        perms = await self.permissions_for(
            caller.tenant(), caller.user_id, action.location_id, None
        )
        if not (perms.covers(COORDINATOR_PERMISSION) or perms.covers(APPROVER_PERMISSION)):
            raise PermissionDenied(
                f"an unknown outcome is settled by a holder of {COORDINATOR_PERMISSION} "
                f"or {APPROVER_PERMISSION}",
                reason="NOT_ALLOWED_TO_DECIDE",
            )
        record = {
            "outcome": OUTCOME_HAPPENED if happened else OUTCOME_DID_NOT_HAPPEN,
            "outcome_confirmed_by": caller.user_id,
            "outcome_request_id": request_id,
            "outcome_note": note,
        }
        settled = await self.executor.settle_outcome(action, happened, record)
        if settled is None:
            current = await self.store.get(action.tenant_id, action.id)
            if _resolved_by(current, caller, request_id):
                return await self._finish_resolution(current)
            raise _outcome_known(current)
        now = self.clock.now()
        said = "happened" if happened else "did not happen"
        note_text = f"{settled.action_type}: {caller.user_id} confirmed it {said}" + (
            f": {note}" if note else ""
        )
        message = Message(
            new_id("msg"), settled.session_id, Role.SYSTEM, note_text, now, action_ids=[settled.id]
        )
        await self.store.append_messages(settled.tenant_id, settled.session_id, [message], now)
        return settled

    async def _finish_resolution(self, action: Action) -> Action:
        """A repeated resolution: settle it now if the first one was cut short."""
        if action.state is ActionState.EXECUTING:
            return await self.executor.recover(action)
        return action

    # -- background ----------------------------------------------------------

    async def sweep(self, limit: int = 200) -> dict[str, int]:
        """Expire overdue waiting actions; past the execution lease, run approved ones
        whose execution never began and recover executing ones whose executor is gone
        (finishing pending calls). Every action reaches an end."""
        now = self.clock.now()
        counts = {"expired": 0, "resumed": 0, "recovered": 0}
        for tenant_id, action_id in await self.store.due_for_expiry(now, limit):
            expired = await self.store.transition(
                tenant_id, action_id, WAITING, ActionState.EXPIRED, now
            )
            if expired is not None:
                await self.executor.release(expired)
                await self.executor.follow(expired)
                counts["expired"] += 1
        before = now - self.executor.lease
        # Approved but never started (a crash between approving and running, or
        # between a prerequisite's end and its follow-up): start or cancel it now;
        # a dependent whose prerequisite is still pending stays approved.
        for tenant_id, action_id in await self.store.stale(ActionState.APPROVED, before, limit):
            after = await self.executor.execute(await self.store.get(tenant_id, action_id))
            counts["resumed"] += after.state is not ActionState.APPROVED
        for tenant_id, action_id in await self.store.stale(ActionState.EXECUTING, before, limit):
            await self.executor.recover(await self.store.get(tenant_id, action_id))
            counts["recovered"] += 1
        return counts


def _resolved_by(action: Action, caller: Caller, request_id: str) -> bool:
    return (
        action.result.get("outcome_request_id") == request_id
        and action.result.get("outcome_confirmed_by") == caller.user_id
    )


def _outcome_known(action: Action) -> FailedPrecondition:
    return FailedPrecondition(
        f"action {action.id} is {action.state.value}: its outcome is not unknown",
        reason="OUTCOME_NOT_UNKNOWN",
    )


def _action_token(action: Action) -> str:
    return encode_token("actions", {"id": action.id})


def _replace(action: Action, **changes: Any) -> Action:
    return replace(action, **changes)


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


_STATE_WORDS = {
    ActionState.PROPOSED: "not possible as asked",
    ActionState.AWAITING_USER: "waiting for your confirmation",
    ActionState.AWAITING_COORDINATOR: "waiting for a coordinator's review",
    ActionState.AWAITING_APPROVER: "waiting for an approver",
    ActionState.APPROVED: "approved",
    ActionState.EXECUTING: "in progress",
    ActionState.SUCCEEDED: "done",
    ActionState.FAILED: "failed",
    ActionState.REJECTED: "rejected",
    ActionState.EXPIRED: "expired",
    ActionState.OUTCOME_UNKNOWN: "outcome unknown: a person will confirm whether it happened",
    ActionState.CANCELLED: "cancelled",
}


# The same words in the languages the offline engine reads (see decision/languages.py).
_STATE_WORDS_IN = {
    "es": {
        ActionState.PROPOSED: "no es posible tal como se pidió",
        ActionState.AWAITING_USER: "espera tu confirmación",
        ActionState.AWAITING_COORDINATOR: "espera la revisión de un coordinador",
        ActionState.AWAITING_APPROVER: "espera a un aprobador",
        ActionState.APPROVED: "aprobada",
        ActionState.EXECUTING: "en curso",
        ActionState.SUCCEEDED: "hecho",
        ActionState.FAILED: "falló",
        ActionState.REJECTED: "rechazada",
        ActionState.EXPIRED: "caducada",
        ActionState.OUTCOME_UNKNOWN: "resultado desconocido: una persona confirmará si ocurrió",
        ActionState.CANCELLED: "cancelada",
    },
    "de": {
        ActionState.PROPOSED: "so nicht möglich",
        ActionState.AWAITING_USER: "wartet auf Ihre Bestätigung",
        ActionState.AWAITING_COORDINATOR: "wartet auf die Prüfung durch einen Koordinator",
        ActionState.AWAITING_APPROVER: "wartet auf eine Freigabe",
        ActionState.APPROVED: "freigegeben",
        ActionState.EXECUTING: "läuft",
        ActionState.SUCCEEDED: "erledigt",
        ActionState.FAILED: "fehlgeschlagen",
        ActionState.REJECTED: "abgelehnt",
        ActionState.EXPIRED: "abgelaufen",
        ActionState.OUTCOME_UNKNOWN: "Ergebnis unbekannt: eine Person bestätigt, ob es geschah",
        ActionState.CANCELLED: "storniert",
    },
    "fr": {
        ActionState.PROPOSED: "impossible tel que demandé",
        ActionState.AWAITING_USER: "attend votre confirmation",
        ActionState.AWAITING_COORDINATOR: "attend l'avis d'un coordinateur",
        ActionState.AWAITING_APPROVER: "attend un approbateur",
        ActionState.APPROVED: "approuvée",
        ActionState.EXECUTING: "en cours",
        ActionState.SUCCEEDED: "fait",
        ActionState.FAILED: "échec",
        ActionState.REJECTED: "refusée",
        ActionState.EXPIRED: "expirée",
        ActionState.OUTCOME_UNKNOWN: "résultat inconnu : une personne confirmera si c'est fait",
        ActionState.CANCELLED: "annulée",
    },
}


def _done(action: Action) -> Action:
    return replace(action, state=ActionState.SUCCEEDED)


def _reply(proposal: Proposal, actions: list[Action]) -> str:
    lines = [proposal.reply.strip()] if proposal.reply.strip() else []
    by_id = {a.id: a for a in actions}
    words = _STATE_WORDS_IN.get(proposal.language, _STATE_WORDS)
    for action in actions:
        status = words[action.state]
        why = "; ".join(b["message"] for b in action.blocked)
        before = by_id.get(action.depends_on or "")
        if before is not None and action.state in (ActionState.APPROVED, *WAITING):
            status += f", then runs after {before.action_type}"
        if action.state in (ActionState.FAILED, ActionState.OUTCOME_UNKNOWN, ActionState.CANCELLED):
            why = str(action.result.get("error", ""))
        lines.append(f"- {action.action_type}: {status}" + (f" ({why})" if why else ""))
    return "\n".join(lines)
