"""The HTTP application: gRPC-web and Connect for the services, the console's
files, and its one setting (where the API is). Bad HTTP input is answered 4xx or with
the matching gRPC status, and reaches no servicer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connectrpc.compat import google_protobuf_json_codec
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from agentserver.entrypoints.web.bridge import ServicerBridge, TolerantProtoCodec
from agentserver.v1 import (
    agent_service_connect,
    agent_service_pb2,
    conversation_service_connect,
    conversation_service_pb2,
    event_service_connect,
    event_service_pb2,
    token_service_connect,
    token_service_pb2,
    webhook_service_connect,
    webhook_service_pb2,
)

# What a browser may send and read across origins (gRPC-web and Connect headers, and
# our identity metadata). deploy/envoy.yaml is rendered from the same lists.
ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "x-tenant-id",
    "x-user-id",
    "x-location-id",
    "x-request-id",
)
EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
CORS_MAX_AGE = 600


def service_apps(servicers: Mapping[str, object], max_bytes: int) -> dict[str, ASGIApp]:
    """The connectrpc application of each service, by its full name, over the servicers
    (keyed by service name: AgentService, ConversationService, TokenService)."""
    made: dict[str, Any] = {
        "AgentService": (agent_service_connect.AgentServiceASGIApplication, agent_service_pb2),
        "ConversationService": (
            conversation_service_connect.ConversationServiceASGIApplication,
            conversation_service_pb2,
        ),
        "TokenService": (token_service_connect.TokenServiceASGIApplication, token_service_pb2),
        "EventService": (event_service_connect.EventServiceASGIApplication, event_service_pb2),
        "WebhookService": (
            webhook_service_connect.WebhookServiceASGIApplication,
            webhook_service_pb2,
        ),
    }
    apps: dict[str, ASGIApp] = {}
    for name, (application, module) in made.items():
        descriptor = module.DESCRIPTOR.services_by_name[name]
        bridge = ServicerBridge(servicers[name], descriptor)
        apps[descriptor.full_name] = application(
            bridge,
            read_max_bytes=max_bytes,
            codecs=[TolerantProtoCodec(), google_protobuf_json_codec()],
        )
    return apps


class WebApp:
    """Dispatches `/<package.Service>/<Method>` to that service's connectrpc app and
    everything else to the console."""

    def __init__(
        self,
        services: dict[str, ASGIApp],
        *,
        console_dir: Path | None,
        api_base_url: str = "",
        origins: tuple[str, ...] = (),
    ) -> None:
        self.services = services
        self.console: ASGIApp | None = None
        if console_dir is not None and (console_dir / "index.html").is_file():
            self.console = StaticFiles(directory=console_dir, html=True)
        self.config = json.dumps({"apiBaseUrl": api_base_url}).encode()
        api: ASGIApp = self._api
        if origins:
            api = CORSMiddleware(
                api,
                allow_origins=list(origins),
                allow_methods=["POST"],
                allow_headers=list(ALLOW_HEADERS),
                expose_headers=list(EXPOSE_HEADERS),
                max_age=CORS_MAX_AGE,
            )
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websockets here
        path: str = scope["path"]
        if path.count("/") == 2 and path.split("/")[1] in self.services:
            await self.api(scope, receive, send)
        elif path == "/console-config.json":
            await JSONResponse(json.loads(self.config))(scope, receive, send)
        elif self.console is not None and scope["method"] in ("GET", "HEAD"):
            try:
                await self.console(scope, receive, send)
            except HTTPException as exc:  # StaticFiles' 404, 405, ...
                await PlainTextResponse(exc.detail, status_code=exc.status_code)(
                    scope, receive, send
                )
        elif self.console is None and path == "/":
            await PlainTextResponse(
                "The console is not built: run `make web` (make serve does).", status_code=404
            )(scope, receive, send)
        else:
            await PlainTextResponse("not found", status_code=404)(scope, receive, send)

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = ""
        for key, value in scope.get("headers", ()):
            if key == b"content-type":
                content_type = value.decode("latin-1").split(";")[0].strip().lower()
        if content_type == "application/grpc" or content_type.startswith("application/grpc+"):
            # gRPC proper needs HTTP/2 trailers: that is the gRPC port's job.
            await PlainTextResponse(
                "gRPC over HTTP/2 is served on the gRPC port; this endpoint speaks gRPC-web"
                " (application/grpc-web+proto) and Connect",
                status_code=415,
            )(scope, receive, send)
            return
        service = scope["path"].split("/")[1]
        await self.services[service](scope, receive, send)
