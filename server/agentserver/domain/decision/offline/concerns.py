"""What keeps an action from running unattended, as concerns the policy reads: a
message that may be trying to get around the rules, a quantity one request cannot
honour, a text for a person that could not be kept exactly as written, or whose end
is not sure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agentserver.domain.decision import quantities
from agentserver.domain.decision.bypass import BypassClassifier
from agentserver.domain.decision.bypass_weights import WEIGHTS as _BYPASS_WEIGHTS
from agentserver.domain.decision.engine import Concern, ProposedAction
from agentserver.domain.decision.offline.classify import _CHANNEL_TYPES
from agentserver.domain.decision.offline.context import _Context
from agentserver.domain.decision.offline.splitting import _instruction
from agentserver.domain.decision.policy import QUANTITY_NOT_SUPPORTED, UNCERTAIN_TEXT
from agentserver.domain.decision.textparse import find_emails, find_phones
from agentserver.domain.decision.verbatim import anchor

BYPASS = BypassClassifier(_BYPASS_WEIGHTS, threshold=0.5)
# From this likelihood on, a message not flagged still runs nothing unattended.
DOUBT = 0.1

# Which parameters reach a person as written, per action type (the registry's).
_Verbatim = Mapping[str, tuple[str, ...]]


def _exact_text(
    verbatim: _Verbatim, family: str, params: dict[str, Any], message: str, ctx: _Context
) -> list[Concern]:
    """Replace each text meant for a person by the message's own characters for
    it; a concern for any that cannot be found there as written."""
    concerns: list[Concern] = []
    for name in verbatim.get(family, ()):
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
    verbatim: _Verbatim,
    actions: list[ProposedAction],
    joints: list[str],
    texts: list[str],
    ctx: _Context,
) -> list[ProposedAction]:
    """A text that runs on into what reads as another request ("Text Maria:
    running late, call me back") may end earlier or later than the split says:
    unless the next request names its own address or a sentence ends between
    them, the text is not sure enough to send unattended."""
    out = list(actions)
    for i, action in enumerate(actions[:-1]):
        names = verbatim.get(action.action_type, ())
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


def _too_many(family: str, text: str) -> Concern | None:
    """A blocking concern when a message or call segment asks for more than one
    request can do ("send 500 SMS", "call everyone on the list")."""
    bulk = quantities.bulk(_instruction(text)) if family in _CHANNEL_TYPES else None
    if bulk is None:
        return None
    return Concern(
        QUANTITY_NOT_SUPPORTED,
        f'"{bulk}" is more than I can do at once: one request sends one '
        "message to one recipient (or places one call); a list of recipients "
        "needs one request each",
        blocks=True,
    )
