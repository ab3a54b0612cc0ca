"""AdminService messages to the administration's values and back."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from agentserver.domain.admin_model import ChannelInfo, KeyInfo, LocationInfo, Rule, TenantInfo
from agentserver.domain.audit import AuditEvent
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import InvalidArgument
from agentserver.entrypoints.grpc.convert import dict_to_struct, enum_name, ts
from agentserver.v1 import admin_service_pb2 as pb
from agentserver.v1 import common_pb2


def tenant_to_pb(t: TenantInfo) -> pb.Tenant:
    return pb.Tenant(
        id=t.id,
        name=t.name,
        conversation_retention_days=t.conversation_retention_days,
        create_time=ts(t.created_at),
    )


def key_to_pb(k: KeyInfo) -> pb.ApiKey:
    return pb.ApiKey(
        id=k.id,
        tenant_id=k.tenant_id or "",
        user_id=k.user_id or "",
        scopes=list(k.scopes),
        description=k.description,
        create_time=ts(k.created_at),
        expire_time=ts(k.expires_at),
        revoke_time=ts(k.revoked_at),
    )


def location_to_pb(loc: LocationInfo) -> pb.Location:
    return pb.Location(
        id=loc.id,
        name=loc.name,
        allowed_permissions=list(loc.allowed_permissions),
        create_time=ts(loc.created_at),
        update_time=ts(loc.updated_at),
    )


def rule_to_pb(r: Rule) -> pb.PermissionRule:
    return pb.PermissionRule(
        scope=pb.PermissionScope.Value(f"PERMISSION_SCOPE_{r.scope.upper()}"),
        subject_id=r.subject_id,
        effect=pb.PermissionEffect.Value(f"PERMISSION_EFFECT_{r.effect.upper()}"),
        permission=r.permission,
    )


def rule_from_pb(r: pb.PermissionRule) -> Rule:
    scope = enum_name(pb.PermissionScope, r.scope, "PERMISSION_SCOPE_", "rule.scope", "is required")
    effect = enum_name(
        pb.PermissionEffect, r.effect, "PERMISSION_EFFECT_", "rule.effect", "is required"
    )
    return Rule(scope.lower(), r.subject_id, effect.lower(), r.permission)


def _level(value: int, field: str) -> str:
    return enum_name(
        common_pb2.DecisionLevel,
        value,
        "DECISION_LEVEL_",
        field,
        "must be a DECISION_LEVEL_* value",
    ).lower()


_NUMBERS = (
    "automatic_min_confidence",
    "suggestion_min_confidence",
    "consultation_min_confidence",
    "consultation_min_cost",
    "approval_min_cost",
)


def policy_from_pb(p: pb.TenantPolicy) -> dict[str, Any]:
    """The policy as the administration validates it: set fields only."""
    out: dict[str, Any] = {}
    if p.level_overrides:
        overrides: dict[str, str] = {}
        for i, o in enumerate(p.level_overrides):
            if o.action_type in overrides:
                raise InvalidArgument.field(
                    f"policy.level_overrides.{i}.action_type", "is given twice"
                )
            overrides[o.action_type] = _level(o.level, f"policy.level_overrides.{i}.level")
        out["level_overrides"] = overrides
    for fd, value in p.ListFields():  # set fields only (the numbers have presence)
        if fd.name in _NUMBERS:
            out[fd.name] = value
        elif fd.name in ("destructive_min_level", "bypass_level"):
            out[fd.name] = _level(value, f"policy.{fd.name}")
    return out


def policy_to_pb(policy: dict[str, Any]) -> pb.TenantPolicy:
    out = pb.TenantPolicy()
    for action_type, level in sorted(policy.get("level_overrides", {}).items()):
        out.level_overrides.add(action_type=action_type, level=_level_to_pb(level))
    for name in _NUMBERS:
        if name in policy:
            setattr(out, name, int(policy[name]))
    for name in ("destructive_min_level", "bypass_level"):
        if name in policy:
            setattr(out, name, _level_to_pb(policy[name]))
    return out


def _level_to_pb(name: str) -> common_pb2.DecisionLevel.ValueType:
    return common_pb2.DecisionLevel.Value(f"DECISION_LEVEL_{DecisionLevel[name.upper()].name}")


_SECRETS = {"smtp": ("password",), "twilio": ("auth_token",), "elevenlabs": ("api_key",)}
_SECURITY = {
    pb.SMTP_SECURITY_STARTTLS: "starttls",
    pb.SMTP_SECURITY_TLS: "tls",
    pb.SMTP_SECURITY_NONE: "none",
}


def channel_from_pb(
    request: pb.SetChannelSettingsRequest,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(channel, config, secrets) from the request's settings: fields left empty or
    zero are not set (secrets left empty keep the stored ones)."""
    kind = request.WhichOneof("settings")
    if kind is None:
        raise InvalidArgument.field(
            "settings", "is required: smtp, twilio, elevenlabs or coordinators"
        )
    message = getattr(request, kind)
    config: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if kind == "smtp" and fd.name == "security":
            if value not in _SECURITY:
                raise InvalidArgument.field("smtp.security", "is not an SMTP_SECURITY_* value")
            config["security"] = _SECURITY[value]
        elif fd.name in _SECRETS.get(kind, ()):
            secrets[fd.name] = value
        else:
            config[fd.name] = list(value) if fd.is_repeated else value
    return kind, config, secrets


def channel_to_pb(c: ChannelInfo) -> pb.ChannelSettings:
    out = pb.ChannelSettings(
        channel=c.channel, secrets_set=list(c.secrets_set), update_time=ts(c.updated_at)
    )
    target = getattr(out, c.channel)
    target.SetInParent()
    known = {fd.name for fd in target.DESCRIPTOR.fields}
    for name, value in c.config.items():
        if name not in known:
            continue  # kept from before settings were checked; not part of the contract
        try:
            if name == "security":
                target.security = {v: k for k, v in _SECURITY.items()}.get(value, 0)
            elif isinstance(value, list):
                getattr(target, name).extend(str(v) for v in value)
            else:
                setattr(target, name, value)
        except (TypeError, ValueError):
            continue  # a value stored before settings were checked, of another type
    return out


def _struct(value: Any) -> struct_pb2.Struct | None:
    return dict_to_struct(value) if isinstance(value, dict) else None


def event_to_pb(e: AuditEvent) -> pb.AuditEvent:
    d = e.details
    before, after = d.get("before"), d.get("after")
    if "rpc" not in d and d:  # an unauthenticated call: what it claimed, where from
        after = d
    return pb.AuditEvent(
        id=e.id,
        create_time=ts(e.created_at),
        tenant_id=e.tenant_id,
        type=e.type,
        object=e.object,
        key_id=e.key_id,
        user_id=e.user_id,
        outcome=e.outcome,
        request_id=e.request_id,
        before=_struct(before),
        after=_struct(after),
        reason=str(d.get("reason") or ""),
        rpc=str(d.get("rpc") or ""),
    )
