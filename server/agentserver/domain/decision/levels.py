"""Decision levels: how much human involvement an action needs before it runs."""

from __future__ import annotations

import enum


class DecisionLevel(enum.IntEnum):
    """Ordered so that ``max()`` of several levels is the strictest one."""

    AUTOMATIC = 1  # executes now
    SUGGESTION = 2  # waits for the requesting user
    CONSULTATION = 3  # waits for a coordinator's review
    APPROVAL_REQUIRED = 4  # waits for an explicit approval by an approver (not the requester)

    @property
    def label(self) -> str:
        """The lower-case word used in APIs and messages (``"approval_required"``)."""
        return self.name.lower()


def strictest(*levels: DecisionLevel) -> DecisionLevel:
    """The strictest of the given levels; AUTOMATIC when none are given."""
    return max(levels, default=DecisionLevel.AUTOMATIC)
