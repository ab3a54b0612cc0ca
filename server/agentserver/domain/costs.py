"""Operation types and their token costs (the source design's table, overridable by
configuration): WhatsApp conversation 10, SMS 1, email 1, ElevenLabs call 50, internal
LLM 1, monthly fee 200."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class OperationType(enum.StrEnum):
    """A metered kind of work; values are the seed's `operation_type` strings."""

    WHATSAPP_CONVERSATION = "whatsapp_conversation"
    SMS = "sms"
    EMAIL = "email"
    ELEVENLABS_CALL = "elevenlabs_call"
    INTERNAL_API_LLM = "internal_api_llm"
    MONTHLY_FEE = "monthly_fee"
    PURCHASE = "purchase"
    CUSTOM = "custom"


@dataclass(frozen=True)
class OperationCost:
    operation_type: OperationType
    tokens: int
    description: str


DEFAULT_COSTS: Mapping[OperationType, OperationCost] = {
    c.operation_type: c
    for c in (
        OperationCost(
            OperationType.WHATSAPP_CONVERSATION,
            10,
            "one WhatsApp conversation: the first message to a recipient opens a "
            "24-hour window; further messages to them inside it cost nothing",
        ),
        OperationCost(OperationType.SMS, 1, "one SMS message"),
        OperationCost(OperationType.EMAIL, 1, "one email message"),
        OperationCost(OperationType.ELEVENLABS_CALL, 50, "one outbound AI voice call"),
        OperationCost(OperationType.INTERNAL_API_LLM, 1, "one call of the internal LLM"),
        OperationCost(OperationType.MONTHLY_FEE, 200, "the monthly platform fee"),
    )
}


class CostTable:
    """Token cost per operation type; defaults overridden by configuration."""

    def __init__(self, overrides: Mapping[OperationType, int] | None = None) -> None:
        costs = dict(DEFAULT_COSTS)
        for op, tokens in (overrides or {}).items():
            if tokens < 0:
                raise ValueError(f"cost of {op} must be >= 0, got {tokens}")
            base = costs.get(op)
            costs[op] = OperationCost(op, tokens, base.description if base else op.value)
        self._costs = costs

    def tokens(self, op: OperationType) -> int:
        """Tokens one operation costs; 0 for unpriced operation types."""
        cost = self._costs.get(op)
        return cost.tokens if cost else 0

    @property
    def monthly_fee(self) -> int:
        return self.tokens(OperationType.MONTHLY_FEE)

    def all(self) -> list[OperationCost]:
        return list(self._costs.values())

    @classmethod
    def parse(cls, spec: str) -> CostTable:
        """Parse `sms=1,email=2` (the AGENTSERVER_COSTS setting)."""
        overrides: dict[OperationType, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            overrides[OperationType(name.strip())] = int(value)
        return cls(overrides)
