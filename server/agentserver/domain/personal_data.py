"""Personal data on request: everything stored about one user of a tenant, exported
as one JSON document or erased; and per-tenant retention of conversations.

Export streams the document in pieces read page by page, so its size never sits in
memory. Erasure deletes the user's messages and keeps what the ledger and the audit
trail need (sessions, actions, usage entries, audit events) without the user's words
and without naming them: a random pseudonym stands for the user from then on, and
the erasure itself is audited under it. Actions of theirs still waiting are
withdrawn first (their tokens released); while one is approved, executing or of
unknown outcome the erasure waits (FAILED_PRECONDITION), since redacting the
parameters of an action about to run would send something else.

Kept as they are: bookings and resources (the business's records, about its
customers and rooms, not about the user), and usage entries' amounts and times.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.actions import Action, ActionState
from agentserver.domain.audit import AuditEvent, Change, pseudonym
from agentserver.domain.clock import Clock
from agentserver.domain.conversations import Message, Session
from agentserver.domain.errors import FailedPrecondition, InvalidArgument
from agentserver.domain.identity import MAX_USER_ID, Caller
from agentserver.domain.ledger import Entry

PAGE = 200
# Actions whose parameters are about to be used, or whose outcome a person must
# still establish: their data cannot go yet.
RUNNING = frozenset({ActionState.APPROVED, ActionState.EXECUTING, ActionState.OUTCOME_UNKNOWN})


@dataclass(frozen=True)
class Erasure:
    pseudonym: str
    messages_deleted: int = 0
    sessions_redacted: int = 0
    actions_redacted: int = 0
    actions_withdrawn: int = 0
    audit_events_redacted: int = 0
    permission_rules_removed: int = 0
    api_keys_redacted: int = 0
    outbox_events_redacted: int = 0
    usage_entries_redacted: int = 0


@dataclass(frozen=True)
class Retention:
    messages_deleted: int = 0
    sessions_redacted: int = 0
    actions_redacted: int = 0
    outbox_events_redacted: int = 0

    @property
    def total(self) -> int:
        return (
            self.messages_deleted
            + self.sessions_redacted
            + self.actions_redacted
            + self.outbox_events_redacted
        )


class PersonalDataStore(Protocol):
    """Reads and rewrites of one user's data; every call names its tenant. Pages
    are in id order, after the id given ('' for the first)."""

    async def sessions_of(
        self, tenant_id: str, user_id: str, after: str, limit: int
    ) -> list[Session]: ...

    async def messages_in(
        self, tenant_id: str, session_id: str, after: str, limit: int
    ) -> list[Message]: ...

    async def actions_of(
        self, tenant_id: str, user_id: str, after: str, limit: int
    ) -> list[Action]:
        """Actions the user asked for (their sessions) or decided."""
        ...

    async def entries_of(self, tenant_id: str, user_id: str, after: str, limit: int) -> list[Entry]:
        """Usage entries of the user's actions and of their messages' LLM decisions."""
        ...

    async def rules_of(self, tenant_id: str, user_id: str) -> list[dict[str, Any]]: ...

    async def keys_of(self, tenant_id: str, user_id: str) -> list[dict[str, Any]]: ...

    async def events_of(
        self, tenant_id: str, user_id: str, after: int, limit: int
    ) -> list[AuditEvent]:
        """Audit events made by the user or about them, oldest first (ids after `after`)."""
        ...

    async def unfinished_actions(self, tenant_id: str, user_id: str) -> list[Action]:
        """The user's actions that have not ended (waiting, approved, executing,
        outcome unknown)."""
        ...

    async def erase(
        self, tenant_id: str, user_id: str, pseudonym: str, now: datetime
    ) -> Erasure: ...

    async def apply_retention(self, tenant_id: str, before: datetime, limit: int) -> Retention:
        """Delete messages older than `before`, and redact sessions and ended actions
        untouched since then; at most `limit` rows of each a call."""
        ...


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _session(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "location_id": s.location_id,
        "title": s.title,
        "message_count": s.message_count,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _message(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role.value,
        "content": m.content,
        "created_at": m.created_at,
        "decision_level": m.decision_level,
        "action_ids": m.action_ids,
    }


def _action(a: Action) -> dict[str, Any]:
    out = asdict(a)
    out["state"] = a.state.value
    out["level"] = a.level.label
    return out


def _entry(e: Entry) -> dict[str, Any]:
    out = asdict(e)
    out.pop("replayed", None)
    out["operation_type"] = e.operation_type.value
    out["kind"] = e.kind.value
    return out


def _id(item: Any) -> str:
    return str(item.id)


def _event(e: AuditEvent) -> dict[str, Any]:
    return asdict(e)


@dataclass
class PersonalData:
    store: PersonalDataStore
    clock: Clock
    # Withdraws a waiting action (rejected, tokens released); None if it moved meanwhile.
    withdraw: Callable[[Action, str], Awaitable[Action | None]]
    # Writes the audit events still buffered, so none naming the user lands after.
    flush_audit: Callable[[], Awaitable[None]]
    # The tenant an admin call manages (Administration.tenant_of: scope, tenant, exists).
    tenant_of: Callable[[Caller, str], Awaitable[str]]

    async def _check(self, caller: Caller, tenant_id: str, user_id: str) -> str:
        tenant = await self.tenant_of(caller, tenant_id)
        if not user_id or len(user_id) > MAX_USER_ID:
            raise InvalidArgument.field("user_id", f"is required (1 to {MAX_USER_ID} characters)")
        return tenant

    async def export(
        self, caller: Caller, tenant_id: str, user_id: str, reason: str = ""
    ) -> AsyncIterator[str]:
        """The JSON document, in pieces (concatenated, they are the document)."""
        tenant = await self._check(caller, tenant_id, user_id)
        await self.flush_audit()  # the latest calls of the user are in the export too
        caller.note_change(
            Change(tenant, "user_data.export", f"user:{user_id}", None, None, reason.strip())
        )
        return self._pieces(tenant, user_id)

    async def _pieces(self, tenant: str, user: str) -> AsyncIterator[str]:
        head = {"tenant_id": tenant, "user_id": user, "exported_at": self.clock.now()}
        yield _json(head)[:-1] + ', "sessions": ['
        first = True
        after = ""
        while sessions := await self.store.sessions_of(tenant, user, after, PAGE):
            for s in sessions:
                yield ("" if first else ", ") + _json(_session(s))[:-1] + ', "messages": ['
                first = False
                async for piece in self._list(self._messages(tenant, s.id), _message, _id):
                    yield piece
                yield "]}"
            after = sessions[-1].id
        yield '], "actions": ['
        async for piece in self._list(
            lambda after: self.store.actions_of(tenant, user, after, PAGE), _action, _id
        ):
            yield piece
        yield '], "usage_entries": ['
        async for piece in self._list(
            lambda after: self.store.entries_of(tenant, user, after, PAGE), _entry, _id
        ):
            yield piece
        yield '], "permission_rules": ' + _json(await self.store.rules_of(tenant, user))
        yield ', "api_keys": ' + _json(await self.store.keys_of(tenant, user))
        yield ', "audit_events": ['
        event_after = 0
        first = True
        while events := await self.store.events_of(tenant, user, event_after, PAGE):
            for e in events:
                yield ("" if first else ", ") + _json(_event(e))
                first = False
            event_after = events[-1].id
        yield "]}"

    def _messages(self, tenant: str, session_id: str) -> Callable[[str], Awaitable[list[Message]]]:
        return lambda after: self.store.messages_in(tenant, session_id, after, PAGE)

    @staticmethod
    async def _list(
        page: Callable[[str], Awaitable[Sequence[Any]]],
        view: Callable[[Any], dict[str, Any]],
        key: Callable[[Any], str],
    ) -> AsyncIterator[str]:
        """The items of every page, as JSON array members."""
        first = True
        after = ""
        while items := await page(after):
            yield ("" if first else ", ") + ", ".join(_json(view(i)) for i in items)
            first = False
            after = key(items[-1])

    async def erase(self, caller: Caller, tenant_id: str, user_id: str, reason: str) -> Erasure:
        tenant = await self._check(caller, tenant_id, user_id)
        reason = reason.strip()
        if not reason:
            raise InvalidArgument.field("reason", "is required: say why the data is erased")
        unfinished = await self.store.unfinished_actions(tenant, user_id)
        running = [a for a in unfinished if a.state in RUNNING]
        if running:
            shown = ", ".join(f"{a.id} ({a.state.value})" for a in running[:5])
            raise FailedPrecondition(
                f"{len(running)} action(s) of this user are running or of unknown outcome"
                f" ({shown}): erase again once they have ended or been resolved",
                reason="USER_HAS_RUNNING_ACTIONS",
            )
        withdrawn = 0
        for action in unfinished:
            if await self.withdraw(action, "withdrawn: the requester's data was erased"):
                withdrawn += 1
        await self.flush_audit()
        name = pseudonym()
        done = await self.store.erase(tenant, user_id, name, self.clock.now())
        result = Erasure(**{**asdict(done), "actions_withdrawn": withdrawn})
        after = {k: v for k, v in asdict(result).items() if k != "pseudonym"}
        caller.note_change(Change(tenant, "user_data.erase", f"user:{name}", None, after, reason))
        return result

    async def apply_retention(self, tenant_id: str, days: int, *, limit: int = 5000) -> Retention:
        """What the sweep does for a tenant that keeps conversations `days` days."""
        before = self.clock.now() - timedelta(days=days)
        return await self.store.apply_retention(tenant_id, before, limit)
