"""WebhookService: the tenant's webhook endpoints and their deliveries."""

from __future__ import annotations

from agentserver.domain.errors import InvalidArgument
from agentserver.domain.identity import SCOPE_WEBHOOKS, Authenticator, Caller
from agentserver.domain.paging import page_request
from agentserver.domain.webhooks import (
    Delivery,
    DeliveryState,
    Endpoint,
    EndpointChanges,
    WebhookEndpoints,
)
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc
from agentserver.entrypoints.grpc.event_servicer import service_only
from agentserver.v1 import webhook_service_pb2 as pb
from agentserver.v1 import webhook_service_pb2_grpc

UPDATABLE = ("url", "description", "event_types")


def endpoint_to_pb(e: Endpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        id=e.id,
        url=e.url,
        description=e.description,
        event_types=list(e.event_types),
        state=(
            pb.WEBHOOK_ENDPOINT_STATE_ENABLED if e.enabled else pb.WEBHOOK_ENDPOINT_STATE_DISABLED
        ),
        disabled_reason=e.disabled_reason,
        failing_since_time=convert.ts(e.failing_since),
        secret_rotate_time=convert.ts(e.secret_rotated_at),
        create_time=convert.ts(e.created_at),
        update_time=convert.ts(e.updated_at),
    )


_STATES = {
    DeliveryState.PENDING: pb.WEBHOOK_DELIVERY_STATE_PENDING,
    DeliveryState.SUCCEEDED: pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED,
    DeliveryState.FAILED: pb.WEBHOOK_DELIVERY_STATE_FAILED,
}
_FROM_PB = {v: k for k, v in _STATES.items()}


def delivery_to_pb(d: Delivery) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=d.event_type,
        event_seq=d.event_seq,
        state=_STATES[d.state],
        attempts=d.attempts,
        last_status_code=d.last_status,
        last_error=d.last_error,
        last_attempt_time=convert.ts(d.last_attempt_at),
        next_attempt_time=convert.ts(
            d.next_attempt_at if d.state is DeliveryState.PENDING else None
        ),
        create_time=convert.ts(d.created_at),
    )


def delivery_states(values: list[int]) -> frozenset[DeliveryState]:
    out = set()
    for i, value in enumerate(values):
        if value not in _FROM_PB:
            raise InvalidArgument.field(f"states[{i}]", "is not a delivery state")
        out.add(_FROM_PB[value])  # type: ignore[index]
    return frozenset(out)


class WebhookServicer(ServicerBase, webhook_service_pb2_grpc.WebhookServiceServicer):
    service_name = "agentserver.v1.WebhookService"

    def __init__(
        self, auth: Authenticator, endpoints: WebhookEndpoints, *, access_log: bool
    ) -> None:
        super().__init__(auth, access_log=access_log)
        self.endpoints = endpoints

    def _tenant(self, caller: Caller) -> str:
        service_only(caller, "managing webhooks")
        return caller.tenant()

    @rpc(SCOPE_WEBHOOKS)
    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, caller: Caller
    ) -> pb.CreateWebhookEndpointResponse:
        endpoint, secret = await self.endpoints.create(
            self._tenant(caller), request.url, request.description, list(request.event_types)
        )
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint_to_pb(endpoint), secret=secret)

    @rpc(SCOPE_WEBHOOKS)
    async def GetWebhookEndpoint(
        self, request: pb.GetWebhookEndpointRequest, caller: Caller
    ) -> pb.GetWebhookEndpointResponse:
        endpoint = await self.endpoints.get(self._tenant(caller), request.endpoint_id)
        return pb.GetWebhookEndpointResponse(endpoint=endpoint_to_pb(endpoint))

    @rpc(SCOPE_WEBHOOKS)
    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, caller: Caller
    ) -> pb.ListWebhookEndpointsResponse:
        page = page_request(
            request.page_size, request.page_token, default=50, maximum=200, kind="webhook_endpoints"
        )
        found, token = await self.endpoints.listing(self._tenant(caller), page)
        return pb.ListWebhookEndpointsResponse(
            endpoints=[endpoint_to_pb(e) for e in found], next_page_token=token
        )

    @rpc(SCOPE_WEBHOOKS)
    async def UpdateWebhookEndpoint(
        self, request: pb.UpdateWebhookEndpointRequest, caller: Caller
    ) -> pb.UpdateWebhookEndpointResponse:
        paths = list(request.update_mask.paths) or list(UPDATABLE)
        for i, path in enumerate(paths):
            if path not in UPDATABLE:
                raise InvalidArgument.field(
                    f"update_mask.paths[{i}]", f"must be one of {', '.join(UPDATABLE)}"
                )
        changes = EndpointChanges(
            url=request.url if "url" in paths else None,
            description=request.description if "description" in paths else None,
            event_types=tuple(request.event_types) if "event_types" in paths else None,
        )
        endpoint = await self.endpoints.update(self._tenant(caller), request.endpoint_id, changes)
        return pb.UpdateWebhookEndpointResponse(endpoint=endpoint_to_pb(endpoint))

    @rpc(SCOPE_WEBHOOKS)
    async def DisableWebhookEndpoint(
        self, request: pb.DisableWebhookEndpointRequest, caller: Caller
    ) -> pb.DisableWebhookEndpointResponse:
        endpoint = await self.endpoints.set_enabled(
            self._tenant(caller), request.endpoint_id, False
        )
        return pb.DisableWebhookEndpointResponse(endpoint=endpoint_to_pb(endpoint))

    @rpc(SCOPE_WEBHOOKS)
    async def EnableWebhookEndpoint(
        self, request: pb.EnableWebhookEndpointRequest, caller: Caller
    ) -> pb.EnableWebhookEndpointResponse:
        endpoint = await self.endpoints.set_enabled(self._tenant(caller), request.endpoint_id, True)
        return pb.EnableWebhookEndpointResponse(endpoint=endpoint_to_pb(endpoint))

    @rpc(SCOPE_WEBHOOKS)
    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, caller: Caller
    ) -> pb.DeleteWebhookEndpointResponse:
        await self.endpoints.delete(self._tenant(caller), request.endpoint_id)
        return pb.DeleteWebhookEndpointResponse()

    @rpc(SCOPE_WEBHOOKS)
    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, caller: Caller
    ) -> pb.RotateWebhookSecretResponse:
        endpoint, secret = await self.endpoints.rotate_secret(
            self._tenant(caller), request.endpoint_id
        )
        return pb.RotateWebhookSecretResponse(endpoint=endpoint_to_pb(endpoint), secret=secret)

    @rpc(SCOPE_WEBHOOKS)
    async def SendTestWebhook(
        self, request: pb.SendTestWebhookRequest, caller: Caller
    ) -> pb.SendTestWebhookResponse:
        delivery = await self.endpoints.send_test(self._tenant(caller), request.endpoint_id)
        return pb.SendTestWebhookResponse(delivery=delivery_to_pb(delivery))

    @rpc(SCOPE_WEBHOOKS)
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, caller: Caller
    ) -> pb.ListWebhookDeliveriesResponse:
        page = page_request(
            request.page_size,
            request.page_token,
            default=50,
            maximum=200,
            kind="webhook_deliveries",
        )
        found, token = await self.endpoints.deliveries(
            self._tenant(caller), request.endpoint_id, delivery_states(list(request.states)), page
        )
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_pb(d) for d in found], next_page_token=token
        )
