"""Quantities one request cannot honour: "send 500 SMS", "call everyone on the
list", "email all our customers". A request sends one message to one recipient (or
places one call); asked for more, the engine refuses with a reason
(`QUANTITY_NOT_SUPPORTED`) rather than quietly doing it once. Only the instruction
is looked at: "text Ann that 2 parcels arrived" asks for one message.
"""

from __future__ import annotations

import re

__all__ = ["bulk", "names_everyone"]

_BULK_RE = re.compile(
    r"\b(?P<n>\d[\d,]*|hundreds|thousands|dozens|several|many)\s+(?:more\s+)?"
    r"(?:sms(?:es)?|texts|text\s+messages|messages|e-?mails|mails|calls|phone\s+calls|"
    r"whats\s*apps|whats\s*app\s+messages|voice\s+calls)\b",
    re.IGNORECASE,
)
_EVERYONE_RE = re.compile(
    r"\b(?:everyone|everybody|all|each|every)\s+(?:of\s+)?(?:our\s+|my\s+|the\s+|these\s+)?"
    r"(?:customers?|clients?|contacts?|guests?|members?|numbers?|subscribers?|patients?|"
    r"leads?|recipients?|people\s+on)\b"
    r"|\b(?:everyone|everybody|all|each\s+one|every\s+one)\s+(?:on|in)\s+(?:the|our|my|this|that)\s+"
    r"(?:list|mailing\s+list|contact\s+list|spreadsheet|database|crm|address\s+book)\b"
    r"|\b(?:the\s+)?(?:whole|entire)\s+(?:list|customer\s+base|contact\s+list|mailing\s+list)\b",
    re.IGNORECASE,
)


def bulk(text: str) -> str | None:
    """What in ``text`` asks for more than one message or call, or None."""
    m = _BULK_RE.search(text)
    if m and (not m.group("n")[0].isdigit() or int(m.group("n").replace(",", "")) > 1):
        return m.group(0)
    m = _EVERYONE_RE.search(text)
    return m.group(0) if m else None


def names_everyone(text: str) -> bool:
    """True when ``text`` addresses a whole list of people ("all our customers")."""
    return bool(_EVERYONE_RE.search(text))
