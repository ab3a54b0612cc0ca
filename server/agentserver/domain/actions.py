"""Actions: the rows with a state machine that make side effects happen once.

    proposed (not executable)
    awaiting_user | awaiting_coordinator | awaiting_approver
        -> approved -> executing -> succeeded | failed
                                 -> outcome_unknown -> (a person says) succeeded | failed
        -> rejected | expired
    any state before executing -> cancelled (its prerequisite did not succeed)

An action may depend on another of the same message (`depends_on`: "cancel it and
tell them it is cancelled"): it runs only after its prerequisite succeeded (an
approved dependent waits in `approved` until then), and it is cancelled, its
tokens released, when the prerequisite fails, is rejected, expires or is cancelled.

Every transition is a compare-and-set on the current state in the store, so two
approvers, a retried request or two replicas can never run an action twice.

`outcome_unknown` is for a send that may or may not have happened: the executor
stopped (a crash, a shutdown) after calling the provider and before its answer was
stored. It is never retried (a duplicate send is worse than a missing one); its
tokens stay held until a person who checked says whether it happened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.events import ACTION_CREATED, ACTION_WAITING, DomainEvent
from agentserver.domain.paging import PageRequest
from agentserver.domain.values import evolve


class ActionState(enum.StrEnum):
    PROPOSED = "proposed"
    AWAITING_USER = "awaiting_user"
    AWAITING_COORDINATOR = "awaiting_coordinator"
    AWAITING_APPROVER = "awaiting_approver"
    APPROVED = "approved"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    OUTCOME_UNKNOWN = "outcome_unknown"
    CANCELLED = "cancelled"

    @property
    def waiting(self) -> bool:
        return self in WAITING

    @property
    def ended(self) -> bool:
        return self in ENDED


WAITING = frozenset(
    {ActionState.AWAITING_USER, ActionState.AWAITING_COORDINATOR, ActionState.AWAITING_APPROVER}
)
ENDED = frozenset(
    {
        ActionState.SUCCEEDED,
        ActionState.FAILED,
        ActionState.REJECTED,
        ActionState.EXPIRED,
        ActionState.CANCELLED,
    }
)
# Where a dependent may be when its prerequisite ends badly: not yet running.
CANCELLABLE = frozenset({ActionState.PROPOSED, ActionState.APPROVED, *WAITING})

WAITING_STATE_FOR_LEVEL = {
    DecisionLevel.SUGGESTION: ActionState.AWAITING_USER,
    DecisionLevel.CONSULTATION: ActionState.AWAITING_COORDINATOR,
    DecisionLevel.APPROVAL_REQUIRED: ActionState.AWAITING_APPROVER,
}


@dataclass(frozen=True)
class Action:
    id: str
    tenant_id: str
    session_id: str
    location_id: str
    action_type: str
    category: str
    parameters: dict[str, Any]
    level: DecisionLevel
    state: ActionState
    executable: bool
    blocked: list[dict[str, str]]
    token_cost: int
    operation_type: str
    confidence: int
    reasoning: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    decided_by: str = ""
    decision_request_id: str = ""
    rejection_reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    reservation_id: str | None = None
    attempts: int = 0
    version: int = 1
    # The action of the same message this one runs after (None: independent).
    depends_on: str | None = None

    def moved(self, to_state: ActionState, now: datetime, **changes: Any) -> Action:
        """This action as a store leaves it after a successful compare-and-set."""
        return evolve(self, state=to_state, updated_at=now, version=self.version + 1, **changes)


@dataclass(frozen=True)
class ActionFilter:
    states: frozenset[ActionState] = frozenset()
    session_id: str = ""
    levels: frozenset[DecisionLevel] = frozenset()
    requested_by: str = ""  # '' means anyone's


class ActionStore(Protocol):
    async def get(self, tenant_id: str, action_id: str) -> Action: ...

    async def find(
        self, tenant_id: str, flt: ActionFilter, page: PageRequest
    ) -> tuple[list[Action], str]: ...

    async def transition(
        self,
        tenant_id: str,
        action_id: str,
        from_states: frozenset[ActionState],
        to_state: ActionState,
        now: datetime,
        **changes: Any,
    ) -> Action | None:
        """Move to `to_state` only if the action is in one of `from_states`; returns
        the updated action, or None when another writer got there first."""
        ...

    async def update(
        self, tenant_id: str, action_id: str, now: datetime, **changes: Any
    ) -> Action: ...

    async def due_for_expiry(self, now: datetime, limit: int) -> list[tuple[str, str]]: ...

    async def dependents(self, tenant_id: str, action_id: str) -> list[Action]:
        """The actions that depend on `action_id`, oldest first."""
        ...

    async def stale(
        self, state: ActionState, before: datetime, limit: int
    ) -> list[tuple[str, str]]:
        """(tenant, action) of actions in `state` that have not changed since `before`."""
        ...


# What other systems hear when an action reaches a state (none for `executing`: a
# send is told when it ends).
_STATE_EVENTS = {
    ActionState.APPROVED: "action.approved",
    ActionState.SUCCEEDED: "action.succeeded",
    ActionState.FAILED: "action.failed",
    ActionState.REJECTED: "action.rejected",
    ActionState.EXPIRED: "action.expired",
    ActionState.CANCELLED: "action.cancelled",
    ActionState.OUTCOME_UNKNOWN: "action.outcome_unknown",
}
_WAITING_FOR = {
    ActionState.AWAITING_USER: "user",
    ActionState.AWAITING_COORDINATOR: "coordinator",
    ActionState.AWAITING_APPROVER: "approver",
}


def _about(action: Action) -> dict[str, Any]:
    return {
        "action_type": action.action_type,
        "session_id": action.session_id,
        "location_id": action.location_id,
        "requested_by": action.requested_by,
        "state": action.state.value,
        "decision_level": action.level.name.lower(),
        "token_cost": action.token_cost,
    }


def created_events(action: Action) -> list[DomainEvent]:
    """An action proposed: `action.created`, and `action.waiting` if it waits for a
    person."""
    events = [
        DomainEvent(
            ACTION_CREATED,
            "action",
            action.id,
            {
                **_about(action),
                "parameters": action.parameters,
                "executable": action.executable,
                "blocked": [b.get("reason", "") for b in action.blocked],
                "depends_on": action.depends_on,
            },
        )
    ]
    return events + transition_events(action)


def transition_events(action: Action) -> list[DomainEvent]:
    """What reaching its current state tells other systems (nothing for a state
    nobody is told about)."""
    if action.state in _WAITING_FOR:
        payload = {
            **_about(action),
            "waiting_for": _WAITING_FOR[action.state],
            "expires_at": action.expires_at.isoformat() if action.expires_at else None,
        }
        return [DomainEvent(ACTION_WAITING, "action", action.id, payload)]
    kind = _STATE_EVENTS.get(action.state)
    if kind is None:
        return []
    payload = _about(action)
    if action.decided_by and action.state in (ActionState.APPROVED, ActionState.REJECTED):
        payload["decided_by"] = action.decided_by
    if action.state is ActionState.REJECTED:
        payload["reason"] = action.rejection_reason
    result = action.result or {}
    if action.state in (ActionState.SUCCEEDED, ActionState.FAILED, ActionState.OUTCOME_UNKNOWN):
        payload["channel"] = str(result.get("channel", ""))
        payload["provider_id"] = str(result.get("provider_id", ""))
        if result.get("error"):
            payload["error"] = str(result["error"])
    return [DomainEvent(kind, "action", action.id, payload)]
