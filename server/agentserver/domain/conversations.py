"""Conversations: sessions (with their location) and their messages."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agentserver.domain.actions import Action, created_events
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.events import MESSAGE_STORED, DomainEvent
from agentserver.domain.paging import PageRequest

MAX_MESSAGE_CHARS = 8000


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


@dataclass(frozen=True)
class Session:
    id: str
    tenant_id: str
    user_id: str
    location_id: str
    title: str
    message_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Message:
    id: str
    session_id: str
    role: Role
    content: str
    created_at: datetime
    decision_level: int = 0
    action_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Exchange:
    """What one Process call stores: its session (if new), messages and actions."""

    tenant_id: str
    session: Session
    new_session: bool
    messages: list[Message]
    actions: list[Action]
    now: datetime


def message_events(
    tenant_id: str, session: Session, messages: Sequence[Message]
) -> list[DomainEvent]:
    """`message.stored` for each message joining `session`'s conversation."""
    return [
        DomainEvent(
            MESSAGE_STORED,
            "session",
            session.id,
            {
                "message_id": m.id,
                "user_id": session.user_id,
                "location_id": session.location_id,
                "role": m.role.value,
                "content": m.content,
                "decision_level": m.decision_level,
                "action_ids": list(m.action_ids),
            },
        )
        for m in messages
    ]


def exchange_events(exchange: Exchange) -> list[DomainEvent]:
    """What storing one Process exchange tells other systems: each action created
    (and waiting), then each message stored."""
    events = [e for action in exchange.actions for e in created_events(action)]
    return events + message_events(exchange.tenant_id, exchange.session, exchange.messages)


class ConversationStore(Protocol):
    """Every method is scoped by tenant: another tenant's session is NotFound."""

    async def get_session(self, tenant_id: str, session_id: str) -> Session: ...

    async def list_sessions(
        self, tenant_id: str, user_id: str, page: PageRequest
    ) -> tuple[list[Session], str]: ...

    async def list_messages(
        self, tenant_id: str, session_id: str, before: datetime | None, page: PageRequest
    ) -> tuple[list[Message], str]: ...

    async def recent_messages(
        self, tenant_id: str, session_id: str, limit: int
    ) -> list[Message]: ...

    async def revise_messages(self, revisions: Sequence[tuple[str, str, str]]) -> None:
        """Replace the content of messages, given as (tenant_id, message_id, content)."""
        ...


def validate_message(message: str) -> str:
    text = message.strip()
    if not text:
        raise InvalidArgument.field("message", "must not be empty")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidArgument.field("message", f"must be at most {MAX_MESSAGE_CHARS} characters")
    return text


def title_of(message: str) -> str:
    first = " ".join(message.split())
    return first if len(first) <= 60 else first[:57] + "..."
