"""What metrics cost: the server's CPU time per call with Prometheus metrics off and
on, in the same run, on the same database.

    .venv/bin/python bench/metrics.py [--duration 4] [--rounds 6] [--same] [--scrape-every 15]

Two `agentserver serve` processes (a fresh pair each round, started and measured in
turns) share one fresh database: one with metrics off
(the default; traces off too, so no interceptor and no-op spans), one with
`AGENTSERVER_METRICS_LISTEN` set (and the tenant label on, the dearer case). The
load alternates between them, round by round (off, on, off, on, ...), so a drift
of this VM's speed hits both alike; each cell is a closed loop at concurrency 16
after a warm-up. Two calls: GetBalance (the cheapest rpc with a database read, where
a fixed cost per call shows most) and Process (an automatic email: engine, policy,
hold, dry-run send, settle; every business metric moves). The endpoint is scraped
during the "on" cells, as Prometheus would.

The figure is the server's CPU ms per successful call over all rounds of a mode, and
the difference between on and off (aim: at most 5%), with each round's own
difference beside it to show the noise. Scrapes come every 15 s by default (a usual
Prometheus interval; `--scrape-every 1` for a harsher test).

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
async def scraping(port: int, every: float, sizes: list[int]) -> AsyncIterator[None]:
    """Scrape the metrics endpoint every `every` seconds while the block runs (the
    first at once), adding each page's size to `sizes`."""

    def get() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return len(r.read())

    async def loop() -> None:
        while True:
            sizes.append(await asyncio.to_thread(get))
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield
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
        if args.same:  # an A/A run: the two processes differ in nothing
            on = off
        calls = {
            "GetBalance": balance_caller("bal", metadata_for(keys["bal"], "bal", USER)),
            "Process": process_caller(metadata_for(keys["proc"], "proc", USER)),
        }
        cells: dict[str, dict[str, list[Cell]]] = {name: {"off": [], "on": []} for name in calls}
        page_bytes: list[int] = []
        errors: dict[str, list[str]] = {"off": [], "on": []}
        for r in range(args.rounds):
            # A fresh pair of processes each round, started (and measured) in turns:
            # a second process measures a few percent dearer than the first even when
            # both are the same (see --same), and this cancels that out.
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            settings = {"off": off, "on": on}
            async with contextlib.AsyncExitStack() as servers_stack:
                servers = {}
                for mode in order:
                    log = root / f"{backend}-{mode}-{r}.log"
                    servers[mode] = await servers_stack.enter_async_context(
                        running(Server.agentserver(home, log, **settings[mode]))
                    )
                for name, make in calls.items():
                    for mode in order:
                        srv = servers[mode]
                        async with contextlib.AsyncExitStack() as stack:
                            if mode == "on" and not args.same:
                                await stack.enter_async_context(
                                    scraping(metrics_port, args.scrape_every, page_bytes)
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
                for mode, srv in servers.items():
                    errors[mode] += srv.log_errors()[:10]
        summary = {}
        for name, by_mode in cells.items():
            # Over all rounds: the server's CPU time over its calls (steadier than a
            # median of per-cell figures on a VM whose speed drifts).
            off_ms, on_ms = (pooled_ms_per_call(by_mode[m]) for m in ("off", "on"))
            ratios = [
                on.server_cpu_ms_per_call / off.server_cpu_ms_per_call
                for off, on in zip(by_mode["off"], by_mode["on"], strict=True)
            ]
            summary[name] = {
                "off_ms_per_call": round(off_ms, 4),
                "on_ms_per_call": round(on_ms, 4),
                "difference_pct": round(100 * (on_ms - off_ms) / off_ms, 1),
                "round_differences_pct": [round(100 * (r - 1), 1) for r in ratios],
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


def update_costs_us() -> dict[str, float]:
    """What the metric updates of one call cost, timed in this process (no network,
    no noise from the other processes): GetBalance's two, and Process's (the rpc, the
    decision, the engine, the provider call, the tokens, the action's end)."""
    import timeit

    from agentserver.adapters.telemetry import PrometheusTelemetry, metrics_registry

    class Audit:
        shed = rejected = buffered = 0

    t = PrometheusTelemetry(metrics_registry(Audit()), tenant_label=True)
    svc = "agentserver.v1.AgentService"

    def balance() -> None:
        t.rpc_started(svc, "GetBalance")
        t.rpc_handled(svc, "GetBalance", "OK", 0.0005, "tenant-1")

    def process() -> None:
        t.rpc_started(svc, "Process")
        t.engine_used("offline", "")
        t.decided("tenant-1", "automatic", [("email.send", "automatic")])
        t.channel_call("dryrun", "ok", 0.0001)
        t.tokens_charged("tenant-1", "email", 1)
        t.action_ended("tenant-1", "email.send", "succeeded")
        t.rpc_handled(svc, "Process", "OK", 0.003, "tenant-1")

    n = 20_000
    return {
        name: round(min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6, 2)
        for name, fn in (("GetBalance", balance), ("Process", process))
    }


def pooled_ms_per_call(cells: list[Cell]) -> float:
    """Server CPU ms per successful call over several cells together."""
    cpu_s = sum(c.server_cpu_pct / 100 * c.seconds for c in cells)
    calls = sum(c.ok for c in cells)
    return 1000 * cpu_s / calls if calls else float("nan")


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
                    ", ".join(f"{d:+.0f}%" for d in s["round_differences_pct"]),
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
            f"off) and on (tenant label on, scraped every {data['scrape_every_s']:g} s), "
            "a fresh pair each round, started and measured in turns; the load "
            f"alternates between them for {data['rounds']} rounds of "
            f"{data['duration_s']} s per call and mode at concurrency {CONCURRENCY}. "
            "Server CPU ms per successful call over all rounds of a mode (the load "
            "generator shares the cores; this VM's speed drifts, hence the rounds, whose "
            "own differences show the noise).",
            "",
            markdown_table(
                [
                    "backend",
                    "call",
                    "off: CPU ms/call",
                    "on: CPU ms/call",
                    "difference",
                    "round by round",
                    "calls/s off / on",
                    f"aim ≤ {AIM_PCT:.0f}%",
                ],
                rows,
            ),
            "",
            f"Largest metrics page scraped: {pages}. The metric updates themselves, timed "
            "in one process without the network (so without this VM's noise): "
            + ", ".join(f"{k} {v:.1f} µs a call" for k, v in data["update_costs_us"].items())
            + ". An A/A run (`--same`: both processes with metrics off) shows how far two "
            "identical processes differ here: `bench/results/metrics-same.md`.",
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
        "scrape_every_s": args.scrape_every,
        "same": args.same,
        "quick": args.quick,
    }
    data["update_costs_us"] = update_costs_us()
    with workdir(args.keep_logs) as root:
        data["backends"] = [await bench_backend(b, root, args, duration) for b in backends]
    markdown = report(data)
    stem = "metrics-same" if args.same else "metrics-quick" if args.quick else "metrics"
    md_path, json_path = write_results(stem, markdown, data)
    print()
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")
    return 0


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(backends="postgres")
    parser.add_argument("--rounds", type=int, default=6, help="alternations of off and on")
    parser.add_argument(
        "--same",
        action="store_true",
        help="an A/A run: both servers with metrics off (what two processes differ by alone)",
    )
    parser.add_argument(
        "--scrape-every", type=float, default=15.0, help="seconds between scrapes (Prometheus's)"
    )
    args = parser.parse_args()
    install_uvloop()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
