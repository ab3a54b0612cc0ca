"""Events out on PostgreSQL: commit-to-delivery for webhooks and NATS JetStream, and
what the outbox's NOTIFY trigger costs the hot paths.

    .venv/bin/python bench/events.py [--events 3000] [--duration 4] [--quick]

1. Delivery: a real `agentserver serve` on a fresh PostgreSQL database with NATS
   configured and one webhook endpoint pointing at a receiver in this process
   (answers 200 at once, checks nothing: the tests check signatures). A load of
   ChargeTokens calls at concurrency 16 commits one `ledger.entry` event each; the
   receiver and a JetStream consumer in this process record when each event
   arrives. Delay = arrival - the event's commit time (its `timestamp`, the
   writing transaction's clock; same machine clock). Rate = events delivered /
   (last arrival - first commit).
2. NOTIFY cost: ChargeTokens and Process at concurrency 16 on PostgreSQL, with the
   outbox's NOTIFY trigger (migration 0010; disabled by default) enabled and without
   it, alternated; rates, server CPU per call and PostgreSQL's CPU. Then the outbox
   write alone by pgbench, with and without, at 1 and 16 clients.

Everything runs on the same two cores (server, PostgreSQL, NATS, load generator,
receiver): the figures are floors. Writes bench/results/events.md and .json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
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
    fresh_database,
    install_uvloop,
    machine_info,
    markdown_table,
    measure,
    metadata_for,
    percentile,
    postgres_version,
    provision,
    running,
    server_settings,
    workdir,
    write_results,
)
from ledger import charge_caller  # noqa: E402
from process import process_caller  # noqa: E402

from agentserver.adapters.secrets import generate_key  # noqa: E402
from agentserver.v1 import webhook_service_pb2, webhook_service_pb2_grpc  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

NATS_URL = "nats://127.0.0.1:4222"
# A tenant of its own each run: event ids derive from (tenant, seq), and JetStream
# drops an id it saw within its duplicate window (an earlier run's).
TENANT = f"events-bench-{uuid.uuid4().hex[:8]}"


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def summary(name: str, arrivals: dict[str, float], commits: dict[str, float]) -> dict[str, Any]:
    delays = sorted((arrivals[i] - commits[i]) * 1000 for i in arrivals if i in commits)
    span = max(arrivals.values()) - min(commits.values()) if arrivals else 0.0
    return {
        "path": name,
        "delivered": len(arrivals),
        "rate": len(arrivals) / span if span > 0 else 0.0,
        "p50_ms": percentile(delays, 0.50),
        "p99_ms": percentile(delays, 0.99),
        "max_ms": delays[-1] if delays else 0.0,
    }


async def bench_delivery(root: Path, events: int) -> dict[str, Any]:
    import nats

    from agentserver.app import build_app
    from agentserver.config import Settings

    async with fresh_database("postgres", root) as db:
        keys = await provision(db.url, {TENANT: 10 * events})
        secret_keys = generate_key()
        app = await build_app(Settings(database_url=db.url, secret_keys=secret_keys))
        try:
            _, hooks_key = await app.admin.create_key(
                TENANT, ["webhooks"], "bench hooks", app.clock.now()
            )
        finally:
            await app.close()
        settings = server_settings(db, access_log=False)
        settings |= {
            "secret_keys": secret_keys,
            "webhook_allowed_networks": "127.0.0.0/8",
            "nats_url": NATS_URL,
            "nats_max_age_seconds": "3600",
        }
        webhook_at: dict[str, float] = {}
        commits: dict[str, float] = {}
        nats_at: dict[str, float] = {}

        def on_webhook(request: Any) -> Any:
            from tests.receiver import Answer

            webhook_at.setdefault(request.id, time.time())
            body = json.loads(request.body)
            commits[body["id"]] = _parse_time(body["timestamp"])
            return Answer(200)

        async def arrived(n: int) -> None:
            for _ in range(1200):  # bounded: at most two minutes
                if len(webhook_at) >= n and len(nats_at) >= n:
                    return
                await asyncio.sleep(0.1)

        nc = await nats.connect(NATS_URL)
        try:

            async def on_nats(msg: Any) -> None:
                assert msg.headers is not None
                nats_at.setdefault(msg.headers["Nats-Msg-Id"], time.time())

            await nc.jetstream().subscribe(
                f"agentserver.{TENANT}.ledger.entry",
                cb=on_nats,
                deliver_policy="new",
                ordered_consumer=True,
            )
            async with Receiver(on_webhook) as receiver:
                # 1. Live: events delivered while they are being written.
                async with running(
                    Server.agentserver(root, root / "events.log", **settings)
                ) as server:
                    async with grpc.aio.insecure_channel(server.target) as channel:
                        await webhook_service_pb2_grpc.WebhookServiceStub(
                            channel
                        ).CreateWebhookEndpoint(
                            webhook_service_pb2.CreateWebhookEndpointRequest(url=receiver.url),
                            metadata=metadata_for(hooks_key, TENANT),
                        )
                    write = await measure(
                        charge_caller(TENANT, keys[TENANT], Counter()),
                        server.target,
                        name="ChargeTokens (writes)",
                        concurrency=16,
                        duration=600,
                        channels=1,
                        warmup=0,
                        counter=itertools.count(),
                        server_pid=server.pid,
                        max_requests=events,
                    )
                    await arrived(events)
                live = [
                    summary("webhook", webhook_at, commits),
                    summary("NATS JetStream", nats_at, commits),
                ]
                # 2. Drain: a backlog written while no server ran, then one starts.
                await write_backlog(db.url, secret_keys, events)
                webhook_at.clear()
                nats_at.clear()
                async with running(
                    Server.agentserver(root, root / "events-drain.log", **settings)
                ) as server:
                    ready = time.time()
                    await arrived(events)
                drain = [
                    drained("webhook", webhook_at, ready),
                    drained("NATS JetStream", nats_at, ready),
                ]
        finally:
            await nc.close()
        return {"events": events, "write_rate": write.rate, "live": live, "drain": drain}


def drained(name: str, arrivals: dict[str, float], ready: float) -> dict[str, Any]:
    span = max(arrivals.values()) - ready if arrivals else 0.0
    return {"path": name, "delivered": len(arrivals), "rate": len(arrivals) / span if span else 0}


async def write_backlog(url: str, secret_keys: str, events: int) -> None:
    """`events` charges straight through the ledger (no server running)."""
    from agentserver.app import build_app
    from agentserver.config import Settings
    from agentserver.domain.costs import OperationType
    from agentserver.domain.ledger import Debit

    app = await build_app(Settings(database_url=url, secret_keys=secret_keys))
    try:
        for start in range(0, events, 100):
            await asyncio.gather(
                *(
                    app.ledger.charge(Debit(TENANT, "", OperationType.SMS, 1, f"backlog-{i}"))
                    for i in range(start, min(events, start + 100))
                )
            )
    finally:
        await app.close()


async def bench_notify(root: Path, duration: float, rounds: int) -> list[dict[str, Any]]:
    """ChargeTokens and Process at concurrency 16 with and without the trigger,
    alternated (with, without, with, without, ...) on fresh databases."""
    rows: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for trigger in (True, False):
            async with fresh_database("postgres", root) as db:
                keys = await provision(db.url, {"charge": 10**9, "process": 10**9})
                await set_trigger(db.url, trigger)
                settings = server_settings(db, access_log=False)
                label = "with NOTIFY" if trigger else "without"
                async with running(
                    Server.agentserver(root, root / f"notify-{round_}-{trigger}.log", **settings)
                ) as server:
                    cells: list[Cell] = []
                    for name, make in (
                        ("ChargeTokens", charge_caller("charge", keys["charge"], Counter())),
                        (
                            "Process",
                            process_caller(metadata_for(keys["process"], "process", "bench")),
                        ),
                    ):
                        cell = await measure(
                            make,
                            server.target,
                            name=f"{name} {label}",
                            concurrency=16,
                            duration=duration,
                            channels=1,
                            warmup=0.5,
                            counter=itertools.count(),
                            server_pid=server.pid,
                        )
                        cells.append(cell)
                        print(markdown_table(CELL_HEADER, [cell.row()]).splitlines()[-1])
                rows.append({"round": round_, "trigger": trigger, "cells": cell_dicts(cells)})
    return rows


PGBENCH_SCRIPT = """\\set t random(1, 16)
WITH sq AS (UPDATE tenants SET event_seq = event_seq + 1 WHERE id = 'pb' || :t
            RETURNING event_seq)
INSERT INTO outbox (tenant_id, seq, aggregate_type, aggregate_id, type, payload, created_at)
SELECT 'pb' || :t, sq.event_seq, 'wallet', 'w', 'ledger.entry', '{}'::json, now() FROM sq;
"""


async def bench_pgbench(root: Path, duration: float, rounds: int) -> list[dict[str, Any]]:
    """The outbox write alone (the writers' own statement shape: the tenant's sequence
    and one event, one transaction), by pgbench at 1 and 16 clients, with and
    without the trigger, alternated: PostgreSQL's side of the NOTIFY cost, without
    Python in the way."""
    import shutil

    if shutil.which("pgbench") is None:
        return []
    script = root / "outbox.sql"
    script.write_text(PGBENCH_SCRIPT)
    rows: list[dict[str, Any]] = []
    async with fresh_database("postgres", root) as db:
        await provision(db.url, {f"pb{i}": 0 for i in range(1, 17)})
        dsn = db.url.replace("postgresql+asyncpg", "postgresql")
        for round_ in range(rounds):
            for trigger in (True, False):
                await set_trigger(db.url, trigger)
                for clients in (1, 16):
                    proc = await asyncio.create_subprocess_exec(
                        "pgbench",
                        "-n",
                        "-c",
                        str(clients),
                        "-j",
                        "2",
                        "-T",
                        str(max(1, int(duration))),
                        "-f",
                        str(script),
                        dsn,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                    out, _ = await proc.communicate()
                    tps = 0.0
                    for line in out.decode().splitlines():
                        if line.startswith("tps = "):
                            tps = float(line.split()[2])
                    rows.append(
                        {"round": round_, "trigger": trigger, "clients": clients, "tps": tps}
                    )
                    print(rows[-1], flush=True)
    return rows


def migration_0010() -> Any:
    """The migration that made the trigger (its SQL, as written there)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "migrations" / "versions" / "0010_events_out.py"
    spec = importlib.util.spec_from_file_location("migration_0010", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def set_trigger(url: str, on: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS outbox_notify ON outbox"))
            if on:
                await conn.execute(text(migration_0010().NOTIFY_TRIGGER))
    finally:
        await engine.dispose()


def report(data: dict[str, Any]) -> str:
    d = data["delivery"]
    lines = [
        "# Events out: commit to delivery, and the cost of NOTIFY",
        "",
        f"{data['when']} · {data['machine']['nproc']} cores ({data['machine']['cpu_model']}) · "
        f"1-min load average at start {data['machine']['loadavg_at_start'][0]:.2f} · "
        f"PostgreSQL {data['postgres_version']} · server, PostgreSQL, NATS, load generator "
        "and receivers share the same cores: floors, not ceilings.",
        "",
        f"## Commit to delivery, live ({d['events']} events written by ChargeTokens at "
        f"concurrency 16, {d['write_rate']:,.0f}/s)",
        "",
        "Delivery keeps pace with the writes when its rate equals theirs; the delay is "
        "from the event's commit to its arrival at the receiver or the NATS consumer.",
        "",
        markdown_table(
            ["path", "delivered", "events/s", "delay p50 ms", "delay p99 ms", "max ms"],
            [
                [
                    p["path"],
                    str(p["delivered"]),
                    f"{p['rate']:,.0f}",
                    f"{p['p50_ms']:.1f}",
                    f"{p['p99_ms']:.1f}",
                    f"{p['max_ms']:.1f}",
                ]
                for p in d["live"]
            ],
        ),
        "",
        f"## Draining a backlog ({d['events']} events written while no server ran)",
        "",
        "The most a replica delivers: events per second from the server being ready to "
        "the last arrival.",
        "",
        markdown_table(
            ["path", "delivered", "events/s"],
            [[p["path"], str(p["delivered"]), f"{p['rate']:,.0f}"] for p in d["drain"]],
        ),
        "",
        "## The NOTIFY trigger on the hot paths (PostgreSQL, concurrency 16)",
        "",
        "Through gRPC the cells swing by 2x from one to the next when other work shares "
        "the machine (see the load average): read them with the pgbench table below, "
        "which measures PostgreSQL's side alone and repeats.",
        "",
    ]
    rows = []
    by: dict[tuple[str, bool], list[Cell]] = {}
    for r in data["notify"]:
        for c in r["cells"]:
            cell = Cell(**c)
            rows.append(cell.row())
            by.setdefault((cell.target.split(" ")[0], r["trigger"]), []).append(cell)
    lines.append(markdown_table(CELL_HEADER, rows))
    lines.append("")
    if data.get("pgbench"):
        lines += [
            "## The outbox write alone (pgbench: tenant sequence + one event per transaction)",
            "",
        ]
        table = []
        for clients in (1, 16):
            for trigger in (True, False):
                tps = [
                    r["tps"]
                    for r in data["pgbench"]
                    if (r["clients"], r["trigger"]) == (clients, trigger)
                ]
                table.append(
                    [
                        str(clients),
                        "with NOTIFY" if trigger else "without",
                        ", ".join(f"{t:,.0f}" for t in tps),
                        f"{statistics.median(tps):,.0f}",
                    ]
                )
        lines.append(markdown_table(["clients", "trigger", "tps per round", "median"], table))
        lines.append("")
    for name in ("ChargeTokens", "Process"):
        with_ = by.get((name, True), [])
        without = by.get((name, False), [])
        if with_ and without:
            rate_w = statistics.mean(c.rate for c in with_)
            rate_wo = statistics.mean(c.rate for c in without)
            cpu_w = statistics.mean(c.server_cpu_ms_per_call for c in with_)
            cpu_wo = statistics.mean(c.server_cpu_ms_per_call for c in without)
            pg_w = statistics.mean(10 * c.postgres_cpu_pct / c.rate for c in with_ if c.rate)
            pg_wo = statistics.mean(10 * c.postgres_cpu_pct / c.rate for c in without if c.rate)
            lines.append(
                f"- {name}: {rate_w:,.0f}/s with the trigger, {rate_wo:,.0f}/s without "
                f"({(rate_w / rate_wo - 1) * 100:+.1f}%); server CPU {cpu_w:.2f} vs "
                f"{cpu_wo:.2f} ms/call; PostgreSQL CPU {pg_w:.2f} vs {pg_wo:.2f} ms/call"
            )
    return "\n".join(lines)


async def run(args: Any) -> int:
    events = 500 if args.quick else args.events
    duration = 1.0 if args.quick else args.duration
    data: dict[str, Any] = {
        "benchmark": "events out",
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "postgres_version": await postgres_version(),
        "quick": args.quick,
    }
    with workdir(args.keep_logs) as root:
        data["delivery"] = await bench_delivery(root, events)
        print(json.dumps({k: data["delivery"][k] for k in ("live", "drain")}, indent=1))
        data["notify"] = await bench_notify(root, duration, 1 if args.quick else args.rounds)
        data["pgbench"] = await bench_pgbench(root, duration, 1 if args.quick else args.rounds)
    markdown = report(data)
    md_path, json_path = write_results("events-quick" if args.quick else "events", markdown, data)
    print()
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")
    return 0


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events for the delivery part")
    parser.add_argument("--rounds", type=int, default=3, help="with/without NOTIFY alternations")
    args = parser.parse_args()
    install_uvloop()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
