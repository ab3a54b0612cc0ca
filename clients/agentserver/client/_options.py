"""What every call of the client takes besides its request."""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from typing import Any, Final


class _UseClientDefault(enum.Enum):
    """Marks a `timeout` that was not passed, as distinct from None (no deadline)."""

    TIMEOUT = enum.auto()


DEFAULT: Final = _UseClientDefault.TIMEOUT

Timeout = float | None | _UseClientDefault


class Calls(abc.ABC):
    """What the per-service method groups (`AdminMethods`, `WebhookMethods`) call;
    `AgentServerClient` implements it once for all of them."""

    @abc.abstractmethod
    async def _unary(
        self,
        method: Any,
        request: Any,
        timeout: Timeout,  # noqa: ASYNC109 -- the gRPC deadline, sent to the server
        metadata: Sequence[tuple[str, str]],
    ) -> Any:
        """Call a unary rpc with the client's deadline and metadata; errors raised as
        AgentServerError."""

    @abc.abstractmethod
    def _call_options(
        self, timeout: Timeout, metadata: Sequence[tuple[str, str]]
    ) -> tuple[float | None, tuple[tuple[str, str], ...]]:
        """The deadline and metadata a call is sent with."""
