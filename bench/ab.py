"""Process and ChargeTokens on PostgreSQL: this checkout against another (an earlier
commit), alternating, each running its own benchmarks.

    .venv/bin/python bench/ab.py --other ../baseline [--rounds 3] [--duration 4]

This machine's speed drifts by up to 2x within the hour, so figures from different
runs cannot be compared; alternating rounds of the two checkouts in one run can.
Each round runs the other checkout's `bench/process.py` (Process at concurrency 1
and 16) and `bench/ledger.py` (ChargeTokens on one hot wallet at 16), then this
checkout's; each has its own echo row. The other checkout needs its own `.venv`
(`git worktree add ../baseline <commit> && make -C ../baseline setup`).

Writes bench/results/ab.md and bench/results/ab.json: per round and cell, calls/s,
the share of the same run's echo, server CPU per call, and this checkout's rate as a
share of the other's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from common import REPO, Cell, machine_info, markdown_table, write_results  # noqa: E402

FIELDS = {f.name for f in dataclasses.fields(Cell)}
RUNS = (
    ("process", ["--concurrency", "1,16"]),
    ("ledger", ["--concurrency", "16"]),
)


def git_head(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()[:90]


def run_one(repo: Path, bench: str, extra: list[str], duration: float, out: Path) -> dict[str, Any]:
    """One checkout's own benchmark on PostgreSQL; its JSON results."""
    env = dict(os.environ, AGENTSERVER_BENCH_RESULTS=str(out))
    argv = [str(repo / ".venv" / "bin" / "python"), str(repo / "bench" / f"{bench}.py")]
    argv += ["--backends", "postgres", "--duration", str(duration), *extra]
    done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{repo}: bench/{bench}.py failed:\n{done.stderr[-2000:]}")
    # A checkout older than AGENTSERVER_BENCH_RESULTS writes into its own results.
    written = out / f"{bench}.json"
    if not written.exists():
        written = repo / "bench" / "results" / f"{bench}.json"
    data: dict[str, Any] = json.loads(written.read_text())
    return data


def cells(data: dict[str, Any]) -> dict[int, tuple[float, float, float]]:
    """Per concurrency: (calls/s, share of the echo's calls/s, server CPU ms per call)."""
    echo = {c["concurrency"]: c["rate"] for c in data["echo"]}
    out = {}
    for backend in data["backends"]:
        for c in backend["cells"]:
            if c["target"] != "postgres" or not c["ok"]:
                continue
            cell = Cell(**{k: v for k, v in c.items() if k in FIELDS})  # either checkout's
            share = cell.rate / echo[cell.concurrency]
            out[cell.concurrency] = (cell.rate, share, cell.server_cpu_ms_per_call)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, required=True, help="the other checkout (with .venv)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell")
    args = p.parse_args()
    other = args.other.resolve()
    sides = {"other": other, "this": REPO}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentserver-ab-") as tmp:
        for rnd in range(1, args.rounds + 1):
            for side, repo in sides.items():
                for bench, extra in RUNS:
                    data = run_one(repo, bench, extra, args.duration, Path(tmp) / side)
                    for conc, (rate, share, cpu) in cells(data).items():
                        rows.append(
                            {
                                "round": rnd,
                                "side": side,
                                "bench": bench,
                                "concurrency": conc,
                                "rate": rate,
                                "echo_share": share,
                                "server_cpu_ms": cpu,
                            }
                        )
                        print(
                            f"round {rnd} {side:5} {bench:7} c{conc:<3} {rate:7.0f}/s "
                            f"{share:4.0%} of echo  {cpu:.2f} ms CPU/call",
                            flush=True,
                        )
    table = []
    ratios: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r["side"] != "this":
            continue
        (o,) = [
            x
            for x in rows
            if x["side"] == "other"
            and x["round"] == r["round"]
            and x["bench"] == r["bench"]
            and x["concurrency"] == r["concurrency"]
        ]
        ratio = r["rate"] / o["rate"]
        ratios.setdefault((r["bench"], r["concurrency"]), []).append(ratio)
        table.append(
            [
                str(r["round"]),
                r["bench"],
                str(r["concurrency"]),
                f"{o['rate']:,.0f}",
                f"{o['echo_share']:.0%}",
                f"{o['server_cpu_ms']:.2f}",
                f"{r['rate']:,.0f}",
                f"{r['echo_share']:.0%}",
                f"{r['server_cpu_ms']:.2f}",
                f"{ratio:.0%}",
            ]
        )
    summary = [
        [bench, str(conc), f"{statistics.median(v):.0%}", f"{min(v):.0%}–{max(v):.0%}"]
        for (bench, conc), v in ratios.items()
    ]
    info = machine_info()
    markdown = "\n\n".join(
        [
            "# This checkout against another, alternating rounds (PostgreSQL)",
            f"{info['date']} · {info['nproc']} cores ({info['cpu_model']})"
            f" · {args.rounds} rounds of {args.duration:g} s cells",
            f"other: `{git_head(other)}`  \nthis: `{git_head(REPO)}`",
            "Process (bench/process.py) at concurrency 1 and 16, ChargeTokens on one hot wallet"
            " (bench/ledger.py) at 16; 'echo' is the bare grpc.aio server of the same run.",
            markdown_table(
                [
                    "round",
                    "bench",
                    "concurrency",
                    "other calls/s",
                    "of echo",
                    "CPU ms/call",
                    "this calls/s",
                    "of echo",
                    "CPU ms/call",
                    "this / other",
                ],
                table,
            ),
            "## Median over the rounds",
            markdown_table(["bench", "concurrency", "this / other", "range"], summary),
        ]
    )
    data = {
        "benchmark": "ab",
        "machine": info,
        "other": git_head(other),
        "this": git_head(REPO),
        "rounds": rows,
    }
    md_path, json_path = write_results("ab", markdown, data)
    print(markdown)
    print(f"\nwrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
