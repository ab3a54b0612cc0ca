"""The engine port: every decision engine (offline rules, LLM) proposes through it.

An engine only *proposes*: intents, action types, parameters and a confidence.
Permissions, token checks and decision levels are decided afterwards by the policy
(`agentserver.domain.decision.policy`), deterministically, over the proposal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

Role = Literal["user", "assistant", "system"]


@dataclass(frozen=True)
class HistoryMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class EngineRequest:
    """What an engine gets to work with."""

    message: str
    now: datetime
    history: list[HistoryMessage] = field(default_factory=list)
    business_context: dict[str, Any] = field(default_factory=dict)
    tenant_id: str = ""
    location_id: str = ""


@dataclass(frozen=True)
class Concern:
    """Something the engine is not sure it may do unattended, or knows it cannot do.

    ``reason`` is machine-readable (`UNCERTAIN_TEXT`, `QUANTITY_NOT_SUPPORTED`, ...),
    ``message`` says it to a person. A blocking concern makes the action not
    executable (it cannot run as asked); any other keeps it from being automatic.
    """

    reason: str
    message: str
    blocks: bool = False


@dataclass(frozen=True)
class ProposedAction:
    """One action the engine believes the user asked for."""

    action_type: str
    parameters: dict[str, Any]
    confidence: int  # 0..100
    reasoning: str = ""
    # Required parameters the message did not give; the engine asks instead of guessing.
    missing_parameters: list[str] = field(default_factory=list)
    # Index (in the proposal's actions) of an earlier action this one follows: it
    # reports on it or builds on it, so it may run only after that one succeeded.
    depends_on: int | None = None
    concerns: list[Concern] = field(default_factory=list)


@dataclass(frozen=True)
class Proposal:
    """An engine's whole reading of one message."""

    reply: str
    actions: list[ProposedAction]
    confidence: int  # 0..100, overall
    reasoning: str
    engine: str  # "offline" or "llm:<model>", plus any fallback note
    # The message asks to skip approvals, widen permissions or otherwise bypass rules.
    bypass_attempt: bool = False
    # The language of the message and of `reply` ("en", "es", "de", "fr").
    language: str = "en"
    # Why the offline engine answered for the configured LLM, as one word a metric can
    # carry ("deadline", "transport", "unusable_output", "no_tokens", ...); '' if not.
    fallback: str = ""


class DecisionEngine(Protocol):
    """Reads a message and proposes actions. Never raises for bad model output:
    an engine that cannot decide degrades (simpler mode, then the offline engine)."""

    @property
    def name(self) -> str: ...

    async def propose(self, request: EngineRequest) -> Proposal: ...
