"""What the agent's use cases share: their ports, and the caller's effective
permissions (the tenant's rules, narrowed by what the caller asserts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from agentserver.domain import people
from agentserver.domain.actions import Action, ActionStore
from agentserver.domain.clock import Clock
from agentserver.domain.conversations import ConversationStore, Message
from agentserver.domain.costs import CostTable
from agentserver.domain.executor import Executor
from agentserver.domain.identity import Caller
from agentserver.domain.ledger import LedgerService
from agentserver.domain.people import DecisionRight
from agentserver.domain.permissions import PermissionSet, effective_permissions
from agentserver.domain.policy_source import PolicySource
from agentserver.domain.registry import Registry
from agentserver.domain.telemetry import Telemetry


class AgentStore(ConversationStore, ActionStore, Protocol):
    """Conversations and actions together."""

    async def append_messages(
        self, tenant_id: str, session_id: str, messages: Sequence[Message], now: datetime
    ) -> None: ...


class AgentBase:
    """The parts every use case of the agent reaches (AgentService sets them)."""

    store: AgentStore
    policy: PolicySource
    ledger: LedgerService
    executor: Executor
    registry: Registry
    costs: CostTable
    clock: Clock
    action_ttl: timedelta
    telemetry: Telemetry

    def _ended(self, action: Action | None) -> None:
        """Count an action this use case moved to where it ends."""
        if action is not None:
            self.telemetry.action_ended(action.tenant_id, action.action_type, action.state.value)

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
