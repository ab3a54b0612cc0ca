"""The offline decision engine: deterministic rules, no network (see `engine`)."""

from agentserver.domain.decision.offline.engine import BYPASS, OfflineEngine, detect_bypass

__all__ = ["BYPASS", "OfflineEngine", "detect_bypass"]
