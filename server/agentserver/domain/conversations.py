"""Conversations: sessions (with their location) and their messages."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agentserver.domain.errors import InvalidArgument
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
    actions: list[Any]
    now: datetime


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
