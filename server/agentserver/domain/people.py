"""What a person may see and decide. One rule for each, used by every rpc that
touches a conversation or decides an action, and explained in words from the same
place the rule is written (as `policy.py` does for levels).

Conversations belong to the user who started them. A person reads their own
sessions, their messages and their actions; someone else's only with a permission
for it: coordinators (`actions:coordinate`) and approvers (`actions:approve`), whose
work is to review what others asked, and holders of `conversations:read_any`. Nobody
writes into someone else's conversation. A service key that names no user is the
service acting for itself and reads the tenant's conversations as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentserver.domain.actions import Action, ActionState
from agentserver.domain.errors import PermissionDenied
from agentserver.domain.identity import Caller
from agentserver.domain.permissions import (
    APPROVER_PERMISSION,
    COORDINATOR_PERMISSION,
    PermissionSet,
)

CONVERSATIONS_READ_ANY = "conversations:read_any"
READ_OTHERS_PERMISSIONS = (COORDINATOR_PERMISSION, APPROVER_PERMISSION, CONVERSATIONS_READ_ANY)


def reads_others(caller: Caller, perms: PermissionSet) -> bool:
    """True when the caller may read every conversation of the tenant."""
    return caller.is_service or any(perms.covers(p) for p in READ_OTHERS_PERMISSIONS)


def check_may_read(caller: Caller, owner: str, perms: PermissionSet) -> None:
    """PERMISSION_DENIED (NOT_OWNER) unless the caller may read `owner`'s conversation."""
    if owner == caller.user_id or reads_others(caller, perms):
        return
    raise PermissionDenied(
        "this conversation belongs to another user; reading it needs one of "
        + ", ".join(READ_OTHERS_PERMISSIONS),
        reason="NOT_OWNER",
    )


def check_may_write(caller: Caller, owner: str) -> None:
    """Only the owner speaks in a conversation, whatever else they may read."""
    if owner != caller.user_id:
        raise PermissionDenied("this session belongs to another user", reason="NOT_OWNER")


@dataclass(frozen=True)
class DecisionRight:
    """Whether a person may decide an action now, why not, and who may."""

    allowed: bool
    reason: str  # machine-readable, '' when allowed
    explanation: str  # in words, '' when allowed
    deciders: str  # who may decide it, in words ('' when nobody can any more)


def _deciders(action: Action, required: Sequence[str]) -> str:
    state = action.state
    if state is ActionState.AWAITING_USER:
        holders = f" or a holder of {', '.join(required)}" if required else ""
        return f"the requester ({action.requested_by}){holders}"
    if state is ActionState.AWAITING_COORDINATOR:
        return f"a coordinator (holder of {COORDINATOR_PERMISSION})"
    if state is ActionState.AWAITING_APPROVER:
        return (
            f"an approver (holder of {APPROVER_PERMISSION}) other than the requester "
            f"({action.requested_by})"
        )
    return ""


def decision_right(
    user_id: str, perms: PermissionSet, action: Action, required: Sequence[str]
) -> DecisionRight:
    """May `user_id`, holding `perms`, decide `action` (whose type needs `required`)?"""
    deciders = _deciders(action, required)

    def no(reason: str, explanation: str) -> DecisionRight:
        return DecisionRight(False, reason, explanation, deciders)

    state = action.state
    if not state.waiting:
        return no("ACTION_NOT_WAITING", f"it is {state.value}, not waiting for a decision")
    if not user_id:
        return no("USER_REQUIRED", "deciding needs a person (x-user-id)")
    if state is ActionState.AWAITING_USER:
        if user_id == action.requested_by or not perms.missing(required):
            return DecisionRight(True, "", "", deciders)
        return no(
            "NOT_ALLOWED_TO_DECIDE",
            "a suggestion is decided by the requesting user or a holder of " + ", ".join(required),
        )
    if state is ActionState.AWAITING_COORDINATOR:
        if perms.covers(COORDINATOR_PERMISSION):
            return DecisionRight(True, "", "", deciders)
        return no(
            "NOT_ALLOWED_TO_DECIDE",
            f"a consultation is decided by a holder of {COORDINATOR_PERMISSION}",
        )
    if user_id == action.requested_by:
        return no("REQUESTER_CANNOT_APPROVE", "the requester cannot approve their own request")
    if perms.covers(APPROVER_PERMISSION):
        return DecisionRight(True, "", "", deciders)
    return no("NOT_ALLOWED_TO_DECIDE", f"an approval needs {APPROVER_PERMISSION}")
