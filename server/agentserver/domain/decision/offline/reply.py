"""The reply to the user: what the engine will do, what it still needs to know (one
question per missing parameter), what keeps an action waiting, and what to ask when
a request names no action it can take; in Spanish, German or French when the
message was.
"""

from __future__ import annotations

from agentserver.domain.decision.engine import ProposedAction
from agentserver.domain.decision.languages import phrase
from agentserver.domain.decision.offline.context import _Context
from agentserver.domain.decision.offline.names import _resolve_person
from agentserver.domain.decision.offline.tokens import _has, _Segment

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


def _ambiguity(seg: _Segment, ctx: _Context) -> str | None:
    """What to ask about a segment that reads as no action, or None."""
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
