"""Reports (analysis.report): what a report is about and for which period, and when
a question the business's details answer may stand in for a vague one.
"""

from __future__ import annotations

import re

from agentserver.domain.decision.engine import ProposedAction
from agentserver.domain.decision.offline.context import _Context, _Extracted, _unquote
from agentserver.domain.decision.offline.tokens import _Segment

_PERIODS: list[tuple[str, str]] = [
    (r"\btoday\b|\bso\s+far\s+today\b", "today"),
    (r"\byesterday\b", "yesterday"),
    (r"\bthis\s+week\b|\bweek\s+so\s+far\b", "this_week"),
    (r"\blast\s+week\b|\bprevious\s+week\b", "last_week"),
    (r"\bthis\s+month\b|\bmonth\s+to\s+date\b|\bmonth\s+so\s+far\b", "this_month"),
    (r"\blast\s+month\b|\bprevious\s+month\b", "last_month"),
    (r"\b(?:last|past)\s+(?:7|seven)\s+days\b|\bpast\s+week\b", "last_7_days"),
    (r"\b(?:last|past)\s+(?:30|thirty)\s+days\b|\bpast\s+month\b", "last_30_days"),
    (r"\bthis\s+quarter\b|\bquarter\s+to\s+date\b", "this_quarter"),
    (r"\blast\s+quarter\b|\bprevious\s+quarter\b", "last_quarter"),
    (r"\bthis\s+year\b|\byear\s+to\s+date\b|\bytd\b|\bso\s+far\s+this\s+year\b", "this_year"),
]
_TOPICS: list[tuple[str, str]] = [
    (
        r"\b(?:usage|tokens?|credits?|spend(?:ing)?|consumption|costs?|messages\s+sent|"
        r"balance|billing)\b",
        "usage",
    ),
    (r"\b(?:bookings?|reservations?|appointments?|no[\s-]shows?|cancellations?)\b", "bookings"),
    (
        r"\b(?:resources?|rooms?|utili[sz]ation|occupancy|capacity|equipment|facilities)\b",
        "resources",
    ),
]


def _extract_report(seg: _Segment, ctx: _Context) -> _Extracted:
    text = _unquote(seg.text, ctx).lower()
    topic = next((t for rx, t in _TOPICS if re.search(rx, text)), "general")
    period = next((p for rx, p in _PERIODS if re.search(rx, text)), None)
    return {"topic": topic, "period": period}, []


_PRICE_QUESTION_RE = re.compile(r"\bhow\s+much\s+(?:is|are|does|do|will)\b", re.IGNORECASE)


def _only_a_vague_look(actions: list[ProposedAction], message: str) -> bool:
    """No action, or only a report with no period that the question merely reads as
    ("how much is a haircut?"): what a question about the business may replace."""
    return all(
        a.action_type == "analysis.report"
        and not a.parameters.get("period")
        and (a.parameters.get("topic") == "general" or bool(_PRICE_QUESTION_RE.search(message)))
        for a in actions
    )
