"""What the administration works on: its records, the store it needs, and the checks
every setting passes before it is stored (see domain/admin.py for the use cases)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.audit import AuditEvent, AuditFilter
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import FieldViolation, InvalidArgument
from agentserver.domain.identity import (
    MAX_USER_ID,
    PLATFORM_DEFAULT_SCOPES,
    SCOPE_BILLING,
    TENANT_DEFAULT_SCOPES,
    TENANT_SCOPES,
)
from agentserver.domain.paging import PageRequest
from agentserver.domain.permissions import parse
from agentserver.domain.policy_source import policy_settings
from agentserver.domain.registry import Registry

MAX_REASON_CHARS = 2000
MAX_RETENTION_DAYS = 36_500
MAX_ALLOW_LIST = 200
MAX_KEY_TTL = timedelta(days=36_500)
# Ids an operator makes up (tenants, locations): no spaces, nothing a URL or a log
# line would need to quote.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RULE_SCOPES = ("business", "user", "location")
RULE_EFFECTS = ("allow", "deny")


# -- records ------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    conversation_retention_days: int
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str | None
    scopes: tuple[str, ...]
    description: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class LocationInfo:
    id: str
    name: str
    allowed_permissions: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Rule:
    scope: str  # business | user | location
    subject_id: str  # '' for business rules
    effect: str  # allow | deny
    permission: str

    @property
    def object(self) -> str:
        subject = f"{self.subject_id}:" if self.subject_id else ""
        return f"rule:{self.scope}:{subject}{self.effect}:{self.permission}"


@dataclass(frozen=True)
class ChannelInfo:
    channel: str
    config: dict[str, Any]
    secrets_set: tuple[str, ...]
    updated_at: datetime


# -- ports --------------------------------------------------------------------------


class AdminStore(Protocol):
    """What the use cases need stored; every read and write names its tenant."""

    async def create_tenant(
        self, tenant_id: str, name: str, now: datetime, policy: dict[str, Any] | None = None
    ) -> None: ...

    async def get_tenant(self, tenant_id: str) -> TenantInfo: ...

    async def list_tenants(self, page: PageRequest) -> tuple[list[TenantInfo], str]: ...

    async def update_tenant(
        self, tenant_id: str, name: str | None, conversation_retention_days: int | None
    ) -> TenantInfo: ...

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]: ...

    async def set_tenant_policy(self, tenant_id: str, policy: dict[str, Any]) -> None: ...

    async def create_key(
        self,
        tenant_id: str | None,
        scopes: Sequence[str],
        description: str,
        now: datetime,
        *,
        expires_at: datetime | None = None,
        user_id: str | None = None,
    ) -> tuple[str, str]: ...

    async def get_key(self, key_id: str) -> KeyInfo: ...

    async def key_infos(self, tenant_id: str | None) -> list[KeyInfo]: ...

    async def revoke_key(self, key_id: str, now: datetime) -> None: ...

    async def locations(self, tenant_id: str) -> list[LocationInfo]: ...

    async def put_location(
        self, tenant_id: str, location_id: str, name: str, allowed: Sequence[str], now: datetime
    ) -> None: ...

    async def delete_location(self, tenant_id: str, location_id: str) -> bool: ...

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]: ...

    async def set_rule(
        self, tenant_id: str, scope: str, subject_id: str, effect: str, permission: str
    ) -> None: ...

    async def remove_rule(
        self, tenant_id: str, scope: str, subject_id: str, effect: str, permission: str
    ) -> bool: ...

    async def channel(
        self, tenant_id: str, channel: str
    ) -> tuple[dict[str, Any], str | None] | None: ...

    async def channel_rows(
        self, tenant_id: str
    ) -> list[tuple[str, dict[str, Any], str | None, datetime]]: ...

    async def set_channel(
        self,
        tenant_id: str,
        channel: str,
        config: dict[str, Any],
        secret: str | None,
        now: datetime,
    ) -> None: ...

    async def delete_channel(self, tenant_id: str, channel: str) -> bool: ...

    async def audit_events(
        self, tenant_id: str | None, flt: AuditFilter, page: PageRequest, *, unauthenticated: bool
    ) -> tuple[list[AuditEvent], str]: ...


class Sealer(Protocol):
    """Encrypts secrets at rest (Fernet in adapters/secrets.py)."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, token: str) -> str: ...


# -- validation ---------------------------------------------------------------------


def validate_id(field_name: str, value: str) -> str:
    if not _ID.match(value):
        raise InvalidArgument.field(
            field_name, "must be 1 to 64 letters, digits, '-', '_' or '.', starting alike"
        )
    return value


def validate_reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        raise InvalidArgument.field("reason", f"must be at most {MAX_REASON_CHARS} characters")
    return reason


_LEVELS = {level.label: level for level in DecisionLevel}
_INT_KEYS = (
    "automatic_min_confidence",
    "suggestion_min_confidence",
    "consultation_min_confidence",
    "consultation_min_cost",
    "approval_min_cost",
)
_LEVEL_KEYS = ("destructive_min_level", "bypass_level")
POLICY_KEYS = ("level_overrides", *_INT_KEYS, *_LEVEL_KEYS)


def validate_policy(raw: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """A tenant's policy as it is stored (levels by name, numbers as integers), or
    InvalidArgument naming every field that is wrong: an unknown key (which the
    server would silently ignore), an unknown action type or level, a number that is
    not a whole number. Then the server's own reading of a policy checks the values
    (`policy_settings`: ranges, the order of the bands)."""
    problems: list[FieldViolation] = []
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"policy.{key}"
        if key not in POLICY_KEYS:
            problems.append(
                FieldViolation(name, f"is not a policy setting (known: {', '.join(POLICY_KEYS)})")
            )
        elif key == "level_overrides":
            if not isinstance(value, Mapping):
                problems.append(FieldViolation(name, "must map action types to levels"))
                continue
            overrides: dict[str, str] = {}
            for action_type, level in value.items():
                where = f"{name}.{action_type}"
                if action_type not in registry:
                    problems.append(FieldViolation(where, "is not an action type of the registry"))
                elif str(level).lower() not in _LEVELS:
                    problems.append(FieldViolation(where, f"must be one of {', '.join(_LEVELS)}"))
                else:
                    overrides[action_type] = str(level).lower()
            out[key] = overrides
        elif key in _LEVEL_KEYS:
            if str(value).lower() not in _LEVELS:
                problems.append(FieldViolation(name, f"must be one of {', '.join(_LEVELS)}"))
            else:
                out[key] = str(value).lower()
        elif isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            problems.append(FieldViolation(name, "must be a whole number"))
        elif not -(2**53) < value < 2**53:
            problems.append(FieldViolation(name, "is out of range"))
        else:
            out[key] = int(value)
    if problems:
        raise InvalidArgument(problems)
    # The values' own rules (ranges, the order of the bands) are PolicySettings', as
    # the server applies them (InvalidArgument naming `policy` when one is broken).
    policy_settings(out)
    return out


def validate_scopes(scopes: Sequence[str], *, platform: bool) -> tuple[str, ...]:
    if not scopes:
        return PLATFORM_DEFAULT_SCOPES if platform else TENANT_DEFAULT_SCOPES
    known = (*TENANT_SCOPES, SCOPE_BILLING) if platform else TENANT_SCOPES
    problems = [
        FieldViolation(f"scopes.{i}", f"must be one of {', '.join(known)}")
        for i, scope in enumerate(scopes)
        if scope not in known
    ]
    if problems:
        raise InvalidArgument(problems)
    return tuple(dict.fromkeys(scopes))


def validate_rule(rule: Rule) -> Rule:
    problems: list[FieldViolation] = []
    if rule.scope not in RULE_SCOPES:
        problems.append(FieldViolation("rule.scope", f"must be one of {', '.join(RULE_SCOPES)}"))
    if rule.effect not in RULE_EFFECTS:
        problems.append(FieldViolation("rule.effect", "must be allow or deny"))
    subject = "" if rule.scope == "business" else rule.subject_id
    if rule.scope in ("user", "location"):
        limit = MAX_USER_ID if rule.scope == "user" else 64
        if not subject or len(subject) > limit:
            problems.append(
                FieldViolation("rule.subject_id", f"a {rule.scope} rule names its {rule.scope}")
            )
    try:
        parse(rule.permission)
    except InvalidArgument:
        problems.append(
            FieldViolation("rule.permission", "must be resource:verb (lower case, * wildcards)")
        )
    if problems:
        raise InvalidArgument(problems)
    return Rule(rule.scope, subject, rule.effect, rule.permission.strip())
