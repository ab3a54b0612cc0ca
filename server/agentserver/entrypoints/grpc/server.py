"""The grpc.aio server: servicers, health (overall and per service), reflection,
graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentserver.adapters.redis_ratelimit import RedisRateLimiter
from agentserver.adapters.telemetry import (
    MetricsEndpoint,
    PrometheusTelemetry,
    TracingTelemetry,
    serve_metrics,
)
from agentserver.app import App
from agentserver.entrypoints.grpc.admin_servicer import AdminServicer
from agentserver.entrypoints.grpc.agent_servicer import AgentServicer
from agentserver.entrypoints.grpc.base import ServicerBase
from agentserver.entrypoints.grpc.conversation_servicer import ConversationServicer
from agentserver.entrypoints.grpc.event_servicer import EventServicer
from agentserver.entrypoints.grpc.requests import add_service
from agentserver.entrypoints.grpc.token_servicer import TokenServicer
from agentserver.entrypoints.grpc.webhook_servicer import WebhookServicer
from agentserver.v1 import (
    admin_service_pb2,
    agent_service_pb2,
    conversation_service_pb2,
    event_service_pb2,
    token_service_pb2,
    webhook_service_pb2,
)

log = logging.getLogger("agentserver.server")

# The largest request message either way in (gRPC and the built-in gRPC-web endpoint;
# deploy/envoy.yaml is rendered with the same figure).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
CONVERSATION_SERVICE = conversation_service_pb2.DESCRIPTOR.services_by_name["ConversationService"]
TOKEN_SERVICE = token_service_pb2.DESCRIPTOR.services_by_name["TokenService"]
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
EVENT_SERVICE = event_service_pb2.DESCRIPTOR.services_by_name["EventService"]
WEBHOOK_SERVICE = webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"]
SERVICES = (
    AGENT_SERVICE,
    CONVERSATION_SERVICE,
    TOKEN_SERVICE,
    ADMIN_SERVICE,
    EVENT_SERVICE,
    WEBHOOK_SERVICE,
)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    # The servicers by service name; the gRPC-web endpoint calls these same objects.
    servicers: dict[str, object] = field(default_factory=dict)
    metrics: MetricsEndpoint | None = None  # Prometheus, when configured
    # Set when stopping: event streams end at once (UNAVAILABLE), so their clients
    # reconnect elsewhere instead of waiting out the grace period.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self, grace: float) -> None:
        """Event streams end, health goes NOT_SERVING (load balancers stop sending),
        then in-flight calls get `grace` seconds to finish."""
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.metrics is not None:
            self.metrics.close()


async def start_server(app: App, listen: str) -> RunningServer:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if isinstance(app.telemetry, TracingTelemetry):  # only then: it costs on every call
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptor = aio_server_interceptor(tracer_provider=app.telemetry.tracer_provider)  # type: ignore[no-untyped-call]
        interceptors.append(interceptor)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            # Never share a port silently with another process.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    access_log = app.settings.access_log
    tokens = TokenServicer(app.auth, app.ledger, app.costs, access_log=access_log)
    agent = AgentServicer(app.auth, app.agent, app.registry, app.costs, access_log=access_log)
    conversations = ConversationServicer(app.auth, app.agent, access_log=access_log)
    admin = AdminServicer(app.auth, app.administration, app.personal, access_log=access_log)
    events = EventServicer(app.auth, app.feed, access_log=access_log)
    webhooks = WebhookServicer(app.auth, app.webhooks, access_log=access_log)
    servicers: tuple[tuple[ServicerBase, ServiceDescriptor], ...] = (
        (tokens, TOKEN_SERVICE),
        (agent, AGENT_SERVICE),
        (conversations, CONVERSATION_SERVICE),
        (admin, ADMIN_SERVICE),
        (events, EVENT_SERVICE),
        (webhooks, WEBHOOK_SERVICE),
    )
    for servicer, service in servicers:
        servicer.limiter = app.limiter
        servicer.audit = app.audit
        servicer.telemetry = app.telemetry
        servicer.client_address_header = app.settings.client_address_header
        add_service(server, servicer, service)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise SystemExit(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise SystemExit(f"cannot listen on {listen} (address in use?)")
    metrics = None
    if isinstance(app.telemetry, PrometheusTelemetry):
        metrics = serve_metrics(app.telemetry.registry, app.settings.metrics_listen)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _report_redis_health(app, health_servicer)
    return RunningServer(
        server=server,
        health=health_servicer,
        port=port,
        metrics=metrics,
        servicers={
            "AgentService": agent,
            "ConversationService": conversations,
            "TokenService": tokens,
            "AdminService": admin,
            "EventService": events,
            "WebhookService": webhooks,
        },
        stopping=app.feed.stopping,
    )


# Health of the shared rate limiter's Redis (NOT_SERVING while its breaker is open and
# each replica limits on its own); the server as a whole keeps serving meanwhile.
REDIS_HEALTH = "agentserver.redis"


def _report_redis_health(app: App, health_servicer: health.aio.HealthServicer) -> None:
    if not isinstance(app.limiter, RedisRateLimiter):
        return
    statuses = {
        True: health_pb2.HealthCheckResponse.SERVING,
        False: health_pb2.HealthCheckResponse.NOT_SERVING,
    }
    tasks: set[asyncio.Task[None]] = set()

    def report(healthy: bool) -> None:
        task = asyncio.ensure_future(health_servicer.set(REDIS_HEALTH, statuses[healthy]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    app.limiter.on_health = report
    report(app.limiter.healthy)


async def serve_until_signalled(app: App, listen: str) -> None:
    """Serve until SIGTERM or SIGINT. On SIGTERM (an orchestrator) health says
    NOT_SERVING for `drain_seconds` while calls are still served, so load balancers
    move traffic away before anything is refused; SIGINT (a person at a terminal)
    and a second signal skip the drain. Then in-flight calls get the grace period."""
    running = await start_server(app, listen)
    web = None
    if app.settings.web_listen:
        from agentserver.entrypoints.web.server import start_web

        web = await start_web(app, running, app.settings.web_listen)
        log.info("serving the console and gRPC-web", extra={"listen": app.settings.web_listen})
    app.start_background()
    log.info("serving", extra={"listen": listen, "port": running.port})
    if running.metrics is not None:
        log.info("serving metrics", extra={"listen": app.settings.metrics_listen})
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    received = await signals.get()
    drain = app.settings.drain_seconds if received is signal.SIGTERM else 0.0
    await running.health.enter_graceful_shutdown()
    if drain > 0:
        log.info("draining: health NOT_SERVING, still serving", extra={"drain_seconds": drain})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signals.get(), drain)
    log.info("shutting down", extra={"grace_seconds": app.settings.grace_seconds})
    if web is not None:
        await asyncio.gather(
            running.stop(app.settings.grace_seconds), web.stop(app.settings.grace_seconds)
        )
    else:
        await running.stop(app.settings.grace_seconds)
    await app.close()
    log.info("stopped")
