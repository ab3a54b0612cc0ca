"""Conversation windows: WhatsApp is priced per conversation, not per message.

The first message to a recipient opens a 24-hour window and pays the conversation's
price; further messages of the same tenant to the same recipient inside the window
cost nothing. The window opens when a send starts (so two sends at once open one
window, however many replicas run them) and is withdrawn when that send fails.

The action holds the full price while it waits (the worst case, so an approval
never finds it unaffordable); when it runs inside an open window, the hold is
released instead of captured.

A crash between opening a window and the provider's answer leaves the window open
(the send may have happened): like the executor's crash rule, it errs towards
charging too little, never twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.costs import OperationType

WINDOW = timedelta(hours=24)

# Operation types priced per conversation, and the channel name their windows use.
_CONVERSATION_PRICED = {OperationType.WHATSAPP_CONVERSATION.value: "whatsapp"}


@dataclass(frozen=True)
class WindowKey:
    """Whose conversation: one tenant, one channel, one recipient."""

    tenant_id: str
    channel: str
    recipient: str


def window_key(
    tenant_id: str, operation_type: str, token_cost: int, parameters: dict[str, Any]
) -> WindowKey | None:
    """The window an action's send opens or continues; None when it is not priced per
    conversation (or costs nothing, so there is nothing to decide)."""
    channel = _CONVERSATION_PRICED.get(operation_type)
    recipient = parameters.get("to")
    if channel is None or token_cost <= 0 or not isinstance(recipient, str) or not recipient:
        return None
    return WindowKey(tenant_id, channel, recipient)


class ConversationWindows(Protocol):
    """Where open windows are kept; shared by every replica."""

    async def open(self, key: WindowKey, opener: str, now: datetime, until: datetime) -> bool:
        """Open a window for `key` unless one is open at `now`. True when this call
        opened it (the send pays), False when one was already open (it is free).
        One atomic statement: of two concurrent calls, exactly one opens it."""
        ...

    async def withdraw(self, key: WindowKey, opener: str) -> None:
        """Remove the window `opener` opened (its send failed); nothing otherwise."""
        ...
