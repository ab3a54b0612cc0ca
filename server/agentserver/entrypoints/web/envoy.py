# ruff: noqa: E501  (Envoy type URLs in the template are as long as they are)
"""deploy/envoy.yaml, rendered from the server's own figures: the message size limit,
the headers a browser may send and read, and the allowed origins (one list:
AGENTSERVER_WEB_ORIGINS, the same the built-in endpoint allows). `agentserver
envoy-config` prints it; a test checks the committed file is what it renders and
runs it with the real Envoy."""

from __future__ import annotations

import json
from string import Template

from agentserver.entrypoints.grpc.server import MAX_MESSAGE_BYTES
from agentserver.entrypoints.web.asgi import ALLOW_HEADERS, CORS_MAX_AGE, EXPOSE_HEADERS

# The console `make serve` hosts, on both spellings of the loopback host.
DEFAULT_ORIGINS = ("http://127.0.0.1:8080", "http://localhost:8080")
DEFAULT_LISTEN = "0.0.0.0:8081"
DEFAULT_ADMIN = "127.0.0.1:9901"
# The longest a call may take: an LLM decision (30 s deadline) and the sends after it.
ROUTE_TIMEOUT_SECONDS = 60

_TEMPLATE = Template("""\
# Envoy in front of agentserver: gRPC-web (and CORS) for browsers, HTTP/2 gRPC to the
# servers. Rendered by `agentserver envoy-config`; do not edit by hand (change the
# settings and render again: a test compares this file with the rendering).
#   envoy -c deploy/envoy.yaml
admin:
  address:
    socket_address: {address: $admin_host, port_value: $admin_port}
static_resources:
  listeners:
    - name: grpc_web
      address:
        socket_address: {address: $listen_host, port_value: $listen_port}
      # Bound what one browser connection may make Envoy hold.
      per_connection_buffer_limit_bytes: $buffer_limit
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: grpc_web
                codec_type: AUTO
                stream_idle_timeout: ${route_timeout}s
                route_config:
                  name: agentserver
                  virtual_hosts:
                    - name: agentserver
                      domains: ["*"]
                      typed_per_filter_config:
                        envoy.filters.http.cors:
                          "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                          # AGENTSERVER_WEB_ORIGINS: the one list of origins.
                          allow_origin_string_match: $origins
                          allow_methods: POST, OPTIONS
                          allow_headers: $allow_headers
                          expose_headers: $expose_headers
                          max_age: "$max_age"
                      routes:
                        - match: {prefix: "/agentserver.v1."}
                          route:
                            cluster: agentserver
                            # A call's own deadline (grpc-timeout) travels to the server,
                            # which enforces it (DEADLINE_EXCEEDED); this caps the rest.
                            timeout: ${route_timeout}s
                http_filters:
                  - name: envoy.filters.http.grpc_web
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb
                  - name: envoy.filters.http.cors
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: agentserver
      type: STRICT_DNS
      connect_timeout: 1s
      # Larger than one message of $max_bytes bytes (the server's limit, which
      # answers RESOURCE_EXHAUSTED past it), so the server, not Envoy, decides.
      per_connection_buffer_limit_bytes: $buffer_limit
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: agentserver
        endpoints:
          - lb_endpoints:
              # One entry per server replica.
              - endpoint:
                  address:
                    socket_address: {address: $upstream_host, port_value: $upstream_port}
      # grpc.health.v1: a draining server says NOT_SERVING and stops getting calls.
      health_checks:
        - timeout: 1s
          interval: 2s
          unhealthy_threshold: 2
          healthy_threshold: 1
          grpc_health_check: {service_name: ""}
""")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def render_envoy(
    *,
    upstream: str,
    listen: str = DEFAULT_LISTEN,
    admin: str = DEFAULT_ADMIN,
    origins: tuple[str, ...] = (),
) -> str:
    """The Envoy configuration for servers at `upstream` (host:port)."""
    listen_host, listen_port = _split(listen)
    admin_host, admin_port = _split(admin)
    upstream_host, upstream_port = _split(upstream)
    return _TEMPLATE.substitute(
        listen_host=listen_host,
        listen_port=listen_port,
        admin_host=admin_host,
        admin_port=admin_port,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        origins=json.dumps([{"exact": o} for o in origins or DEFAULT_ORIGINS]),
        allow_headers=",".join(ALLOW_HEADERS),
        expose_headers=",".join(EXPOSE_HEADERS),
        max_age=CORS_MAX_AGE,
        route_timeout=ROUTE_TIMEOUT_SECONDS,
        max_bytes=MAX_MESSAGE_BYTES,
        buffer_limit=MAX_MESSAGE_BYTES + 64 * 1024,
    )
