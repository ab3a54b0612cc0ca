"""The telemetry port as Prometheus metrics and OpenTelemetry spans.

Metrics (`AGENTSERVER_METRICS_LISTEN`): one `CollectorRegistry` per server, served
by prometheus-client's own HTTP server on a listener of its own (a thread: a scrape
never waits for the event loop, nor the loop for a scrape). The gRPC metrics keep
the names go-grpc-prometheus made common (`grpc_server_started_total`,
`grpc_server_handled_total`, `grpc_server_handling_seconds`), so existing
dashboards and alerts work unchanged. A `tenant` label is added to the per-tenant
counters only when the operator asks for it (`AGENTSERVER_METRICS_TENANT_LABEL`):
every tenant multiplies those series.

Traces (`AGENTSERVER_TRACES`): a TracerProvider of the server's own (never the
process-global one), OpenTelemetry's gRPC aio server interceptor for the rpc spans,
and the domain's spans (engine, ledger, channel calls) as its children. Nothing of
OpenTelemetry is imported when traces are off.

Label children are looked up once and kept: after the first call of a method with a
code, recording it is two dictionary hits and three locked additions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentserver.domain.telemetry import Attributes, Telemetry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

# Handling times of a service whose calls take from under a millisecond (GetCosts)
# to seconds (an LLM decision, a provider call).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CHANNEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class AuditCounts(Collector):
    """The audit log's own counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, audit: Any) -> None:
        self._audit = audit

    def collect(self) -> Iterator[Metric]:
        shed = CounterMetricFamily(
            "agentserver_audit_events_shed",
            "Audit events dropped because the buffer was full (each is also logged)",
        )
        shed.add_metric([], self._audit.shed)
        yield shed
        rejected = CounterMetricFamily(
            "agentserver_audit_events_rejected",
            "Audit events the database refused on their own (each is logged)",
        )
        rejected.add_metric([], self._audit.rejected)
        yield rejected
        buffered = GaugeMetricFamily(
            "agentserver_audit_events_buffered", "Audit events waiting to be written"
        )
        buffered.add_metric([], self._audit.buffered)
        yield buffered


class PrometheusTelemetry(Telemetry):
    """Metrics into `registry`; spans are not recorded (see `TracingTelemetry`)."""

    def __init__(self, registry: CollectorRegistry, *, tenant_label: bool = False) -> None:
        self.registry = registry
        self.tenant_label = tenant_label
        t: tuple[str, ...] = ("tenant",) if tenant_label else ()
        rpc = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(
            "grpc_server_started", "RPCs started on the server", rpc, registry=registry
        )
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status code",
            (*rpc, "grpc_code", *t),
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its answer, in seconds",
            rpc,
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._limited = Counter(
            "agentserver_rate_limited",
            "Calls refused by a rate limit (budget: tenant, or unauthenticated per address)",
            ("budget", *t),
            registry=registry,
        )
        self._tokens = Counter(
            "agentserver_tokens_charged",
            "Tokens spent: charges, captured reservations and monthly fees",
            ("operation_type", *t),
            registry=registry,
        )
        self._decisions = Counter(
            "agentserver_decisions",
            "Process answers by the decision level given",
            ("level", *t),
            registry=registry,
        )
        self._proposed = Counter(
            "agentserver_actions_proposed",
            "Actions proposed by Process, by type and the decision level given",
            ("action_type", "level"),
            registry=registry,
        )
        self._engines = Counter(
            "agentserver_engine_decisions",
            "Decisions by the engine that made them (offline or llm)",
            ("engine",),
            registry=registry,
        )
        self._fallbacks = Counter(
            "agentserver_llm_fallbacks",
            "Decisions the offline engine made for the LLM, by reason",
            ("reason",),
            registry=registry,
        )
        self._ended = Counter(
            "agentserver_actions_ended",
            "Actions that reached a final state (or outcome_unknown), by type and state",
            ("action_type", "state", *t),
            registry=registry,
        )
        self._channel_calls = Counter(
            "agentserver_channel_calls",
            "Provider calls, by provider and outcome (ok, transient_error, permanent_error)",
            ("provider", "outcome"),
            registry=registry,
        )
        self._channel_seconds = Histogram(
            "agentserver_channel_call_seconds",
            "Duration of provider calls, in seconds",
            ("provider",),
            buckets=CHANNEL_BUCKETS,
            registry=registry,
        )
        self._batches = Histogram(
            "agentserver_batch_size",
            "Items carried by one coalesced ledger write (debits, reservation ends)",
            ("kind",),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _t(self, tenant: str) -> tuple[str, ...]:
        return (tenant,) if self.tenant_label else ()

    def rpc_started(self, service: str, method: str) -> None:
        self._child(self._started, "unary", service, method).inc()

    def rpc_handled(
        self, service: str, method: str, code: str, seconds: float, tenant: str
    ) -> None:
        self._child(self._handled, "unary", service, method, code, *self._t(tenant)).inc()
        self._child(self._seconds, "unary", service, method).observe(seconds)

    def rate_limited(self, budget: str, tenant: str) -> None:
        self._child(self._limited, budget, *self._t(tenant)).inc()

    def tokens_charged(self, tenant: str, operation_type: str, tokens: int) -> None:
        if tokens > 0:
            self._child(self._tokens, operation_type, *self._t(tenant)).inc(tokens)

    def decided(self, tenant: str, level: str, actions: list[tuple[str, str]]) -> None:
        self._child(self._decisions, level, *self._t(tenant)).inc()
        for action_type, action_level in actions:
            self._child(self._proposed, action_type, action_level).inc()

    def engine_used(self, engine: str, fallback: str) -> None:
        self._child(self._engines, engine).inc()
        if fallback:
            self._child(self._fallbacks, fallback).inc()

    def action_ended(self, tenant: str, action_type: str, state: str) -> None:
        self._child(self._ended, action_type, state, *self._t(tenant)).inc()

    def channel_call(self, provider: str, outcome: str, seconds: float) -> None:
        self._child(self._channel_calls, provider, outcome).inc()
        self._child(self._channel_seconds, provider).observe(seconds)

    def batch(self, kind: str, size: int) -> None:
        self._child(self._batches, kind).observe(size)


class TracingTelemetry(Telemetry):
    """Spans through an OpenTelemetry tracer; no metrics."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer_provider = provider
        self._tracer = provider.get_tracer("agentserver")

    def span(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[None]:
        return cast(
            AbstractContextManager[None],
            self._tracer.start_as_current_span(name, attributes=attributes),
        )


class FullTelemetry(PrometheusTelemetry, TracingTelemetry):
    """Metrics and spans."""

    def __init__(
        self, registry: CollectorRegistry, provider: TracerProvider, *, tenant_label: bool
    ) -> None:
        PrometheusTelemetry.__init__(self, registry, tenant_label=tenant_label)
        TracingTelemetry.__init__(self, provider)


def metrics_registry(audit: Any) -> CollectorRegistry:
    """A registry of the server's own, with process metrics (CPU, memory, open files)
    and the audit log's counters."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(AuditCounts(audit))
    return registry


def tracer_provider(kind: str, service_name: str, exporter: SpanExporter | None) -> TracerProvider:
    """A TracerProvider exporting to `exporter`, or by `kind`: "otlp" (OTLP over gRPC,
    configured by the standard OTEL_EXPORTER_OTLP_* variables) or "console"."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:  # given by a caller (tests): exported as each span ends
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit(f"AGENTSERVER_TRACES must be otlp or console, not {kind!r}")
    return provider


def build_telemetry(
    *,
    audit: Any,
    metrics: bool,
    tenant_label: bool,
    traces: str,
    service_name: str = "agentserver",
    span_exporter: SpanExporter | None = None,
) -> Telemetry:
    """The telemetry the operator configured; the do-nothing base when none is."""
    provider = (
        tracer_provider(traces, service_name, span_exporter)
        if traces or span_exporter is not None
        else None
    )
    if metrics and provider is not None:
        return FullTelemetry(metrics_registry(audit), provider, tenant_label=tenant_label)
    if metrics:
        return PrometheusTelemetry(metrics_registry(audit), tenant_label=tenant_label)
    if provider is not None:
        return TracingTelemetry(provider)
    return Telemetry()


@dataclass
class MetricsEndpoint:
    """prometheus-client's HTTP server, serving one registry at /metrics."""

    server: WSGIServer
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    """Serve `registry` on `listen` (host:port; port 0 picks a free one)."""
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot serve metrics on {listen}: {exc}") from None
    return MetricsEndpoint(server, server.server_port)


def shutdown_tracing(telemetry: Telemetry) -> None:
    """Flush and stop the span exporter, if there is one."""
    if isinstance(telemetry, TracingTelemetry):
        telemetry.tracer_provider.shutdown()
