"""Which action a segment asks for: the rules from its concepts to an action type,
each with the base confidence of that reading (a clear keyword about 90, a looser
wording less; a misspelt keyword 12 less, words found only after a "that" 5 less).
Record requests ("show me customer Jane Roe") are asked of `records` first.
"""

from __future__ import annotations

import re

from agentserver.domain.decision import quantities, records
from agentserver.domain.decision.offline.names import _looks_named, _resource_ref
from agentserver.domain.decision.offline.reports import _PERIODS, _TOPICS
from agentserver.domain.decision.offline.tokens import _first, _has_word, _Token
from agentserver.domain.decision.offline.vocabulary import _PRONOUNS
from agentserver.domain.decision.textparse import find_emails, find_phones

_CHANNELS = {"EMAIL": "email.send", "SMS": "sms.send", "WA": "whatsapp.send", "CALL": "phone.call"}
_CHANNEL_TYPES = frozenset(_CHANNELS.values())


def _classify(head: list[_Token], tokens: list[_Token], text: str) -> tuple[str | None, int, bool]:
    """(action type, base confidence, matched through a typo) of one segment."""
    family, strength = _classify_tokens(head, text)
    if family is None and head is not tokens:
        # Nothing in the instruction part; the request may be worded after a "that".
        family, strength = _classify_tokens(tokens, text)
        strength -= 5
    typo = family is not None and any(t.typo for t in tokens if t.concept)
    if typo:
        strength -= 12
    return family, strength, typo


def _classify_tokens(tokens: list[_Token], text: str) -> tuple[str | None, int]:
    present = {t.concept for t in tokens}

    def has(*concepts: str) -> bool:
        return not present.isdisjoint(concepts)

    def pos(*concepts: str) -> int | None:
        return _first(tokens, *concepts)

    emails, phones = find_emails(text), find_phones(text)

    if not has("EMAIL", "SMS", "WA", "CALL", "APPROVAL", "ESCALATE", "NOTIFY", "BOOK"):
        record = records.reading(text)
        if record is not None:
            return record, 86
    if has("APPROVAL") and not has("EMAIL", "SMS", "WA"):
        return "human.approval_request", 88
    if has("ESCALATE") or (has("TALK") and has("HUMAN")):
        return "human.escalate", 90
    if has("HUMAN") and _has_word(tokens, "human") and not has("SEND", "EMAIL", "SMS"):
        # "get me a real person" asks for one; "a human?" may only wonder.
        return "human.escalate", 88 if _has_word(tokens, "get", "need", "want") else 80
    if (
        has("AUDIENCE")
        and not emails
        and not phones
        and not quantities.names_everyone(text)
        and (has("NOTIFY", "TELL", "SEND") or has("EMAIL", "SMS", "WA"))
    ):
        return "notification.send", 88
    if has("CANCELLED") and has("REPORT"):
        return "analysis.report", 85  # "a report on cancellations"
    if has("CANCEL") or (has("DELETE", "CANCELLED") and has("BOOKING")):
        return "booking.cancel", 88
    if has("NOTIFY") and not emails and not phones and not has("EMAIL", "SMS", "WA", "CALL"):
        if has("CUSTOMER") or _has_word(tokens, *_PRONOUNS):
            return None, 0  # "let the customer know": by which channel?
        return "notification.send", 75

    if _has_word(tokens, "howmany") and not has("SEND"):
        return "analysis.report", 85  # "how much did we spend on SMS" asks, it does not send
    channel_at = pos("EMAIL", "SMS", "WA", "CALL")
    verb_at = pos("BOOK", "CREATE", "UPDATE", "DELETE", "REPORT")
    if channel_at is not None:
        concept = tokens[channel_at].concept or ""
        phone_noun = (
            concept == "CALL"
            and tokens[channel_at].word == "phone"
            and (channel_at + 1 < len(tokens) and tokens[channel_at + 1].concept in ("RESOURCE",))
        )
        if not phone_noun and (verb_at is None or channel_at < verb_at):
            return _CHANNELS[concept], 90

    if has("BOOK") or (has("BOOKING") and has("CREATE")):
        if has("REPORT") and not has("BOOK"):
            return "analysis.report", 85
        if has("UPDATE"):
            return None, 0  # rescheduling is not an action of its own: ask
        return "booking.create", 88 if has("BOOK") else 80
    if has("BOOKING") and has("REPORT"):
        return "analysis.report", 88  # "a breakdown of bookings": asked in so many words
    if has("BOOKING") and has("READ"):
        return "analysis.report", 82
    if has("DELETE"):
        return "resource.delete", 85
    if has("UPDATE") and _ATTRIBUTE_CHANGE_RE.search(text):
        return "resource.update", 75
    if has("UPDATE") and (has("RESOURCE") or _looks_named(text) or _has_word(tokens, "rename")):
        return "resource.update", 85
    if has("CREATE") and (
        has("RESOURCE") or re.search(r"\b(?:called|named)\b", text, re.I) or has("QUOTE")
    ):
        return "resource.create", 88
    if has("REPORT"):
        # A report on something or for a period is clear; "give me the stats" is not.
        named = any(re.search(rx, text, re.I) for rx, _ in (*_TOPICS, *_PERIODS))
        return "analysis.report", 88 if named else 80
    if has("READ") and (has("RESOURCE") or _resource_ref(text)):
        return "resource.read", 86

    if has("SEND", "TELL", "NOTIFY"):
        if emails:
            # "send a message to ann@x.com": the address says which channel.
            return "email.send", 86 if has("SEND") else 80
        if phones:
            return "sms.send", 75
    if channel_at is not None:
        return _CHANNELS[tokens[channel_at].concept or ""], 70
    return None, 0


_ATTRIBUTE_CHANGE_RE = re.compile(
    r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|adjust|bump)\s+(?:the\s+)?"
    r"[a-z][a-z ]{0,25}?\s+to\s+\S",
    re.IGNORECASE,
)
