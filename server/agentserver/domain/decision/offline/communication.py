"""Messages and calls (email.send, sms.send, whatsapp.send, phone.call): who they go
to (an address or number in the text, or a person the context knows), what they say
(a quote, or the words after "saying", "that", ":"), an email's subject, a call's
purpose and opening words.
"""

from __future__ import annotations

import re

from agentserver.domain.decision.offline.context import _clean, _Context, _Extracted, _quotes_in
from agentserver.domain.decision.offline.names import _resolve_person
from agentserver.domain.decision.offline.splitting import _starts_with_action
from agentserver.domain.decision.offline.tokens import _Segment, _Token, _tokenise
from agentserver.domain.decision.textparse import find_emails, find_phones

_CONTENT_RE = re.compile(
    r"\b(?:saying|that\s+says|to\s+say|and\s+say|with\s+the\s+(?:message|text)|message:|"
    r"text:|body:|tell(?:ing)?\s+(?:him|her|them)(?:\s+that)?|letting\s+(?:him|her|them)\s+know"
    r"(?:\s+that)?|reminding\s+(?:him|her|them)(?:\s+that)?|that)\s+(?P<c>.+)$"
    r"|:(?=\s|$)\s*(?P<c2>.+)$",
    re.IGNORECASE | re.DOTALL,
)
_TOPIC_RE = re.compile(
    r"\b(?:about|regarding|concerning|re:|re|on\s+the\s+subject\s+of|with\s+subject|"
    r"subject:?)\s+(?P<t>.+?)(?=\s+(?:saying|that\s+says|and\s+say|telling|with\s+the\s+message)"
    r"\b|\s*:(?=\s|$)|$)",
    re.IGNORECASE,
)


def _content(text: str, ctx: _Context) -> str | None:
    """What the message should say: a quote, or the words after "saying", "that", ":"."""
    m = _CONTENT_RE.search(text)
    if m:
        content = m.group("c") or m.group("c2")
        # "…: text +1555 that rates go up": the words after the colon are themselves an
        # instruction; its own content is what to say.
        inner = _CONTENT_RE.search(content)
        if inner and _starts_with_action(_tokenise(content[: inner.start()] or "x")):
            content = inner.group("c") or inner.group("c2")
        return _clean(content, ctx)
    quotes = _quotes_in(text, ctx)
    if quotes:
        return quotes[-1][1]
    return None


def _topic(text: str, ctx: _Context) -> str | None:
    m = _TOPIC_RE.search(text)
    return _clean(m.group("t"), ctx) if m else None


def _email_recipient(
    text: str, tokens: list[_Token], ctx: _Context
) -> tuple[str | None, str | None]:
    emails = find_emails(text)
    if emails:
        ctx.last_person = {"email": emails[0]}
        return emails[0], None
    person, name = _resolve_person(text, tokens, ctx)
    if person and person.get("email"):
        ctx.last_person = person
        return str(person["email"]).lower(), None
    return None, name


def _phone_recipient(
    text: str, tokens: list[_Token], ctx: _Context
) -> tuple[str | None, str | None]:
    phones = find_phones(text, ctx.country_code)
    if phones:
        ctx.last_person = {"phone": phones[0][2]}
        return phones[0][2], None
    person, name = _resolve_person(text, tokens, ctx)
    if person and person.get("phone"):
        number = find_phones(str(person["phone"]), ctx.country_code)
        if number:
            ctx.last_person = person
            return number[0][2], None
    return None, name


def _strip_addresses(text: str, ctx: _Context) -> str:
    """``text`` without the addresses that name recipients: those before the words
    to send. An address inside the text to send ("call me back on +1 555 …") stays."""
    m = _CONTENT_RE.search(text)
    cut = m.start() if m else len(text)
    head, tail = text[:cut], text[cut:]
    for e in find_emails(head):
        head = re.sub(re.escape(e), " ", head, flags=re.IGNORECASE)
    for start, end, _ in sorted(find_phones(head, ctx.country_code), reverse=True):
        head = head[:start] + " " + head[end:]
    return head + tail


def _subject_from(body: str) -> str:
    words = body.split()
    short = " ".join(words[:8])
    short = short[0].upper() + short[1:]
    return short + ("…" if len(words) > 8 else "")


def _names_a_recipient(phrase: str) -> bool:
    """True for "an email", "the customer", "the team": words that are not a topic."""
    concepts = ("EMAIL", "SMS", "WA", "CUSTOMER", "AUDIENCE", "SEND")
    return any(t.concept in concepts for t in _tokenise(phrase))


_OBJECT_ZONE_RE = re.compile(
    r"\b(?:e-?mail|mail|send|forward)\b(?P<z>[^,.;:!?]*?)(?=\s+(?:to|for|saying|that|and|with|"
    r"about|regarding)\b|[,.;:!?]|$)",
    re.IGNORECASE,
)


def _object_phrase(text: str, ctx: _Context) -> str | None:
    """The thing being sent, "email john@x.com the invoice" → "the invoice": the first
    noun phrase after the verb that is not the recipient ("the client")."""
    m = _OBJECT_ZONE_RE.search(text)
    if not m:
        return None
    for raw in re.split(r"(?=\b(?:the|a|an|our|this|his|her|their|my)\s)", m.group("z")):
        chunk = raw.strip()
        if (
            re.match(r"(?:the|a|an|our|this|his|her|their|my)\s+\w", chunk, re.IGNORECASE)
            and "QUOTE" not in chunk
            and not _names_a_recipient(chunk)
        ):
            return _clean(chunk, ctx)
    return None


def _extract_email(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    to, _ = _email_recipient(text, seg.tokens, ctx)
    rest = _strip_addresses(text, ctx)
    subject: str | None = None
    body: str | None = None
    for at, quote in _quotes_in(rest, ctx):
        before = rest[max(0, at - 25) : at].lower()
        if re.search(r"(?:subject|titled|title|heading|headline)(?: line)?:?\s*$", before):
            subject = quote
    if _CONTENT_RE.search(rest):
        body = _content(rest, ctx)
        if subject and body and f'"{subject}"' in body:
            body = _clean(body.replace(f'"{subject}"', ""), ctx)
    else:
        bodies = [q for _, q in _quotes_in(rest, ctx) if q != subject]
        body = bodies[-1] if bodies else None
    topic = _topic(rest, ctx) or _object_phrase(rest, ctx)
    if subject is None:
        subject = topic[0].upper() + topic[1:] if topic else None
    if subject is None and body:
        subject = _subject_from(body)
    cc = [e for e in find_emails(text) if e != to]
    params = {"to": to, "subject": subject, "body": body, "cc": cc or None}
    return params, [p for p in ("to", "subject", "body") if not params[p]]


def _extract_message(seg: _Segment, ctx: _Context) -> _Extracted:
    to, _ = _phone_recipient(seg.text, seg.tokens, ctx)
    rest = _strip_addresses(seg.text, ctx)
    body = _content(rest, ctx)
    params = {"to": to, "body": body}
    return params, [p for p in ("to", "body") if not params[p]]


_PURPOSE_RE = re.compile(
    r"\b(?:to|and)\s+(?P<p>(?!(?:the|a|an|him|her|them|me|us|his|their|my)\b)[a-z]+\b.*)$"
    r"|\b(?:about|regarding|re|concerning|for)\s+(?P<p2>(?!\d)[^,.;!?]+)",
    re.IGNORECASE,
)


def _extract_call(seg: _Segment, ctx: _Context) -> _Extracted:
    to, _ = _phone_recipient(seg.text, seg.tokens, ctx)
    rest = _strip_addresses(seg.text, ctx)
    first_message: str | None = None
    m = re.search(
        r"\b(?:saying|and\s+say|to\s+say|tell(?:ing)?\s+(?:him|her|them)(?:\s+that)?|"
        r"open\s+with|start\s+with)\s+(?P<c>.+)$|QUOTE\d+",
        rest,
        re.IGNORECASE,
    )
    if m:
        first_message = _clean(m.group("c") if m.group("c") else m.group(0), ctx)
        rest = rest[: m.start()]
    purpose: str | None = None
    # Look for the purpose after the call word: "I need you to phone X and confirm …".
    verb = re.search(r"\b(?:call|ring|phone|dial|telephone)\b", rest, re.IGNORECASE)
    pm = _PURPOSE_RE.search(rest, verb.end() if verb else 0)
    if pm:
        purpose = _clean(pm.group("p") or pm.group("p2"), ctx)
    if purpose is None and first_message:
        purpose = f"deliver the message: {first_message}"
    params = {"to": to, "purpose": purpose, "first_message": first_message}
    return params, [p for p in ("to", "purpose") if not params[p]]
