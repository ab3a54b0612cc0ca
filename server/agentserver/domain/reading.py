"""Reading conversations and actions: a person reads their own, and others' only
with a permission for it (see people.py); the inbox lists what the caller may decide."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from agentserver.domain import people
from agentserver.domain.actions import WAITING, Action, ActionFilter, ActionState
from agentserver.domain.agent_base import AgentBase
from agentserver.domain.conversations import Message, Session
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.identity import MAX_USER_ID, Caller, check_lengths
from agentserver.domain.paging import PageRequest, encode_token
from agentserver.domain.people import DecisionRight

# The inbox filters by who may decide, which the store cannot: it scans pages of
# waiting actions, at most INBOX_SCAN per call.
INBOX_SCAN_PAGE = 200
INBOX_SCAN = 2000


class Reading(AgentBase):
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


def _action_token(action: Action) -> str:
    return encode_token("actions", {"id": action.id})
