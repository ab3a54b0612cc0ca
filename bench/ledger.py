"""ChargeTokens on one hot wallet, through the gRPC surface of a real `agentserver serve`.

    .venv/bin/python bench/ledger.py [--duration 4] [--backends sqlite,postgres] [--quick]

For each backend (a fresh SQLite file, a fresh PostgreSQL database) one server
subprocess is started as an operator would (auto-migrate, access log on unless
--no-access-log, monthly fee job off, no demo tenant). Each concurrency cell gets
its own freshly funded tenant, so every cell hammers exactly one wallet row. The
load generator is this process (closed loop, one grpc.aio channel by default) and
shares the machine's cores with the server: the table shows both CPU shares.

Also measured: a bare grpc.aio echo server (the gRPC ceiling, same client), an
overspend cell (a wallet funded with fewer tokens than the requests sent at
concurrency 64: exactly `funded` charges succeed, the balance ends at 0, nothing
goes negative), start-up time to health SERVING, and idle resident memory.

Writes bench/results/ledger.md and bench/results/ledger.json.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
from common import (  # noqa: E402
    CELL_HEADER,
    Call,
    Cell,
    Server,
    base_parser,
    cell_dicts,
    echo_caller,
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
    sql_scalar,
    workdir,
    write_results,
)

from agentserver.v1 import common_pb2, token_service_pb2, token_service_pb2_grpc  # noqa: E402

FUND = 100_000_000
TARGET_PG_RATE = 1000
TARGET_STARTUP_S = 2.0
TARGET_RSS_MB = 150.0


def charge_caller(tenant: str, key: str, acked: Counter[str]) -> Any:
    md = metadata_for(key, tenant)

    def make(channel: grpc.aio.Channel) -> Call:
        stub = token_service_pb2_grpc.TokenServiceStub(channel)

        async def call(i: int) -> None:
            await stub.ChargeTokens(
                token_service_pb2.ChargeTokensRequest(
                    tenant_id=tenant,
                    operation_type=common_pb2.OPERATION_TYPE_SMS,
                    amount=1,
                    request_id=f"{tenant}-{i}",
                ),
                metadata=md,
                timeout=30,
            )
            acked[tenant] += 1

        return call

    return make


def echo_payload(tenant: str) -> bytes:
    return token_service_pb2.ChargeTokensRequest(
        tenant_id=tenant,
        operation_type=common_pb2.OPERATION_TYPE_SMS,
        amount=1,
        request_id=f"{tenant}-000000",
    ).SerializeToString()


async def balance(target: str, tenant: str, key: str) -> token_service_pb2.Balance:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        resp = await stub.GetBalance(
            token_service_pb2.GetBalanceRequest(tenant_id=tenant),
            metadata=metadata_for(key, tenant),
            timeout=10,
        )
        return resp.balance


async def usage(target: str, tenant: str, key: str, max_pages: int = 1000) -> list[Any]:
    entries: list[Any] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        token = ""
        for _ in range(max_pages):
            resp = await stub.ListUsage(
                token_service_pb2.ListUsageRequest(
                    tenant_id=tenant, page_size=500, page_token=token
                ),
                metadata=metadata_for(key, tenant),
                timeout=30,
            )
            entries.extend(resp.entries)
            token = resp.next_page_token
            if not token:
                break
    return entries


async def overspend_cell(
    server: Server,
    db_url: str,
    tenant: str,
    key: str,
    *,
    requests: int,
    funded: int,
    counter: itertools.count[int],
    channels: int,
    acked: Counter[str],
) -> tuple[Cell, dict[str, Any]]:
    """`requests` charges of 1 token at concurrency 64 against `funded` tokens."""
    cell = await measure(
        charge_caller(tenant, key, acked),
        server.target,
        name=f"{server_backend(db_url)} overspend",
        concurrency=64,
        duration=120.0,  # bound; the cell ends after `requests` calls
        channels=channels,
        warmup=0,
        counter=counter,
        server_pid=server.pid,
        max_requests=requests,
    )
    bal = await balance(server.target, tenant, key)
    entries = await usage(server.target, tenant, key)
    charges = [e for e in entries if e.kind == token_service_pb2.ENTRY_KIND_CHARGE]
    negative_wallets = await sql_scalar(
        db_url,
        "SELECT count(*) FROM business_tokens"
        " WHERE total_tokens - used_tokens - reserved_tokens < 0",
    )
    negative_entries = await sql_scalar(
        db_url,
        "SELECT count(*) FROM token_usage_logs WHERE total_after - used_after - reserved_after < 0",
    )
    refused = cell.errors.get("FAILED_PRECONDITION", 0)
    other_errors = {k: v for k, v in cell.errors.items() if k != "FAILED_PRECONDITION"}
    violations = []
    if bal.available_tokens != 0:
        violations.append(f"available {bal.available_tokens} != 0")
    if cell.ok != funded:
        violations.append(f"{cell.ok} successful charges != {funded} funded tokens")
    if len(charges) != funded or sum(e.tokens for e in charges) != funded:
        violations.append(
            f"ListUsage shows {len(charges)} charges / {sum(e.tokens for e in charges)} tokens"
        )
    if any(e.available_after < 0 for e in entries):
        violations.append("an entry with negative available_after")
    if negative_wallets:
        violations.append(f"{negative_wallets} wallets below zero")
    if negative_entries:
        violations.append(f"{negative_entries} ledger rows below zero")
    if refused != requests - funded:
        violations.append(f"{refused} refused != {requests - funded} unfunded requests")
    if other_errors:
        violations.append(f"unexpected errors {other_errors}")
    check = {
        "requests": requests,
        "funded": funded,
        "ok": cell.ok,
        "refused_failed_precondition": refused,
        "other_errors": other_errors,
        "available_after": bal.available_tokens,
        "used_after": bal.used_tokens,
        "listusage_charge_entries": len(charges),
        "negative_wallets": negative_wallets,
        "negative_entries": negative_entries,
        "violations": violations,
        "overspend": "0" if not violations else "; ".join(violations),
    }
    cell.note = f"{requests} requests, {funded} funded: {cell.ok} ok, {refused} refused"
    return cell, check


def server_backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


async def few_calls(server: Server, tenant: str, key: str, acked: Counter[str]) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = charge_caller(tenant, key, acked)(channel)
        for i in range(20):
            await call(i)
    await balance(server.target, tenant, key)


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
    requests = 300 if args.quick else 2000
    funded = requests - max(1, requests // 20)
    acked: Counter[str] = Counter()
    async with fresh_database(backend, home) as db:
        tenants = {f"hot-c{c}": FUND for c in concurrencies}
        tenants |= {"overspend": funded, "idle": FUND}
        keys = await provision(db.url, tenants)
        settings = server_settings(db, access_log=not args.no_access_log)
        async with running(Server.agentserver(home, root / f"{backend}.log", **settings)) as srv:
            await few_calls(srv, "idle", keys["idle"], acked)
            idle_rss = srv.rss_mb()
            cells: list[Cell] = []
            for c in concurrencies:
                tenant = f"hot-c{c}"
                cell = await measure(
                    charge_caller(tenant, keys[tenant], acked),
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
            over, check = await overspend_cell(
                srv,
                db.url,
                "overspend",
                keys["overspend"],
                requests=requests,
                funded=funded,
                counter=counter,
                channels=args.channels,
                acked=acked,
            )
            print(f"{backend}: overspend: {check['overspend']}", flush=True)
            # Every acknowledged charge of every hot wallet is in its balance, once.
            consistency = {}
            for c in concurrencies:
                tenant = f"hot-c{c}"
                bal = await balance(srv.target, tenant, keys[tenant])
                consistency[tenant] = {
                    "acknowledged": acked[tenant],
                    "used_tokens": bal.used_tokens,
                    "available": bal.available_tokens,
                    "ok": bal.used_tokens == acked[tenant]
                    and bal.available_tokens == FUND - acked[tenant],
                }
            loaded_rss = srv.rss_mb()
        log_errors = srv.log_errors()
        return {
            "backend": backend,
            "startup_s": round(srv.startup_s, 3),
            "idle_rss_mb": round(idle_rss, 1),
            "rss_after_load_mb": round(loaded_rss, 1),
            "cells": cell_dicts(cells),
            "overspend_cell": cell_dicts([over])[0],
            "overspend_check": check,
            "consistency": consistency,
            "server_log_errors": log_errors[:20],
            "exit_code": srv.proc.returncode,
        }


async def bench_echo(
    root: Path,
    args: Any,
    concurrencies: list[int],
    duration: float,
    counter: itertools.count[int],
) -> list[Cell]:
    cells = []
    md = metadata_for("x" * 43, "echo")
    payload = echo_payload("echo")
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


async def bench_startup(root: Path, starts: int) -> dict[str, Any]:
    """Spawn to health SERVING on SQLite. `first`: an empty directory with no
    settings at all (the server migrates a new file and creates the demo tenant),
    as `make serve` does on a fresh clone; `restart`: the same directory again."""
    first, restart, rss = [], [], []
    for n in range(starts):
        home = root / f"startup-{n}"
        home.mkdir(parents=True)
        for kind in ("first", "restart"):
            srv = await Server.agentserver(home, root / f"startup-{n}.log")
            try:
                (first if kind == "first" else restart).append(srv.startup_s)
                rss.append(srv.rss_mb())
            finally:
                await srv.stop()
    return {
        "first_start_s": [round(x, 3) for x in first],
        "restart_s": [round(x, 3) for x in restart],
        "first_start_median_s": round(median(first), 3),
        "restart_median_s": round(median(restart), 3),
        "rss_right_after_start_mb": [round(x, 1) for x in rss],
    }


def verdict(ok: bool) -> str:
    return "pass" if ok else "**MISSED**"


def report(data: dict[str, Any]) -> str:
    rows = [Cell(**c).row() for c in data["echo"]]
    for b in data["backends"]:
        rows += [Cell(**c).row() for c in b["cells"]]
        rows.append(Cell(**b["overspend_cell"]).row())
    m = data["machine"]
    out = [
        "# ChargeTokens on one hot wallet",
        "",
        f"{m['date']} · {m['nproc']} cores ({m['cpu_model']}) · Python {m['python']} · "
        f"grpcio {m['grpcio']} · SQLite {m['sqlite']} · PostgreSQL {data['postgres_version']} · "
        f"1-min load average at start {m['loadavg_at_start'][0]:.2f}",
        "",
        f"Each cell: {data['duration_s']} s closed loop after a short warm-up; "
        f"{data['channels']} client channel(s); client on {data['client_loop']}; "
        f"server access log {'on' if data['access_log'] else 'off'}. One wallet row "
        "per cell (amount 1, a new request_id per call). The load generator runs in "
        "the bench process and **shares the same cores with the server**: "
        "'CPU server / bench / postgres' is each one's CPU time over the cell "
        "(100% = one core; postgres = all its processes), so the figures are a floor "
        "for a server with the machine to itself.",
        "",
        markdown_table(CELL_HEADER, rows),
        "",
    ]
    for b in data["backends"]:
        chk = b["overspend_check"]
        cons = all(v["ok"] for v in b["consistency"].values())
        out.append(
            f"- {b['backend']}: overspend: {chk['overspend']} ({chk['requests']} requests at "
            f"concurrency 64 on {chk['funded']} tokens: {chk['ok']} ok, "
            f"{chk['refused_failed_precondition']} FAILED_PRECONDITION, available after "
            f"{chk['available_after']}, {chk['listusage_charge_entries']} charge entries in "
            f"ListUsage, {chk['negative_wallets']} wallets below zero); hot wallets' used "
            f"tokens == acknowledged charges: {'yes' if cons else 'NO'}; server log errors: "
            f"{len(b['server_log_errors'])}; idle RSS {b['idle_rss_mb']} MB, after load "
            f"{b['rss_after_load_mb']} MB"
        )
    st = data["startup"]
    out += [
        f"- start-up to SERVING (SQLite, median of {len(st['first_start_s'])}): first start "
        f"in an empty directory (migrate + demo tenant) {st['first_start_median_s']} s "
        f"{st['first_start_s']}, restart {st['restart_median_s']} s {st['restart_s']}",
        "",
        "## Targets",
        "",
    ]
    t = data["targets"]
    out.append(
        markdown_table(
            ["target", "measured", "result"],
            [
                [
                    ">= 1,000 charges/s, one hot PostgreSQL wallet",
                    t["pg_rate_text"],
                    verdict(t["pg_rate_ok"]) if t["pg_rate_ok"] is not None else "not run",
                ],
                ["zero overspend", t["overspend_text"], verdict(t["overspend_ok"])],
                ["start-up < 2 s", t["startup_text"], verdict(t["startup_ok"])],
                ["idle RSS < 150 MB", t["rss_text"], verdict(t["rss_ok"])],
            ],
        )
    )
    return "\n".join(out)


async def run(args: Any, loop_name: str) -> int:
    duration = 1.0 if args.quick else args.duration
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counter = itertools.count()
    data: dict[str, Any] = {
        "benchmark": "ChargeTokens, one hot wallet",
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
        data["startup"] = await bench_startup(root, 1 if args.quick else 3)

    pg = next((b for b in data["backends"] if b["backend"] == "postgres"), None)
    sq = next((b for b in data["backends"] if b["backend"] == "sqlite"), None)
    st = data["startup"]
    targets: dict[str, Any] = {}
    if pg:
        rates = {c["concurrency"]: c["rate"] for c in pg["cells"]}
        targets["pg_rate_ok"] = min(rates[c] for c in rates if c > 1) >= TARGET_PG_RATE
        targets["pg_rate_text"] = ", ".join(f"c{c}: {r:,.0f}/s" for c, r in rates.items())
    else:
        targets["pg_rate_ok"], targets["pg_rate_text"] = None, "postgres not in --backends"
    checks = [b["overspend_check"] for b in data["backends"]]
    targets["overspend_ok"] = all(not c["violations"] for c in checks)
    targets["overspend_text"] = "; ".join(
        f"{b['backend']}: overspend: {b['overspend_check']['overspend']}" for b in data["backends"]
    )
    targets["startup_ok"] = max(st["first_start_median_s"], st["restart_median_s"]) < (
        TARGET_STARTUP_S
    )
    targets["startup_text"] = (
        f"first start {st['first_start_median_s']} s, restart {st['restart_median_s']} s"
    )
    idle = sq["idle_rss_mb"] if sq else max(st["rss_right_after_start_mb"])
    targets["rss_ok"] = idle < TARGET_RSS_MB
    targets["rss_text"] = f"{idle} MB (SQLite server after start and 21 calls)"
    data["targets"] = targets

    markdown = report(data)
    md_path, json_path = write_results("ledger-quick" if args.quick else "ledger", markdown, data)
    print()
    print(markdown)
    for b in data["backends"]:
        print(f"overspend: {b['overspend_check']['overspend']}  ({b['backend']})")
    print(f"\nwrote {md_path} and {json_path}")
    return 0 if targets["overspend_ok"] else 1


def main() -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    loop_name = install_uvloop()
    return asyncio.run(run(args, loop_name))


if __name__ == "__main__":
    sys.exit(main())
