"""How a message names things: resources ("room 3", "Court 2B", "R-12", a capitalised
name) and people (a name, a title, "the customer", a pronoun for whoever came before).
"""

from __future__ import annotations

import re
from typing import Any

from agentserver.domain.decision.offline.context import _Context
from agentserver.domain.decision.offline.tokens import _has, _Token
from agentserver.domain.decision.offline.vocabulary import (
    _CONCEPTS,
    _MONTH_NAMES,
    _PRONOUNS,
    _RESOURCE_NOUNS,
    _WEEKDAY_NAMES,
)
from agentserver.domain.decision.textparse import singular

_NAMED_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?:\s+(?:[A-Z][a-z]*|\d+))+")
# "room 3", "Court 2B", "Room A", "table #4", or an id such as "R-12".
_RESOURCE_REF_RE = re.compile(
    r"\b(?i:" + "|".join(sorted(_RESOURCE_NOUNS)) + r")s?\s+(?:#?[A-Za-z]?\d+[A-Za-z]?\b|[A-Z]\b)"
    r"|\b[A-Z]{1,4}-\d+\b"
)


def _resource_id(text: str) -> str | None:
    """The id a message gives a resource: "resource 12", "resource id #R7", "R-12"."""
    m = re.search(r"\bresource\s+(?:id\s+)?#?(?P<id>[A-Za-z]*-?\d+)\b", text, re.IGNORECASE)
    if m:
        return m.group("id")
    m = re.search(r"\b[A-Z]{1,4}-\d+\b", text)
    return m.group(0) if m else None


def _looks_named(text: str) -> bool:
    return bool(_NAMED_RE.search(text) or _RESOURCE_REF_RE.search(text) or "QUOTE" in text)


def _resource_ref(text: str) -> bool:
    return bool(_RESOURCE_REF_RE.search(text))


# A person's name: capitalised words (accents allowed), optionally after a title.
_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Sr|Sra|Herr|Frau|Mme|Mlle|M)\.?"
_NAME_WORD = rf"(?:[{_UP}]')?[{_UP}][{_LOW}]+(?:-[{_UP}][{_LOW}]+)?"
_PERSON_RE = re.compile(
    rf"\b(?P<n>(?:{_TITLE}\s+)?{_NAME_WORD}(?:\s+(?:{_NAME_WORD}|[{_UP}]\.))*"
    rf"(?:\s+{_NAME_WORD})?)"
)


def _person_after(text: str, lead: str) -> str | None:
    for m in re.finditer(rf"\b{lead}\s+{_PERSON_RE.pattern}", text):
        name = m.group("n")
        first = re.sub(rf"^{_TITLE}\s+", "", name).split()[0].lower()
        if first in _WEEKDAY_NAMES | _MONTH_NAMES or first in _CONCEPTS:
            continue
        if singular(name.split()[-1].lower()) in _RESOURCE_NOUNS:
            continue
        return name
    return None


def _resolve_person(
    text: str, tokens: list[_Token], ctx: _Context
) -> tuple[dict[str, Any] | None, str | None]:
    """(person record, name as written) the segment addresses, from the business context:
    "the customer", a pronoun for whoever came before, or a known contact by name."""
    if _has(tokens, "CUSTOMER") and ctx.customer:
        return dict(ctx.customer), str(ctx.customer.get("name") or "the customer")
    lowered = {t.word for t in tokens}
    for contact in [ctx.customer, *ctx.contacts]:
        name = str(contact.get("name") or "") if contact else ""
        parts = [p.lower() for p in name.split()]
        if parts and (parts[0] in lowered or (len(parts) > 1 and parts[-1] in lowered)):
            return dict(contact), name
    if lowered & _PRONOUNS and ctx.last_person:
        return ctx.last_person, str(ctx.last_person.get("name") or "them")
    m = re.search(
        r"\b(?:to|email|e-mail|mail|text|call|ring|phone|message|whatsapp|contact|tell|remind)"
        rf"\s+(?P<n>(?:{_TITLE}\s+)?{_NAME_WORD}(?:\s+{_NAME_WORD})?)",
        text,
    )
    if m and m.group("n").lower().split()[0] not in _WEEKDAY_NAMES | _MONTH_NAMES:
        return None, m.group("n")
    return None, None
