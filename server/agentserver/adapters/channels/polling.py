"""Channels whose side effect finishes after `send` returns (phone calls).

`send` returns `ChannelResult(pending=True)`; the executor keeps the action in
`executing` and later asks the channel for the outcome with `poll(provider_id)`.

These types belong next to the `Channel` port in `agentserver.domain.channels`; they
live here until that module grows them, and nothing here imports beyond the domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentserver.domain.channels import ChannelResult, OutboundMessage


@dataclass(frozen=True)
class CallStatus:
    """Where a pending side effect stands.

    `done` is False while the provider is still working (ringing, talking, post-call
    processing); then `succeeded` carries no meaning. Once `done`, `succeeded` says
    whether the action may be marked succeeded. `detail` carries the provider's own
    words (status, summary, duration) for the action's result.
    """

    done: bool
    succeeded: bool
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PollableChannel(Protocol):
    """A channel that can report on a send it answered with `pending=True`."""

    @property
    def name(self) -> str: ...

    async def send(self, message: OutboundMessage) -> ChannelResult: ...

    async def poll(self, provider_id: str) -> CallStatus: ...
