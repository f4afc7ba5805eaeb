"""Sampling's call-path cost (issue 11): a sampled-out `f(1, 2)` against the disabled cost, in
one run.

    PYTHONPATH=src python bench/sampling_bench.py [--repeats 7] [--calls 200000] [--markdown]
    PYTHONPATH=src python bench/sampling_bench.py --instructions [--calls 5000]

Cases, each a decorated function (deliveries go to a deque, as in bench/overhead.py):
bare (undecorated), disabled (`enabled=False`), sampled (`sample_rate=1`), sampled out
(`sample_rate=0`: the trace is dropped at its root's end), and the same for a root calling 10
children (per trace). Wall clock: every case timed once per repeat, interleaved; medians over
repeats of the per-repeat ratios to the disabled cost. `--instructions`: exact counts per call
under valgrind's callgrind (needs valgrind), unaffected by the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import flowtrace
import flowtrace._pipeline
from flowtrace import flow
from flowtrace._sinks import add_sink, remove_sink

perf_ns = time.perf_counter_ns


class DequeSink:
    opened: deque[Any] = deque(maxlen=10_000)
    closed: deque[Any] = deque(maxlen=10_000)
    log_started = opened.append
    log_ended = closed.append


def f_bare(a: int, b: int) -> int:
    return a + b


f_flow = flow(path="bench/f")(f_bare)


@flow(path="bench/child")
def child(i: int) -> int:
    return i


@flow(path="bench/root")
def root() -> None:
    for i in range(10):
        child(i)


def root_bare() -> None:
    for i in range(10):
        f_bare(i, 0)


#: case -> (settings, the loop's function, calls per loop divisor)
CASES: dict[str, tuple[dict[str, Any], Callable[..., Any], str]] = {
    "bare": ({}, f_bare, "f"),
    "disabled": ({"enabled": False}, f_flow, "f"),
    "sampled": ({"sample_rate": 1.0}, f_flow, "f"),
    "sampled out": ({"sample_rate": 0.0}, f_flow, "f"),
    "trace: bare": ({}, root_bare, "trace"),
    "trace: disabled": ({"enabled": False}, root, "trace"),
    "trace: sampled": ({"sample_rate": 1.0}, root, "trace"),
    "trace: sampled out": ({"sample_rate": 0.0}, root, "trace"),
}


def loop(fn: Callable[..., Any], kind: str, n: int) -> float:
    gc.collect()
    if kind == "f":
        start = perf_ns()
        for _ in range(n):
            fn(1, 2)
    else:
        start = perf_ns()
        for _ in range(n):
            fn()
    return (perf_ns() - start) / n


def wall_clock(repeats: int, calls: int) -> dict[str, list[float]]:
    remove_sink(flowtrace._pipeline.current())
    add_sink(DequeSink())
    gc.disable()
    times: dict[str, list[float]] = {case: [] for case in CASES}
    try:
        for _ in range(repeats):
            for case, (settings, fn, kind) in CASES.items():
                flowtrace.configure(**settings)
                n = calls if kind == "f" else calls // 20
                times[case].append(loop(fn, kind, n))
    finally:
        gc.enable()
        flowtrace.configure()
    return times


HARNESS = """
import collections, sys
import flowtrace, flowtrace._pipeline
from flowtrace import flow
from flowtrace._sinks import add_sink, remove_sink
remove_sink(flowtrace._pipeline.current())
class S:
    log_started = collections.deque(maxlen=5000).append
    log_ended = collections.deque(maxlen=5000).append
add_sink(S())
case, n = sys.argv[1], int(sys.argv[2])
trace = case.startswith("trace: ")
asynchronous = case.startswith("async trace: ")
case = case.removeprefix("trace: ").removeprefix("async trace: ")
decorate = (lambda fn: fn) if case == "bare" else flow
@decorate
def f(a, b):
    return a + b
@decorate
def root():
    for i in range(10):
        f(i, 0)
settings = {"disabled": {"enabled": False}, "sampled": {"sample_rate": 1.0},
            "sampled out": {"sample_rate": 0.0}}.get(case, {})
flowtrace.configure(**settings)
@decorate
async def async_child(i):
    return i
@decorate
async def async_root():
    for i in range(10):
        await async_child(i)
async def drive():
    for _ in range(n):
        await async_root()
if asynchronous:
    import asyncio
    asyncio.run(drive())
elif trace:
    for _ in range(n):
        root()
else:
    for _ in range(n):
        f(1, 2)
"""


def instructions(case: str, calls: int) -> float:
    def run(n: int) -> int:
        done = subprocess.run(
            [
                *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
                *(sys.executable, "-c", HARNESS, case, str(n)),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        match = re.search(r"Collected : (\d+)", done.stderr)
        assert match, done.stderr
        return int(match.group(1))

    return (run(calls) - run(0)) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    args = parser.parse_args()
    if args.instructions:
        counts = {
            case: instructions(case, args.calls)
            for case in ("bare", "disabled", "sampled", "sampled out")
        }
        print("| f(1, 2) | instructions per call | / disabled |")
        print("|---|---|---|")
        for case, count in counts.items():
            print(f"| {case} | {count:,.0f} | {count / counts['disabled']:.2f}x |")
        traces = {
            case: instructions(f"trace: {case}", max(1, args.calls // 10))
            for case in ("disabled", "sampled", "sampled out")
        }
        print("| a root calling 10 children | instructions per trace | / sampled |")
        print("|---|---|---|")
        for case, count in traces.items():
            print(f"| {case} | {count:,.0f} | {count / traces['sampled']:.2f}x |")
        for case in ("sampled", "sampled out"):
            count = instructions(f"async trace: {case}", max(1, args.calls // 10))
            print(f"| async root awaiting 10 async children, {case} | {count:,.0f} | |")
        return
    times = wall_clock(args.repeats, args.calls)
    rows = []
    for prefix in ("", "trace: "):
        disabled = times[f"{prefix}disabled"]
        for case in ("bare", "disabled", "sampled", "sampled out"):
            name = f"{prefix}{case}"
            ratios = [t / d for t, d in zip(times[name], disabled, strict=True)]
            rows.append(
                (name, statistics.median(times[name]), min(times[name]), statistics.median(ratios))
            )
    print("| case | median ns | best ns | / disabled (median of ratios) |")
    print("|---|---|---|---|")
    for name, median, best, ratio in rows:
        label = name if name.startswith("trace") else f"f(1, 2): {name}"
        print(f"| {label} | {median:,.0f} | {best:,.0f} | {ratio:.2f}x |")
    if args.markdown:
        print()
        print(
            f"- {platform.machine()}, nproc={os.cpu_count()}, Python {platform.python_version()};"
            f" {args.repeats} interleaved repeats of {args.calls:,} calls ({args.calls // 20:,}"
            f" traces); 1-minute load average {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
