"""What bench/ledger.py and bench/process.py share.

* servers as an operator runs them: `agentserver serve` subprocesses (stderr to a
  log file, so a full pipe can never stall them), and a bare grpc.aio echo server
  (`python bench/common.py echo --listen HOST:PORT`, also a subprocess, also on
  uvloop like `agentserver serve`) as the ceiling of the gRPC layer;
* databases: a fresh SQLite file in a temporary directory, or a fresh PostgreSQL
  database created for the run and dropped at the end;
* provisioning of tenants, keys, tokens and rules through the composition root;
* a closed-loop load generator (N workers, each one call in flight) that records
  latency and the CPU seconds used by the server and by this process.

Everything is bounded: each cell stops at a deadline or a request count, and every
server is stopped in a `finally`. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
# AGENTSERVER_BENCH_RESULTS points a trial run elsewhere, so it does not overwrite these.
RESULTS = Path(os.environ.get("AGENTSERVER_BENCH_RESULTS") or REPO / "bench" / "results")
BIN = Path(sys.executable).parent
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
ECHO_METHOD = "/bench.Echo/Echo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Distinct channels get distinct TCP connections (grpc would share a subchannel).
CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]

Metadata = tuple[tuple[str, str], ...]
Call = Callable[[int], Awaitable[None]]


def install_uvloop() -> str:
    """The bench process runs on uvloop too when it is there (as the server does)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return "asyncio"
    uvloop.install()
    return "uvloop"


# --- processes --------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSERVER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({f"AGENTSERVER_{k.upper()}": v for k, v in settings.items()})
    return env


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of each `postgres` process of this machine (the local server the
    bench uses; empty when there is none or /proc hides it)."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    out[int(entry.name)] = proc_cpu_seconds(int(entry.name))
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots; processes born in between count in full,
    processes gone in between are lost (short-lived ones are rare here)."""
    return sum(
        cpu - before.get(pid, 0.0) for pid, cpu in after.items() if cpu >= before.get(pid, 0.0)
    )


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_serving(port: int, proc: asyncio.subprocess.Process, limit_s: float = 30.0) -> float:
    """Poll health every 20 ms on a fresh channel (no reconnect back-off) until
    SERVING; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                resp = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.02)
    raise TimeoutError(f"server on port {port} not SERVING after {limit_s}s")


@dataclass
class Server:
    """A server subprocess: the real `agentserver serve` or the bare echo server."""

    proc: asyncio.subprocess.Process
    port: int
    log_path: Path
    startup_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], cwd: Path, log_path: Path, env: dict[str, str], port: int
    ) -> Server:
        log = _open_log(log_path)
        try:
            t0 = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()
        try:
            await wait_serving(port, proc)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            tail = _read_text(log_path)[-3000:]
            raise RuntimeError(f"server failed to start ({argv[0]}):\n{tail}") from None
        return cls(proc=proc, port=port, log_path=log_path, startup_s=time.monotonic() - t0)

    @classmethod
    async def agentserver(cls, cwd: Path, log_path: Path, **settings: str) -> Server:
        port = free_port()
        settings.setdefault("listen", f"127.0.0.1:{port}")
        argv = [str(BIN / "agentserver"), "serve"]
        return await cls.spawn(argv, cwd, log_path, server_env(**settings), port)

    @classmethod
    async def echo(cls, log_path: Path) -> Server:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "echo", f"127.0.0.1:{port}"]
        return await cls.spawn(argv, REPO, log_path, server_env(), port)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    async def stop(self, grace_s: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)

    def log_errors(self) -> list[str]:
        """JSON log lines at level error (or tracebacks) the server wrote."""
        lines = _read_text(self.log_path).splitlines()
        return [ln for ln in lines if '"level": "error"' in ln or "Traceback" in ln]


@contextlib.asynccontextmanager
async def running(server_coro: Awaitable[Server]) -> AsyncIterator[Server]:
    server = await server_coro
    try:
        yield server
    finally:
        await server.stop()


# --- the echo ceiling -------------------------------------------------------


async def _serve_echo(listen: str) -> None:
    async def echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def echo_caller(channel: grpc.aio.Channel, payload: bytes, metadata: Metadata) -> Call:
    method = channel.unary_unary(ECHO_METHOD)

    async def call(_i: int) -> None:
        await method(payload, metadata=metadata, timeout=30)

    return call


# --- databases ----------------------------------------------------------------


@dataclass
class Database:
    backend: str  # "sqlite" | "postgres"
    url: str
    workdir: Path
    pg_name: str = ""

    async def drop(self) -> None:
        if self.pg_name:
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            finally:
                await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(backend: str, workdir: Path) -> AsyncIterator[Database]:
    if backend == "sqlite":
        db = Database(backend, f"sqlite+aiosqlite:///{workdir / 'bench.db'}", workdir)
    elif backend == "postgres":
        import asyncpg

        name = f"bench_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        db = Database(backend, PG_URL.format(db=name), workdir, pg_name=name)
    else:
        raise SystemExit(f"unknown backend {backend!r} (sqlite, postgres)")
    try:
        yield db
    finally:
        await db.drop()


def server_settings(db: Database, *, access_log: bool) -> dict[str, str]:
    return {
        "database_url": db.url,
        "auto_migrate": "true",
        "access_log": "true" if access_log else "false",
        "monthly_fee_interval_seconds": "0",
        "bootstrap_demo": "false",
        "web_listen": "off",  # several benches may run at once; gRPC-web has its own
    }


async def provision(url: str, tenants: dict[str, int]) -> dict[str, str]:
    """Create each tenant with a full-scope key, `tokens` tokens on its tenant wallet
    and an allow-everything business rule; returns tenant id -> API key."""
    from agentserver.app import build_app, prepare_database
    from agentserver.config import Settings

    app = await build_app(Settings(database_url=url, auto_migrate=True))
    keys: dict[str, str] = {}
    try:
        await prepare_database(app)
        for tid, tokens in tenants.items():
            now = app.clock.now()
            await app.admin.create_tenant(tid, tid, now)
            _, key = await app.admin.create_key(
                tid, ["tokens:read", "tokens:write", "agent"], "bench", now
            )
            if tokens:
                await app.ledger.add_tokens(tid, "", tokens, f"seed-{tid}", "seed")
            await app.admin.set_rule(tid, "business", "", "allow", "*:*")
            keys[tid] = key
    finally:
        await app.close()
    return keys


async def sql_scalar(url: str, query: str) -> Any:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(query))).scalar()
    finally:
        await engine.dispose()


def metadata_for(key: str, tenant_id: str, user_id: str = "") -> Metadata:
    pairs = [("authorization", f"Bearer {key}"), ("x-tenant-id", tenant_id)]
    if user_id:
        pairs.append(("x-user-id", user_id))
    return tuple(pairs)


# --- the load generator ---------------------------------------------------------


@dataclass
class Cell:
    target: str  # "echo" | "sqlite" | "postgres"
    concurrency: int
    calls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rate: float = 0.0  # successful calls per second
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_pct: float = 0.0  # of one core
    client_cpu_pct: float = 0.0  # of one core
    postgres_cpu_pct: float = 0.0  # of one core, all postgres processes
    note: str = ""

    def row(self) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "0"
        if self.note and not self.calls:
            return [self.target, str(self.concurrency), self.note, "", "", "", "", "", ""]
        return [
            self.target,
            str(self.concurrency),
            f"{self.rate:,.0f}",
            f"{self.p50_ms:.2f}",
            f"{self.p99_ms:.2f}",
            errors,
            f"{self.server_cpu_pct:.0f}% / {self.client_cpu_pct:.0f}%"
            f" / {self.postgres_cpu_pct:.0f}%",
            f"{self.server_cpu_ms_per_call:.2f}",
            self.note,
        ]

    @property
    def server_cpu_ms_per_call(self) -> float:
        """Server CPU time per successful call: steadier than calls/s on a shared VM."""
        return 10 * self.server_cpu_pct / self.rate if self.rate else float("nan")


CELL_HEADER = [
    "server",
    "concurrency",
    "ok calls/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "CPU server / bench / postgres",
    "server CPU ms/call",
    "note",
]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def load(
    calls: Sequence[Call],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    counter: itertools.count[int],
    server_pid: int | None = None,
    cell: Cell,
) -> Cell:
    """Closed loop: `concurrency` workers, each with one call in flight, spread over
    `calls` (one per channel), until `duration` seconds pass or `max_requests`
    calls have started. Latency is recorded for successful calls."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = 0
    deadline = time.monotonic() + duration

    async def worker(w: int) -> None:
        nonlocal started
        call = calls[w % len(calls)]
        while started < max_requests and time.monotonic() < deadline:
            started += 1
            i = next(counter)
            t0 = time.perf_counter()
            try:
                await call(i)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    server_cpu0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    self_cpu0 = self_cpu_seconds()
    pg_cpu0 = postgres_cpu()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    cell.calls = len(latencies) + sum(errors.values())
    cell.ok = len(latencies)
    cell.errors = dict(errors)
    cell.seconds = round(elapsed, 3)
    cell.rate = round(len(latencies) / elapsed, 1) if elapsed else 0.0
    cell.p50_ms = round(percentile(latencies, 0.50) * 1000, 3)
    cell.p99_ms = round(percentile(latencies, 0.99) * 1000, 3)
    cell.max_ms = round(latencies[-1] * 1000, 3) if latencies else float("nan")
    if server_pid:
        cell.server_cpu_pct = round(100 * (proc_cpu_seconds(server_pid) - server_cpu0) / elapsed)
    cell.client_cpu_pct = round(100 * (self_cpu_seconds() - self_cpu0) / elapsed)
    cell.postgres_cpu_pct = round(100 * cpu_delta(pg_cpu0, postgres_cpu()) / elapsed)
    return cell


async def measure(
    make_call: Callable[[grpc.aio.Channel], Call],
    target: str,
    *,
    name: str,
    concurrency: int,
    duration: float,
    channels: int,
    warmup: float,
    counter: itertools.count[int],
    server_pid: int | None,
    max_requests: int = 10_000_000,
) -> Cell:
    """One cell: open `channels` channels, warm up, then measure."""
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        calls = [make_call(c) for c in chans]
        if warmup > 0:
            await load(
                calls,
                concurrency=concurrency,
                duration=warmup,
                max_requests=max_requests,
                counter=counter,
                cell=Cell(name, concurrency),
            )
        return await load(
            calls,
            concurrency=concurrency,
            duration=duration,
            max_requests=max_requests,
            counter=counter,
            server_pid=server_pid,
            cell=Cell(name, concurrency),
        )
    finally:
        for c in chans:
            await c.close()


# --- reporting --------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = int(line.split()[1]) / 1024
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": round(mem_total_mb),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "sqlite": sqlite3.sqlite_version,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


async def postgres_version() -> str:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as err:
        return f"unavailable ({err})"
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def write_results(stem: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md_path, json_path = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    md_path.write_text(markdown + "\n")
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md_path, json_path


def cell_dicts(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cells]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell")
    p.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    p.add_argument("--channels", type=int, default=1, help="client channels (connections)")
    p.add_argument(
        "--no-access-log",
        action="store_true",
        help="run the server with AGENTSERVER_ACCESS_LOG=false (default: operator default, on)",
    )
    p.add_argument("--quick", action="store_true", help="a fast smoke run (1 s cells)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' log directory")
    return p


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    """A temporary directory for databases and server logs; kept with --keep-logs."""
    path = Path(tempfile.mkdtemp(prefix="agentserver-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"server logs and databases kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "echo":
        install_uvloop()
        asyncio.run(_serve_echo(sys.argv[2]))
    else:
        raise SystemExit("usage: python bench/common.py echo HOST:PORT")
