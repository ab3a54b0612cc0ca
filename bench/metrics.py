"""What metrics cost: the server's CPU time per call with Prometheus metrics off and
on, in the same run, on the same database.

    .venv/bin/python bench/metrics.py [--duration 4] [--rounds 3] [--backends postgres]

Two `agentserver serve` processes share one fresh database: one with metrics off
(the default; traces off too, so no interceptor and no-op spans), one with
`AGENTSERVER_METRICS_LISTEN` set (and the tenant label on, the dearer case). The
load alternates between them, round by round (off, on, off, on, ...), so a drift
of this VM's speed hits both alike; each cell is a closed loop at concurrency 16
after a warm-up. Two calls: GetBalance (the cheapest rpc with a database read, where
a fixed cost per call shows most) and Process (an automatic email: engine, policy,
hold, dry-run send, settle; every business metric moves). The endpoint is scraped
once a second during the "on" cells, as Prometheus would (more often than usual).

The figure is the median over the rounds of the server's CPU ms per successful call,
and the difference between on and off (aim: at most 5%).

Writes bench/results/metrics.md and bench/results/metrics.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
from common import (  # noqa: E402
    Call,
    Cell,
    Metadata,
    Server,
    base_parser,
    cell_dicts,
    free_port,
    fresh_database,
    install_uvloop,
    machine_info,
    markdown_table,
    measure,
    median,
    metadata_for,
    postgres_version,
    provision,
    running,
    server_settings,
    workdir,
    write_results,
)

from agentserver.v1 import (  # noqa: E402
    agent_service_pb2,
    agent_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)

CONCURRENCY = 16
FUND = 100_000_000
USER = "bench-user"
AIM_PCT = 5.0


def balance_caller(tenant: str, md: Metadata) -> Any:
    request = token_service_pb2.GetBalanceRequest(tenant_id=tenant)

    def make(channel: grpc.aio.Channel) -> Call:
        stub = token_service_pb2_grpc.TokenServiceStub(channel)

        async def call(_i: int) -> None:
            await stub.GetBalance(request, metadata=md, timeout=30)

        return call

    return make


def process_caller(md: Metadata) -> Any:
    request = agent_service_pb2.ProcessRequest(
        message="Email john@example.com that the order shipped"
    )

    def make(channel: grpc.aio.Channel) -> Call:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)

        async def call(_i: int) -> None:
            await stub.Process(request, metadata=md, timeout=30)

        return call

    return make


@contextlib.asynccontextmanager
async def scraping(port: int) -> AsyncIterator[list[int]]:
    """Scrape the metrics endpoint once a second while the block runs; yields the
    sizes of the pages scraped."""
    sizes: list[int] = []

    def get() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return len(r.read())

    async def loop() -> None:
        while True:
            sizes.append(await asyncio.to_thread(get))
            await asyncio.sleep(1.0)

    task = asyncio.create_task(loop())
    try:
        yield sizes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def bench_backend(backend: str, root: Path, args: Any, duration: float) -> dict[str, Any]:
    home = root / backend
    home.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()
    async with fresh_database(backend, home) as db:
        keys = await provision(db.url, {"bal": 0, "proc": FUND})
        base = server_settings(db, access_log=False)
        metrics_port = free_port()
        on = {
            **base,
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "metrics_tenant_label": "true",
            "auto_migrate": "false",
        }
        off = {**base, "auto_migrate": "false"}
        servers = {}
        async with (
            running(Server.agentserver(home, root / f"{backend}-off.log", **off)) as s_off,
            running(Server.agentserver(home, root / f"{backend}-on.log", **on)) as s_on,
        ):
            servers = {"off": s_off, "on": s_on}
            calls = {
                "GetBalance": balance_caller("bal", metadata_for(keys["bal"], "bal", USER)),
                "Process": process_caller(metadata_for(keys["proc"], "proc", USER)),
            }
            cells: dict[str, dict[str, list[Cell]]] = {
                name: {"off": [], "on": []} for name in calls
            }
            page_bytes: list[int] = []
            for r in range(args.rounds):
                for name, make in calls.items():
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for mode in order:
                        srv = servers[mode]
                        async with contextlib.AsyncExitStack() as stack:
                            if mode == "on":
                                page_bytes += await stack.enter_async_context(
                                    scraping(metrics_port)
                                )
                            cell = await measure(
                                make,
                                srv.target,
                                name=f"{name} metrics {mode}",
                                concurrency=CONCURRENCY,
                                duration=duration,
                                channels=1,
                                warmup=0.3 if args.quick else 1.0,
                                counter=counter,
                                server_pid=srv.pid,
                            )
                        cells[name][mode].append(cell)
                        print(
                            f"round {r + 1} {name:10} metrics {mode:3}: {cell.rate:8,.0f}/s "
                            f"{cell.server_cpu_ms_per_call:.3f} ms CPU/call errors {cell.errors}",
                            flush=True,
                        )
            errors = {m: s.log_errors()[:10] for m, s in servers.items()}
        summary = {}
        for name, by_mode in cells.items():
            off_ms = median([c.server_cpu_ms_per_call for c in by_mode["off"]])
            on_ms = median([c.server_cpu_ms_per_call for c in by_mode["on"]])
            summary[name] = {
                "off_ms_per_call": round(off_ms, 4),
                "on_ms_per_call": round(on_ms, 4),
                "difference_pct": round(100 * (on_ms - off_ms) / off_ms, 1),
                "off_rate": median([c.rate for c in by_mode["off"]]),
                "on_rate": median([c.rate for c in by_mode["on"]]),
                "cells": {m: cell_dicts(cs) for m, cs in by_mode.items()},
            }
        return {
            "backend": backend,
            "summary": summary,
            "metrics_page_bytes": max(page_bytes) if page_bytes else 0,
            "server_log_errors": errors,
        }


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    rows = []
    for b in data["backends"]:
        for name, s in b["summary"].items():
            verdict = "met" if s["difference_pct"] <= AIM_PCT else "**over**"
            rows.append(
                [
                    b["backend"],
                    name,
                    f"{s['off_ms_per_call']:.3f}",
                    f"{s['on_ms_per_call']:.3f}",
                    f"{s['difference_pct']:+.1f}%",
                    f"{s['off_rate']:,.0f} / {s['on_rate']:,.0f}",
                    verdict,
                ]
            )
    pages = ", ".join(f"{b['backend']} {b['metrics_page_bytes']:,} bytes" for b in data["backends"])
    return "\n".join(
        [
            "# What metrics cost",
            "",
            f"{m['date']} · {m['nproc']} cores ({m['cpu_model']}) · Python {m['python']} · "
            f"grpcio {m['grpcio']} · PostgreSQL {data['postgres_version']} · "
            f"1-min load average at start {m['loadavg_at_start'][0]:.2f}",
            "",
            f"Two servers on one database, metrics off (the default: no listener, traces "
            f"off) and on (tenant label on, scraped every second); the load alternates "
            f"between them for {data['rounds']} rounds of {data['duration_s']} s per call "
            f"and mode at concurrency {CONCURRENCY}. Server CPU ms per successful call, "
            f"median over the rounds (the load generator shares the cores).",
            "",
            markdown_table(
                [
                    "backend",
                    "call",
                    "off: CPU ms/call",
                    "on: CPU ms/call",
                    "difference",
                    "calls/s off / on",
                    f"aim ≤ {AIM_PCT:.0f}%",
                ],
                rows,
            ),
            "",
            f"Largest metrics page scraped: {pages}.",
        ]
    )


async def run(args: Any) -> int:
    duration = 1.0 if args.quick else args.duration
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    data: dict[str, Any] = {
        "benchmark": "server CPU per call, metrics off and on",
        "machine": machine_info(),
        "postgres_version": await postgres_version() if "postgres" in backends else "not used",
        "duration_s": duration,
        "rounds": args.rounds,
        "quick": args.quick,
    }
    with workdir(args.keep_logs) as root:
        data["backends"] = [await bench_backend(b, root, args, duration) for b in backends]
    markdown = report(data)
    md_path, json_path = write_results("metrics-quick" if args.quick else "metrics", markdown, data)
    print()
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")
    return 0


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(backends="postgres")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of off and on")
    args = parser.parse_args()
    install_uvloop()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
