"""Bookings (booking.create, booking.cancel): which resource, when and for how long,
for whom, with what note; which booking to cancel and why.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from agentserver.domain.decision.offline.context import _clean, _Context, _Extracted, _unquote
from agentserver.domain.decision.offline.names import (
    _PERSON_RE,
    _RESOURCE_REF_RE,
    _person_after,
    _resolve_person,
    _resource_id,
)
from agentserver.domain.decision.offline.tokens import _has, _has_word, _Segment, _tokenise
from agentserver.domain.decision.offline.vocabulary import _PRONOUNS, _RESOURCE_NOUNS
from agentserver.domain.decision.textparse import (
    find_duration_minutes,
    find_end_time,
    find_when,
    singular,
)

_STOP_AFTER_RESOURCE = (
    r"(?=\s+(?:for|on|at|from|tomorrow|today|tonight|next|this|in|between|until|till|by|with|"
    r"to|starting|around|@)\b|\s+\d{4}-|[,.;!?]|$)"
)
_NOT_A_RESOURCE = frozenset(
    {
        "a booking",
        "booking",
        "an appointment",
        "appointment",
        "reservation",
        "a reservation",
        "slot",
        "a slot",
        "time",
        "a time",
        "something",
        "session",
        "a session",
    }
)
_NOT_A_RESOURCE_WORD = _PRONOUNS | {"me", "us", "it", "booking", "appointment", "reservation"}


def _booking_resource(text: str) -> tuple[str | None, str | None]:
    """(resource id, resource name) a booking message names."""
    rid = _resource_id(text)
    if rid is not None:
        return rid, None
    m = re.search(
        r"\b(?:book|reserve|schedule|booking|reservation)\s+(?:(?:the|a|an|our)\s+)?"
        rf"(?P<r>(?!for\b|on\b|at\b|in\b)[A-Za-z][\w'-]*(?:\s+[\w'-]+){{0,3}}?){_STOP_AFTER_RESOURCE}",
        text,
        re.IGNORECASE,
    )
    if m:
        name = m.group("r").strip()
        words = name.split()
        generic = name.lower() in _NOT_A_RESOURCE or words[0].lower() in _NOT_A_RESOURCE_WORD
        # A bare person's name after "book" ("book Maria in") is the customer, not a resource.
        person_like = bool(_PERSON_RE.fullmatch(name)) and not (
            any(singular(w.lower()) in _RESOURCE_NOUNS for w in words) or words[-1].isdigit()
        )
        if not generic and not person_like:
            return None, name
    m = re.search(
        r"\b(?:in|at|for)\s+(?:the\s+)?(?P<r>[A-Z][\w-]*(?:\s+(?:[A-Z][\w-]*|\d+))*)", text
    )
    if m and singular(m.group("r").split()[-1].lower()) in _RESOURCE_NOUNS | {"room"}:
        return None, m.group("r")
    m = _RESOURCE_REF_RE.search(text)
    if m:
        return None, m.group(0)
    nouns = "|".join(sorted(_RESOURCE_NOUNS))
    m = re.search(
        rf"\b(?:in|at)\s+(?:the|a|an)\s+(?P<r>(?:\w+\s+)?(?:{nouns}))\b",
        text,
        re.IGNORECASE,
    )
    if m:
        return None, m.group("r")
    return None, None


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _extract_booking(seg: _Segment, ctx: _Context) -> _Extracted:
    text = _unquote(seg.text, ctx)
    resource_id, resource_name = _booking_resource(seg.text)
    customer = _person_after(text, r"(?:for|customer|client|guest|name\s+of|under)")
    if customer is None:
        m = re.search(r"\b(?P<n>[A-Z][a-z]+)'s\s+(?:booking|appointment|reservation)", text)
        customer = m.group("n") if m else None
    if customer is None and _has(seg.tokens, "CUSTOMER") and ctx.customer.get("name"):
        customer = str(ctx.customer["name"])
    if customer is None and _has_word(seg.tokens, *_PRONOUNS) and ctx.last_person.get("name"):
        customer = str(ctx.last_person["name"])
    if customer and resource_name and customer.lower() in resource_name.lower():
        resource_name = _clean(re.sub(re.escape(customer), "", resource_name, flags=re.I), ctx)
    if customer:
        known = _resolve_person(customer, _tokenise(customer), ctx)[0]
        ctx.last_person = known or {"name": customer}
    when = find_when(text, ctx.now, ctx.tz)
    start = when.at if when and when.has_time else None
    duration = find_duration_minutes(text)
    end: str | None = None
    end_hm = find_end_time(text)
    if start and end_hm:
        end_dt = start.replace(hour=end_hm[0], minute=end_hm[1])
        if end_dt > start:
            end, duration = _iso(end_dt), None
    if start and end is None and duration is None and ctx.default_booking_minutes:
        duration = ctx.default_booking_minutes
    nm = re.search(r"\b(?:notes?|with\s+a\s+note)\s*(?::|saying|that)?\s+(?P<n>.+)$", text, re.I)
    params: dict[str, Any] = {
        "resource_id": resource_id,
        "resource_name": resource_name,
        "start": _iso(start) if start else None,
        "end": end,
        "duration_minutes": duration,
        "customer_name": customer,
        "notes": _clean(nm.group("n"), ctx) if nm else None,
    }
    missing = []
    if not resource_id and not resource_name:
        missing.append("resource_name")
    if not start:
        missing.append("start")
    if not end and not duration:
        missing.append("duration_minutes")
    if not customer:
        missing.append("customer_name")
    return params, missing


_BOOKING_ID_RE = re.compile(
    r"\b(?:booking|reservation|appointment|bk)\s*(?:id|number|no\.?|ref(?:erence)?)?\s*[:#]?\s*"
    r"#?(?P<id>(?=[\w-]*\d)[A-Za-z0-9][\w-]*)"
    r"|#(?P<id2>\w*\d\w*)"
    r"|\b(?P<id3>[A-Z]{2,4}-\d+)\b",
    re.IGNORECASE,
)


def _extract_cancel(seg: _Segment, ctx: _Context) -> _Extracted:
    text = _unquote(seg.text, ctx)
    m = _BOOKING_ID_RE.search(text)
    booking_id = (m.group("id") or m.group("id2") or m.group("id3")) if m else None
    if booking_id and re.fullmatch(r"\d{1,2}(?:am|pm)?", booking_id, re.I):
        booking_id = None  # "appointment 3pm" is a time, not an id
    rm = re.search(
        r"\b(?:because|since|due\s+to|reason(?:\s+is)?:?|as\s+(?=the|she|he|they|we|it))\s+"
        r"(?P<r>.+)$",
        text,
        re.IGNORECASE,
    )
    params = {"booking_id": booking_id, "reason": _clean(rm.group("r"), ctx) if rm else None}
    if booking_id is None:
        who = re.search(r"\b(?P<n>[A-Z][a-z]+)'s\b", text) or (
            re.search(r"\bfor\s+(?P<n>[A-Z][a-z]+)\b", text)
        )
        if who:
            params["reason"] = params["reason"]
    return params, ["booking_id"] if booking_id is None else []
