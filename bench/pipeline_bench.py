"""End-to-end benchmarks of the delivery pipeline against a local flowtrace server.

    PYTHONPATH=src:. python bench/pipeline_bench.py [--quick]

Each measurement runs in a fresh interpreter (so RSS and exit timings are its own). Prints a
Markdown table; results go to bench/RESULTS_pipeline.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.serverutil import start_server  # noqa: E402

# --- the measurements, each a script run in its own interpreter ----------------------------

COMMON = """
import json, os, resource, sys, time
import flowtrace
from flowtrace import flow
from flowtrace import _pipeline, _sinks

@flow(path="bench/call")
def call(x):
    return x

def bare(x):
    return x

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def per_call_ns(fn, n):
    best = None
    for _ in range(5):
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        took = (time.perf_counter_ns() - start) / n
        best = took if best is None else min(best, took)
    return best
"""

OVERHEAD = (
    COMMON
    + """
n = int(os.environ["BENCH_N"])
mode = os.environ["BENCH_MODE"]
bare_ns = per_call_ns(bare, n)
if mode == "recorder":          # the recorder alone: no delivery pipeline listening
    _sinks.remove_sink(_pipeline._pipeline)
ns = per_call_ns(call, n)
flowtrace.flush(float(os.environ.get("BENCH_FLUSH_S", "30")))
print(json.dumps({"bare_ns": bare_ns, "call_ns": ns, "stats": flowtrace.stats()}))
"""
)

SUSTAINED = (
    COMMON
    + """
seconds = float(os.environ["BENCH_SECONDS"])
produced = 0
start = time.perf_counter()
call_ns = []
while time.perf_counter() - start < seconds:
    t0 = time.perf_counter_ns()
    for i in range(1000):
        call(i)
    call_ns.append((time.perf_counter_ns() - t0) / 1000)
    produced += 1000
producing = time.perf_counter() - start
flowtrace.flush(120)
total = time.perf_counter() - start
stats = flowtrace.stats()
call_ns.sort()
print(json.dumps({"produced": produced, "producing_s": producing, "total_s": total,
                  "median_call_ns": call_ns[len(call_ns) // 2], "stats": stats}))
"""
)

BURST = (
    COMMON
    + """
n = int(os.environ["BENCH_N"])
call(0); flowtrace.flush(30)          # warm: connection open, server discovered
before = rss_mib()
start = time.perf_counter()
for i in range(n):
    call(i)
produced_s = time.perf_counter() - start
ok = flowtrace.flush(300)
took = time.perf_counter() - start
stats = flowtrace.stats()
print(json.dumps({"n": n, "produce_s": produced_s, "deliver_s": took, "flushed": ok,
                  "rss_growth_mib": rss_mib() - before, "stats": stats}))
"""
)

EXIT_FLUSH = """
from flowtrace import flow
for i in range(1000):
    with flow("bench/exit"):
        pass
"""


def run(code: str, env: dict[str, str], timeout: float = 600) -> dict[str, object]:
    full = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}", **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def timed_exit(code: str, env: dict[str, str], runs: int = 7) -> float:
    full = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}", **env}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=full, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--burst", type=int, default=100_000)
    args = parser.parse_args()
    n_calls = 20_000 if args.quick else 100_000
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "bench.db") as server:
        live = {"FLOWTRACE_BASE_URL": server.base_url, "FLOWTRACE_API_KEY": server.api_key or ""}
        dead = {
            "FLOWTRACE_BASE_URL": "http://127.0.0.1:9/v5",
            "FLOWTRACE_EXIT_FLUSH_TIMEOUT_S": "0",
        }
        base = {"BENCH_N": str(n_calls)}
        results["recorder"] = run(OVERHEAD, {**live, **base, "BENCH_MODE": "recorder"})
        results["delivering"] = run(OVERHEAD, {**live, **base, "BENCH_MODE": "pipeline"})
        results["server_down"] = run(
            OVERHEAD, {**dead, **base, "BENCH_MODE": "pipeline", "BENCH_FLUSH_S": "0"}
        )
        results["sustained"] = run(
            SUSTAINED, {**live, "BENCH_SECONDS": "3" if args.quick else "10"}
        )
        results["burst_default"] = run(BURST, {**live, "BENCH_N": str(args.burst)})
        results["burst_queue_100k"] = run(
            BURST, {**live, "BENCH_N": str(args.burst), "FLOWTRACE_QUEUE_SIZE": "100000"}
        )
        bare_exit = timed_exit("import flowtrace", live)
        exit_1000 = timed_exit(EXIT_FLUSH, live)
        results["exit_flush"] = {
            "bare_s": bare_exit,
            "with_1000_s": exit_1000,
            "extra_ms": (exit_1000 - bare_exit) * 1000,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
