"""WebhookService methods of the client (a part of `AgentServerClient`)."""

# ruff: noqa: ASYNC109 -- `timeout` is the gRPC deadline sent to the server, not a local wait.
from __future__ import annotations

from collections.abc import Sequence

from agentserver.v1 import webhook_service_pb2 as pb
from agentserver.v1 import webhook_service_pb2_grpc

from ._options import DEFAULT, Calls, Timeout


class WebhookMethods(Calls):
    """One async method per WebhookService rpc. Needs a service key with the
    `webhooks` scope."""

    _webhook: webhook_service_pb2_grpc.WebhookServiceAsyncStub

    async def create_webhook_endpoint(
        self,
        request: pb.CreateWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.CreateWebhookEndpointResponse:
        """Creates an endpoint; the response carries its `whsec_` secret, shown only here."""
        result: pb.CreateWebhookEndpointResponse = await self._unary(
            self._webhook.CreateWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def get_webhook_endpoint(
        self,
        request: pb.GetWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.GetWebhookEndpointResponse:
        """Returns one endpoint; NOT_FOUND for an unknown or another tenant's."""
        result: pb.GetWebhookEndpointResponse = await self._unary(
            self._webhook.GetWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def list_webhook_endpoints(
        self,
        request: pb.ListWebhookEndpointsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListWebhookEndpointsResponse:
        """Lists the tenant's endpoints, oldest first."""
        result: pb.ListWebhookEndpointsResponse = await self._unary(
            self._webhook.ListWebhookEndpoints, request, timeout, metadata
        )
        return result

    async def update_webhook_endpoint(
        self,
        request: pb.UpdateWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.UpdateWebhookEndpointResponse:
        """Changes the URL, description or event types named in `update_mask`."""
        result: pb.UpdateWebhookEndpointResponse = await self._unary(
            self._webhook.UpdateWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def disable_webhook_endpoint(
        self,
        request: pb.DisableWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.DisableWebhookEndpointResponse:
        """Stops deliveries to an endpoint (pending ones wait)."""
        result: pb.DisableWebhookEndpointResponse = await self._unary(
            self._webhook.DisableWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def enable_webhook_endpoint(
        self,
        request: pb.EnableWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.EnableWebhookEndpointResponse:
        """Resumes deliveries to an endpoint."""
        result: pb.EnableWebhookEndpointResponse = await self._unary(
            self._webhook.EnableWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def delete_webhook_endpoint(
        self,
        request: pb.DeleteWebhookEndpointRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.DeleteWebhookEndpointResponse:
        """Deletes an endpoint and its delivery records."""
        result: pb.DeleteWebhookEndpointResponse = await self._unary(
            self._webhook.DeleteWebhookEndpoint, request, timeout, metadata
        )
        return result

    async def rotate_webhook_secret(
        self,
        request: pb.RotateWebhookSecretRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.RotateWebhookSecretResponse:
        """Replaces the secret (returned); the old one also signs for 24 hours."""
        result: pb.RotateWebhookSecretResponse = await self._unary(
            self._webhook.RotateWebhookSecret, request, timeout, metadata
        )
        return result

    async def send_test_webhook(
        self,
        request: pb.SendTestWebhookRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.SendTestWebhookResponse:
        """Queues a `webhook.test` event for this endpoint only."""
        result: pb.SendTestWebhookResponse = await self._unary(
            self._webhook.SendTestWebhook, request, timeout, metadata
        )
        return result

    async def list_webhook_deliveries(
        self,
        request: pb.ListWebhookDeliveriesRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> pb.ListWebhookDeliveriesResponse:
        """Lists an endpoint's deliveries, newest first, with status and next attempt."""
        result: pb.ListWebhookDeliveriesResponse = await self._unary(
            self._webhook.ListWebhookDeliveries, request, timeout, metadata
        )
        return result
