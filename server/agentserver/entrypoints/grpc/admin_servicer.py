"""AdminService: tenants, keys, locations, rules, policy, channel settings, the audit
trail and personal data, over the administration's use cases (the CLI calls the same)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentserver.domain.admin import Administration
from agentserver.domain.audit import AuditFilter
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.identity import SCOPE_ADMIN, Authenticator, Caller
from agentserver.domain.paging import page_request
from agentserver.domain.personal_data import PersonalData
from agentserver.entrypoints.grpc import admin_convert as conv
from agentserver.entrypoints.grpc.base import ServicerBase, rpc, rpc_stream
from agentserver.entrypoints.grpc.convert import from_duration, from_ts
from agentserver.v1 import admin_service_pb2 as pb
from agentserver.v1 import admin_service_pb2_grpc

# Pieces of an export are sent in messages of about this size.
EXPORT_CHUNK_BYTES = 64 * 1024
_TRAILS = {
    pb.AUDIT_TRAIL_UNSPECIFIED: "tenant",
    pb.AUDIT_TRAIL_PLATFORM: "platform",
    pb.AUDIT_TRAIL_UNAUTHENTICATED: "unauthenticated",
}
_TENANT_FIELDS = ("name", "conversation_retention_days")


class AdminServicer(ServicerBase, admin_service_pb2_grpc.AdminServiceServicer):
    service_name = "agentserver.v1.AdminService"

    def __init__(
        self,
        auth: Authenticator,
        admin: Administration,
        personal: PersonalData,
        *,
        access_log: bool,
    ) -> None:
        super().__init__(auth, access_log=access_log)
        self.admin = admin
        self.personal = personal

    # -- tenants ------------------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def CreateTenant(
        self, request: pb.CreateTenantRequest, caller: Caller
    ) -> pb.CreateTenantResponse:
        tenant = await self.admin.create_tenant(
            caller, request.tenant_id, request.name, request.reason
        )
        return pb.CreateTenantResponse(tenant=conv.tenant_to_pb(tenant))

    @rpc(SCOPE_ADMIN)
    async def GetTenant(self, request: pb.GetTenantRequest, caller: Caller) -> pb.GetTenantResponse:
        tenant = await self.admin.get_tenant(caller, request.tenant_id)
        return pb.GetTenantResponse(tenant=conv.tenant_to_pb(tenant))

    @rpc(SCOPE_ADMIN)
    async def ListTenants(
        self, request: pb.ListTenantsRequest, caller: Caller
    ) -> pb.ListTenantsResponse:
        page = page_request(
            request.page_size, request.page_token, default=50, maximum=500, kind="tenants"
        )
        tenants, token = await self.admin.list_tenants(caller, page)
        return pb.ListTenantsResponse(
            tenants=[conv.tenant_to_pb(t) for t in tenants], next_page_token=token
        )

    @rpc(SCOPE_ADMIN)
    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, caller: Caller
    ) -> pb.UpdateTenantResponse:
        mask = list(request.update_mask)
        for i, path in enumerate(mask):
            if path not in _TENANT_FIELDS:
                raise InvalidArgument.field(
                    f"update_mask.{i}", f"must be one of {', '.join(_TENANT_FIELDS)}"
                )
        if mask:
            name = request.name if "name" in mask else None
            days = (
                request.conversation_retention_days
                if "conversation_retention_days" in mask
                else None
            )
        else:
            name = request.name or None
            days = request.conversation_retention_days or None
        tenant = await self.admin.update_tenant(
            caller,
            request.tenant_id,
            name=name,
            conversation_retention_days=days,
            reason=request.reason,
        )
        return pb.UpdateTenantResponse(tenant=conv.tenant_to_pb(tenant))

    # -- API keys -----------------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, caller: Caller
    ) -> pb.CreateApiKeyResponse:
        key, secret = await self.admin.create_key(
            caller,
            request.tenant_id,
            platform=request.platform,
            user_id=request.user_id,
            scopes=list(request.scopes),
            description=request.description,
            ttl=from_duration(request.ttl, "ttl") if request.HasField("ttl") else None,
            reason=request.reason,
        )
        return pb.CreateApiKeyResponse(key=conv.key_to_pb(key), secret=secret)

    @rpc(SCOPE_ADMIN)
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, caller: Caller
    ) -> pb.ListApiKeysResponse:
        keys = await self.admin.list_keys(caller, request.tenant_id, platform=request.platform)
        return pb.ListApiKeysResponse(keys=[conv.key_to_pb(k) for k in keys])

    @rpc(SCOPE_ADMIN)
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, caller: Caller
    ) -> pb.RevokeApiKeyResponse:
        key = await self.admin.revoke_key(caller, request.key_id, request.tenant_id, request.reason)
        return pb.RevokeApiKeyResponse(key=conv.key_to_pb(key))

    # -- locations ----------------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def PutLocation(
        self, request: pb.PutLocationRequest, caller: Caller
    ) -> pb.PutLocationResponse:
        location = await self.admin.put_location(
            caller,
            request.tenant_id,
            request.location_id,
            name=request.name,
            allowed_permissions=list(request.allowed_permissions),
            reason=request.reason,
        )
        return pb.PutLocationResponse(location=conv.location_to_pb(location))

    @rpc(SCOPE_ADMIN)
    async def ListLocations(
        self, request: pb.ListLocationsRequest, caller: Caller
    ) -> pb.ListLocationsResponse:
        locations = await self.admin.list_locations(caller, request.tenant_id)
        return pb.ListLocationsResponse(locations=[conv.location_to_pb(x) for x in locations])

    @rpc(SCOPE_ADMIN)
    async def DeleteLocation(
        self, request: pb.DeleteLocationRequest, caller: Caller
    ) -> pb.DeleteLocationResponse:
        await self.admin.delete_location(
            caller, request.tenant_id, request.location_id, request.reason
        )
        return pb.DeleteLocationResponse()

    # -- permission rules ---------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def ListPermissionRules(
        self, request: pb.ListPermissionRulesRequest, caller: Caller
    ) -> pb.ListPermissionRulesResponse:
        rules = await self.admin.list_rules(caller, request.tenant_id)
        return pb.ListPermissionRulesResponse(rules=[conv.rule_to_pb(r) for r in rules])

    @rpc(SCOPE_ADMIN)
    async def AddPermissionRule(
        self, request: pb.AddPermissionRuleRequest, caller: Caller
    ) -> pb.AddPermissionRuleResponse:
        rule = await self.admin.add_rule(
            caller, request.tenant_id, conv.rule_from_pb(request.rule), request.reason
        )
        return pb.AddPermissionRuleResponse(rule=conv.rule_to_pb(rule))

    @rpc(SCOPE_ADMIN)
    async def RemovePermissionRule(
        self, request: pb.RemovePermissionRuleRequest, caller: Caller
    ) -> pb.RemovePermissionRuleResponse:
        await self.admin.remove_rule(
            caller, request.tenant_id, conv.rule_from_pb(request.rule), request.reason
        )
        return pb.RemovePermissionRuleResponse()

    # -- the decision policy --------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def GetPolicy(self, request: pb.GetPolicyRequest, caller: Caller) -> pb.GetPolicyResponse:
        policy = await self.admin.get_policy(caller, request.tenant_id)
        return pb.GetPolicyResponse(policy=conv.policy_to_pb(policy))

    @rpc(SCOPE_ADMIN)
    async def SetPolicy(self, request: pb.SetPolicyRequest, caller: Caller) -> pb.SetPolicyResponse:
        stored = await self.admin.set_policy(
            caller, request.tenant_id, conv.policy_from_pb(request.policy), request.reason
        )
        return pb.SetPolicyResponse(policy=conv.policy_to_pb(stored))

    # -- channel settings -----------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def ListChannelSettings(
        self, request: pb.ListChannelSettingsRequest, caller: Caller
    ) -> pb.ListChannelSettingsResponse:
        channels = await self.admin.list_channels(caller, request.tenant_id)
        return pb.ListChannelSettingsResponse(channels=[conv.channel_to_pb(c) for c in channels])

    @rpc(SCOPE_ADMIN)
    async def SetChannelSettings(
        self, request: pb.SetChannelSettingsRequest, caller: Caller
    ) -> pb.SetChannelSettingsResponse:
        kind, config, secrets = conv.channel_from_pb(request)
        stored = await self.admin.set_channel(
            caller, request.tenant_id, kind, config, secrets, reason=request.reason
        )
        return pb.SetChannelSettingsResponse(channel=conv.channel_to_pb(stored))

    @rpc(SCOPE_ADMIN)
    async def DeleteChannelSettings(
        self, request: pb.DeleteChannelSettingsRequest, caller: Caller
    ) -> pb.DeleteChannelSettingsResponse:
        await self.admin.delete_channel(caller, request.tenant_id, request.channel, request.reason)
        return pb.DeleteChannelSettingsResponse()

    # -- the audit trail ------------------------------------------------------------

    @rpc(SCOPE_ADMIN)
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, caller: Caller
    ) -> pb.ListAuditEventsResponse:
        if request.trail not in _TRAILS:
            raise InvalidArgument.field("trail", "is not an AUDIT_TRAIL_* value")
        page = page_request(
            request.page_size, request.page_token, default=50, maximum=500, kind="audit"
        )
        flt = AuditFilter(
            key_id=request.key_id,
            user_id=request.user_id,
            type=request.type,
            object=request.object,
            since=from_ts(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            until=from_ts(request.end_time, "end_time") if request.HasField("end_time") else None,
        )
        events, token = await self.admin.audit_events(
            caller, request.tenant_id, flt, page, trail=_TRAILS[request.trail]
        )
        return pb.ListAuditEventsResponse(
            events=[conv.event_to_pb(e) for e in events], next_page_token=token
        )

    # -- personal data --------------------------------------------------------------

    @rpc_stream(SCOPE_ADMIN)
    async def ExportUserData(
        self, request: pb.ExportUserDataRequest, caller: Caller
    ) -> AsyncIterator[pb.ExportUserDataResponse]:
        pieces = await self.personal.export(
            caller, request.tenant_id, request.user_id, request.reason
        )
        buffer: list[bytes] = []
        size = 0
        async for piece in pieces:
            data = piece.encode()
            buffer.append(data)
            size += len(data)
            if size >= EXPORT_CHUNK_BYTES:
                yield pb.ExportUserDataResponse(data=b"".join(buffer))
                buffer, size = [], 0
        if buffer:
            yield pb.ExportUserDataResponse(data=b"".join(buffer))

    @rpc(SCOPE_ADMIN)
    async def EraseUserData(
        self, request: pb.EraseUserDataRequest, caller: Caller
    ) -> pb.EraseUserDataResponse:
        done = await self.personal.erase(caller, request.tenant_id, request.user_id, request.reason)
        return pb.EraseUserDataResponse(
            pseudonym=done.pseudonym,
            messages_deleted=done.messages_deleted,
            sessions_redacted=done.sessions_redacted,
            actions_redacted=done.actions_redacted,
            actions_withdrawn=done.actions_withdrawn,
            audit_events_redacted=done.audit_events_redacted,
            permission_rules_removed=done.permission_rules_removed,
            api_keys_redacted=done.api_keys_redacted,
            outbox_events_redacted=done.outbox_events_redacted,
            usage_entries_redacted=done.usage_entries_redacted,
        )
