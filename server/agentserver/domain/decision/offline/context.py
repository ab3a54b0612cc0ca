"""What the extractors share: the context a request gives beyond its words (the
time, the time zone, the customer and contacts, the quotes hidden from matching), and
how a fragment of a segment becomes a clean value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentserver.domain.decision.engine import EngineRequest


@dataclass
class _Context:
    """What extraction may draw on beyond the segment's own words."""

    now: datetime
    tz: tzinfo | None
    country_code: str
    quotes: list[str]
    customer: Mapping[str, Any]
    contacts: list[Mapping[str, Any]]
    default_booking_minutes: int | None
    last_person: dict[str, Any] = field(default_factory=dict)


def _unquote(text: str, ctx: _Context) -> str:
    return re.sub(
        r"\s*QUOTE(\d+)\s*",
        lambda m: f' "{ctx.quotes[int(m.group(1))]}" ' if int(m.group(1)) < len(ctx.quotes) else "",
        text,
    ).strip()


def _clean(fragment: str | None, ctx: _Context) -> str | None:
    if fragment is None:
        return None
    s = _unquote(fragment, ctx).strip(" \t\n,;:-")
    s = re.sub(r"\s+", " ", s).rstrip(".!?;,")
    if s.startswith('"') and s.endswith('"') and s.count('"') == 2:
        s = s[1:-1]
    return s or None


def _quotes_in(text: str, ctx: _Context) -> list[tuple[int, str]]:
    out = []
    for m in re.finditer(r"QUOTE(\d+)", text):
        i = int(m.group(1))
        if i < len(ctx.quotes):
            out.append((m.start(), ctx.quotes[i]))
    return out


# What an extractor returns: (parameters, the names of the missing ones).
_Extracted = tuple[dict[str, Any], list[str]]


def _context(request: EngineRequest, quotes: list[str], default_country_code: str) -> _Context:
    """What `request` tells extraction beyond the message's words."""
    bc = request.business_context or {}
    tz: tzinfo | None = None
    if isinstance(bc.get("timezone"), str):
        try:
            tz = ZoneInfo(bc["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
    customer = bc.get("customer") if isinstance(bc.get("customer"), Mapping) else {}
    contacts = [c for c in bc.get("contacts") or [] if isinstance(c, Mapping)]
    cc = bc.get("default_country_code")
    minutes = bc.get("default_booking_minutes")
    return _Context(
        now=request.now,
        tz=tz,
        country_code=cc if isinstance(cc, str) and cc.startswith("+") else default_country_code,
        quotes=quotes,
        customer=customer or {},
        contacts=contacts,
        default_booking_minutes=minutes if isinstance(minutes, int) and minutes > 0 else None,
    )
