"""Which action of a message follows which: "cancel it and tell them it is
cancelled", "book the room, then text Maria the confirmation".

An action that tells someone about a change (a message, a call, a notification)
depends on the nearest earlier action that makes a change (a booking, a
cancellation, a resource change) when its words refer back to it ("it", "the
booking", "confirmed", "cancelled", ...) or the message orders them ("then",
"after that", "once done"). The dependent then runs only after that change
succeeded; telling a customer "it is cancelled" while the cancellation still waits
for a coordinator is what this prevents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["link"]

CHANGES = frozenset(
    {"booking.create", "booking.cancel", "resource.create", "resource.update", "resource.delete"}
)
REPORTS = frozenset({"email.send", "sms.send", "whatsapp.send", "phone.call", "notification.send"})

_BACK_REFERENCE = re.compile(
    r"\b(?:it|it's|its|confirm\w*|cancel+ed|cancellation|booked|booking|reservation|"
    r"appointment|done|rebooked|new\s+(?:time|slot|room)|updated|renamed|removed|deleted|"
    r"created|added|details|reference|ref)\b",
    re.IGNORECASE,
)
_SEQUENCE = re.compile(
    r"\b(?:then|after\s+that|afterwards|once\s+(?:done|that|it)|when\s+(?:done|that|it))\b",
    re.IGNORECASE,
)


def link(families: Sequence[str], texts: Sequence[str], joints: Sequence[str]) -> list[int | None]:
    """For each action (its family, its own words, and the words joining it to the
    one before), the index of the action it depends on, or None."""
    out: list[int | None] = []
    last_change: int | None = None
    for i, family in enumerate(families):
        depends: int | None = None
        refers = _BACK_REFERENCE.search(texts[i]) or _SEQUENCE.search(joints[i])
        if family in REPORTS and last_change is not None and refers:
            depends = last_change
        out.append(depends)
        if family in CHANGES:
            last_change = i
    return out
