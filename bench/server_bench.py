"""Ingest throughput of `flowtrace serve` through HTTP, by hand (not part of the test suite).

    PYTHONPATH=src python bench/server_bench.py [--runs 5] [--logs 3000] [--batches 100]

Starts a real server process on a free loopback port over a fresh database, then one client
process (httpx, keep-alive) sends logs: one request per log, and 512-log batches. Prints the
median logs/s of several runs of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serverutil import RunningServer, start_server

BATCH_SIZE = 512
PER_LOG_TARGET = 1_500  # logs/s
BATCH_TARGET = 10_000  # logs/s


def log_body(run: str, n: int) -> dict[str, Any]:
    """A typical completed log: a few inputs, a short output, times, a version."""
    return {
        "path": "bench/agent",
        "log_id": f"{run}-{n}",
        "flow": {"attributes": {"model": "m-1", "temperature": 0.2}},
        "inputs": {"question": f"question number {n}", "k": n % 7},
        "output": f"answer to question {n}",
        "start_time": "2025-01-01T00:00:00Z",
        "end_time": "2025-01-01T00:00:01Z",
        "trace_status": "complete",
    }


def per_log(client: httpx.Client, run: str, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        response = client.post("/flows/log", json=log_body(run, n))
        response.raise_for_status()
    return count / (time.perf_counter() - started)


def batched(client: httpx.Client, run: str, batches: int) -> float:
    started = time.perf_counter()
    for b in range(batches):
        operations = [
            {"op": "log", "body": log_body(run, b * BATCH_SIZE + n)} for n in range(BATCH_SIZE)
        ]
        response = client.post("/flows/logs/batch", json={"operations": operations})
        response.raise_for_status()
        if any(result["status"] != 200 for result in response.json()["results"]):
            raise RuntimeError("a batched log was refused")
    return batches * BATCH_SIZE / (time.perf_counter() - started)


def median_rate(runs: int, measure: Callable[[str], float]) -> tuple[float, list[float]]:
    measure("warmup")
    rates = [measure(f"run{r}") for r in range(runs)]
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--logs", type=int, default=3_000, help="logs per per-log run")
    parser.add_argument("--batches", type=int, default=40, help="batches per batch run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server: RunningServer = start_server(Path(tmp) / "bench.db")
        with server, server.client() as client:
            one, one_runs = median_rate(args.runs, lambda r: per_log(client, "p" + r, args.logs))
            many, many_runs = median_rate(
                args.runs, lambda r: batched(client, "b" + r, args.batches)
            )
    print(f"per-log: median {one:,.0f} logs/s (target {PER_LOG_TARGET:,}); runs {_fmt(one_runs)}")
    print(
        f"batch {BATCH_SIZE}: median {many:,.0f} logs/s (target {BATCH_TARGET:,}); "
        f"runs {_fmt(many_runs)}"
    )


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in rates)


if __name__ == "__main__":
    main()
