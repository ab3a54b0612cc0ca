"""Soak: ten minutes of mixed traffic against a real `agentserver serve` on
PostgreSQL, to see that it stays fast as the data grows.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 16]

The mix, per worker, at random: Process (an automatic email: session, messages,
action, hold, capture) 40%, ChargeTokens 30%, ReserveTokens then CaptureReservation
15%, GetBalance 15%, over four tenants. Each minute: calls/s by kind, errors, p99
and the server's resident memory. At the end: each table's size, live and dead rows.

The tables every call updates leave a dead row version behind each update. Where
the server's autovacuum is off (this machine), the soak vacuums its own database the
way autovacuum would with the thresholds the migrations set (every 10 s, each table
whose dead rows passed `threshold + scale_factor x live rows`), and says so; where
it is on, it leaves that to PostgreSQL. Pass: the last minute's throughput within
20% of the first's.

Writes bench/results/soak.md and bench/results/soak.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import asyncpg  # noqa: E402
import grpc  # noqa: E402
from common import (  # noqa: E402
    CHANNEL_OPTIONS,
    PG_URL,
    Server,
    fresh_database,
    install_uvloop,
    machine_info,
    markdown_table,
    metadata_for,
    percentile,
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
    common_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)

TENANTS = 4
FUND = 1_000_000_000
USER = "soak-user"
VACUUM_EVERY_S = 10.0
MIX = (("process", 40), ("charge", 30), ("reserve_capture", 15), ("balance", 15))
TABLES = (
    "actions",
    "reservations",
    "business_tokens",
    "sessions",
    "messages",
    "token_usage_logs",
    "events",
    "outbox",
)


class Worker:
    """One call in flight at a time, through its own stubs."""

    def __init__(self, channel: grpc.aio.Channel, tenant: str, key: str, rng: random.Random):
        self.agent = agent_service_pb2_grpc.AgentServiceStub(channel)
        self.tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        self.tenant = tenant
        self.md = metadata_for(key, tenant, USER)
        self.rng = rng

    async def call(self, kind: str, i: int) -> None:
        t, md = self.tenant, self.md
        if kind == "process":
            await self.agent.Process(
                agent_service_pb2.ProcessRequest(
                    message="Email john@example.com that the order shipped"
                ),
                metadata=md,
                timeout=30,
            )
        elif kind == "charge":
            await self.tokens.ChargeTokens(
                token_service_pb2.ChargeTokensRequest(
                    tenant_id=t,
                    operation_type=common_pb2.OPERATION_TYPE_SMS,
                    amount=1,
                    request_id=f"soak-c-{i}",
                ),
                metadata=md,
                timeout=30,
            )
        elif kind == "reserve_capture":
            held = await self.tokens.ReserveTokens(
                token_service_pb2.ReserveTokensRequest(
                    tenant_id=t,
                    operation_type=common_pb2.OPERATION_TYPE_EMAIL,
                    amount=2,
                    request_id=f"soak-r-{i}",
                ),
                metadata=md,
                timeout=30,
            )
            await self.tokens.CaptureReservation(
                token_service_pb2.CaptureReservationRequest(
                    tenant_id=t,
                    reservation_id=held.reservation.id,
                    amount=1,
                    request_id=f"soak-k-{i}",
                ),
                metadata=md,
                timeout=30,
            )
        else:
            await self.tokens.GetBalance(
                token_service_pb2.GetBalanceRequest(tenant_id=t), metadata=md, timeout=30
            )


class Minute:
    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.vacuumed: list[str] = []


async def table_stats(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) AS bytes,
                      vacuum_count, autovacuum_count
               FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) ORDER BY relname""",
            list(TABLES),
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def vacuum_like_autovacuum(dsn: str, stop: asyncio.Event, minutes: list[Minute]) -> None:
    """Every VACUUM_EVERY_S: VACUUM each table whose dead rows passed its autovacuum
    threshold (its own reloptions, else the server's defaults)."""
    conn = await asyncpg.connect(dsn)
    try:
        defaults = {
            name: float(await conn.fetchval(f"SHOW {name}"))
            for name in ("autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor")
        }
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), VACUUM_EVERY_S)
            rows = await conn.fetch(
                """SELECT s.relname, s.n_live_tup, s.n_dead_tup, c.reloptions
                   FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                   WHERE s.relname = ANY($1::text[])""",
                list(TABLES),
            )
            for r in rows:
                options = dict(o.split("=", 1) for o in r["reloptions"] or ())
                threshold = float(
                    options.get(
                        "autovacuum_vacuum_threshold", defaults["autovacuum_vacuum_threshold"]
                    )
                )
                scale = float(
                    options.get(
                        "autovacuum_vacuum_scale_factor", defaults["autovacuum_vacuum_scale_factor"]
                    )
                )
                if r["n_dead_tup"] > threshold + scale * r["n_live_tup"]:
                    await conn.execute(f'VACUUM (ANALYZE) "{r["relname"]}"')
                    minutes[-1].vacuumed.append(r["relname"])
    finally:
        await conn.close()


async def soak(args: Any, root: Path) -> dict[str, Any]:
    async with fresh_database("postgres", root) as db:
        dsn = PG_URL.format(db=db.pg_name).replace("+asyncpg", "")
        tenants = {f"soak-{i}": FUND for i in range(TENANTS)}
        keys = await provision(db.url, tenants)
        settings = server_settings(db, access_log=False)
        async with running(Server.agentserver(root, root / "soak.log", **settings)) as srv:
            probe = await asyncpg.connect(dsn)
            try:
                autovacuum = str(await probe.fetchval("SHOW autovacuum"))
            finally:
                await probe.close()
            ours = autovacuum != "on"
            print(
                f"PostgreSQL autovacuum is {autovacuum}: "
                + (
                    "this soak vacuums its own database as autovacuum would"
                    if ours
                    else "left to PostgreSQL"
                ),
                flush=True,
            )
            minutes: list[Minute] = [Minute()]
            rss: list[float] = []
            counter = itertools.count()
            stop = asyncio.Event()
            channels = [
                grpc.aio.insecure_channel(srv.target, options=CHANNEL_OPTIONS)
                for _ in range(args.channels)
            ]
            kinds = [k for k, weight in MIX for _ in range(weight)]
            names = sorted(keys)

            async def work(w: int) -> None:
                rng = random.Random(w)
                tenant = names[w % len(names)]
                worker = Worker(channels[w % len(channels)], tenant, keys[tenant], rng)
                while not stop.is_set():
                    kind = rng.choice(kinds)
                    minute = minutes[-1]
                    t0 = time.perf_counter()
                    try:
                        await worker.call(kind, next(counter))
                    except grpc.aio.AioRpcError as err:
                        minute.errors[f"{kind}:{err.code().name}"] += 1
                        continue
                    minute.ok[kind] += 1
                    minute.latencies.append(time.perf_counter() - t0)

            async def clock() -> None:
                for m in range(args.minutes):
                    await asyncio.sleep(60.0)
                    rss.append(srv.rss_mb())
                    m_ok = sum(minutes[-1].ok.values())
                    print(
                        f"minute {m + 1}: {m_ok / 60:,.0f} calls/s, errors "
                        f"{sum(minutes[-1].errors.values())}, RSS {rss[-1]:.0f} MB, "
                        f"vacuumed {len(minutes[-1].vacuumed)}",
                        flush=True,
                    )
                    if m + 1 < args.minutes:
                        minutes.append(Minute())
                stop.set()

            tasks = [asyncio.create_task(work(w)) for w in range(args.concurrency)]
            vacuum = (
                asyncio.create_task(vacuum_like_autovacuum(dsn, stop, minutes)) if ours else None
            )
            try:
                await clock()
                await asyncio.gather(*tasks)
                if vacuum is not None:
                    await vacuum
            finally:
                stop.set()
                for c in channels:
                    await c.close()
            stats = await table_stats(dsn)
            errors_in_log = srv.log_errors()[:20]
    per_minute = []
    for i, m in enumerate(minutes):
        lat = sorted(m.latencies)
        per_minute.append(
            {
                "minute": i + 1,
                "calls_per_s": round(sum(m.ok.values()) / 60, 1),
                "by_kind_per_s": {k: round(v / 60, 1) for k, v in sorted(m.ok.items())},
                "errors": dict(m.errors),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 1) if lat else None,
                "rss_mb": round(rss[i], 1) if i < len(rss) else None,
                "vacuums": Counter(m.vacuumed),
            }
        )
    first, last = per_minute[0]["calls_per_s"], per_minute[-1]["calls_per_s"]
    return {
        "autovacuum": autovacuum,
        "soak_vacuums": ours,
        "minutes": per_minute,
        "tables": stats,
        "first_rate": first,
        "last_rate": last,
        "last_vs_first_pct": round(100 * (last - first) / first, 1) if first else None,
        "pass": bool(first) and last >= 0.8 * first,
        "server_log_errors": errors_in_log,
    }


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    s = data["soak"]
    rows = [
        [
            str(x["minute"]),
            f"{x['calls_per_s']:,.0f}",
            ", ".join(f"{k} {v:,.0f}" for k, v in x["by_kind_per_s"].items()),
            str(sum(x["errors"].values())),
            f"{x['p99_ms']}",
            f"{x['rss_mb']}",
            ", ".join(f"{t} {n}" for t, n in sorted(x["vacuums"].items())) or "-",
        ]
        for x in s["minutes"]
    ]
    tables = [
        [
            t["relname"],
            f"{t['bytes'] / 2**20:,.1f}",
            f"{t['n_live_tup']:,}",
            f"{t['n_dead_tup']:,}",
            str(t["vacuum_count"] + t["autovacuum_count"]),
        ]
        for t in s["tables"]
    ]
    vacuum_note = (
        f"This PostgreSQL runs with autovacuum **{s['autovacuum']}**, so the soak vacuumed "
        "its own database the way autovacuum would with the per-table thresholds of the "
        f"migrations (checked every {VACUUM_EVERY_S:g} s; the last column says which "
        "tables it vacuumed that minute)."
        if s["soak_vacuums"]
        else f"Autovacuum is {s['autovacuum']}: vacuuming was left to PostgreSQL."
    )
    verdict = "pass" if s["pass"] else "**MISSED**"
    return "\n".join(
        [
            "# Soak: mixed traffic on PostgreSQL",
            "",
            f"{m['date']} · {m['nproc']} cores ({m['cpu_model']}) · Python {m['python']} · "
            f"PostgreSQL {data['postgres_version']} · 1-min load average at start "
            f"{m['loadavg_at_start'][0]:.2f}",
            "",
            f"{data['minutes']} minutes, {data['concurrency']} callers in a closed loop, "
            f"{TENANTS} tenants; mix: "
            + ", ".join(f"{k} {w}%" for k, w in MIX)
            + ". The load generator shares the two cores with the server and PostgreSQL. "
            + vacuum_note,
            "",
            markdown_table(
                ["minute", "calls/s", "by kind (/s)", "errors", "p99 ms", "RSS MB", "vacuumed"],
                rows,
            ),
            "",
            "At the end:",
            "",
            markdown_table(["table", "size MB", "live rows", "dead rows", "vacuums"], tables),
            "",
            f"Last minute {s['last_rate']:,.0f}/s against the first {s['first_rate']:,.0f}/s "
            f"({s['last_vs_first_pct']:+.1f}%; aim: within 20%): {verdict}. Server log "
            f"errors: {len(s['server_log_errors'])}.",
        ]
    )


async def run(args: Any) -> int:
    data: dict[str, Any] = {
        "benchmark": "soak, mixed traffic on PostgreSQL",
        "machine": machine_info(),
        "postgres_version": await postgres_version(),
        "minutes": args.minutes,
        "concurrency": args.concurrency,
    }
    with workdir(args.keep_logs) as root:
        data["soak"] = await soak(args, root)
    markdown = report(data)
    md_path, json_path = write_results("soak", markdown, data)
    print()
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")
    return 0 if data["soak"]["pass"] else 1


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--channels", type=int, default=4, help="client channels (connections)")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args()
    install_uvloop()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
