"""Conversation windows: WhatsApp is priced per conversation, not per message.

The first message to a recipient opens a 24-hour window and pays the conversation's
price; further messages of the same tenant to the same recipient inside the window
cost nothing. The window opens when a send starts (so two sends at once open one
window, however many replicas run them) and is withdrawn when that send fails.

A message that went out free inside a window *joins* it once it is settled; the
first to join is the window's heir. If the opener's send then fails, the window is
not withdrawn (a conversation did take place) but passes to the heir, which pays
the conversation's price. A joiner that finds the window gone (its opener failed
first) opens one itself and pays. Either way one conversation is paid once.

The action holds the full price while it waits (the worst case, so an approval
never finds it unaffordable); when it runs inside an open window, the hold is
released instead of captured.

A crash between opening a window and the provider's answer leaves the window open
(the send may have happened): like the executor's crash rule, it errs towards
charging too little, never twice. So does a crash between passing a window to its
heir and charging the heir (the charge's request id is the heir's, so a retried
charge is applied once).

A lapsed window is never read again, only replaced by the next one, so its row (a
recipient's address and when they were last written to) is deleted a day after it
lapsed (`App.prune_windows`, with the other sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.costs import OperationType

WINDOW = timedelta(hours=24)
# How long a lapsed window's row is kept before the sweep deletes it.
KEPT_AFTER_LAPSE = timedelta(days=1)

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

    async def join(self, key: WindowKey, joiner: str, now: datetime) -> bool:
        """Record that `joiner`'s message went out free inside the window open for
        `key` at `now` (the first joiner becomes the heir). False when no window is
        open: its opener's send failed and withdrew it, or it lapsed."""
        ...

    async def withdraw(self, key: WindowKey, opener: str) -> str | None:
        """`opener`'s send failed. Without an heir its window is removed and None is
        returned; with one, the window passes to the heir, whose id is returned (it
        pays the conversation). Nothing happens to a window `opener` did not open.
        Atomic with `join`: a message joins a window before it goes or not at all."""
        ...
