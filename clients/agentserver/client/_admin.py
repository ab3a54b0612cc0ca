"""AdminService methods of the client (a part of `AgentServerClient`)."""

# ruff: noqa: ASYNC109 -- `timeout` is the gRPC deadline sent to the server, not a local wait.
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from agentserver.v1 import admin_service_pb2 as pb
from agentserver.v1 import admin_service_pb2_grpc

from ._errors import AgentServerError
from ._options import DEFAULT, Calls, Timeout


class AdminMethods(Calls):
    """One async method per AdminService rpc. Needs a key with the `admin` scope."""

    _admin: admin_service_pb2_grpc.AdminServiceAsyncStub

    async def create_tenant(
        self,
        request: pb.CreateTenantRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.CreateTenantResponse:
        """Creates a tenant and its wallet (platform keys); ALREADY_EXISTS if the id is taken."""
        result: pb.CreateTenantResponse = await self._unary(
            self._admin.CreateTenant, request, timeout, metadata
        )
        return result

    async def get_tenant(
        self,
        request: pb.GetTenantRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.GetTenantResponse:
        """Returns a tenant (default: the caller's)."""
        result: pb.GetTenantResponse = await self._unary(
            self._admin.GetTenant, request, timeout, metadata
        )
        return result

    async def list_tenants(
        self,
        request: pb.ListTenantsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListTenantsResponse:
        """Lists tenants by id (platform keys)."""
        result: pb.ListTenantsResponse = await self._unary(
            self._admin.ListTenants, request, timeout, metadata
        )
        return result

    async def update_tenant(
        self,
        request: pb.UpdateTenantRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.UpdateTenantResponse:
        """Changes a tenant's name or conversation retention."""
        result: pb.UpdateTenantResponse = await self._unary(
            self._admin.UpdateTenant, request, timeout, metadata
        )
        return result

    async def create_api_key(
        self,
        request: pb.CreateApiKeyRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.CreateApiKeyResponse:
        """Creates an API key; the response carries its secret, this once."""
        result: pb.CreateApiKeyResponse = await self._unary(
            self._admin.CreateApiKey, request, timeout, metadata
        )
        return result

    async def list_api_keys(
        self,
        request: pb.ListApiKeysRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListApiKeysResponse:
        """Lists a tenant's (or the platform's) API keys, without secrets."""
        result: pb.ListApiKeysResponse = await self._unary(
            self._admin.ListApiKeys, request, timeout, metadata
        )
        return result

    async def revoke_api_key(
        self,
        request: pb.RevokeApiKeyRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.RevokeApiKeyResponse:
        """Revokes an API key; NOT_FOUND for another tenant's."""
        result: pb.RevokeApiKeyResponse = await self._unary(
            self._admin.RevokeApiKey, request, timeout, metadata
        )
        return result

    async def put_location(
        self,
        request: pb.PutLocationRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.PutLocationResponse:
        """Creates or replaces a location and its allow-list."""
        result: pb.PutLocationResponse = await self._unary(
            self._admin.PutLocation, request, timeout, metadata
        )
        return result

    async def list_locations(
        self,
        request: pb.ListLocationsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListLocationsResponse:
        """Lists a tenant's locations and their allow-lists."""
        result: pb.ListLocationsResponse = await self._unary(
            self._admin.ListLocations, request, timeout, metadata
        )
        return result

    async def delete_location(
        self,
        request: pb.DeleteLocationRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.DeleteLocationResponse:
        """Deletes a location and its allow-list."""
        result: pb.DeleteLocationResponse = await self._unary(
            self._admin.DeleteLocation, request, timeout, metadata
        )
        return result

    async def list_permission_rules(
        self,
        request: pb.ListPermissionRulesRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListPermissionRulesResponse:
        """Lists a tenant's permission rules."""
        result: pb.ListPermissionRulesResponse = await self._unary(
            self._admin.ListPermissionRules, request, timeout, metadata
        )
        return result

    async def add_permission_rule(
        self,
        request: pb.AddPermissionRuleRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.AddPermissionRuleResponse:
        """Adds a permission rule (adding one that exists changes nothing)."""
        result: pb.AddPermissionRuleResponse = await self._unary(
            self._admin.AddPermissionRule, request, timeout, metadata
        )
        return result

    async def remove_permission_rule(
        self,
        request: pb.RemovePermissionRuleRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.RemovePermissionRuleResponse:
        """Removes a permission rule; NOT_FOUND when there is none."""
        result: pb.RemovePermissionRuleResponse = await self._unary(
            self._admin.RemovePermissionRule, request, timeout, metadata
        )
        return result

    async def get_policy(
        self,
        request: pb.GetPolicyRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.GetPolicyResponse:
        """Returns the tenant's decision policy."""
        result: pb.GetPolicyResponse = await self._unary(
            self._admin.GetPolicy, request, timeout, metadata
        )
        return result

    async def set_policy(
        self,
        request: pb.SetPolicyRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.SetPolicyResponse:
        """Replaces the tenant's decision policy; INVALID_ARGUMENT names a bad field."""
        result: pb.SetPolicyResponse = await self._unary(
            self._admin.SetPolicy, request, timeout, metadata
        )
        return result

    async def list_channel_settings(
        self,
        request: pb.ListChannelSettingsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListChannelSettingsResponse:
        """Lists the tenant's channel settings; secrets are never returned."""
        result: pb.ListChannelSettingsResponse = await self._unary(
            self._admin.ListChannelSettings, request, timeout, metadata
        )
        return result

    async def set_channel_settings(
        self,
        request: pb.SetChannelSettingsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.SetChannelSettingsResponse:
        """Stores a channel's settings; INVALID_ARGUMENT names a bad or missing field."""
        result: pb.SetChannelSettingsResponse = await self._unary(
            self._admin.SetChannelSettings, request, timeout, metadata
        )
        return result

    async def delete_channel_settings(
        self,
        request: pb.DeleteChannelSettingsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.DeleteChannelSettingsResponse:
        """Deletes a channel's settings: back to its dry-run twin."""
        result: pb.DeleteChannelSettingsResponse = await self._unary(
            self._admin.DeleteChannelSettings, request, timeout, metadata
        )
        return result

    async def list_audit_events(
        self,
        request: pb.ListAuditEventsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListAuditEventsResponse:
        """Lists an audit trail newest first, filtered."""
        result: pb.ListAuditEventsResponse = await self._unary(
            self._admin.ListAuditEvents, request, timeout, metadata
        )
        return result

    async def erase_user_data(
        self,
        request: pb.EraseUserDataRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.EraseUserDataResponse:
        """Erases what is stored about one user of the tenant (audited)."""
        result: pb.EraseUserDataResponse = await self._unary(
            self._admin.EraseUserData, request, timeout, metadata
        )
        return result

    async def export_user_data(
        self,
        request: pb.ExportUserDataRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[bytes]:
        """The JSON document of everything stored about one user, in pieces: write or
        join them in order. A failure mid-way raises AgentServerError."""
        deadline, md = self._call_options(timeout, metadata)
        call = self._admin.ExportUserData(request, timeout=deadline, metadata=md)
        try:
            async for piece in call:
                yield piece.data
        except grpc.aio.AioRpcError as error:
            raise AgentServerError.from_rpc_error(error) from error
