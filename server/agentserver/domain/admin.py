"""Administration: tenants, API keys, locations, permission rules, the decision policy
and channel settings, each validated when it is set and audited.

The AdminService rpcs and the `agentserver` CLI call these same use cases, so both
validate and both audit: every change is noted on the caller (`Caller.note_change`)
with what it changed, before and after (secrets redacted), and why.

Who may: a caller holding the `admin` scope. A tenant key manages its own tenant
(`Caller.tenant` refuses another); a platform key (the CLI is one) manages any
tenant, and only it creates or lists tenants and creates platform keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.domain.audit import REDACTED, AuditEvent, AuditFilter, Change
from agentserver.domain.channel_settings import (
    CHANNEL_KINDS,
    SCHEMAS,
    Naming,
    validate_channel,
)
from agentserver.domain.clock import Clock
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.decision.policy import PolicySettings
from agentserver.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agentserver.domain.identity import (
    MAX_USER_ID,
    PLATFORM_DEFAULT_SCOPES,
    SCOPE_ADMIN,
    SCOPE_BILLING,
    TENANT_DEFAULT_SCOPES,
    TENANT_SCOPES,
    Caller,
)
from agentserver.domain.paging import PageRequest
from agentserver.domain.permissions import parse
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


def _nothing(*_args: Any) -> None:
    return None


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
    InvalidArgument naming every field that is wrong: an unknown key, an unknown
    action type or level, a number that is not a whole number. The ranges and the
    order of the bands are PolicySettings' own rules."""
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
    try:
        PolicySettings(
            **{
                **{k: v for k, v in out.items() if k in _INT_KEYS},
                **{k: _LEVELS[v] for k, v in out.items() if k in _LEVEL_KEYS},
                "level_overrides": {
                    k: _LEVELS[v] for k, v in out.get("level_overrides", {}).items()
                },
            }
        )
    except (TypeError, ValueError) as err:
        raise InvalidArgument.field("policy", str(err)) from None
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


# -- the use cases ------------------------------------------------------------------


@dataclass
class Administration:
    store: AdminStore
    registry: Registry
    clock: Clock
    sealer: Sealer | None = None
    # A change made here applies at once on this replica (others within their TTLs).
    forget_keys: Callable[[], None] = _nothing
    forget_channels: Callable[[str], None] = _nothing
    forget_policy: Callable[[str], None] = _nothing
    # Writes the audit events still buffered on this replica (a trail read right after
    # a change shows it).
    flush_audit: Callable[[], Awaitable[None]] | None = None

    async def tenant_of(self, caller: Caller, requested: str = "") -> str:
        """The tenant a call manages: the caller's own, or the one a platform caller
        names; NotFound when it does not exist."""
        caller.require_scope(SCOPE_ADMIN)
        tenant = caller.tenant(requested)
        await self.store.get_tenant(tenant)
        return tenant

    @staticmethod
    def _platform_only(caller: Caller, what: str) -> None:
        caller.require_scope(SCOPE_ADMIN)
        if not caller.is_platform:
            raise PermissionDenied(f"{what} needs a platform API key", reason="PLATFORM_ONLY")

    # -- tenants ------------------------------------------------------------------

    async def create_tenant(
        self, caller: Caller, tenant_id: str, name: str, reason: str = ""
    ) -> TenantInfo:
        self._platform_only(caller, "creating tenants")
        validate_id("tenant_id", tenant_id)
        name = (name or tenant_id).strip()
        if len(name) > 200:
            raise InvalidArgument.field("name", "must be at most 200 characters")
        await self.store.create_tenant(tenant_id, name, self.clock.now())
        tenant = await self.store.get_tenant(tenant_id)
        caller.note_change(
            Change(
                tenant_id,
                "tenant.create",
                f"tenant:{tenant_id}",
                None,
                _tenant_view(tenant),
                reason,
            )
        )
        return tenant

    async def get_tenant(self, caller: Caller, tenant_id: str = "") -> TenantInfo:
        return await self.store.get_tenant(await self.tenant_of(caller, tenant_id))

    async def list_tenants(self, caller: Caller, page: PageRequest) -> tuple[list[TenantInfo], str]:
        self._platform_only(caller, "listing tenants")
        return await self.store.list_tenants(page)

    async def update_tenant(
        self,
        caller: Caller,
        tenant_id: str,
        *,
        name: str | None = None,
        conversation_retention_days: int | None = None,
        reason: str = "",
    ) -> TenantInfo:
        tenant = await self.tenant_of(caller, tenant_id)
        if name is not None and not 0 < len(name.strip()) <= 200:
            raise InvalidArgument.field("name", "must be 1 to 200 characters")
        days = conversation_retention_days
        if days is not None and not 0 <= days <= MAX_RETENTION_DAYS:
            raise InvalidArgument.field(
                "conversation_retention_days", f"must be from 0 (keep) to {MAX_RETENTION_DAYS}"
            )
        before = await self.store.get_tenant(tenant)
        after = await self.store.update_tenant(tenant, name and name.strip(), days)
        if after != before:
            caller.note_change(
                Change(
                    tenant,
                    "tenant.update",
                    f"tenant:{tenant}",
                    _tenant_view(before),
                    _tenant_view(after),
                    validate_reason(reason),
                )
            )
        return after

    # -- API keys -----------------------------------------------------------------

    async def create_key(
        self,
        caller: Caller,
        tenant_id: str = "",
        *,
        platform: bool = False,
        user_id: str = "",
        scopes: Sequence[str] = (),
        description: str = "",
        ttl: timedelta | None = None,
        reason: str = "",
    ) -> tuple[KeyInfo, str]:
        """A new key and its secret (shown once)."""
        if platform:
            self._platform_only(caller, "creating platform keys")
            if user_id:
                raise InvalidArgument.field("user_id", "only a tenant key can be bound to a person")
            owner: str | None = None
        else:
            owner = await self.tenant_of(caller, tenant_id)
        chosen = validate_scopes(scopes, platform=platform)
        if len(description) > 200:
            raise InvalidArgument.field("description", "must be at most 200 characters")
        if ttl is not None and not timedelta(0) < ttl <= MAX_KEY_TTL:
            raise InvalidArgument.field("ttl", "must be positive and at most 100 years")
        now = self.clock.now()
        key_id, secret = await self.store.create_key(
            owner,
            chosen,
            description,
            now,
            expires_at=now + ttl if ttl else None,
            user_id=user_id or None,
        )
        key = await self.store.get_key(key_id)
        caller.note_change(
            Change(
                owner or "",
                "key.create",
                f"key:{key_id}",
                None,
                _key_view(key),
                validate_reason(reason),
            )
        )
        return key, secret

    async def list_keys(
        self, caller: Caller, tenant_id: str = "", *, platform: bool = False
    ) -> list[KeyInfo]:
        if platform:
            self._platform_only(caller, "listing platform keys")
            return await self.store.key_infos(None)
        return await self.store.key_infos(await self.tenant_of(caller, tenant_id))

    async def revoke_key(
        self, caller: Caller, key_id: str, tenant_id: str = "", reason: str = ""
    ) -> KeyInfo:
        caller.require_scope(SCOPE_ADMIN)
        if not key_id:
            raise InvalidArgument.field("key_id", "is required")
        key = await self.store.get_key(key_id)
        if key.tenant_id is None:
            self._platform_only(caller, "revoking platform keys")
        else:
            # A tenant key's own tenant; a platform key the one named, or the key's.
            managed = caller.tenant(tenant_id) if caller.tenant_id or tenant_id else key.tenant_id
            if key.tenant_id != managed:
                raise NotFound(f"API key {key_id!r} not found")
        if key.revoked_at is None:
            await self.store.revoke_key(key_id, self.clock.now())
            self.forget_keys()
        after = await self.store.get_key(key_id)
        if after != key:
            caller.note_change(
                Change(
                    key.tenant_id or "",
                    "key.revoke",
                    f"key:{key_id}",
                    _key_view(key),
                    _key_view(after),
                    validate_reason(reason),
                )
            )
        return after

    # -- locations ----------------------------------------------------------------

    async def put_location(
        self,
        caller: Caller,
        tenant_id: str,
        location_id: str,
        *,
        name: str = "",
        allowed_permissions: Sequence[str] = (),
        reason: str = "",
    ) -> LocationInfo:
        tenant = await self.tenant_of(caller, tenant_id)
        validate_id("location_id", location_id)
        name = (name or location_id).strip()
        if len(name) > 200:
            raise InvalidArgument.field("name", "must be at most 200 characters")
        if len(allowed_permissions) > MAX_ALLOW_LIST:
            raise InvalidArgument.field(
                "allowed_permissions", f"must have at most {MAX_ALLOW_LIST} entries"
            )
        problems = []
        for i, permission in enumerate(allowed_permissions):
            try:
                parse(permission)
            except InvalidArgument:
                problems.append(FieldViolation(f"allowed_permissions.{i}", "must be resource:verb"))
        if problems:
            raise InvalidArgument(problems)
        allowed = sorted({p.strip() for p in allowed_permissions})
        before = _find_location(await self.store.locations(tenant), location_id)
        await self.store.put_location(tenant, location_id, name, allowed, self.clock.now())
        after = _find_location(await self.store.locations(tenant), location_id)
        assert after is not None
        self.forget_policy(tenant)
        caller.note_change(
            Change(
                tenant,
                "location.put",
                f"location:{location_id}",
                _location_view(before) if before else None,
                _location_view(after),
                validate_reason(reason),
            )
        )
        return after

    async def list_locations(self, caller: Caller, tenant_id: str = "") -> list[LocationInfo]:
        return await self.store.locations(await self.tenant_of(caller, tenant_id))

    async def delete_location(
        self, caller: Caller, tenant_id: str, location_id: str, reason: str = ""
    ) -> None:
        tenant = await self.tenant_of(caller, tenant_id)
        before = _find_location(await self.store.locations(tenant), location_id)
        if before is None or not await self.store.delete_location(tenant, location_id):
            raise NotFound(f"location {location_id!r} not found")
        self.forget_policy(tenant)
        caller.note_change(
            Change(
                tenant,
                "location.delete",
                f"location:{location_id}",
                _location_view(before),
                None,
                validate_reason(reason),
            )
        )

    # -- permission rules ---------------------------------------------------------

    async def list_rules(self, caller: Caller, tenant_id: str = "") -> list[Rule]:
        tenant = await self.tenant_of(caller, tenant_id)
        return [Rule(*r) for r in await self.store.rules(tenant)]

    async def add_rule(self, caller: Caller, tenant_id: str, rule: Rule, reason: str = "") -> Rule:
        tenant = await self.tenant_of(caller, tenant_id)
        rule = validate_rule(rule)
        existed = rule in [Rule(*r) for r in await self.store.rules(tenant)]
        if not existed:
            await self.store.set_rule(
                tenant, rule.scope, rule.subject_id, rule.effect, rule.permission
            )
            self.forget_policy(tenant)
            caller.note_change(
                Change(
                    tenant,
                    "permission.add",
                    rule.object,
                    None,
                    asdict(rule),
                    validate_reason(reason),
                )
            )
        return rule

    async def remove_rule(
        self, caller: Caller, tenant_id: str, rule: Rule, reason: str = ""
    ) -> None:
        tenant = await self.tenant_of(caller, tenant_id)
        rule = validate_rule(rule)
        if not await self.store.remove_rule(
            tenant, rule.scope, rule.subject_id, rule.effect, rule.permission
        ):
            raise NotFound("no such permission rule")
        self.forget_policy(tenant)
        caller.note_change(
            Change(
                tenant,
                "permission.remove",
                rule.object,
                asdict(rule),
                None,
                validate_reason(reason),
            )
        )

    # -- the decision policy --------------------------------------------------------

    async def get_policy(self, caller: Caller, tenant_id: str = "") -> dict[str, Any]:
        return await self.store.tenant_policy(await self.tenant_of(caller, tenant_id))

    async def set_policy(
        self, caller: Caller, tenant_id: str, policy: Mapping[str, Any], reason: str = ""
    ) -> dict[str, Any]:
        tenant = await self.tenant_of(caller, tenant_id)
        stored = validate_policy(policy, self.registry)
        before = await self.store.tenant_policy(tenant)
        await self.store.set_tenant_policy(tenant, stored)
        self.forget_policy(tenant)
        caller.note_change(
            Change(
                tenant, "policy.set", f"tenant:{tenant}", before, stored, validate_reason(reason)
            )
        )
        return stored

    # -- channel settings -----------------------------------------------------------

    async def list_channels(self, caller: Caller, tenant_id: str = "") -> list[ChannelInfo]:
        tenant = await self.tenant_of(caller, tenant_id)
        return [
            ChannelInfo(kind, config, self._secret_names(secret), updated_at)
            for kind, config, secret, updated_at in await self.store.channel_rows(tenant)
        ]

    async def set_channel(
        self,
        caller: Caller,
        tenant_id: str,
        kind: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, Any],
        *,
        naming: Naming | None = None,
        reason: str = "",
    ) -> ChannelInfo:
        """Store a channel's settings, validated (secrets merged over those stored:
        one left out keeps its stored value) and with secrets encrypted."""
        tenant = await self.tenant_of(caller, tenant_id)
        if kind not in CHANNEL_KINDS:
            raise InvalidArgument.field("channel", f"must be one of {', '.join(CHANNEL_KINDS)}")
        reason = validate_reason(reason)
        stored = await self.store.channel(tenant, kind)
        kept = self._secrets(stored[1]) if stored else {}
        kept = {k: v for k, v in kept.items() if k in SCHEMAS[kind].secrets}
        given = {k: v for k, v in secrets.items() if v not in ("", None)}
        clean, all_secrets = validate_channel(
            kind, config, {**kept, **given}, naming or Naming.rpc(kind)
        )
        secret = None
        if all_secrets:
            if self.sealer is None:
                raise FailedPrecondition(
                    "set AGENTSERVER_SECRET_KEYS (agentserver secret-key) before storing secrets",
                    reason="NO_SECRET_KEYS",
                )
            secret = self.sealer.encrypt(json.dumps(all_secrets))
        now = self.clock.now()
        await self.store.set_channel(tenant, kind, clean, secret, now)
        self.forget_channels(tenant)
        info = ChannelInfo(kind, clean, tuple(sorted(all_secrets)), now)
        caller.note_change(
            Change(
                tenant,
                "channel.set",
                f"channel:{kind}",
                _channel_view(stored[0], kept) if stored else None,
                _channel_view(clean, all_secrets),
                reason,
            )
        )
        return info

    async def delete_channel(
        self, caller: Caller, tenant_id: str, kind: str, reason: str = ""
    ) -> None:
        tenant = await self.tenant_of(caller, tenant_id)
        stored = await self.store.channel(tenant, kind)
        if stored is None or not await self.store.delete_channel(tenant, kind):
            raise NotFound(f"no {kind!r} settings")
        self.forget_channels(tenant)
        caller.note_change(
            Change(
                tenant,
                "channel.delete",
                f"channel:{kind}",
                _channel_view(stored[0], dict.fromkeys(self._secret_names(stored[1]), "")),
                None,
                validate_reason(reason),
            )
        )

    def _secrets(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        if self.sealer is None:
            raise FailedPrecondition(
                "stored secrets cannot be read without AGENTSERVER_SECRET_KEYS",
                reason="NO_SECRET_KEYS",
            )
        loaded = json.loads(self.sealer.decrypt(token))
        return dict(loaded) if isinstance(loaded, dict) else {}

    def _secret_names(self, token: str | None) -> tuple[str, ...]:
        return tuple(sorted(self._secrets(token))) if token else ()

    # -- the audit trail ------------------------------------------------------------

    async def audit_events(
        self,
        caller: Caller,
        tenant_id: str,
        flt: AuditFilter,
        page: PageRequest,
        *,
        trail: str = "tenant",
    ) -> tuple[list[AuditEvent], str]:
        """A tenant's trail; or (platform keys) the platform's own (`trail`
        "platform": what platform keys did naming no tenant) or that of calls no key
        vouched for ("unauthenticated")."""
        if flt.since and flt.until and flt.since >= flt.until:
            raise InvalidArgument.field("end_time", "must be after start_time")
        if self.flush_audit is not None:
            await self.flush_audit()
        if trail == "tenant":
            tenant = await self.tenant_of(caller, tenant_id)
            return await self.store.audit_events(tenant, flt, page, unauthenticated=False)
        self._platform_only(caller, f"reading the {trail} trail")
        return await self.store.audit_events(None, flt, page, unauthenticated=trail != "platform")


# -- views (what the audit trail keeps of each object) ------------------------------


def _tenant_view(t: TenantInfo) -> dict[str, Any]:
    return {"name": t.name, "conversation_retention_days": t.conversation_retention_days}


def _key_view(k: KeyInfo) -> dict[str, Any]:
    return {
        "tenant_id": k.tenant_id,
        "user_id": k.user_id,
        "scopes": list(k.scopes),
        "description": k.description,
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
    }


def _location_view(loc: LocationInfo) -> dict[str, Any]:
    return {"name": loc.name, "allowed_permissions": list(loc.allowed_permissions)}


def _channel_view(config: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, Any]:
    """The config, and each secret set shown as REDACTED."""
    return {**config, **dict.fromkeys(secrets, REDACTED)}


def _find_location(locations: list[LocationInfo], location_id: str) -> LocationInfo | None:
    return next((loc for loc in locations if loc.id == location_id), None)
