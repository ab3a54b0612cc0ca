"""The HTTP server for the console and gRPC-web: uvicorn in the server's own event
loop, stopped with the gRPC server (in-flight calls get the same grace)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from agentserver.app import App
from agentserver.entrypoints.grpc.server import MAX_MESSAGE_BYTES, RunningServer
from agentserver.entrypoints.web.asgi import WebApp, service_apps

log = logging.getLogger("agentserver.web")

# The console as `make web` builds it, beside the sources (overridable).
DEFAULT_CONSOLE_DIR = Path(__file__).resolve().parents[4] / "web" / "dist"


@dataclass
class RunningWeb:
    server: uvicorn.Server
    sock: socket.socket
    port: int

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within `grace` seconds."""
        self.server.config.timeout_graceful_shutdown = max(int(grace), 0)
        await self.server.shutdown(sockets=[self.sock])


def build_web_app(app: App, running: RunningServer) -> WebApp:
    settings = app.settings
    console = Path(settings.console_dir) if settings.console_dir else DEFAULT_CONSOLE_DIR
    return WebApp(
        service_apps(running.servicers, MAX_MESSAGE_BYTES),
        console_dir=console,
        api_base_url=settings.console_api_url,
        origins=settings.web_origins,
    )


async def start_web(app: App, running: RunningServer, listen: str) -> RunningWeb:
    """Serve the console and gRPC-web on `listen` (host:port; port 0 picks one)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise SystemExit(f"cannot listen on {listen} for the console: {exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        build_web_app(app, running),
        lifespan="off",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        # Bodies past the message limit are refused by connectrpc; this bounds the
        # rest of a request (headers) the way the gRPC server does.
        h11_max_incomplete_event_size=64 * 1024,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return RunningWeb(server=server, sock=sock, port=int(sock.getsockname()[1]))
