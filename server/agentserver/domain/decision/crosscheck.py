"""The LLM engine checked by the offline reading.

A model can misread a message in ways no schema catches: it proposes an SMS where
the user asked for a booking, or nothing at all where the request was plain. The
offline engine reads every message too (it costs microseconds), and where the two
readings disagree on the action families, or the model proposes nothing where the
offline engine is confident, nothing of the model's proposal runs automatically:
each of its actions carries a concern, which the policy turns into at least a
suggestion, and the reasoning says why. Where they agree, what only the careful
reading finds is added: the dependencies between actions, the quantities one
request cannot honour, and a bypass attempt either reading saw.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from agentserver.domain.decision.engine import (
    Concern,
    DecisionEngine,
    EngineRequest,
    Proposal,
    ProposedAction,
)

__all__ = ["ENGINES_DISAGREE", "CheckedEngine", "cross_check"]

ENGINES_DISAGREE = "ENGINES_DISAGREE"
# How sure the offline reading must be before "the model proposed nothing" counts.
CONFIDENT = 85


def cross_check(model: Proposal, offline: Proposal) -> Proposal:
    """``model`` as it may be acted on, given the offline reading of the same message."""
    if model.engine.startswith("offline"):
        return model  # the fallback answered: nothing to check against
    mine = Counter(a.action_type for a in model.actions)
    theirs = Counter(a.action_type for a in offline.actions)
    bypass = model.bypass_attempt or offline.bypass_attempt
    if mine == theirs:
        actions = _adopt(model.actions, offline.actions) if model.actions else []
        return replace(model, actions=actions, bypass_attempt=bypass)
    said = ", ".join(sorted(theirs.elements())) or "nothing"
    if not model.actions:
        if max((a.confidence for a in offline.actions), default=0) < CONFIDENT:
            return replace(model, bypass_attempt=bypass)
        why = f"the model proposed nothing, the offline reading confidently proposes {said}"
    else:
        got = ", ".join(sorted(mine.elements()))
        why = f"the model proposes {got}, the offline reading {said}"
    concern = Concern(ENGINES_DISAGREE, f"the two readings of the message disagree ({why})")
    actions = [replace(a, concerns=[*a.concerns, concern]) for a in model.actions]
    reasoning = f"{model.reasoning}; {why}: nothing runs automatically"
    reply = model.reply
    if not model.actions:
        reply = f"{reply} I may have missed something: the message also reads as {said}.".strip()
    return replace(model, actions=actions, reasoning=reasoning, reply=reply, bypass_attempt=bypass)


def _adopt(model: list[ProposedAction], offline: list[ProposedAction]) -> list[ProposedAction]:
    """Where both readings list the same actions in the same order, the offline
    reading's dependencies and concerns join the model's actions."""
    if [a.action_type for a in model] != [a.action_type for a in offline]:
        return model
    out: list[ProposedAction] = []
    for mine, theirs in zip(model, offline, strict=True):
        depends = mine.depends_on if mine.depends_on is not None else theirs.depends_on
        extra = [c for c in theirs.concerns if c.blocks]
        out.append(replace(mine, depends_on=depends, concerns=[*mine.concerns, *extra]))
    return out


class CheckedEngine:
    """A `DecisionEngine` whose proposals are cross-checked by the offline reading."""

    def __init__(self, engine: DecisionEngine, offline: Any) -> None:
        self._engine = engine
        self._offline = offline

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def inner(self) -> DecisionEngine:
        return self._engine

    async def propose(self, request: EngineRequest) -> Proposal:
        model = await self._engine.propose(request)
        return cross_check(model, await self._offline.propose(request))

    async def aclose(self) -> None:
        close = getattr(self._engine, "aclose", None)
        if close is not None:
            await close()
