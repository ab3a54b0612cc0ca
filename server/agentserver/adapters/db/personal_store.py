"""One user's data on SQL (SQLite and PostgreSQL alike): read for an export, rewritten
for an erasure, and conversations past a tenant's retention removed.

Erasure runs in one transaction: the user's messages are deleted; their sessions,
actions and audit events stay (the ledger and the trail refer to them) without their
words and with the pseudonym in place of their id; their permission rules go. Rows
that name the user in JSON (an action's result, an audit event's before and after)
are rewritten in Python: few rows, and the same code on both databases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.audit import UNAUTHENTICATED_KIND
from agentserver.adapters.db import models, sqlite_inline
from agentserver.adapters.db.admin_store import audit_event
from agentserver.adapters.db.agent_store import to_action, to_message, to_session
from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.ledger_rows import to_entry
from agentserver.domain.actions import ENDED, WAITING, Action, ActionState
from agentserver.domain.audit import AuditEvent
from agentserver.domain.conversations import Message, Session
from agentserver.domain.ledger import Entry
from agentserver.domain.personal_data import RUNNING, Erasure, Retention

S = models.sessions
M = models.messages
A = models.actions
E = models.ledger_entries
EV = models.events
PR = models.permission_rules
K = models.api_keys
OB = models.outbox
RS = models.reservations

REDACTED_RESULT = {"redacted": True}
# The words an outbox event may carry (a message's content, an action's parameters,
# a rejection's reason, a provider's error, which can quote an address).
_WORDS = {"content": "", "parameters": {}, "reason": "", "error": ""}
# What stands where an action's reasoning was: also how retention knows it is done.
REDACTED = "[redacted]"
_UNFINISHED = [s.value for s in (*WAITING, *RUNNING)]
_ENDED = [s.value for s in (*ENDED, ActionState.PROPOSED)]


def _replaced(value: Any, old: str, new: str) -> Any:
    """`value` (JSON) with every string equal to `old`, or naming it as `user:<old>`,
    replaced by `new`."""
    if isinstance(value, str):
        if value == old:
            return new
        return new.join(value.split(f"user:{old}")) if f"user:{old}" in value else value
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, old, new) for v in value]
    return value


def _without_words(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, **{k: v for k, v in _WORDS.items() if k in payload}, "redacted": True}


class SqlPersonalDataStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    def _their_sessions(self, tenant_id: str, user_id: str) -> Any:
        return select(S.c.id).where(S.c.tenant_id == tenant_id, S.c.user_id == user_id)

    def _their_actions(self, tenant_id: str, user_id: str) -> Any:
        return (A.c.tenant_id == tenant_id) & or_(
            A.c.session_id.in_(self._their_sessions(tenant_id, user_id)),
            A.c.requested_by == user_id,
            A.c.decided_by == user_id,
        )

    # -- export ------------------------------------------------------------------

    async def sessions_of(
        self, tenant_id: str, user_id: str, after: str, limit: int
    ) -> list[Session]:
        query = select(S).where(S.c.tenant_id == tenant_id, S.c.user_id == user_id)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.where(S.c.id > after).order_by(S.c.id).limit(limit))
            return [to_session(r) for r in rows]

    async def messages_in(
        self, tenant_id: str, session_id: str, after: str, limit: int
    ) -> list[Message]:
        query = select(M).where(M.c.tenant_id == tenant_id, M.c.session_id == session_id)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.where(M.c.id > after).order_by(M.c.id).limit(limit))
            return [to_message(r) for r in rows]

    async def actions_of(
        self, tenant_id: str, user_id: str, after: str, limit: int
    ) -> list[Action]:
        query = select(A).where(self._their_actions(tenant_id, user_id), A.c.id > after)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.order_by(A.c.id).limit(limit))
            return [to_action(r) for r in rows]

    async def entries_of(self, tenant_id: str, user_id: str, after: str, limit: int) -> list[Entry]:
        reservations = select(A.c.reservation_id).where(
            self._their_actions(tenant_id, user_id), A.c.reservation_id.is_not(None)
        )
        decisions = select(literal("llm:") + M.c.id).where(
            M.c.tenant_id == tenant_id,
            M.c.session_id.in_(self._their_sessions(tenant_id, user_id)),
        )
        query = select(E).where(
            E.c.tenant_id == tenant_id,
            or_(
                and_(E.c.user_id == user_id, E.c.user_id != ""),
                # entries written before entries named their user
                E.c.reservation_id.in_(reservations),
                E.c.request_id.in_(decisions),
            ),
            E.c.id > after,
        )
        async with self._read.connect() as conn:
            rows = await conn.execute(query.order_by(E.c.id).limit(limit))
            return [to_entry(r) for r in rows]

    async def rules_of(self, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(PR.c.effect, PR.c.permission)
                .where(
                    PR.c.tenant_id == tenant_id, PR.c.scope == "user", PR.c.subject_id == user_id
                )
                .order_by(PR.c.permission)
            )
            return [{"effect": r.effect, "permission": r.permission} for r in rows]

    async def keys_of(self, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(K.c.id, K.c.scopes, K.c.description, K.c.created_at, K.c.revoked_at)
                .where(K.c.tenant_id == tenant_id, K.c.user_id == user_id)
                .order_by(K.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def _their_events(self, tenant_id: str, user_id: str) -> Any:
        return (
            (EV.c.tenant_id == tenant_id)
            & EV.c.kind.startswith("audit.")
            & ~EV.c.kind.startswith(UNAUTHENTICATED_KIND)
            & or_(
                EV.c.user_id == user_id,
                EV.c.object == f"user:{user_id}",
                # Named in a before/after: as a JSON string of its own, or as `user:<id>`
                # (written as the JSON encoder escapes it, as the payload was).
                cast(EV.c.payload, String).contains(json.dumps(user_id), autoescape=True),
                cast(EV.c.payload, String).contains(
                    "user:" + json.dumps(user_id)[1:-1], autoescape=True
                ),
            )
        )

    async def events_of(
        self, tenant_id: str, user_id: str, after: int, limit: int
    ) -> list[AuditEvent]:
        query = select(EV).where(self._their_events(tenant_id, user_id), EV.c.id > after)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.order_by(EV.c.id).limit(limit))
            return [audit_event(r, "audit.") for r in rows]

    async def unfinished_actions(self, tenant_id: str, user_id: str) -> list[Action]:
        query = select(A).where(self._their_actions(tenant_id, user_id), A.c.state.in_(_UNFINISHED))
        async with self._read.connect() as conn:
            return [to_action(r) for r in await conn.execute(query.order_by(A.c.id))]

    # -- erasure -----------------------------------------------------------------

    async def erase(self, tenant_id: str, user_id: str, pseudonym: str, now: datetime) -> Erasure:
        async with self._engine.begin() as conn:
            sessions = [r.id for r in await conn.execute(self._their_sessions(tenant_id, user_id))]
            # The outbox first: it finds their actions by the ids the rows still name.
            outbox = await self._redact_outbox(conn, tenant_id, user_id, pseudonym, sessions)
            messages = await self._delete_messages(conn, tenant_id, sessions)
            await conn.execute(
                update(S)
                .where(S.c.tenant_id == tenant_id, S.c.id.in_(sessions))
                .values(user_id=pseudonym, title="", message_count=0)
            )
            actions = await self._redact_actions(conn, tenant_id, user_id, pseudonym, sessions)
            events = await self._redact_events(conn, tenant_id, user_id, pseudonym)
            rules = await conn.execute(
                delete(PR).where(
                    PR.c.tenant_id == tenant_id, PR.c.scope == "user", PR.c.subject_id == user_id
                )
            )
            keys = await conn.execute(  # a person's keys stop working, and name nobody
                update(K)
                .where(K.c.tenant_id == tenant_id, K.c.user_id == user_id)
                .values(user_id=pseudonym, revoked_at=func.coalesce(K.c.revoked_at, now))
            )
            # Usage entries and reservations keep amounts and times; whose they were,
            # and their metadata, go.
            counts = [
                await conn.execute(
                    update(table)
                    .where(table.c.tenant_id == tenant_id, table.c.user_id == user_id)
                    .values(user_id=pseudonym, metadata={})
                )
                for table in (E, RS)
            ]
            usage = int(counts[0].rowcount or 0)
        await self._checkpoint()
        return Erasure(
            pseudonym=pseudonym,
            messages_deleted=messages,
            sessions_redacted=len(sessions),
            actions_redacted=actions,
            audit_events_redacted=events,
            permission_rules_removed=int(rules.rowcount or 0),
            api_keys_redacted=int(keys.rowcount or 0),
            outbox_events_redacted=outbox,
            usage_entries_redacted=usage,
        )

    async def _redact_outbox(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        user_id: str,
        pseudonym: str,
        sessions: Sequence[str],
    ) -> int:
        """The events other systems are told carry what the user wrote (a message's
        content, an action's parameters) and their id: kept, in sequence, without
        them (a reader resuming from a sequence number still misses nothing)."""
        actions = select(A.c.id).where(self._their_actions(tenant_id, user_id))
        rows = (
            await conn.execute(
                select(OB.c.id, OB.c.aggregate_type, OB.c.payload).where(
                    OB.c.tenant_id == tenant_id,
                    or_(
                        (OB.c.aggregate_type == "session") & OB.c.aggregate_id.in_(sessions),
                        (OB.c.aggregate_type == "action") & OB.c.aggregate_id.in_(actions),
                    ),
                )
            )
        ).all()
        own = set(sessions)
        for row in rows:
            payload = dict(row.payload or {})
            theirs = (  # a message of their conversations, or an action they asked for
                row.aggregate_type == "session"
                or payload.get("session_id") in own
                or payload.get("requested_by") == user_id
            )
            if theirs:
                payload = _without_words(payload)
            payload = _replaced(payload, user_id, pseudonym)
            await conn.execute(update(OB).where(OB.c.id == row.id).values(payload=payload))
        return len(rows)

    async def _checkpoint(self) -> None:
        """On SQLite, copy the write-ahead log into the file and empty it: the log
        still holds the pages as they were before the erasure. (On PostgreSQL the old
        row versions are reclaimed by vacuum; no dump or replica contains them.)"""
        if self._engine.dialect.name == "sqlite":
            async with self._engine.connect() as conn:
                # Outside any transaction (SQLAlchemy would begin one): on the driver's
                # own connection, which runs in autocommit (see sqlite_inline).
                raw = (await conn.get_raw_connection()).driver_connection
                assert isinstance(raw, sqlite_inline.InlineConnection)
                await sqlite_inline.truncate_log(raw)

    @staticmethod
    async def _delete_messages(
        conn: AsyncConnection, tenant_id: str, sessions: Sequence[str]
    ) -> int:
        deleted = 0
        for i in range(0, len(sessions), 500):
            result = await conn.execute(
                delete(M).where(
                    M.c.tenant_id == tenant_id, M.c.session_id.in_(sessions[i : i + 500])
                )
            )
            deleted += int(result.rowcount or 0)
        return deleted

    async def _redact_actions(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        user_id: str,
        pseudonym: str,
        sessions: Sequence[str],
    ) -> int:
        """Their own actions lose parameters, results and reasons; actions of others
        they decided keep theirs, with the pseudonym where the user was named (and the
        conversation notes of those decisions say the pseudonym too)."""
        rows = (await conn.execute(select(A).where(self._their_actions(tenant_id, user_id)))).all()
        own = set(sessions)
        for row in rows:
            theirs = row.session_id in own or row.requested_by == user_id
            values: dict[str, Any] = {
                "requested_by": pseudonym if row.requested_by == user_id else row.requested_by,
                "decided_by": pseudonym if row.decided_by == user_id else row.decided_by,
            }
            if theirs:
                values.update(
                    parameters={},
                    result=REDACTED_RESULT,
                    reasoning=REDACTED,
                    rejection_reason="",
                    blocked=[{"reason": b.get("reason", "")} for b in row.blocked or []],
                )
            else:
                values["result"] = _replaced(dict(row.result or {}), user_id, pseudonym)
                await self._rename_in_notes(
                    conn, tenant_id, row.session_id, row.id, user_id, pseudonym
                )
            await conn.execute(
                update(A).where(A.c.tenant_id == tenant_id, A.c.id == row.id).values(**values)
            )
        return len(rows)

    @staticmethod
    async def _rename_in_notes(
        conn: AsyncConnection,
        tenant_id: str,
        session_id: str,
        action_id: str,
        user_id: str,
        pseudonym: str,
    ) -> None:
        """The system notes of another person's conversation that name the user (a
        rejection or an outcome they confirmed) name the pseudonym instead."""
        notes = await conn.execute(
            select(M.c.id, M.c.content, M.c.action_ids).where(
                M.c.tenant_id == tenant_id, M.c.session_id == session_id, M.c.role == "system"
            )
        )
        for note in notes:
            if action_id in (note.action_ids or []) and user_id in note.content:
                named = re.compile(rf"(?<![\w.@-]){re.escape(user_id)}(?![\w.@-])")
                await conn.execute(
                    update(M)
                    .where(M.c.tenant_id == tenant_id, M.c.id == note.id)
                    .values(content=named.sub(pseudonym, note.content))
                )

    async def _redact_events(
        self, conn: AsyncConnection, tenant_id: str, user_id: str, pseudonym: str
    ) -> int:
        rows = (await conn.execute(select(EV).where(self._their_events(tenant_id, user_id)))).all()
        for row in rows:
            values: dict[str, Any] = {
                "payload": _replaced(dict(row.payload or {}), user_id, pseudonym)
            }
            if row.user_id == user_id:
                key = row.actor.split("/", 1)[0]
                values.update(user_id=pseudonym, actor=f"{key}/{pseudonym}")
            if row.object == f"user:{user_id}":
                values["object"] = f"user:{pseudonym}"
            await conn.execute(update(EV).where(EV.c.id == row.id).values(**values))
        return len(rows)

    # -- retention ---------------------------------------------------------------

    async def apply_retention(self, tenant_id: str, before: datetime, limit: int) -> Retention:
        async with self._engine.begin() as conn:
            old_messages = (
                select(M.c.id)
                .where(M.c.tenant_id == tenant_id, M.c.created_at < before)
                .limit(limit)
            )
            messages = await conn.execute(
                delete(M).where(
                    M.c.tenant_id == tenant_id, M.c.id.in_(old_messages.scalar_subquery())
                )
            )
            old_sessions = (
                select(S.c.id)
                .where(S.c.tenant_id == tenant_id, S.c.updated_at < before, S.c.title != "")
                .limit(limit)
            )
            sessions = await conn.execute(
                update(S)
                .where(S.c.tenant_id == tenant_id, S.c.id.in_(old_sessions.scalar_subquery()))
                .values(title="", message_count=0)
            )
            old_actions = (
                select(A.c.id)
                .where(
                    A.c.tenant_id == tenant_id,
                    A.c.updated_at < before,
                    A.c.state.in_(_ENDED),
                    A.c.reasoning != REDACTED,
                )
                .limit(limit)
            )
            actions = await conn.execute(
                update(A)
                .where(A.c.tenant_id == tenant_id, A.c.id.in_(old_actions.scalar_subquery()))
                .values(
                    parameters={}, result=REDACTED_RESULT, reasoning=REDACTED, rejection_reason=""
                )
            )
            outbox = await self._retain_outbox(conn, tenant_id, before, limit)
        return Retention(
            outbox_events_redacted=outbox,
            messages_deleted=int(messages.rowcount or 0),
            sessions_redacted=int(sessions.rowcount or 0),
            actions_redacted=int(actions.rowcount or 0),
        )

    @staticmethod
    async def _retain_outbox(
        conn: AsyncConnection, tenant_id: str, before: datetime, limit: int
    ) -> int:
        """Outbox events older than `before` that carry words (messages stored, actions
        created) keep their place without them."""
        rows = (
            await conn.execute(
                select(OB.c.id, OB.c.payload)
                .where(
                    OB.c.tenant_id == tenant_id,
                    OB.c.created_at < before,
                    OB.c.type.in_(("message.stored", "action.created")),
                    ~cast(OB.c.payload, String).contains('"redacted": true'),
                )
                .order_by(OB.c.id)
                .limit(limit)
            )
        ).all()
        for row in rows:
            payload = _without_words(dict(row.payload or {}))
            await conn.execute(update(OB).where(OB.c.id == row.id).values(payload=payload))
        return len(rows)
