"""AgentService.Process (offline engine) through the gRPC surface of a real
`agentserver serve`, beside the bare grpc.aio echo ceiling.

    .venv/bin/python bench/process.py [--duration 4] [--backends sqlite,postgres] [--quick]

Same shape as bench/ledger.py: one server subprocess per backend (a fresh SQLite
file, a fresh PostgreSQL database), the closed-loop load generator in this process
on the same cores, cells at concurrency 1, 16 and 64. Each cell has its own funded
tenant with an allow-everything business rule; every call is a new session
("Email john@example.com that the order shipped"). When the server answers
UNIMPLEMENTED (or anything else but OK) to a first probe call, the cells say so
and the script still writes its results.

Writes bench/results/process.md and bench/results/process.json.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
from common import (  # noqa: E402
    CELL_HEADER,
    Call,
    Cell,
    Metadata,
    Server,
    base_parser,
    cell_dicts,
    echo_caller,
    fresh_database,
    install_uvloop,
    machine_info,
    markdown_table,
    measure,
    metadata_for,
    postgres_version,
    provision,
    running,
    server_settings,
    workdir,
    write_results,
)

from agentserver.v1 import agent_service_pb2, agent_service_pb2_grpc  # noqa: E402

FUND = 100_000_000
USER = "bench-user"
MESSAGE = "Email john@example.com that the order shipped"
TARGET_RATE = 500
TARGET_P99_MS = 100.0
TARGET_CONCURRENCY = 16


def process_request() -> agent_service_pb2.ProcessRequest:
    return agent_service_pb2.ProcessRequest(
        message=MESSAGE, context=agent_service_pb2.ProcessContext(location_id="")
    )


def process_caller(md: Metadata) -> Any:
    request = process_request()

    def make(channel: grpc.aio.Channel) -> Call:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)

        async def call(_i: int) -> None:
            await stub.Process(request, metadata=md, timeout=30)

        return call

    return make


async def probe(target: str, md: Metadata) -> tuple[str, str, Any]:
    """One Process call: (status code name, details, response or None)."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            resp = await agent_service_pb2_grpc.AgentServiceStub(channel).Process(
                process_request(), metadata=md, timeout=30
            )
        except grpc.aio.AioRpcError as err:
            return err.code().name, err.details() or "", None
    return "OK", "", resp


def describe(resp: Any) -> dict[str, Any]:
    """A short, JSON-friendly summary of a ProcessResponse."""
    from google.protobuf.json_format import MessageToDict

    full = MessageToDict(resp)
    return {
        "response": full.get("response", ""),
        "decisionLevel": full.get("decisionLevel", ""),
        "engine": full.get("engine", ""),
        "actions": [
            {k: a.get(k) for k in ("actionType", "decisionLevel", "state", "tokenCost")}
            for a in full.get("actions", [])
        ],
    }


async def bench_backend(
    backend: str,
    root: Path,
    args: Any,
    concurrencies: list[int],
    duration: float,
    counter: itertools.count[int],
    echo_rates: dict[int, float],
) -> dict[str, Any]:
    home = root / backend
    home.mkdir(parents=True, exist_ok=True)
    async with fresh_database(backend, home) as db:
        tenants = {f"proc-c{c}": FUND for c in concurrencies} | {"probe": FUND}
        keys = await provision(db.url, tenants)
        settings = server_settings(db, access_log=not args.no_access_log)
        async with running(Server.agentserver(home, root / f"{backend}.log", **settings)) as srv:
            code, details, resp = await probe(
                srv.target, metadata_for(keys["probe"], "probe", USER)
            )
            print(f"{backend}: probe Process -> {code} {details}".rstrip(), flush=True)
            cells: list[Cell] = []
            for c in concurrencies:
                tenant = f"proc-c{c}"
                if code != "OK":
                    cells.append(Cell(backend, c, errors={code: 1}, note=f"Process: {code}"))
                    continue
                cell = await measure(
                    process_caller(metadata_for(keys[tenant], tenant, USER)),
                    srv.target,
                    name=backend,
                    concurrency=c,
                    duration=duration,
                    channels=args.channels,
                    warmup=0.3 if args.quick else 0.5,
                    counter=counter,
                    server_pid=srv.pid,
                )
                if echo_rates.get(c):
                    cell.note = f"{100 * cell.rate / echo_rates[c]:.0f}% of echo"
                cells.append(cell)
                print(markdown_table(CELL_HEADER, [cell.row()]).splitlines()[-1], flush=True)
            rss = srv.rss_mb()
        return {
            "backend": backend,
            "probe": {
                "code": code,
                "details": details,
                "response": describe(resp) if resp is not None else None,
            },
            "cells": cell_dicts(cells),
            "rss_after_load_mb": round(rss, 1),
            "server_log_errors": srv.log_errors()[:20],
        }


async def bench_echo(
    root: Path, args: Any, concurrencies: list[int], duration: float, counter: itertools.count[int]
) -> list[Cell]:
    cells = []
    md = metadata_for("x" * 43, "echo", USER)
    payload = process_request().SerializeToString()
    async with running(Server.echo(root / "echo.log")) as srv:
        for c in concurrencies:
            cell = await measure(
                lambda ch: echo_caller(ch, payload, md),
                srv.target,
                name="echo",
                concurrency=c,
                duration=duration,
                channels=args.channels,
                warmup=0.3 if args.quick else 0.5,
                counter=counter,
                server_pid=srv.pid,
            )
            cells.append(cell)
            print(markdown_table(CELL_HEADER, [cell.row()]).splitlines()[-1], flush=True)
    return cells


def report(data: dict[str, Any]) -> str:
    rows = [Cell(**c).row() for c in data["echo"]]
    for b in data["backends"]:
        rows += [Cell(**c).row() for c in b["cells"]]
    m = data["machine"]
    out = [
        "# AgentService.Process (offline engine)",
        "",
        f"{m['date']} · {m['nproc']} cores ({m['cpu_model']}) · Python {m['python']} · "
        f"grpcio {m['grpcio']} · SQLite {m['sqlite']} · PostgreSQL {data['postgres_version']} · "
        f"1-min load average at start {m['loadavg_at_start'][0]:.2f}",
        "",
        f"Each cell: {data['duration_s']} s closed loop after a short warm-up; "
        f"{data['channels']} client channel(s); client on {data['client_loop']}; "
        f"server access log {'on' if data['access_log'] else 'off'}. Message: "
        f"{MESSAGE!r}, a new session per call, `x-user-id: {USER}`. The load generator "
        "runs in the bench process and **shares the same cores with the server** "
        "('CPU server / bench / postgres': CPU time over the cell, 100% = one core). "
        "'server CPU ms/call' is the server's CPU time per successful call: this VM's "
        "speed drifts by up to 2x within a day, so compare it with the echo row's "
        "of the same run rather than calls/s across runs.",
        "",
        markdown_table(CELL_HEADER, rows),
        "",
    ]
    for b in data["backends"]:
        p = b["probe"]
        line = f"- {b['backend']}: probe Process -> {p['code']}"
        if p["details"]:
            line += f" ({p['details']})"
        if p["response"]:
            line += f"; response starts {p['response']}"
        line += f"; server log errors: {len(b['server_log_errors'])}"
        out.append(line)
    t = data["target"]
    out += [
        "",
        "## Target",
        "",
        markdown_table(
            ["target", "measured", "result"],
            [
                [
                    f">= {TARGET_RATE} Process/s with p99 < {TARGET_P99_MS:.0f} ms on PostgreSQL "
                    f"at concurrency {TARGET_CONCURRENCY}",
                    t["text"],
                    t["result"],
                ]
            ],
        ),
    ]
    return "\n".join(out)


def judge(data: dict[str, Any]) -> dict[str, Any]:
    pg = next((b for b in data["backends"] if b["backend"] == "postgres"), None)
    if pg is None:
        return {"ok": None, "text": "postgres not in --backends", "result": "not run"}
    if pg["probe"]["code"] != "OK":
        code = pg["probe"]["code"]
        return {
            "ok": None,
            "text": f"Process answered {code}",
            "result": f"not measurable ({code})",
        }
    cell = next((c for c in pg["cells"] if c["concurrency"] == TARGET_CONCURRENCY), None)
    if cell is None:
        return {
            "ok": None,
            "text": f"no concurrency {TARGET_CONCURRENCY} cell",
            "result": "not run",
        }
    ok = cell["rate"] >= TARGET_RATE and cell["p99_ms"] < TARGET_P99_MS and not cell["errors"]
    text = f"{cell['rate']:,.0f}/s, p99 {cell['p99_ms']:.1f} ms"
    if cell["errors"]:
        text += f", errors {cell['errors']}"
    return {"ok": ok, "text": text, "result": "pass" if ok else "**MISSED**"}


async def run(args: Any, loop_name: str) -> int:
    duration = 1.0 if args.quick else args.duration
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counter = itertools.count()
    data: dict[str, Any] = {
        "benchmark": "AgentService.Process, offline engine",
        "machine": machine_info(),
        "postgres_version": await postgres_version() if "postgres" in backends else "not used",
        "duration_s": duration,
        "channels": args.channels,
        "client_loop": loop_name,
        "access_log": not args.no_access_log,
        "quick": args.quick,
    }
    print(markdown_table(CELL_HEADER, []), flush=True)
    with workdir(args.keep_logs) as root:
        data["echo"] = cell_dicts(await bench_echo(root, args, concurrencies, duration, counter))
        echo_rates = {c["concurrency"]: c["rate"] for c in data["echo"]}
        data["backends"] = [
            await bench_backend(b, root, args, concurrencies, duration, counter, echo_rates)
            for b in backends
        ]
    data["target"] = judge(data)
    markdown = report(data)
    md_path, json_path = write_results("process-quick" if args.quick else "process", markdown, data)
    print()
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")
    return 0


def main() -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    loop_name = install_uvloop()
    return asyncio.run(run(args, loop_name))


if __name__ == "__main__":
    sys.exit(main())
