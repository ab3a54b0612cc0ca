"""The offline decision engine: deterministic rules, no network.

It reads a message the way a careful assistant would:

1. carry a Spanish, German or French instruction over into English, the text to
   send untouched (`languages`);
2. judge whether it tries to talk the agent out of its rules (`bypass`, a
   classifier), and cut known bypass wording out, so "without approval" does not
   read as a request for approval;
3. hide quoted text, so words inside quotes never trigger actions;
4. split the message into one segment per requested action ("email X … and text Y
   …"), keeping a record's listed fields and a dictated text together (`splitting`);
5. classify each segment into an action type from its keywords (`classify`; typos
   forgiven; records of customers, suppliers, orders, products and staff: `records`);
6. extract that action's parameters (one module per family, `_EXTRACTORS`), and
   *ask* for what is missing rather than guess; text meant for a person is taken
   exactly as written (`verbatim`), a quantity one request cannot honour is refused
   (`quantities`; both in `concerns`);
7. link a report on a change to that change (`dependencies`), and answer a
   question the business context answers instead of acting (`answers`).

Confidence reflects how much really matched: a clear keyword with every parameter
scores about 90, a typo or a loose phrasing less, each missing parameter less again
(`scoring`). Anything it is unsure of becomes a concern that keeps an action from
running unattended. It only proposes; the policy decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from agentserver.domain.decision import records
from agentserver.domain.decision.answers import answer
from agentserver.domain.decision.bypass import detect_bypass
from agentserver.domain.decision.dependencies import link
from agentserver.domain.decision.engine import Concern, EngineRequest, Proposal, ProposedAction
from agentserver.domain.decision.languages import detect as detect_language
from agentserver.domain.decision.languages import phrase, pivot
from agentserver.domain.decision.offline.booking import _extract_booking, _extract_cancel
from agentserver.domain.decision.offline.communication import (
    _extract_call,
    _extract_email,
    _extract_message,
)
from agentserver.domain.decision.offline.concerns import (
    BYPASS,
    DOUBT,
    _exact_text,
    _too_many,
    _uncertain_ends,
)
from agentserver.domain.decision.offline.context import (
    _clean,
    _Context,
    _context,
    _Extracted,
    _unquote,
)
from agentserver.domain.decision.offline.human import (
    _extract_approval,
    _extract_escalate,
    _extract_notification,
)
from agentserver.domain.decision.offline.reply import _ambiguity, _reply
from agentserver.domain.decision.offline.reports import _extract_report, _only_a_vague_look
from agentserver.domain.decision.offline.resources import (
    _extract_resource_create,
    _extract_resource_delete,
    _extract_resource_read,
    _extract_resource_update,
)
from agentserver.domain.decision.offline.scoring import _confidence, _overall
from agentserver.domain.decision.offline.splitting import _segments
from agentserver.domain.decision.offline.tokens import _Segment
from agentserver.domain.decision.policy import POSSIBLE_BYPASS
from agentserver.domain.decision.textparse import mask_quotes
from agentserver.domain.registry import default_registry

__all__ = ["OfflineEngine", "detect_bypass"]


# --- the extractors, one per action type -------------------------------------------


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
                note = _ambiguity(seg, ctx)
                if note:
                    ambiguous.append(note)
                continue
            record = (
                records.extract(seg.family, _unquote(seg.text, ctx))
                if seg.family.startswith("resource.")
                else None
            )
            params, missing = record or _EXTRACTORS[seg.family](seg, ctx)
            concerns = _exact_text(self._verbatim, seg.family, params, message, ctx)
            if doubt is not None:
                concerns.append(doubt)
            too_many = _too_many(seg.family, seg.text)
            if too_many is not None:
                concerns.append(too_many)
            confidence = _confidence(seg.strength, missing)
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
        actions = _uncertain_ends(self._verbatim, actions, joints, texts, ctx)
        links = link([a.action_type for a in actions], texts, joints)
        actions = [
            a
            if d is None
            else replace(
                a, depends_on=d, reasoning=f"{a.reasoning}; it follows {actions[d].action_type}"
            )
            for a, d in zip(actions, links, strict=True)
        ]

        overall = _overall(actions, ambiguous)
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
