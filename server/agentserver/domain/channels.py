"""The channel port: how an action reaches the world (email, SMS, WhatsApp, phone).

Each channel has a real adapter and a dry-run twin that records what it would
have sent. Adapters raise `TransientChannelError` for errors worth retrying
(timeouts, 5xx, 429, connection refused) and `PermanentChannelError` for errors
that will not go away by retrying (4xx, rejected recipient, bad credentials).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class ChannelError(Exception):
    """Base of channel failures."""


class TransientChannelError(ChannelError):
    """Retrying may succeed."""


class PermanentChannelError(ChannelError):
    """Retrying will not help; the action fails."""


@dataclass(frozen=True)
class ChannelResult:
    """What a channel reports after accepting a send."""

    channel: str  # "smtp", "twilio", "elevenlabs", "dry-run"
    provider_id: str  # message id, SID, call id
    detail: dict[str, Any] = field(default_factory=dict)
    # True when the side effect finishes later (phone calls): the action stays executing.
    pending: bool = False


@dataclass(frozen=True)
class OutboundMessage:
    """A message to send. `idempotency_key` is the action id."""

    idempotency_key: str
    to: str
    body: str
    subject: str = ""
    sender: str = ""


class Channel(Protocol):
    @property
    def name(self) -> str: ...

    async def send(self, message: OutboundMessage) -> ChannelResult: ...
