"""People in the loop (human.approval_request, human.escalate, notification.send):
what needs approval, why and how urgently to hand over to a coordinator, and what to
tell the team or the coordinators.
"""

from __future__ import annotations

import re

from agentserver.domain.decision.offline.communication import _content
from agentserver.domain.decision.offline.context import _clean, _Context, _Extracted, _unquote
from agentserver.domain.decision.offline.tokens import _fold, _Segment


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
