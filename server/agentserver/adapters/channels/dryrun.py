"""Dry-run channels: record what would have been sent, send nothing.

These are the zero-configuration default (DESIGN principle 5): with no provider
credentials the server still runs every action through a channel, and an operator or
a test can read back exactly what would have gone out.

Two flavours:

* `DryRunChannel(name)` for any kind (email, SMS, WhatsApp, phone): the send "completes"
  at once, `pending=False`.
* `DryRunCallChannel(name)` for phone: answers `pending=True` and implements `poll`, so
  the executor's pending-call path (the one the real ElevenLabs channel takes) runs in
  dry-run mode too. `poll` reports the call done and succeeded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from agentserver.adapters.channels.polling import CallStatus
from agentserver.domain.channels import ChannelResult, OutboundMessage, PermanentChannelError

DRY_RUN = "dry-run"
_PROVIDER_PREFIX = "dry-run-"


class DryRunChannel:
    """A channel that records every message it would send, in memory.

    Idempotent by `idempotency_key` (the action id), like the real side effect should
    be: the same key again returns the first result and records nothing new. The same
    key with *different* content is a bug in the caller (an action's parameters are
    fixed before it executes), so it raises `PermanentChannelError` instead of hiding it.

    Memory is bounded by `max_records` (oldest evicted first) because the dry-run
    channel is what a long-running zero-config server uses; `None` keeps everything.
    """

    _pending = False

    def __init__(self, name: str, *, max_records: int | None = 10_000) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be positive or None")
        self._name = name
        self._max_records = max_records
        self._by_key: OrderedDict[str, tuple[OutboundMessage, ChannelResult]] = OrderedDict()

    @property
    def name(self) -> str:
        """The channel kind this twin stands in for ("email", "sms", "whatsapp", "phone")."""
        return self._name

    @property
    def sent(self) -> list[OutboundMessage]:
        """Every distinct message recorded, oldest first (a copy)."""
        return [message for message, _ in self._by_key.values()]

    def result_for(self, idempotency_key: str) -> ChannelResult | None:
        """The result first returned for `idempotency_key`, if it was sent."""
        entry = self._by_key.get(idempotency_key)
        return entry[1] if entry is not None else None

    def clear(self) -> None:
        """Forget every recorded message."""
        self._by_key.clear()

    async def send(self, message: OutboundMessage) -> ChannelResult:
        """Record `message` (once per idempotency key) and describe what would be sent."""
        # No await in this method: check-and-record is atomic on the event loop, so two
        # concurrent sends of the same key cannot both record.
        existing = self._by_key.get(message.idempotency_key)
        if existing is not None:
            first_message, first_result = existing
            if first_message != message:
                raise PermanentChannelError(
                    f"idempotency key {message.idempotency_key!r} was already used "
                    "for a different message"
                )
            return first_result
        result = ChannelResult(
            channel=DRY_RUN,
            provider_id=f"{_PROVIDER_PREFIX}{message.idempotency_key}",
            detail={"would_send": self._would_send(message)},
            pending=self._pending,
        )
        self._by_key[message.idempotency_key] = (message, result)
        if self._max_records is not None:
            while len(self._by_key) > self._max_records:
                self._by_key.popitem(last=False)
        return result

    def _would_send(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "channel": self._name,
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "sender": message.sender,
        }


class DryRunCallChannel(DryRunChannel):
    """Dry-run phone channel that exercises the pending path: `send` answers
    `pending=True` and `poll` then reports the call done and succeeded."""

    _pending = True

    def __init__(self, name: str = "phone", *, max_records: int | None = 10_000) -> None:
        super().__init__(name, max_records=max_records)

    async def poll(self, provider_id: str) -> CallStatus:
        """Report the dry-run call as finished.

        A provider id this process never issued (e.g. after a restart, since the record
        is in memory) still reports success as long as it is a dry-run id: nothing was
        ever going to be dialled, so there is nothing that could have failed.
        """
        if not provider_id.startswith(_PROVIDER_PREFIX):
            raise PermanentChannelError(f"{provider_id!r} is not a dry-run call id")
        key = provider_id.removeprefix(_PROVIDER_PREFIX)
        return CallStatus(
            done=True,
            succeeded=True,
            detail={"status": "done", "dry_run": True, "recorded": key in self._by_key},
        )
