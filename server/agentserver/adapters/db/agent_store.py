"""Sessions, messages and actions on SQL, every query filtered by tenant."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.outbox import write_outbox
from agentserver.domain.actions import Action, ActionFilter, ActionState, transition_events
from agentserver.domain.conversations import Exchange, Message, Role, Session, message_events
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import NotFound
from agentserver.domain.paging import PageRequest, bad_token, encode_token

S = models.sessions
M = models.messages
A = models.actions


def to_session(row: Any) -> Session:
    return Session(
        id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        location_id=row.location_id,
        title=row.title,
        message_count=row.message_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_message(row: Any) -> Message:
    return Message(
        id=row.id,
        session_id=row.session_id,
        role=Role(row.role),
        content=row.content,
        created_at=row.created_at,
        decision_level=row.decision_level,
        action_ids=list(row.action_ids or []),
    )


def to_action(row: Any) -> Action:
    return Action(
        id=row.id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        location_id=row.location_id,
        action_type=row.action_type,
        category=row.category,
        parameters=dict(row.parameters or {}),
        level=DecisionLevel(row.decision_level),
        state=ActionState(row.state),
        executable=row.executable,
        blocked=list(row.blocked or []),
        token_cost=row.token_cost,
        operation_type=row.operation_type,
        confidence=row.confidence,
        reasoning=row.reasoning,
        requested_by=row.requested_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        decided_by=row.decided_by,
        decision_request_id=row.decision_request_id,
        rejection_reason=row.rejection_reason,
        result=dict(row.result or {}),
        reservation_id=row.reservation_id,
        attempts=row.attempts,
        version=row.version,
        depends_on=row.depends_on,
    )


def action_values(action: Action) -> dict[str, Any]:
    return {
        "id": action.id,
        "tenant_id": action.tenant_id,
        "session_id": action.session_id,
        "location_id": action.location_id,
        "action_type": action.action_type,
        "category": action.category,
        "parameters": action.parameters,
        "decision_level": int(action.level),
        "state": action.state.value,
        "executable": action.executable,
        "blocked": action.blocked,
        "token_cost": action.token_cost,
        "operation_type": action.operation_type,
        "confidence": action.confidence,
        "reasoning": action.reasoning,
        "requested_by": action.requested_by,
        "decided_by": action.decided_by,
        "decision_request_id": action.decision_request_id,
        "rejection_reason": action.rejection_reason,
        "result": action.result,
        "reservation_id": action.reservation_id,
        "attempts": action.attempts,
        "version": action.version,
        "created_at": action.created_at,
        "updated_at": action.updated_at,
        "expires_at": action.expires_at,
        "depends_on": action.depends_on,
    }


_INSERT_SESSIONS = insert(S)
_INSERT_ACTIONS = insert(A)
_INSERT_MESSAGES = insert(M)
_REVISE_MESSAGES = (
    update(M)
    .where(M.c.tenant_id == bindparam("p_tenant"), M.c.id == bindparam("p_message"))
    .values(content=bindparam("p_content"))
)
_COUNT_MESSAGES = (
    update(S)
    .where(S.c.tenant_id == bindparam("p_tenant"), S.c.id == bindparam("p_session"))
    .values(message_count=S.c.message_count + bindparam("p_n"), updated_at=bindparam("p_now"))
)


@functools.lru_cache(maxsize=64)
def _transition_statement(
    from_states: frozenset[ActionState],
    to_state: ActionState,
    changed: tuple[str, ...],
    *,
    returning: bool = True,
) -> Any:
    """A compare-and-set on the action's state, built once per shape (what changes)."""
    statement = (
        update(A)
        .where(
            A.c.tenant_id == bindparam("p_tenant"),
            A.c.id == bindparam("p_action"),
            A.c.state.in_(sorted(s.value for s in from_states)),
        )
        .values(
            state=to_state.value,
            updated_at=bindparam("p_now"),
            version=A.c.version + 1,
            **{name: bindparam(f"p_{name}") for name in changed},
        )
    )
    return statement.returning(*A.c) if returning else statement


def _message_values(tenant_id: str, session_id: str, m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "tenant_id": tenant_id,
        "session_id": session_id,
        "role": m.role.value,
        "content": m.content,
        "decision_level": m.decision_level,
        "action_ids": m.action_ids,
        "created_at": m.created_at,
    }


class SqlAgentStore:
    """ConversationStore and ActionStore in one, so an exchange is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._single = None if engine.dialect.name == "sqlite" else reader(engine)

    # -- conversations -------------------------------------------------------

    async def get_session(self, tenant_id: str, session_id: str) -> Session:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(S).where(S.c.tenant_id == tenant_id, S.c.id == session_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        return to_session(row)

    async def list_sessions(
        self, tenant_id: str, user_id: str, page: PageRequest
    ) -> tuple[list[Session], str]:
        query = select(S).where(S.c.tenant_id == tenant_id, S.c.user_id == user_id)
        if page.after:
            try:
                after_time = datetime.fromisoformat(str(page.after["t"]))
            except ValueError:
                raise bad_token() from None
            if after_time.tzinfo is None:
                raise bad_token()
            after_id = str(page.after["id"])
            query = query.where(
                (S.c.updated_at < after_time)
                | ((S.c.updated_at == after_time) & (S.c.id < after_id))
            )
        query = query.order_by(S.c.updated_at.desc(), S.c.id.desc()).limit(page.size + 1)
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        sessions = [to_session(r) for r in rows[: page.size]]
        token = ""
        if len(rows) > page.size:
            last = sessions[-1]
            token = encode_token("sessions", {"t": last.updated_at.isoformat(), "id": last.id})
        return sessions, token

    async def list_messages(
        self, tenant_id: str, session_id: str, before: datetime | None, page: PageRequest
    ) -> tuple[list[Message], str]:
        await self.get_session(tenant_id, session_id)  # NotFound for foreign sessions
        query = select(M).where(M.c.tenant_id == tenant_id, M.c.session_id == session_id)
        if before is not None:
            query = query.where(M.c.created_at < before)
        if page.after:
            query = query.where(M.c.id < str(page.after["id"]))
        query = query.order_by(M.c.id.desc()).limit(page.size + 1)
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        messages = [to_message(r) for r in rows[: page.size]]
        token = encode_token("messages", {"id": messages[-1].id}) if len(rows) > page.size else ""
        return messages, token

    async def recent_messages(self, tenant_id: str, session_id: str, limit: int) -> list[Message]:
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(M)
                    .where(M.c.tenant_id == tenant_id, M.c.session_id == session_id)
                    .order_by(M.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [to_message(r) for r in reversed(rows)]

    async def insert_exchanges_on(self, conn: Any, exchanges: Sequence[Exchange]) -> None:
        sessions = [
            {
                "id": ex.session.id,
                "tenant_id": ex.tenant_id,
                "user_id": ex.session.user_id,
                "location_id": ex.session.location_id,
                "title": ex.session.title,
                "message_count": len(ex.messages),
                "created_at": ex.now,
                "updated_at": ex.now,
            }
            for ex in exchanges
            if ex.new_session
        ]
        if sessions:
            await conn.execute(_INSERT_SESSIONS, sessions)
        actions = [action_values(a) for ex in exchanges for a in ex.actions]
        if actions:
            await conn.execute(_INSERT_ACTIONS, actions)
        await conn.execute(
            _INSERT_MESSAGES,
            [
                _message_values(ex.tenant_id, ex.session.id, m)
                for ex in exchanges
                for m in ex.messages
            ],
        )
        counts = [
            {
                "p_tenant": ex.tenant_id,
                "p_session": ex.session.id,
                "p_n": len(ex.messages),
                "p_now": ex.now,
            }
            for ex in exchanges
            if not ex.new_session
        ]
        if counts:
            await conn.execute(_COUNT_MESSAGES, counts)

    async def revise_messages(self, revisions: Sequence[tuple[str, str, str]]) -> None:
        async with self._engine.begin() as conn:
            await self.revise_on(conn, revisions)

    async def revise_on(self, conn: Any, revisions: Sequence[tuple[str, str, str]]) -> int:
        """`revise_messages` inside the caller's transaction; how many rows changed."""
        params = [{"p_tenant": t, "p_message": m, "p_content": c} for t, m, c in revisions]
        return int((await conn.execute(_REVISE_MESSAGES, params)).rowcount or 0)

    async def append_messages(
        self, tenant_id: str, session_id: str, messages: Sequence[Message], now: datetime
    ) -> None:
        async with self._engine.begin() as conn:
            await self._append(conn, tenant_id, session_id, messages, now)
            row = (
                await conn.execute(
                    select(S).where(S.c.tenant_id == tenant_id, S.c.id == session_id)
                )
            ).first()
            if row is not None:
                events = message_events(tenant_id, to_session(row), messages)
                await write_outbox(conn, tenant_id, events, now)

    async def _append(
        self,
        conn: Any,
        tenant_id: str,
        session_id: str,
        messages: Sequence[Message],
        now: datetime,
        *,
        count: bool = True,
    ) -> None:
        if not messages:
            return
        await conn.execute(insert(M), [_message_values(tenant_id, session_id, m) for m in messages])
        if count:
            await conn.execute(
                update(S)
                .where(S.c.tenant_id == tenant_id, S.c.id == session_id)
                .values(message_count=S.c.message_count + len(messages), updated_at=now)
            )

    # -- actions -------------------------------------------------------------

    async def get(self, tenant_id: str, action_id: str) -> Action:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(A).where(A.c.tenant_id == tenant_id, A.c.id == action_id))
            ).first()
        if row is None:
            raise NotFound(f"action {action_id!r} not found")
        return to_action(row)

    async def find(
        self, tenant_id: str, flt: ActionFilter, page: PageRequest
    ) -> tuple[list[Action], str]:
        query = select(A).where(A.c.tenant_id == tenant_id)
        if flt.states:
            query = query.where(A.c.state.in_(sorted(s.value for s in flt.states)))
        if flt.session_id:
            query = query.where(A.c.session_id == flt.session_id)
        if flt.levels:
            query = query.where(A.c.decision_level.in_(sorted(int(v) for v in flt.levels)))
        if flt.requested_by:
            query = query.where(A.c.requested_by == flt.requested_by)
        if page.after:
            query = query.where(A.c.id < str(page.after["id"]))
        query = query.order_by(A.c.id.desc()).limit(page.size + 1)
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        actions = [to_action(r) for r in rows[: page.size]]
        token = encode_token("actions", {"id": actions[-1].id}) if len(rows) > page.size else ""
        return actions, token

    async def transition(
        self,
        tenant_id: str,
        action_id: str,
        from_states: frozenset[ActionState],
        to_state: ActionState,
        now: datetime,
        **changes: Any,
    ) -> Action | None:
        statement = _transition_statement(from_states, to_state, tuple(sorted(changes)))
        params = {f"p_{k}": v for k, v in changes.items()}
        params.update(p_tenant=tenant_id, p_action=action_id, p_now=now)
        async with self._engine.begin() as conn:
            row = (await conn.execute(statement, params)).first()
            if row is None:
                return None
            action = to_action(row)
            await write_outbox(conn, tenant_id, transition_events(action), now)
        return action

    async def advance_on(
        self,
        conn: Any,
        action: Action,
        from_states: frozenset[ActionState],
        to_state: ActionState,
        now: datetime,
        changes: dict[str, Any],
    ) -> bool:
        """`advance` inside the caller's transaction; True when the row changed. The
        caller writes its events (`transition_events`) with its own."""
        statement = _transition_statement(
            from_states, to_state, tuple(sorted(changes)), returning=False
        )
        params = {f"p_{k}": v for k, v in changes.items()}
        params.update(p_tenant=action.tenant_id, p_action=action.id, p_now=now)
        return bool((await conn.execute(statement, params)).rowcount == 1)

    async def _write_one(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        """One self-contained write with RETURNING: no BEGIN/COMMIT round trips on
        PostgreSQL (autocommit; a single statement is atomic by itself)."""
        if self._single is None:
            async with self._engine.begin() as conn:
                return (await conn.execute(statement, params)).first()
        async with self._single.connect() as conn:
            return (await conn.execute(statement, params)).first()

    async def update(self, tenant_id: str, action_id: str, now: datetime, **changes: Any) -> Action:
        row = await self._write_one(
            update(A)
            .where(A.c.tenant_id == tenant_id, A.c.id == action_id)
            .values(updated_at=now, version=A.c.version + 1, **changes)
            .returning(*A.c)
        )
        if row is None:
            raise NotFound(f"action {action_id!r} not found")
        return to_action(row)

    async def due_for_expiry(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        waiting = [
            s.value
            for s in (
                ActionState.AWAITING_USER,
                ActionState.AWAITING_COORDINATOR,
                ActionState.AWAITING_APPROVER,
            )
        ]
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(A.c.tenant_id, A.c.id)
                .where(A.c.state.in_(waiting), A.c.expires_at <= now)
                .limit(limit)
            )
            return [(r.tenant_id, r.id) for r in rows]

    async def dependents(self, tenant_id: str, action_id: str) -> list[Action]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(A)
                .where(A.c.tenant_id == tenant_id, A.c.depends_on == action_id)
                .order_by(A.c.created_at, A.c.id)
            )
            return [to_action(r) for r in rows]

    async def stale(
        self, state: ActionState, before: datetime, limit: int
    ) -> list[tuple[str, str]]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(A.c.tenant_id, A.c.id)
                .where(A.c.state == state.value, A.c.updated_at < before)
                .limit(limit)
            )
            return [(r.tenant_id, r.id) for r in rows]
