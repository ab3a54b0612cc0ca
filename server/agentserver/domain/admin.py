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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from agentserver.domain.admin_model import (
    MAX_ALLOW_LIST,
    MAX_KEY_TTL,
    MAX_RETENTION_DAYS,
    AdminStore,
    ChannelInfo,
    KeyInfo,
    LocationInfo,
    Rule,
    Sealer,
    TenantInfo,
    validate_id,
    validate_policy,
    validate_reason,
    validate_rule,
    validate_scopes,
)
from agentserver.domain.audit import REDACTED, AuditEvent, AuditFilter, Change
from agentserver.domain.channel_settings import CHANNEL_KINDS, SCHEMAS, Naming, validate_channel
from agentserver.domain.clock import Clock
from agentserver.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agentserver.domain.identity import SCOPE_ADMIN, Caller
from agentserver.domain.paging import PageRequest
from agentserver.domain.permissions import parse
from agentserver.domain.registry import Registry

__all__ = [
    "AdminStore",
    "Administration",
    "ChannelInfo",
    "KeyInfo",
    "LocationInfo",
    "Rule",
    "Sealer",
    "TenantInfo",
]


def _nothing(*_args: Any) -> None:
    return None


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
