"""What the audit trail says about a change: who made it, what it changed (type and
object), the state before and after (secrets never included), and why.

A use case that changes something notes a `Change` on its caller
(`Caller.note_change`); the entrypoint that ran the use case (an rpc or a CLI
command) writes one audit event per change when the call ends, with its outcome and
request id. A call that changed nothing is recorded as the call alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agentserver.domain.paging import PageRequest

# What stands where a secret was: that it is set is said, never its value.
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Change:
    """One change, as the audit trail keeps it."""

    tenant_id: str  # whose trail it joins ('' for the platform's: a platform key, ...)
    type: str  # what kind of change: "policy.set", "key.create", "user_data.erase", ...
    object: str  # what it changed: "tenant:acme", "key:3f2a...", "location:front-desk", ...
    before: dict[str, Any] | None = None  # None: did not exist (or is not kept)
    after: dict[str, Any] | None = None  # None: does not exist any more
    reason: str = ""  # why, where the caller said


@dataclass(frozen=True)
class AuditEvent:
    """One event of the trail as it is read back."""

    id: int
    tenant_id: str
    type: str  # a change type, or the rpc's name for calls that changed nothing
    object: str
    key_id: str
    user_id: str
    outcome: str  # the status code name ("OK", "PERMISSION_DENIED", ...)
    request_id: str
    created_at: datetime
    details: dict[str, Any] = field(default_factory=dict)  # before, after, reason, ...


@dataclass(frozen=True)
class AuditFilter:
    key_id: str = ""
    user_id: str = ""
    type: str = ""
    object: str = ""
    since: datetime | None = None
    until: datetime | None = None


class AuditReader(Protocol):
    async def audit_events(
        self, tenant_id: str | None, flt: AuditFilter, page: PageRequest
    ) -> tuple[list[AuditEvent], str]:
        """A tenant's events (None: the trail of unauthenticated calls), newest first."""
        ...


def redacted(values: Mapping[str, Any], secret_names: frozenset[str]) -> dict[str, Any]:
    """`values` with every secret replaced by REDACTED."""
    return {k: (REDACTED if k in secret_names else v) for k, v in values.items()}


def pseudonym() -> str:
    """What stands for an erased user in what is kept of them: random, so nothing
    stored can be matched to the user id again (a hash of a guessable id could be),
    and the same throughout one erasure, so their events still read as one person's."""
    return f"erased-{secrets.token_hex(8)}"
