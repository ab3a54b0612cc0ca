"""The offline decision engine: deterministic rules, no network.

It reads a message the way a careful assistant would:

1. carry a Spanish, German or French instruction over into English, the text to
   send untouched (`languages`);
2. judge whether it tries to talk the agent out of its rules (`bypass`, a
   classifier), and cut known bypass wording out, so "without approval" does not
   read as a request for approval;
3. hide quoted text, so words inside quotes never trigger actions;
4. split the message into one segment per requested action ("email X … and text Y
   …"), keeping a record's listed fields and a dictated text together;
5. classify each segment into an action type from its keywords (typos forgiven;
   records of customers, suppliers, orders, products and staff: `records`);
6. extract that action's parameters, and *ask* for what is missing rather than
   guess; text meant for a person is taken exactly as written (`verbatim`), a
   quantity one request cannot honour is refused (`quantities`);
7. link a report on a change to that change (`dependencies`), and answer a
   question the business context answers instead of acting (`answers`).

Confidence reflects how much really matched: a clear keyword with every parameter
scores about 90, a typo or a loose phrasing less, each missing parameter less again.
Anything it is unsure of becomes a concern that keeps an action from running
unattended. It only proposes; the policy decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from agentserver.domain.decision import quantities, records
from agentserver.domain.decision.answers import answer
from agentserver.domain.decision.bypass import BypassClassifier, detect_bypass
from agentserver.domain.decision.bypass_weights import WEIGHTS as _BYPASS_WEIGHTS
from agentserver.domain.decision.dependencies import link
from agentserver.domain.decision.engine import Concern, EngineRequest, Proposal, ProposedAction
from agentserver.domain.decision.languages import detect as detect_language
from agentserver.domain.decision.languages import phrase, pivot
from agentserver.domain.decision.offline.classify import _CHANNEL_TYPES
from agentserver.domain.decision.offline.communication import (
    _content,
    _extract_call,
    _extract_email,
    _extract_message,
)
from agentserver.domain.decision.offline.context import (
    _clean,
    _Context,
    _context,
    _Extracted,
    _quotes_in,
    _unquote,
)
from agentserver.domain.decision.offline.names import (
    _NAMED_RE,
    _PERSON_RE,
    _RESOURCE_REF_RE,
    _person_after,
    _resolve_person,
)
from agentserver.domain.decision.offline.reports import _extract_report, _only_a_vague_look
from agentserver.domain.decision.offline.splitting import _instruction, _segments
from agentserver.domain.decision.offline.tokens import (
    _fold,
    _has,
    _has_word,
    _Segment,
    _Token,
    _tokenise,
)
from agentserver.domain.decision.offline.vocabulary import (
    _CONCEPTS,
    _PRONOUNS,
    _RESOURCE_NOUNS,
    _VERB_CONCEPTS,
)
from agentserver.domain.decision.policy import (
    POSSIBLE_BYPASS,
    QUANTITY_NOT_SUPPORTED,
    UNCERTAIN_TEXT,
)
from agentserver.domain.decision.textparse import (
    find_duration_minutes,
    find_emails,
    find_end_time,
    find_phones,
    find_when,
    mask_quotes,
    singular,
)
from agentserver.domain.decision.verbatim import anchor
from agentserver.domain.registry import default_registry

__all__ = ["OfflineEngine", "detect_bypass"]

# --- attempts to bypass the rules (see bypass.py) ------------------------------------

BYPASS = BypassClassifier(_BYPASS_WEIGHTS, threshold=0.5)
# From this likelihood on, a message not flagged still runs nothing unattended.
DOUBT = 0.1

# --- the extractors, one per action type -------------------------------------------


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
    m = re.search(r"\bresource\s+(?:id\s+)?#?(?P<id>[A-Za-z]*-?\d+)\b", text, re.IGNORECASE)
    if m:
        return m.group("id"), None
    m = re.search(r"\b[A-Z]{1,4}-\d+\b", text)
    if m:
        return m.group(0), None
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


_ATTR_RE = re.compile(
    r"(?P<k>[a-z][a-z ]{0,20}?)\s*(?:=|:|\bof\b|\bis\b|\bto\b)?\s*(?P<v>\$?\d[\d.,]*\s*\w*|QUOTE\d+"
    r"|[A-Za-z][\w-]*)\s*$"
    r"|^(?P<v2>\d[\d.]*)\s+(?P<k2>[a-z][a-z ]{0,20})$",
    re.IGNORECASE,
)


def _attributes(fragment: str | None, ctx: _Context) -> list[dict[str, str]] | None:
    """``capacity 8, price $40 and colour blue`` → key/value pairs (None when none)."""
    if not fragment:
        return None
    out: list[dict[str, str]] = []
    for raw in re.split(r",\s*|\s+and\s+|;\s*", fragment):
        part = re.sub(r"^(?:a|an|the)\s+", "", raw.strip(" ."), flags=re.I)
        m = _ATTR_RE.match(part)
        if not m:
            continue
        if m.group("v2"):
            key, value = m.group("k2"), m.group("v2")
        else:
            key, value = m.group("k"), m.group("v")
        key = re.sub(r"\s+", "_", key.strip().lower())
        value = _clean(value, ctx) or ""
        if key and value:
            out.append({"key": key, "value": value})
    return out or None


def _resource_name(text: str, ctx: _Context) -> tuple[str | None, str | None]:
    """(resource id, resource name) an update/delete/read message names."""
    m = re.search(r"\bresource\s+(?:id\s+)?#?(?P<id>[A-Za-z]*-?\d+)\b", text, re.IGNORECASE)
    if m:
        return m.group("id"), None
    m = re.search(r"\b[A-Z]{1,4}-\d+\b", text)
    if m:
        return m.group(0), None
    quotes = _quotes_in(text, ctx)
    if quotes:
        return None, quotes[0][1]
    m = _RESOURCE_REF_RE.search(text)
    if m:
        return None, m.group(0)
    for m in _NAMED_RE.finditer(text):
        name = m.group(0)
        if _CONCEPTS.get(name.split()[0].lower()) in _VERB_CONCEPTS:
            continue  # "Email John" or "Book Friday" are not names of resources
        return None, re.sub(r"'s$", "", name)
    m = re.search(r"\bthe\s+(?P<n>[A-Z][\w-]*(?:\s+[A-Z0-9][\w-]*)*)", text)
    if m:
        return None, m.group("n")
    return None, None


def _resource_type(tokens: list[_Token]) -> str | None:
    for t in tokens:
        if t.concept == "RESOURCE" and t.word not in ("resource", "resources", "inventory"):
            return "facility" if t.word == "facilities" else singular(t.word)
    return None


def _extract_resource_create(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    name: str | None = None
    rtype: str | None = None
    m = re.search(
        r"\b(?:called|named|name(?:d)?:)\s+(?:(?P<q>QUOTE\d+)|(?P<n>[^,;]+?)(?=\s+(?:with|and|"
        r"that|which|for|at|to|in|into|costing|priced|of\s+type)\b|[,;.!?]|$))",
        text,
        re.IGNORECASE,
    )
    colon = re.search(r"^[^:]*\bnew\b[^:]*:\s*(?P<n>[^,;]+?)\s*(?:[,;.!?]|$)", text, re.IGNORECASE)
    if m:
        name = _clean(m.group("q") or m.group("n"), ctx)
    elif _quotes_in(text, ctx):
        name = _quotes_in(text, ctx)[0][1]
    elif colon:
        name = _clean(colon.group("n"), ctx)  # "New bike: City Bike 7"
    tm = re.search(
        r"\b(?:create|add|register|setup|set\s+up|make|introduce)\s+(?:(?:a|an|the|another|one)\s+)?"
        r"(?:new\s+)?(?P<t>[a-z][a-z ]{1,30}?)\s+(?=called|named|QUOTE|:|with|for)",
        text,
        re.IGNORECASE,
    )
    if tm and tm.group("t").strip().lower() not in ("resource", "new resource"):
        rtype = singular(tm.group("t").strip().split()[-1])
    ty = re.search(r"\b(?:of\s+type|type:?)\s+(?P<t>[a-z]+)", text, re.IGNORECASE)
    if ty:
        rtype = singular(ty.group("t"))
    if rtype is None:
        rtype = _resource_type(seg.tokens)
    if name is None:
        # "add Court 5": a named resource directly after the verb.
        nm = re.search(
            r"\b(?:create|add|register|setup)\s+(?:(?:a|an|the)\s+)?(?:new\s+)?"
            r"(?P<n>[A-Z][\w-]*(?:\s+(?:[A-Z][\w-]*|\d+))*)",
            text,
        )
        if nm:
            name = nm.group("n")
            if rtype is None:
                rtype = (
                    singular(name.split()[0].lower())
                    if name.split()[0].lower() in (_CONCEPTS)
                    else None
                )
    am = re.search(r"\bwith\s+(?P<a>.+)$", text, re.IGNORECASE)
    attrs = _attributes(am.group("a"), ctx) if am else None
    params = {"resource_type": rtype, "name": name, "attributes": attrs}
    return params, [p for p in ("resource_type", "name") if not params[p]]


def _extract_resource_read(seg: _Segment, ctx: _Context) -> _Extracted:
    rid, name = _resource_name(seg.text, ctx)
    rtype = _resource_type(seg.tokens)
    if name and rtype and name.lower() in (rtype, rtype + "s"):
        name = None
    return {"resource_type": rtype, "resource_id": rid, "name": name}, []


def _version(text: str) -> int | None:
    m = re.search(r"\b(?:version|v)\s*#?(?P<v>\d+)\b", text, re.IGNORECASE)
    return int(m.group("v")) if m else None


def _extract_resource_update(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    rid: str | None = None
    name: str | None = None
    attrs: list[dict[str, str]] | None = None
    rename = re.search(
        r"\brename\s+(?:the\s+)?(?P<old>.+?)\s+(?:to|as)\s+(?P<new>.+?)\s*(?:[,.;!?]|$)",
        text,
        re.IGNORECASE,
    )
    set_of = re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust|make|modify)"
        r"\s+(?:the\s+)?(?P<k>[a-z][a-z ]{0,25}?)\s+(?:of|for|on|in)\s+(?:the\s+)?"
        r"(?P<n>.+?)\s+(?:to|=)\s+(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    )
    possessive = re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust|make|modify)"
        r"\s+(?:the\s+)?(?P<n>.+?)(?:'s|’s)\s+(?P<k>[a-z][a-z ]{0,25}?)\s+(?:to|=)\s+"
        r"(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    )
    if rename:
        name = _clean(rename.group("old"), ctx)
        attrs = [{"key": "name", "value": _clean(rename.group("new"), ctx) or ""}]
    elif possessive:
        name = _clean(possessive.group("n"), ctx)
        attrs = [
            {"key": _key(possessive.group("k")), "value": _clean(possessive.group("v"), ctx) or ""}
        ]
    elif set_of:
        name = _clean(set_of.group("n"), ctx)
        attrs = [{"key": _key(set_of.group("k")), "value": _clean(set_of.group("v"), ctx) or ""}]
    elif unnamed := re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust)\s+(?:the\s+)?"
        r"(?P<k>[a-z][a-z ]{0,25}?)\s+to\s+(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    ):
        # "Change the price to 50": what to change is clear, which resource is not.
        rid, name = _resource_name(text[: unnamed.start()], ctx)
        attrs = [{"key": _key(unnamed.group("k")), "value": _clean(unnamed.group("v"), ctx) or ""}]
    else:
        rid, name = _resource_name(text, ctx)
        wm = re.search(
            r"(?:\bwith\b|\bso\s+that\b|:|\bset\b|\bto\s+have\b)\s+(?P<a>.+)$", text, re.I
        )
        attrs = _attributes(wm.group("a"), ctx) if wm else None
    if name:
        prid, pname = _resource_name(name, ctx)
        rid = rid or prid
        name = None if prid and not pname else name
    params = {
        "resource_id": rid,
        "name": name,
        "resource_type": _resource_type(seg.tokens),
        "attributes": attrs,
        "expected_version": _version(text),
    }
    missing = [] if rid or name else ["name"]
    if not attrs:
        missing.append("attributes")
    return params, missing


def _key(k: str) -> str:
    return re.sub(r"\s+", "_", k.strip().lower())


def _extract_resource_delete(seg: _Segment, ctx: _Context) -> _Extracted:
    rid, name = _resource_name(seg.text, ctx)
    params = {
        "resource_id": rid,
        "name": name,
        "resource_type": _resource_type(seg.tokens),
        "expected_version": _version(seg.text),
    }
    return params, [] if rid or name else ["name"]


def _extract_approval(seg: _Segment, ctx: _Context) -> _Extracted:
    text = _unquote(seg.text, ctx)
    m = re.search(
        r"\b(?:a+p+r+o+v\w*|sign[\s-]?off|authori[sz]\w*|green[\s-]?light)\s+"
        r"(?:(?:is\s+)?(?:needed|required)\s+)?(?:from\s+(?:an?\s+|the\s+|my\s+)?\w+\s+)?"
        r"(?:(?:for|to|of|on)\s+)?(?P<s>.+)$",
        text,
        re.IGNORECASE,
    )
    subject = _clean(m.group("s"), ctx) if m else None
    if subject and subject.lower() in ("it", "this", "that"):
        subject = None
    details = _clean(text, ctx)
    return {"subject": subject, "details": details}, [] if subject else ["subject"]


def _extract_escalate(seg: _Segment, ctx: _Context) -> _Extracted:
    text = _unquote(seg.text, ctx)
    m = re.search(r"\b(?:because|since|as|about|regarding|re|due\s+to)\s+(?P<r>.+)$", text, re.I)
    reason = _clean(m.group("r"), ctx) if m else _clean(text, ctx)
    low = text.lower()
    if re.search(
        r"\b(?:urgent(?:ly)?|asap|immediately|emergency|critical|right\s+now|furious)\b", low
    ):
        urgency = "high"
    elif re.search(r"\b(?:no\s+rush|low\s+priority|whenever|not\s+urgent|when\s+you\s+can)\b", low):
        urgency = "low"
    else:
        urgency = "normal"
    return {"reason": reason, "urgency": urgency}, []


def _extract_notification(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    low = _fold(text)
    if re.search(r"\b(?:coordinators?|coordination|managers?|supervisors?)\b", low):
        audience: str | None = "coordinators"
    elif re.search(r"\b(?:team|staff|everyone|everybody|colleagues|employees|crew|all)\b", low):
        audience = "team"
    else:
        audience = None
    message = _content(text, ctx)
    if message is None:
        m = re.search(
            r"\b(?:about|regarding|concerning)\s+(?P<m>.+)$",
            text,
            re.IGNORECASE,
        )
        message = _clean(m.group("m"), ctx) if m else None
    if message is None:
        # "Tell everyone the office closes early", "Let the coordinators know X".
        m = re.search(
            r"\b(?:all\s+|the\s+|our\s+|whole\s+)*(?:team|staff|everyone|everybody|coordinators?|"
            r"colleagues|employees|crew)\b(?:\s+know)?(?:\s+that)?\s+(?P<m>\w.+)$",
            _unquote(text, ctx),
            re.IGNORECASE,
        )
        message = _clean(m.group("m"), ctx) if m else None
    params = {"message": message, "audience": audience}
    return params, [p for p in ("message", "audience") if not params[p]]


_EXTRACTORS: dict[str, Callable[[_Segment, _Context], _Extracted]] = {
    "email.send": _extract_email,
    "sms.send": _extract_message,
    "whatsapp.send": _extract_message,
    "phone.call": _extract_call,
    "booking.create": _extract_booking,
    "booking.cancel": _extract_cancel,
    "resource.create": _extract_resource_create,
    "resource.read": _extract_resource_read,
    "resource.update": _extract_resource_update,
    "resource.delete": _extract_resource_delete,
    "analysis.report": _extract_report,
    "human.approval_request": _extract_approval,
    "human.escalate": _extract_escalate,
    "notification.send": _extract_notification,
}

# --- the reply ----------------------------------------------------------------------

_DOING = {
    "email.send": "send an email",
    "sms.send": "send a text message",
    "whatsapp.send": "send a WhatsApp message",
    "phone.call": "place an AI phone call",
    "booking.create": "create a booking",
    "booking.cancel": "cancel a booking",
    "resource.create": "create a resource",
    "resource.read": "look up resources",
    "resource.update": "update a resource",
    "resource.delete": "delete a resource",
    "analysis.report": "prepare a report",
    "human.approval_request": "ask an approver",
    "human.escalate": "hand this to a human coordinator",
    "notification.send": "notify your team",
}
_QUESTIONS = {
    ("email.send", "to"): "Which email address should I send it to?",
    ("email.send", "subject"): "What is the email about?",
    ("email.send", "body"): "What should the email say?",
    ("sms.send", "to"): "Which phone number should I text?",
    ("sms.send", "body"): "What should the text say?",
    ("whatsapp.send", "to"): "Which phone number should I message on WhatsApp?",
    ("whatsapp.send", "body"): "What should the WhatsApp message say?",
    ("phone.call", "to"): "Which phone number should I call?",
    ("phone.call", "purpose"): "What is the call for?",
    ("booking.create", "resource_name"): "Which resource should I book?",
    ("booking.create", "start"): "When should the booking start (day and time)?",
    ("booking.create", "duration_minutes"): "How long should it be, or when should it end?",
    ("booking.create", "customer_name"): "Who is the booking for?",
    ("booking.cancel", "booking_id"): "Which booking is it (its booking id)?",
    ("resource.create", "resource_type"): "What kind of resource is it (room, table, ...)?",
    ("resource.create", "name"): "What should the new resource be called?",
    ("resource.update", "name"): "Which resource should I change?",
    ("resource.update", "attributes"): "What should I change, and to what?",
    ("resource.delete", "name"): "Which resource should I delete?",
    ("human.approval_request", "subject"): "What needs approval?",
    ("notification.send", "message"): "What should the notification say?",
    ("notification.send", "audience"): "Should it go to the coordinators or the whole team?",
}
_HELP = (
    "I can send emails, texts and WhatsApp messages, place AI phone calls, create and "
    "cancel bookings, manage resources, prepare reports, notify your team, ask for "
    "approval or hand you to a human. What would you like me to do?"
)


def _reply(
    actions: list[ProposedAction], bypass: bool, ambiguous: list[str], lang: str = "en"
) -> str:
    if lang != "en":
        return _reply_in(lang, actions, bypass)
    lines: list[str] = []
    if bypass:
        lines.append(
            "I can't skip approvals, permissions or charges; anything I do follows your "
            "business's rules, so this will wait for an approver."
        )
    if actions:
        doing = [_DOING.get(a.action_type, a.action_type) for a in actions]
        lines.append("I'll " + _join(doing) + ".")
        for a in actions:
            lines.extend(c.message[0].upper() + c.message[1:] + "." for c in a.concerns if c.blocks)
            for p in a.missing_parameters:
                q = _QUESTIONS.get((a.action_type, p), f"What is the {p.replace('_', ' ')}?")
                lines.append(q)
    for note in ambiguous:
        lines.append(note)
    if not actions and not ambiguous:
        lines.append("I'm not sure what you'd like me to do. " + _HELP)
    return " ".join(lines)


def _reply_in(lang: str, actions: list[ProposedAction], bypass: bool) -> str:
    """The reply in Spanish, German or French (actions without a phrase of their own
    keep their type name)."""
    lines: list[str] = []
    if bypass:
        lines.append(phrase("bypass", lang) or "")
    if actions:
        doing = [phrase(a.action_type, lang) or a.action_type for a in actions]
        joined = (
            doing[0]
            if len(doing) == 1
            else ", ".join(doing[:-1]) + (phrase("and", lang) or " and ") + doing[-1]
        )
        lines.append((phrase("will", lang) or "{}").format(joined))
        missing = [p for a in actions for p in a.missing_parameters]
        if missing:
            lines.append((phrase("missing", lang) or "{}").format(", ".join(missing)))
        lines.extend(c.message for a in actions for c in a.concerns if c.blocks)
    else:
        lines.append(phrase("unsure", lang) or "")
    return " ".join(x for x in lines if x)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- the engine ---------------------------------------------------------------------


class OfflineEngine:
    """Rule-based `DecisionEngine`: deterministic, no network, no model."""

    def __init__(self, *, default_country_code: str = "+1") -> None:
        if not re.fullmatch(r"\+[1-9]\d{0,3}", default_country_code):
            raise ValueError(f"bad country calling code {default_country_code!r}")
        self._country_code = default_country_code
        # Which parameters reach a person as written, per action type (the registry's).
        self._verbatim = {
            d.name: d.verbatim_parameters for d in default_registry().all() if d.verbatim_parameters
        }

    @property
    def name(self) -> str:
        """The engine's name, recorded on each proposal."""
        return "offline"

    async def propose(self, request: EngineRequest) -> Proposal:
        """Read ``request.message`` and propose actions (see the module docstring)."""
        return self.read(request)

    def read(self, request: EngineRequest) -> Proposal:
        """The synchronous core of `propose`, for tests and the evaluation."""
        message = request.message or ""
        # Spanish, German and French instructions are read through English; the
        # text to send stays as written (see languages.py).
        lang = detect_language(message)
        text = pivot(message, lang)
        spans = detect_bypass(text)
        likelihood = BYPASS.probability(message)
        bypass = likelihood >= BYPASS.threshold
        # Below the flag, but not clearly harmless: nothing of it runs unattended.
        doubt = (
            None
            if bypass or likelihood < DOUBT
            else Concern(POSSIBLE_BYPASS, "the message may be trying to get around the rules")
        )
        # Cut the bypass wording out so "without approval" does not ask for approval.
        clean = text
        for start, end in reversed(spans):
            clean = clean[:start] + " " + clean[end:]
        masked, quotes = mask_quotes(clean)
        ctx = _context(request, quotes, self._country_code)

        segments = _segments(masked)
        actions: list[ProposedAction] = []
        ambiguous: list[str] = []
        joints: list[str] = []  # the words between an action's segment and the one before
        texts: list[str] = []
        end = 0
        for seg in segments:
            at = masked.find(seg.text, end)
            joint, end = (masked[end:at], at + len(seg.text)) if at >= 0 else ("", end)
            if seg.family is None:
                note = self._ambiguity(seg, ctx)
                if note:
                    ambiguous.append(note)
                continue
            record = (
                records.extract(seg.family, _unquote(seg.text, ctx))
                if seg.family.startswith("resource.")
                else None
            )
            params, missing = record or _EXTRACTORS[seg.family](seg, ctx)
            concerns = self._exact_text(seg.family, params, message, ctx)
            if doubt is not None:
                concerns.append(doubt)
            bulk = quantities.bulk(_instruction(seg.text)) if seg.family in _CHANNEL_TYPES else None
            if bulk is not None:
                concerns.append(
                    Concern(
                        QUANTITY_NOT_SUPPORTED,
                        f'"{bulk}" is more than I can do at once: one request sends one '
                        "message to one recipient (or places one call); a list of recipients "
                        "needs one request each",
                        blocks=True,
                    )
                )
            # Missing parameters lower the confidence, but a clearly worded request
            # stays in the suggestion band: the policy already blocks it and asks the
            # requester for what is missing, which is better than a coordinator.
            confidence = max(20, min(95, seg.strength) - 10 * len(missing))
            if missing and seg.strength >= 85:
                confidence = max(confidence, 60)
            reasoning = f"'{_clean(seg.text, ctx)}' reads as {seg.family}"
            if seg.typo:
                reasoning += " (matched a misspelt keyword)"
            if missing:
                reasoning += "; missing " + ", ".join(missing)
            actions.append(
                ProposedAction(
                    action_type=seg.family,
                    parameters=params,
                    confidence=confidence,
                    reasoning=reasoning,
                    missing_parameters=missing,
                    concerns=concerns,
                )
            )
            joints.append(joint)
            texts.append(_unquote(seg.text, ctx))
        actions = self._uncertain_ends(actions, joints, texts, ctx)
        links = link([a.action_type for a in actions], texts, joints)
        actions = [
            a
            if d is None
            else replace(
                a, depends_on=d, reasoning=f"{a.reasoning}; it follows {actions[d].action_type}"
            )
            for a, d in zip(actions, links, strict=True)
        ]

        if actions:
            overall = min(a.confidence for a in actions)
            if ambiguous:
                overall = max(20, overall - 20)
        else:
            overall = 30 if ambiguous else 10
        reasoning = "; ".join(a.reasoning for a in actions) if actions else "no action recognised"
        reply = _reply(actions, bypass, ambiguous, lang)
        known = (
            None
            if bypass or not _only_a_vague_look(actions, message)
            else answer(message, request.business_context or {})
        )
        if known is not None:
            # A question the business's own details answer: quote them, do nothing.
            field_name, quoted = known
            actions, ambiguous, overall = [], [], 90
            said = phrase("answer", lang) or 'From your business details ({}): "{}"'
            reply = said.format(field_name, quoted)
            reasoning = f"a question answered from business_context.{field_name}"
        if bypass:
            reasoning += "; the message tries to bypass the rules"
        return Proposal(
            reply=reply,
            actions=actions,
            confidence=overall,
            reasoning=reasoning,
            engine=self.name,
            bypass_attempt=bypass,
            language=lang,
        )

    def _exact_text(
        self, family: str, params: dict[str, Any], message: str, ctx: _Context
    ) -> list[Concern]:
        """Replace each text meant for a person by the message's own characters for
        it; a concern for any that cannot be found there as written."""
        concerns: list[Concern] = []
        for name in self._verbatim.get(family, ()):
            value = params.get(name)
            if not isinstance(value, str) or not value.strip():
                continue
            exact = anchor(value, message)
            if exact is None:
                words = name.replace("_", " ")
                concerns.append(
                    Concern(UNCERTAIN_TEXT, f"I could not keep the {words} exactly as written")
                )
            else:
                params[name] = exact
        return concerns

    def _uncertain_ends(
        self, actions: list[ProposedAction], joints: list[str], texts: list[str], ctx: _Context
    ) -> list[ProposedAction]:
        """A text that runs on into what reads as another request ("Text Maria:
        running late, call me back") may end earlier or later than the split says:
        unless the next request names its own address or a sentence ends between
        them, the text is not sure enough to send unattended."""
        out = list(actions)
        for i, action in enumerate(actions[:-1]):
            names = self._verbatim.get(action.action_type, ())
            body = next((action.parameters.get(n) for n in names if action.parameters.get(n)), None)
            if not isinstance(body, str) or body in ctx.quotes:
                continue
            joint, following, after = joints[i + 1], texts[i + 1], actions[i + 1]
            if re.search(r"[.!?;]|\n", joint) or after.action_type not in _CHANNEL_TYPES:
                continue
            if body in after.parameters.values():
                continue  # "email and text them that …": one text for both
            if find_emails(following) or find_phones(following, ctx.country_code):
                continue
            concern = Concern(UNCERTAIN_TEXT, "I am not sure where the text to send ends")
            out[i] = replace(action, concerns=[*action.concerns, concern])
        return out

    def _ambiguity(self, seg: _Segment, ctx: _Context) -> str | None:
        tokens = seg.tokens
        if _has(tokens, "SEND", "TELL", "NOTIFY") and (
            _has(tokens, "CUSTOMER") or _resolve_person(seg.text, tokens, ctx)[1]
        ):
            return "Should I send that by email, text message or WhatsApp?"
        if _has(tokens, "BOOKING", "BOOK") and _has(tokens, "UPDATE"):
            return (
                "I can't move a booking directly; I can cancel it and create a new one. "
                "Which booking, and the new time?"
            )
        return None
