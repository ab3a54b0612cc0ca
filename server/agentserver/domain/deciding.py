"""People deciding actions: approving (optionally with edited parameters) and
rejecting what waits for them, settling outcomes nobody knows, and the sweep that
expires what nobody decided and recovers what a stopped executor left."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentserver.domain.actions import WAITING, Action, ActionState
from agentserver.domain.agent_base import AgentBase
from agentserver.domain.conversations import Message, Role
from agentserver.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)
from agentserver.domain.executor import OUTCOME_DID_NOT_HAPPEN, OUTCOME_HAPPENED
from agentserver.domain.identity import Caller
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import validate_request_id
from agentserver.domain.permissions import APPROVER_PERMISSION, COORDINATOR_PERMISSION

MAX_REASON_CHARS = 2000


class Deciding(AgentBase):
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
            self._ended(expired)
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
                repriced = replace(action, token_cost=cost, id=f"{action.id}:{request_id}")
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
        self._ended(rejected)
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

    async def withdraw(self, action: Action, reason: str) -> Action | None:
        """End a waiting action that nobody will decide any more (its requester's data
        is being erased): rejected with `reason`, its tokens released, what depends on
        it followed up. None when it was not waiting (any more)."""
        withdrawn = await self.store.transition(
            action.tenant_id,
            action.id,
            WAITING,
            ActionState.REJECTED,
            self.clock.now(),
            rejection_reason=reason,
        )
        if withdrawn is not None:
            self._ended(withdrawn)
            await self.executor.release(withdrawn)
            await self.executor.follow(withdrawn)
        return withdrawn

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
                self._ended(expired)
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
