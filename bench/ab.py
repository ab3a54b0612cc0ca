"""Process and ChargeTokens on PostgreSQL: this checkout against another (an earlier
commit) and the bare echo server, all running at once, the load alternating between
them in short slices.

    .venv/bin/python bench/ab.py --other ../baseline [--slices 16] [--slice 2] [--cells all]

This machine's speed drifts by up to 2x within minutes, so figures taken a minute
apart cannot be compared. Here the three servers are up together and each cell
(Process at concurrency 1 and 16, ChargeTokens on one hot wallet at 16) gives each
server `--slice` seconds in turn, `--slices` times, in alternating order: drift
falls on all of them alike. Per server: calls/s over its slices, server CPU (user
and system) per call, and the share of the echo server's calls/s; per slice pair,
this checkout's calls/s as a share of the other's (median and quartiles).

The other checkout needs its own `.venv` (`git worktree add ../baseline <commit>
&& make -C ../baseline setup`). Each checkout's server is provisioned by its own
code (this script runs `bench/common.py`'s `provision` under that checkout's
interpreter) and started from its own `.venv`; one load generator (this process)
drives all three.

Writes bench/results/ab.md and bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
from common import (  # noqa: E402
    CHANNEL_OPTIONS,
    REPO,
    Call,
    Cell,
    Server,
    echo_caller,
    free_port,
    fresh_database,
    load,
    machine_info,
    markdown_table,
    metadata_for,
    proc_cpu_seconds,
    server_env,
    server_settings,
    workdir,
    write_results,
)
from ledger import charge_caller, echo_payload  # noqa: E402
from process import process_caller, process_request  # noqa: E402

CELLS = (("process", 1), ("process", 16), ("ledger", 16))
FUND = 100_000_000
_PROVISION = """
import asyncio, json, sys
sys.path[:0] = [sys.argv[1] + "/bench"]
from common import provision
print(json.dumps(asyncio.run(provision(sys.argv[2], {"t": int(sys.argv[3])}))))
"""


def cells(names: str) -> list[tuple[str, int]]:
    """`--cells`: which of CELLS to run, as `bench:concurrency` names."""
    if names == "all":
        return list(CELLS)
    known = {f"{b}:{c}": (b, c) for b, c in CELLS}
    picked = [known.get(n.strip()) for n in names.split(",")]
    if None in picked:
        raise SystemExit(f"--cells: pick from {', '.join(known)} (or all)")
    return [c for c in picked if c is not None]


def git_head(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()[:90]


async def start_checkout(
    repo: Path, root: Path, stack: contextlib.AsyncExitStack, name: str
) -> tuple[Server, str]:
    """A fresh PostgreSQL database provisioned by `repo`'s own code, and `repo`'s
    `agentserver serve` on it; (server, the tenant's key)."""
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    db = await stack.enter_async_context(fresh_database("postgres", home))
    python = str(repo / ".venv" / "bin" / "python")
    done = await asyncio.to_thread(
        subprocess.run,
        [python, "-c", _PROVISION, str(repo), db.url, str(FUND)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise SystemExit(f"{repo}: provisioning failed:\n{done.stderr[-2000:]}")
    key = json.loads(done.stdout.strip().splitlines()[-1])["t"]
    port = free_port()
    settings = server_settings(db, access_log=True) | {"listen": f"127.0.0.1:{port}"}
    argv = [str(repo / ".venv" / "bin" / "agentserver"), "serve"]
    server = await Server.spawn(
        argv, root / name, root / f"{name}.log", server_env(**settings), port
    )
    stack.push_async_callback(server.stop)
    return server, key


def caller(bench: str, side: str, key: str) -> Callable[[grpc.aio.Channel], Call]:
    if side == "echo":
        payload = process_request().SerializeToString() if bench == "process" else echo_payload("t")
        md = metadata_for("x" * 43, "t", "bench-user")
        return lambda ch: echo_caller(ch, payload, md)
    if bench == "process":
        return process_caller(metadata_for(key, "t", "bench-user"))
    return charge_caller("t", key, Counter())


async def run_cell(
    bench: str,
    concurrency: int,
    servers: dict[str, tuple[Server, str]],
    slices: int,
    seconds: float,
    counter: itertools.count[int],
) -> dict[str, Any]:
    channels = {
        side: grpc.aio.insecure_channel(srv.target, options=CHANNEL_OPTIONS)
        for side, (srv, _) in servers.items()
    }
    try:
        calls = {side: [caller(bench, side, servers[side][1])(ch)] for side, ch in channels.items()}
        per: dict[str, list[dict[str, float]]] = {side: [] for side in servers}

        async def one(side: str, duration: float) -> dict[str, float]:
            pid = servers[side][0].pid
            cpu0 = proc_cpu_seconds(pid)
            cell = await load(
                calls[side],
                concurrency=concurrency,
                duration=duration,
                max_requests=10**9,
                counter=counter,
                cell=Cell(side, concurrency),
            )
            cpu = proc_cpu_seconds(pid) - cpu0
            errors = sum(cell.errors.values())
            if errors:
                raise SystemExit(f"{side} {bench}: {cell.errors}")
            return {
                "ok": cell.ok,
                "seconds": cell.seconds,
                "cpu": cpu,  # user and system
                # Only this server's database is busy during its slice.
                "postgres": cell.postgres_cpu_pct * cell.seconds / 100,
            }

        order = list(servers)
        for side in order:  # warm-up
            await one(side, 1.0)
        for k in range(slices):
            for side in order if k % 2 == 0 else order[::-1]:
                per[side].append(await one(side, seconds))
    finally:
        for ch in channels.values():
            await ch.close()
    summary: dict[str, Any] = {}
    for side, rows in per.items():
        ok = sum(r["ok"] for r in rows)
        elapsed = sum(r["seconds"] for r in rows)
        summary[side] = {
            "calls": ok,
            "rate": ok / elapsed,
            "cpu_ms": 1000 * sum(r["cpu"] for r in rows) / ok,
            "postgres_ms": 1000 * sum(r["postgres"] for r in rows) / ok,
        }
    for side in ("this", "other"):
        summary[side]["echo_share"] = summary[side]["rate"] / summary["echo"]["rate"]
    ratios = [
        (t["ok"] / t["seconds"]) / (o["ok"] / o["seconds"])
        for t, o in zip(per["this"], per["other"], strict=True)
    ]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "bench": bench,
        "concurrency": concurrency,
        "sides": summary,
        "slices": per,
        "this_over_other": {
            "total": summary["this"]["rate"] / summary["other"]["rate"],
            "median": statistics.median(ratios),
            "q1": quartiles[0],
            "q3": quartiles[2],
        },
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    counter = itertools.count()
    results = []
    with workdir(False) as root:
        async with contextlib.AsyncExitStack() as stack:
            servers = {
                "other": await start_checkout(args.other.resolve(), root, stack, "other"),
                "this": await start_checkout(REPO, root, stack, "this"),
            }
            echo = await Server.echo(root / "echo.log")
            stack.push_async_callback(echo.stop)
            servers["echo"] = (echo, "")
            for bench, conc in cells(args.cells):
                r = await run_cell(bench, conc, servers, args.slices, args.slice, counter)
                results.append(r)
                s, v = r["sides"], r["this_over_other"]
                print(
                    f"{bench:7} c{conc:<3} other {s['other']['rate']:7.0f}/s"
                    f" ({s['other']['echo_share']:.0%} of echo),"
                    f" this {s['this']['rate']:7.0f}/s ({s['this']['echo_share']:.0%}):"
                    f" this/other {v['total']:.0%}, median of slices {v['median']:.0%}",
                    flush=True,
                )
    return results


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    rows = []
    for r in results:
        s, v = r["sides"], r["this_over_other"]
        rows.append(
            [
                r["bench"],
                str(r["concurrency"]),
                f"{s['echo']['rate']:,.0f}",
                f"{s['other']['rate']:,.0f} ({s['other']['echo_share']:.0%})",
                f"{s['this']['rate']:,.0f} ({s['this']['echo_share']:.0%})",
                f"{v['total']:.0%} ({v['q1']:.0%}–{v['q3']:.0%})",
                f"{s['other']['cpu_ms']:.2f}",
                f"{s['this']['cpu_ms']:.2f}",
                f"{s['other']['postgres_ms']:.2f}",
                f"{s['this']['postgres_ms']:.2f}",
            ]
        )
    info = machine_info()
    other = args.other.resolve()
    markdown = "\n\n".join(
        [
            "# This checkout against another, interleaved (PostgreSQL)",
            f"{info['date']} · {info['nproc']} cores ({info['cpu_model']}) ·"
            f" {args.slices} slices of {args.slice:g} s per server and cell",
            f"other: `{git_head(other)}`  \nthis: `{git_head(REPO)}`",
            "Both checkouts' servers and the bare echo server run at once; each cell gives"
            " each server a slice in turn, alternating the order. Calls/s over the slices"
            " (in brackets, the share of the echo server's); this / other: calls/s over all"
            " slices (in brackets, the quartiles of the slice pairs' ratios); server CPU"
            " (user and system) per call, and PostgreSQL's (all its processes; only the"
            " loaded server's database is busy during a slice).",
            markdown_table(
                [
                    "bench",
                    "concurrency",
                    "echo calls/s",
                    "other calls/s",
                    "this calls/s",
                    "this / other",
                    "other CPU ms/call",
                    "this CPU ms/call",
                    "other PostgreSQL ms/call",
                    "this PostgreSQL ms/call",
                ],
                rows,
            ),
            'Process: a new session per call ("Email john@example.com that the order'
            ' shipped"), offline engine; ChargeTokens: one SMS token from one tenant wallet.',
        ]
    )
    data = {
        "benchmark": "ab",
        "machine": info,
        "other": git_head(other),
        "this": git_head(REPO),
        "slices": args.slices,
        "slice_seconds": args.slice,
        "cells": results,
    }
    return markdown, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, required=True, help="the other checkout (with .venv)")
    p.add_argument("--slices", type=int, default=16, help="slices per server and cell")
    p.add_argument("--slice", type=float, default=2.0, help="seconds per slice")
    p.add_argument(
        "--cells", default="all", help="comma-separated: process:1, process:16, ledger:16"
    )
    args = p.parse_args()
    if args.slices < 2:
        raise SystemExit("--slices must be at least 2")
    cells(args.cells)  # refuse an unknown name before starting anything
    results = asyncio.run(run(args))
    markdown, data = report(args, results)
    md_path, json_path = write_results("ab", markdown, data)
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
