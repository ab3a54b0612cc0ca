"""The output modes, in the order the engine degrades through them (strict tools,
then JSON mode, then plain JSON; past the last, the fallback engine), and the
failures that move it from one to the next: which 400 refuses the mode rather than
the request, which refuses a sampling parameter, which means the server cannot be
used, and which means the answer cannot.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Final

import openai


class OutputMode(IntEnum):
    """Output modes in degradation order (higher = simpler)."""

    TOOLS = 0
    JSON_OBJECT = 1
    PLAIN_JSON = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class _ModeRejected(Exception):
    """The server refused the output mode (400): try the next mode and remember it."""


class _UnusableOutput(Exception):
    """The model answered, but not with something we can use."""


class _ParamRefused(Exception):
    """The server refused a sampling parameter (400): repeat the call without it."""

    def __init__(self, param: str) -> None:
        super().__init__(param)
        self.param = param


class _TransportFailure(Exception):
    """The server could not be used (timeout, 429/5xx after retries, other HTTP errors)."""


# A 400 mentioning one of these (lower-cased) refuses the output mode, not the request.
_MODE_REJECTION_HINTS: Final = {
    "tools": (
        "response_format",
        "json_schema",
        "json schema",
        "tool",
        "function",
        "strict",
        "structured output",
        "grammar",
    ),
    "json_object": ("response_format", "json_object", "json mode", "grammar"),
}


def _refuses_mode(exc: openai.APIStatusError, mode: OutputMode) -> bool:
    hints = _MODE_REJECTION_HINTS.get(mode.label)
    if not hints:
        return False
    try:
        body = json.dumps(exc.body, default=str)
    except ValueError:
        body = ""
    text = f"{exc.message} {body}".lower()
    return any(hint in text for hint in hints)


_SAMPLING_PARAMS = ("max_completion_tokens", "max_tokens", "temperature")


def _refused_param(exc: openai.APIStatusError) -> str | None:
    """The sampling parameter a 400 refuses, if any: OpenAI names it
    (``"param": "temperature"``); other servers say it in words."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    named = error.get("param") if isinstance(error, dict) else None
    if named in _SAMPLING_PARAMS:
        return str(named)
    text = str(exc.message).lower()
    return next((p for p in _SAMPLING_PARAMS if p in text), None)


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own error message (the client prefixes "Error code: 400 - ")."""
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    return message if isinstance(message, str) else exc.message


_REASON_MAX = 200


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"
