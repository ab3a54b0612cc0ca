"""Reading the model's answer: from its tool calls (our envelope, or the bare
parameters from a server that flattened it; a `respond` call for the reply) or from
the first JSON object in its text, into a `_RawAnswer` still to be validated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from openai.types.chat import ChatCompletionMessage

from agentserver.adapters.llm.modes import _short, _UnusableOutput
from agentserver.adapters.llm.tools import RESPOND_TOOL, _Action

_ENVELOPE_KEYS: Final = frozenset({"parameters", "confidence", "missing_parameters", "reasoning"})


@dataclass
class _RawAction:
    """An action as the model wrote it, before validation."""

    action_type: str
    parameters: dict[str, Any]
    confidence: object = None
    missing_parameters: object = None
    reasoning: object = None


@dataclass
class _RawAnswer:
    """A whole answer as the model wrote it, before validation."""

    reply: str
    confidence: object
    reasoning: str
    bypass_attempt: bool
    actions: list[_RawAction] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _answer(fields: dict[str, Any], actions: list[_RawAction], dropped: list[str]) -> _RawAnswer:
    """The answer whose reply, confidence, reasoning and bypass flag are ``fields``'."""
    return _RawAnswer(
        reply=_text(fields.get("reply")),
        confidence=fields.get("confidence"),
        reasoning=_text(fields.get("reasoning")),
        bypass_attempt=_flag(fields.get("bypass_attempt")),
        actions=actions,
        dropped=dropped,
    )


def _unwrap_envelope(action_type: str, args: dict[str, Any]) -> _RawAction:
    """Our envelope, or (from a server that flattened it) the bare parameters."""
    if isinstance(args.get("parameters"), dict) and args.keys() <= _ENVELOPE_KEYS:
        return _RawAction(
            action_type=action_type,
            parameters=args["parameters"],
            confidence=args.get("confidence"),
            missing_parameters=args.get("missing_parameters"),
            reasoning=args.get("reasoning"),
        )
    return _RawAction(action_type=action_type, parameters=args)


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object embedded in `text` (code fences and chatter around it are fine)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class _AnswerParser:
    """Reads the model's answer, from tool calls or from JSON text, into a `_RawAnswer`:
    what it proposed as written, with the actions that could not even be read dropped
    and the reason for each."""

    def __init__(self, actions: dict[str, _Action], by_tool_name: dict[str, str]) -> None:
        self._actions = actions
        self._by_tool_name = by_tool_name

    def from_tool_calls(self, message: ChatCompletionMessage) -> _RawAnswer:
        calls = message.tool_calls or []
        if not calls:
            # Some servers put the "tool call" in the content; accept our JSON shape.
            if message.content and _first_json_object(message.content) is not None:
                return self.from_text(message.content)
            raise _UnusableOutput("no tool call")
        respond: dict[str, Any] | None = None
        actions: list[_RawAction] = []
        dropped: list[str] = []
        for call in calls:
            if call.type != "function":
                dropped.append(f"{_short(call.type)}: not a function call")
                continue
            name, arguments = call.function.name, call.function.arguments
            if name == RESPOND_TOOL:
                if respond is None:  # a second respond is ignored: the first one wins
                    respond = _loads_object(arguments)
                    if respond is None:
                        raise _UnusableOutput("invalid JSON in respond arguments")
                continue
            action_type = self._by_tool_name.get(name, name if name in self._actions else None)
            if action_type is None:
                dropped.append(f"{_short(name)}: unknown action type")
                continue
            args = _loads_object(arguments)
            if args is None:
                dropped.append(f"{action_type}: arguments are not a JSON object")
                continue
            actions.append(_unwrap_envelope(action_type, args))

        if respond is None:
            # Actions without a reply are still worth proposing; the note says why the
            # reply is thin and the confidence comes from the actions.
            return _RawAnswer(
                reply=message.content or "",
                confidence=None,
                reasoning="",
                bypass_attempt=False,
                actions=actions,
                dropped=dropped,
                notes=["the model did not call respond"],
            )
        return _answer(respond, actions, dropped)

    def from_text(self, content: str | None) -> _RawAnswer:
        obj = _first_json_object(content or "")
        if obj is None:
            raise _UnusableOutput("invalid JSON")
        if "reply" not in obj and "actions" not in obj:
            raise _UnusableOutput("JSON does not match the answer shape")
        raw_actions = obj.get("actions") or []
        if not isinstance(raw_actions, list):
            raise _UnusableOutput("actions is not a list")
        actions: list[_RawAction] = []
        dropped: list[str] = []
        for item in raw_actions:
            if not isinstance(item, dict) or not isinstance(item.get("action_type"), str):
                dropped.append("an action without an action_type")
                continue
            name = item["action_type"]
            action_type = name if name in self._actions else self._by_tool_name.get(name)
            if action_type is None:
                dropped.append(f"{_short(name)}: unknown action type")
                continue
            params = item.get("parameters", item.get("parameters_json", {}))
            if isinstance(params, str):  # tolerate the string-encoded variant
                params = _loads_object(params)
            if params is None:
                params = {}
            if not isinstance(params, dict):
                dropped.append(f"{action_type}: parameters are not a JSON object")
                continue
            actions.append(
                _RawAction(
                    action_type=action_type,
                    parameters=params,
                    confidence=item.get("confidence"),
                    missing_parameters=item.get("missing_parameters"),
                    reasoning=item.get("reasoning"),
                )
            )
        return _answer(obj, actions, dropped)
