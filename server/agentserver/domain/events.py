"""Domain events: what changed, for other systems, written in the same transaction as
the change (the outbox; see adapters/db/outbox.py) and delivered later.

Names are `<area>.<what happened>`; each has an aggregate (the thing it is about)
and a JSON payload. A store gives each a per-tenant sequence number in commit
order, so a reader resuming from the last number it saw misses nothing.

    ledger.entry            a balance changed (one per usage entry)    wallet
    ledger.tokens_added     a purchase                                 wallet
    ledger.low_balance      available tokens fell below the threshold  wallet
    ledger.fee_charged      this month's fee (and any arrears)         wallet
    action.created          an action was proposed                     action
    action.waiting          it waits for a person (who: user,          action
                            coordinator or approver)
    action.approved         a person approved it                       action
    action.rejected         a person rejected it (with the reason)     action
    action.succeeded        it ran                                     action
    action.failed           it did not run (with the error)            action
    action.expired          nobody decided in time                     action
    action.cancelled        its prerequisite did not succeed           action
    action.outcome_unknown  nobody knows whether it ran                action
    message.stored          a message joined a conversation            session
    webhook.endpoint_disabled  deliveries to an endpoint stopped       webhook_endpoint
                            (it answered 410, or failed for 5 days)

Readers name what they want by exact type or by area (`action.*`); see
`type_matches`. An event's public id (`event_id`) is derived from its tenant and
sequence number, so every delivery path and every retry carries the same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentserver.domain.errors import FieldViolation

LEDGER_ENTRY = "ledger.entry"
TOKENS_ADDED = "ledger.tokens_added"
LOW_BALANCE = "ledger.low_balance"
FEE_CHARGED = "ledger.fee_charged"
ACTION_CREATED = "action.created"
ACTION_WAITING = "action.waiting"
ACTION_APPROVED = "action.approved"
ACTION_REJECTED = "action.rejected"
ACTION_SUCCEEDED = "action.succeeded"
ACTION_FAILED = "action.failed"
ACTION_EXPIRED = "action.expired"
ACTION_CANCELLED = "action.cancelled"
ACTION_OUTCOME_UNKNOWN = "action.outcome_unknown"
MESSAGE_STORED = "message.stored"
WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"
# Sent to one endpoint by SendTestWebhook; never in the outbox.
WEBHOOK_TEST = "webhook.test"


@dataclass(frozen=True)
class DomainEvent:
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    """An event as the outbox holds it: numbered in its tenant's sequence."""

    row_id: int  # the outbox row (internal; never shown)
    tenant_id: str
    seq: int
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    created_at: datetime

    @property
    def id(self) -> str:
        return event_id(self.tenant_id, self.seq)


def known_types() -> frozenset[str]:
    """Every event type this module names (the constants above)."""
    return frozenset(
        value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, str) and "." in value
    )


MAX_TYPE_FILTERS = 50


def check_type_filters(field: str, patterns: Iterable[str]) -> list[FieldViolation]:
    """Each pattern must be a known type or `<area>.*` of a known area."""
    known = known_types()
    areas = {t.split(".", 1)[0] for t in known}
    bad: list[FieldViolation] = []
    for i, pattern in enumerate(patterns):
        if pattern in known:
            continue
        if pattern.endswith(".*") and pattern[:-2] in areas:
            continue
        bad.append(
            FieldViolation(
                f"{field}[{i}]",
                f"{pattern!r} is not an event type (`ledger.entry`) or area (`action.*`)",
            )
        )
    return bad


def type_matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether `event_type` is named by one of `patterns`; no patterns: every type."""
    any_pattern = False
    for pattern in patterns:
        any_pattern = True
        if pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return not any_pattern


def event_id(tenant_id: str, seq: int) -> str:
    """The public id of the tenant's event number `seq`: stable, opaque (it tells
    nothing about other tenants' volume) and the same on every path."""
    digest = hashlib.sha256(f"{tenant_id}\x00{seq}".encode()).hexdigest()
    return f"evt_{digest[:26]}"
