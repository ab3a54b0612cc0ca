"""How sure the offline engine is. Classification gives each segment a base
confidence (`classify`: about 90 for a clear keyword, less for a loose wording or a
typo); each missing parameter takes 10 from it; a proposal is as sure as its least
sure action, and less when part of the message read as no action at all.
"""

from __future__ import annotations

from agentserver.domain.decision.engine import ProposedAction


def _confidence(strength: int, missing: list[str]) -> int:
    """An action's confidence, from its segment's strength and its missing parameters."""
    # Missing parameters lower the confidence, but a clearly worded request
    # stays in the suggestion band: the policy already blocks it and asks the
    # requester for what is missing, which is better than a coordinator.
    confidence = max(20, min(95, strength) - 10 * len(missing))
    if missing and strength >= 85:
        confidence = max(confidence, 60)
    return confidence


def _overall(actions: list[ProposedAction], ambiguous: list[str]) -> int:
    """The proposal's confidence: its least sure action's, 20 less when a segment was
    unclear; low when nothing was recognised."""
    if actions:
        overall = min(a.confidence for a in actions)
        if ambiguous:
            overall = max(20, overall - 20)
    else:
        overall = 30 if ambiguous else 10
    return overall
