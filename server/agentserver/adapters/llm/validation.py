"""Validating the model's answer: every action's parameters against its schema (a
required one left out or null is reported missing, not an error), confidences read
and clamped, and the Proposal built with what survives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import jsonschema

from agentserver.adapters.llm.modes import OutputMode, _short, _UnusableOutput
from agentserver.adapters.llm.parsing import _RawAction, _RawAnswer, _text
from agentserver.adapters.llm.strict_schema import _strip_nulls
from agentserver.adapters.llm.tools import _Action
from agentserver.domain.decision.engine import Proposal, ProposedAction

# The engine's log: its lines are the engine's, whichever module writes them.
log = logging.getLogger("agentserver.adapters.llm.openai_engine")

Validate = Callable[[str, dict[str, Any]], list[str]]

#: Overall confidence ceiling when at least one proposed action had to be dropped.
DROPPED_ACTION_CONFIDENCE_CAP: Final = 50
#: Confidence used when the model gave none (or an unparseable one).
UNSTATED_CONFIDENCE: Final = 50


def _confidence(value: object, default: int) -> int:
    """A 0..100 integer from whatever the model wrote; `default` when unusable."""
    if isinstance(value, bool):
        return default
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return default
    if not isinstance(value, int | float) or not math.isfinite(value):
        return default
    number = float(value)
    if isinstance(value, float) and 0.0 < number < 1.0:
        number *= 100  # a probability, despite the prompt
    return max(0, min(100, round(number)))


def _error_text(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


class _AnswerChecker:
    """Validates each proposed action against its schema (or the injected validator)
    and builds the Proposal: a bad action is dropped with its reason, the confidence
    capped; an answer with nothing usable left is refused."""

    def __init__(self, name: str, actions: dict[str, _Action], validate: Validate | None) -> None:
        self.name = name  # the engine's, for the log and the proposal
        self._actions = actions
        self._validate = validate

    def assemble(self, answer: _RawAnswer, mode: OutputMode) -> Proposal:
        """Validate every action and build the Proposal (or reject the whole answer)."""
        stated = _confidence(answer.confidence, -1)
        default = stated if stated >= 0 else UNSTATED_CONFIDENCE
        actions: list[ProposedAction] = []
        dropped = list(answer.dropped)
        for raw in answer.actions:
            checked = self.check(raw, default)
            if isinstance(checked, str):
                dropped.append(checked)
            else:
                actions.append(checked)
        if dropped and not actions:
            raise _UnusableOutput(f"no usable action ({'; '.join(dropped)})")

        if stated >= 0:
            confidence = stated
        elif actions:
            confidence = min(a.confidence for a in actions)
        else:
            confidence = UNSTATED_CONFIDENCE
        notes = list(answer.notes)
        if dropped:
            confidence = min(confidence, DROPPED_ACTION_CONFIDENCE_CAP)
            notes.append(f"dropped {len(dropped)} proposed action(s): {'; '.join(dropped)}")
        reasoning = answer.reasoning
        if notes:
            reasoning = " ".join(
                part for part in (reasoning, f"[engine: {'; '.join(notes)}]") if part
            )
        if dropped:
            log.warning("%s: dropped actions: %s", self.name, "; ".join(dropped))
        return Proposal(
            reply=answer.reply,
            actions=actions,
            confidence=confidence,
            reasoning=reasoning,
            engine=self.name if mode is OutputMode.TOOLS else f"{self.name} ({mode.label})",
            bypass_attempt=answer.bypass_attempt,
        )

    def check(self, raw: _RawAction, default_confidence: int) -> ProposedAction | str:
        """A valid ProposedAction, or the reason (one line) why the action is dropped."""
        action = self._actions[raw.action_type]
        params = _strip_nulls(raw.parameters, action.spec.parameters_schema)
        missing = [name for name in action.required if name not in params]
        if isinstance(raw.missing_parameters, list):
            missing.extend(
                name
                for name in raw.missing_parameters
                if isinstance(name, str)
                and name in action.properties
                and name not in params
                and name not in missing
            )
        if missing or self._validate is None:
            errors = [
                _error_text(e)
                for e in action.validator.iter_errors(params)
                # A missing top-level required field is reported, not an error.
                if not (e.validator == "required" and not e.absolute_path)
            ]
        else:
            try:
                errors = list(self._validate(raw.action_type, params))
            except Exception:  # a broken validator must not break propose()
                log.exception("%s: validator failed for %s", self.name, raw.action_type)
                errors = ["validator error"]
        if errors:
            return f"{raw.action_type}: invalid parameters ({_short('; '.join(errors))})"
        return ProposedAction(
            action_type=raw.action_type,
            parameters=params,
            confidence=_confidence(raw.confidence, default_confidence),
            reasoning=_text(raw.reasoning),
            missing_parameters=missing,
        )
