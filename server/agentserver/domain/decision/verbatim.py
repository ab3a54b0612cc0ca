"""Text meant for a person leaves exactly as the user wrote it.

An engine reads a body out of a message ("text Maria that we open at 10:00 …");
`anchor` finds those words in the message itself and returns the message's own
characters (line breaks, spacing, clock times, URLs, amounts, closing "?" or "!"),
so nothing the engine normalised on the way reaches the recipient. When the words
are not in the message as a run, there is nothing to anchor to: the caller must
not send them unattended.
"""

from __future__ import annotations

import re

__all__ = ["anchor"]

_CLOSING = "!?…"


def anchor(text: str, message: str) -> str | None:
    """The exact run of ``message`` that ``text`` was read from, with the closing
    "?", "!" or "…" that ends it there; None when ``message`` has no such run."""
    words = text.split()
    if not words:
        return None
    found = message.find(text)
    if found >= 0:
        start, end = found, found + len(text)
    else:
        m = re.search(r"\s+".join(re.escape(w) for w in words), message)
        if m is None:
            return None
        start, end = m.span()
    while end < len(message) and message[end] in _CLOSING:
        end += 1
    return message[start:end]
