"""GetBalance three ways in the same run: native gRPC, the built-in gRPC-web endpoint,
and gRPC-web through Envoy (deploy/envoy.yaml as rendered, the real Envoy binary),
all against one real `agentserver serve` on a fresh SQLite file.

    .venv/bin/python bench/grpc_web.py [--duration 4] [--concurrency 1,16] [--quick]

The gRPC-web clients are connectrpc's (pyqwest underneath, HTTP/1.1 keep-alive, one
client per way, as a browser keeps a few connections); the native client is grpc.aio.
Cells run interleaved (native, built-in, Envoy at each concurrency) so a drift of
the machine's speed hits all three alike. Ratios are calls/s against native at the
same concurrency. Writes bench/results/grpc_web.md and bench/results/grpc_web.json.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import grpc  # noqa: E402
from common import (  # noqa: E402
    CELL_HEADER,
    Cell,
    Server,
    base_parser,
    cell_dicts,
    free_port,
    fresh_database,
    load,
    machine_info,
    markdown_table,
    metadata_for,
    proc_cpu_seconds,
    provision,
    server_settings,
    workdir,
    write_results,
)
from connectrpc.errors import ConnectError  # noqa: E402
from connectrpc.protocol import ProtocolType  # noqa: E402

from agentserver.v1 import token_service_connect, token_service_pb2_grpc  # noqa: E402
from agentserver.v1 import token_service_pb2 as pb  # noqa: E402
from tests.procs import start_envoy  # noqa: E402

TENANT = "bench-web"


def as_grpc_error(err: ConnectError) -> grpc.aio.AioRpcError:
    """The load generator counts gRPC errors by code; say a ConnectError the same way."""
    code = grpc.StatusCode[err.code.name.replace("CANCELED", "CANCELLED")]
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), err.message)


async def main() -> None:
    p = base_parser(__doc__ or "")
    p.set_defaults(concurrency="1,16", backends="sqlite")
    args = p.parse_args()
    duration, warmup = (1.0, 0.3) if args.quick else (args.duration, 1.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    with workdir(args.keep_logs) as work:
        async with fresh_database("sqlite", work) as db:
            keys = await provision(db.url, {TENANT: 1_000_000})
            key = keys[TENANT]
            web_port = free_port()
            settings = server_settings(db, access_log=not args.no_access_log)
            settings.pop("web_listen")
            server = await Server.agentserver(
                work, work / "server.log", web_listen=f"127.0.0.1:{web_port}", **settings
            )
            envoy, envoy_port = await asyncio.to_thread(
                start_envoy, work, server.target, ("http://127.0.0.1",)
            )
            try:
                cells, ratios = await run(
                    server, key, web_port, envoy_port, envoy.pid, levels, duration, warmup
                )
            finally:
                envoy.terminate()
                await asyncio.to_thread(envoy.wait, 10)
                await server.stop()
    report(cells, ratios, args, duration)


async def run(
    server: Server,
    key: str,
    web_port: int,
    envoy_port: int,
    envoy_pid: int,
    levels: list[int],
    duration: float,
    warmup: float,
) -> tuple[list[Cell], list[dict[str, Any]]]:
    request = pb.GetBalanceRequest(tenant_id=TENANT)
    metadata = metadata_for(key, TENANT)
    headers = dict(metadata)
    counter = itertools.count()
    channel = grpc.aio.insecure_channel(server.target)
    stub = token_service_pb2_grpc.TokenServiceStub(channel)
    clients = {
        way: token_service_connect.TokenServiceClient(
            f"http://127.0.0.1:{port}",
            protocol=ProtocolType.GRPC_WEB,
            send_compression=None,
            accept_compression=(),
        )
        for way, port in (("built-in gRPC-web", web_port), ("Envoy gRPC-web", envoy_port))
    }

    async def native(_: int) -> None:
        await stub.GetBalance(request, metadata=metadata, timeout=10)

    def web(client: Any) -> Any:
        async def call(_: int) -> None:
            try:
                await client.get_balance(request, headers=headers, timeout_ms=10_000)
            except ConnectError as err:
                raise as_grpc_error(err) from None

        return call

    ways = {"native gRPC": native, **{w: web(c) for w, c in clients.items()}}
    cells: list[Cell] = []
    ratios: list[dict[str, Any]] = []
    try:
        for concurrency in levels:
            rates: dict[str, float] = {}
            for name, call in ways.items():
                await load(
                    [call],
                    concurrency=concurrency,
                    duration=warmup,
                    max_requests=10**9,
                    counter=counter,
                    cell=Cell(name, concurrency),
                )
                envoy0 = proc_cpu_seconds(envoy_pid)
                cell = await load(
                    [call],
                    concurrency=concurrency,
                    duration=duration,
                    max_requests=10**9,
                    counter=counter,
                    server_pid=server.pid,
                    cell=Cell(name, concurrency),
                )
                if name.startswith("Envoy"):
                    envoy_pct = 100 * (proc_cpu_seconds(envoy_pid) - envoy0) / cell.seconds
                    cell.note = f"Envoy CPU {envoy_pct:.0f}%"
                cells.append(cell)
                rates[name] = cell.rate
                print(" | ".join(cell.row()), flush=True)
            base = rates["native gRPC"] or float("nan")
            ratios.append(
                {
                    "concurrency": concurrency,
                    "native_calls_per_s": rates["native gRPC"],
                    "builtin_ratio": round(rates["built-in gRPC-web"] / base, 3),
                    "envoy_ratio": round(rates["Envoy gRPC-web"] / base, 3),
                }
            )
    finally:
        await channel.close()
        for client in clients.values():
            await client.close()
    return cells, ratios


def report(cells: list[Cell], ratios: list[dict[str, Any]], args: Any, duration: float) -> None:
    ratio_rows = [
        [
            str(r["concurrency"]),
            f"{r['native_calls_per_s']:,.0f}",
            f"{100 * r['builtin_ratio']:.0f}%",
            f"{100 * r['envoy_ratio']:.0f}%",
        ]
        for r in ratios
    ]
    md = "\n".join(
        [
            "# GetBalance: native gRPC, built-in gRPC-web, gRPC-web through Envoy",
            "",
            f"`bench/grpc_web.py`, {duration:g} s per cell, SQLite, one `agentserver serve`,"
            " Envoy 1.40 with deploy/envoy.yaml as rendered. Ratios: calls/s of each way"
            " over native gRPC at the same concurrency, same run (aim: Envoy ≥ 80%,"
            " built-in ≥ 50%).",
            "",
            markdown_table(
                ["concurrency", "native calls/s", "built-in / native", "Envoy / native"], ratio_rows
            ),
            "",
            markdown_table(CELL_HEADER, [c.row() for c in cells]),
            "",
        ]
    )
    print(md)
    if not args.quick:
        write_results(
            "grpc_web",
            md,
            {"machine": machine_info(), "ratios": ratios, "cells": cell_dicts(cells)},
        )


if __name__ == "__main__":
    asyncio.run(main())
