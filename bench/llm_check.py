"""A manual check of the LLM engine against a real OpenAI-compatible server.

    .venv/bin/python bench/llm_check.py --base-url http://127.0.0.1:8080/v1 --model NAME \
        [--messages 12] [--per-family] [--timeout 60] [--deadline 120]

Not part of `make test`: it needs a model server (OpenAI, vLLM, Ollama, llama.cpp).
For each of the first N labelled messages it asks `OpenAIEngine` (with the offline
engine as its fallback, as the server runs it) and records who decided, the output
mode the engine settled on, the proposed action types against the labels, the
level the policy gives the proposal (after the offline cross-check, as the server
runs it: `CheckedEngine`), and the time taken. `--per-family` takes the first
labelled message of every action family instead of the first N; `--name` names the
result files. The point is the degradation path on a real server, not the model's
accuracy: a small local model is expected to answer poorly, and every answer must
still come back as a usable proposal.

Writes bench/results/llm_check.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from common import machine_info, markdown_table, write_results  # noqa: E402

from agentserver.adapters.llm import LlmSettings, OpenAIEngine, ToolSpec  # noqa: E402
from agentserver.domain.costs import CostTable  # noqa: E402
from agentserver.domain.decision.crosscheck import CheckedEngine  # noqa: E402
from agentserver.domain.decision.engine import EngineRequest  # noqa: E402
from agentserver.domain.decision.offline import OfflineEngine  # noqa: E402
from agentserver.domain.decision.policy import decide  # noqa: E402
from agentserver.domain.permissions import PermissionSet  # noqa: E402
from agentserver.domain.registry import default_registry  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "labelled_messages.jsonl"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


async def run(args: argparse.Namespace) -> int:
    registry = default_registry()
    model = OpenAIEngine(
        LlmSettings(
            base_url=args.base_url,
            api_key=args.api_key,
            model=args.model,
            timeout_seconds=args.timeout,
            max_retries=0,
            deadline_seconds=args.deadline,
        ),
        [ToolSpec(d.name, d.description, d.parameters_schema) for d in registry.all()],
        OfflineEngine(),
        validate=lambda name, params: [
            f"{v.field}: {v.description}" for v in registry.validate(name, params)
        ],
    )
    reader = OfflineEngine()
    engine = CheckedEngine(model, reader)
    labelled = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    if args.per_family:
        first: dict[str, dict[str, Any]] = {}
        for item in labelled:
            for e in item["expected"]:
                first.setdefault(e["action_type"], item)
        chosen = list({id(i): i for i in first.values()}.values())
    else:
        chosen = labelled[: args.messages]
    rows: list[dict[str, Any]] = []
    try:
        for item in chosen:
            started = time.monotonic()
            proposal = await engine.propose(
                EngineRequest(
                    message=item["message"],
                    now=NOW,
                    history=[],
                    business_context={"business_name": "Salon Aurora"},
                    tenant_id="check",
                    location_id="",
                )
            )
            offline = reader.read(
                EngineRequest(
                    message=item["message"],
                    now=NOW,
                    business_context={"business_name": "Salon Aurora"},
                )
            )
            expected = sorted(a["action_type"] for a in item["expected"])
            got = sorted(a.action_type for a in proposal.actions)
            outcome = decide(
                proposal,
                registry,
                CostTable(),
                PermissionSet.everything(),
                10_000,
                message=item["message"],
            )
            rows.append(
                {
                    "id": item["id"],
                    "message": item["message"],
                    "engine": proposal.engine,
                    "mode_after": model.output_mode,
                    "level": outcome.level.label,
                    "unattended": sum(
                        d.executable and d.level.label == "automatic" for d in outcome.actions
                    ),
                    "offline": sorted(a.action_type for a in offline.actions),
                    "checked": (
                        "-"
                        if proposal.engine.startswith("offline")
                        else "disagree: nothing unattended"
                        if "nothing runs automatically" in proposal.reasoning
                        else "agree"
                    ),
                    "expected": expected,
                    "proposed": got,
                    "match": expected == got,
                    "seconds": round(time.monotonic() - started, 2),
                }
            )
            print(f"{rows[-1]['id']}: {proposal.engine} ({rows[-1]['seconds']} s)", flush=True)
    finally:
        await model.aclose()
    decided_by_llm = sum(1 for r in rows if r["engine"].startswith("llm:"))
    data = {
        "machine": machine_info(),
        "base_url": args.base_url,
        "model": args.model,
        "rows": rows,
        "decided_by_llm": decided_by_llm,
        "matches": sum(r["match"] for r in rows),
        "model_unattended": sum(r["unattended"] for r in rows if r["engine"].startswith("llm:")),
        "contradicted": sum(r["checked"].startswith("disagree") for r in rows),
    }
    table = markdown_table(
        [
            "id",
            "engine",
            "expected",
            "proposed",
            "offline reading",
            "cross-check",
            "level",
            "run unattended",
            "s",
        ],
        [
            [
                r["id"],
                r["engine"],
                ", ".join(r["expected"]) or "-",
                ", ".join(r["proposed"]) or "-",
                ", ".join(r["offline"]) or "-",
                r["checked"],
                r["level"],
                str(r["unattended"]),
                str(r["seconds"]),
            ]
            for r in rows
        ],
    )
    markdown = "\n".join(
        [
            "# LLM engine against a real server (manual check)",
            "",
            f"{data['machine']['date']} · model `{args.model}` at `{args.base_url}` · "
            f"timeout {args.timeout:g} s per request, deadline {args.deadline:g} s per "
            "decision, no retries",
            "",
            f"{len(rows)} labelled messages: the LLM decided {decided_by_llm}, the offline "
            f"fallback the rest; proposed action types matched the labels on "
            f"{data['matches']}. Actions the model proposed that run unattended: "
            f"{data['model_unattended']}; model proposals the offline reading contradicted "
            f"(nothing of them runs unattended): {data['contradicted']}.",
            "",
            table,
        ]
    )
    md_path, json_path = write_results(args.name, markdown, data)
    print(f"\n{markdown}\n\nwrote {md_path} and {json_path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default="no-key")
    p.add_argument("--messages", type=int, default=12)
    p.add_argument("--per-family", action="store_true")
    p.add_argument("--name", default="llm_check", help="result file stem in bench/results/")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--deadline", type=float, default=120.0)
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
