"""Prompt and tool logs in batches (issue 10): delivery of agent traces to a local
`flowtrace serve`, before (each prompt log its own request: what an older server gets) and after
(the whole trace in the batch), as logs/s and their ratio, measured in the same run.

    PYTHONPATH=src:. python bench/batch_kinds_bench.py [--traces N] [--repeats N] [--per-export N]

A trace is one flow log (sent open) and 10 prompt logs under it, then the flow's close: what
the pipeline sends for an agent making 10 LLM calls. `HttpExporter.export` gets `--per-export`
traces at a time (1: a program whose traces end one by one; more: a backlog). "Before" is the
same exporter told the server does not take prompt logs in a batch (`batch_file_logs = False`,
as after discovering an older server). Repeats are interleaved; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.serverutil import start_server  # noqa: E402

from flowtrace.exporters import Operation  # noqa: E402
from flowtrace.exporters.http import HttpExporter  # noqa: E402

PROMPTS_PER_TRACE = 10
PROMPT = {"model": "gpt-4o-mini", "provider": "openai", "temperature": 0.0}


def _trace(prefix: str) -> list[Operation]:
    root = f"{prefix}-root"
    ops = [Operation("log", root, {"log_id": root, "path": "bench/agent", "inputs": {"q": 1}})]
    for n in range(PROMPTS_PER_TRACE):
        log_id = f"{prefix}-p{n}"
        body: dict[str, Any] = {
            "log_id": log_id,
            "path": "bench/llm",
            "prompt": PROMPT,
            "trace_parent_id": root,
            "messages": [{"role": "user", "content": f"step {n}: what next?"}],
            "output_message": {"role": "assistant", "content": "call the tool"},
            "prompt_tokens": 120,
            "output_tokens": 8,
            "finish_reason": "stop",
        }
        ops.append(Operation("prompt_log", log_id, body))
    ops.append(Operation("update", root, {"log_status": "complete", "output": "done"}))
    return ops


def deliver(
    base_url: str, key: str | None, batched: bool, name: str, traces: int, per: int
) -> float:
    """Logs/s delivering `traces` traces, `per` traces per export."""
    exporter = HttpExporter(base_url, key)
    try:
        exporter.export([])  # discovery and the connection, outside the timing
        assert exporter.batch and exporter.batch_file_logs, "the server takes prompt logs"
        exporter.batch_file_logs = batched
        exports = [
            [op for t in range(start, start + per) for op in _trace(f"{name}-{t}")]
            for start in range(0, traces, per)
        ]
        started = time.perf_counter()
        for ops in exports:
            outcomes = exporter.export(ops)
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:1]
        elapsed = time.perf_counter() - started
    finally:
        exporter.close()
    return traces * (1 + PROMPTS_PER_TRACE) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-export", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "bench.db") as server:
        figures: dict[str, list[float]] = {"one by one": [], "batched": []}
        for repeat in range(args.repeats):
            for label, batched in (("one by one", False), ("batched", True)):
                name = f"{label[0]}{repeat}"
                rate = deliver(
                    server.base_url, server.api_key, batched, name, args.traces, args.per_export
                )
                figures[label].append(rate)
    before, after = (statistics.median(figures[k]) for k in ("one by one", "batched"))
    ratios = [b / a for a, b in zip(figures["one by one"], figures["batched"], strict=True)]
    print(f"traces of 1 flow + {PROMPTS_PER_TRACE} prompt logs, {args.per_export} per export")
    for label, rates in figures.items():
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  {label:>10}: median {statistics.median(rates):,.0f} logs/s  ({shown})")
    print(
        f"  batched / one by one: {after / before:.1f}x (median of per-repeat ratios "
        f"{statistics.median(ratios):.1f}x)"
    )


if __name__ == "__main__":
    main()
