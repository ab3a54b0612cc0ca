"""What the service tells an operator about itself: counts and timings (metrics) and
spans (traces).

The domain reports through this port and never learns where it goes;
`adapters/telemetry.py` turns it into Prometheus metrics and OpenTelemetry spans when
the operator configures them. The base class is the "not configured" case: every
method does nothing, so an unconfigured server pays one method call per report.

Label values are bounded sets (services, methods, codes, operation types, action
types and states, levels, providers, reasons): a tenant is passed along, but only an
adapter the operator told to may turn it into a label (cardinality).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager

Attributes = Mapping[str, str | int | float | bool]

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


class Telemetry:
    """Reports nothing (subclasses report somewhere)."""

    def span(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[None]:
        """A span around a piece of work (the engine, a ledger write, a provider call)."""
        return _NOTHING

    # -- rpcs -----------------------------------------------------------------

    def rpc_started(self, service: str, method: str) -> None:
        """An rpc began (before anything about its caller is known)."""

    def rpc_handled(
        self, service: str, method: str, code: str, seconds: float, tenant: str
    ) -> None:
        """An rpc ended with `code` after `seconds`; `tenant` is '' when none was proven."""

    def rate_limited(self, budget: str, tenant: str) -> None:
        """A call refused by a rate limit: `budget` is "tenant" or "unauthenticated"."""

    # -- business ---------------------------------------------------------------

    def tokens_charged(self, tenant: str, operation_type: str, tokens: int) -> None:
        """Tokens spent (a charge, a capture, a monthly fee), counted once per write."""

    def decided(self, tenant: str, level: str, actions: list[tuple[str, str]]) -> None:
        """A Process answer: the response's level and each action's (type, level)."""

    def engine_used(self, engine: str, fallback: str) -> None:
        """Which engine decided ("offline" or "llm"); `fallback` says why the offline
        engine answered for the LLM ('' when it did not)."""

    def action_ended(self, tenant: str, action_type: str, state: str) -> None:
        """An action reached a final state (or outcome_unknown)."""

    def channel_call(self, provider: str, outcome: str, seconds: float) -> None:
        """One call of a provider ("smtp", "twilio", "elevenlabs", "dryrun"): outcome
        "ok", "transient_error" or "permanent_error"."""

    def batch(self, kind: str, size: int) -> None:
        """How many items one coalesced ledger write carried (debits, reservation ends)."""


NO_TELEMETRY = Telemetry()
