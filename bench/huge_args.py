"""A huge nested argument on the call path (issue 9 item 3): a 1000x1000 list of ints.

    PYTHONPATH=src python bench/huge_args.py [--repeats 5] [--held 20]

Per call: `@flow` on `rows(matrix)` minus the bare call, as a ratio to the baseline measured in
the same run: `snapshot(matrix)` under the same budgets, i.e. what encoding the recorded
prefix costs on the worker ("the budgeted prefix"). Memory: RSS growth while `--held` such
logs wait (a sink that keeps every ended log, as a backed-up delivery queue would), per held
log. Delivery is swapped for that sink, as in bench/overhead.py: this measures the recorder.
Run it with PYTHONPATH pointing at another checkout's src to measure that one.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any

import flowtrace._pipeline
from flowtrace import flow
from flowtrace._log import Log
from flowtrace._serialize import limits, snapshot
from flowtrace._sinks import add_sink, remove_sink

MATRIX = [list(range(1000)) for _ in range(1000)]


class HoldingSink:
    """Keeps every ended log, as a delivery queue that is not drained would."""

    def __init__(self) -> None:
        self.held: list[Log] = []

    def log_started(self, log: Log) -> None:
        pass

    def log_ended(self, log: Log) -> None:
        self.held.append(log)


def bare(rows: list[list[int]]) -> int:
    return len(rows)


traced = flow(path="bench/huge")(bare)


def per_call_ns(fn: Any, calls: int) -> float:
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(MATRIX)
    return (time.perf_counter_ns() - start) / calls


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed loop")
    parser.add_argument("--held", type=int, default=20, help="logs held for the RSS figure")
    args = parser.parse_args()

    remove_sink(flowtrace._pipeline._pipeline)
    sink = HoldingSink()
    add_sink(sink)
    budgets = limits()
    overheads, baselines = [], []
    for _ in range(args.repeats):
        bare_ns = per_call_ns(bare, args.calls)
        flow_ns = per_call_ns(traced, args.calls)
        sink.held.clear()
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(args.calls):
            snapshot(MATRIX, budgets)
        baselines.append((time.perf_counter_ns() - start) / args.calls)
        overheads.append(flow_ns - bare_ns)
    ratios = [o / b for o, b in zip(overheads, baselines, strict=True)]

    sink.held.clear()
    gc.collect()
    before = rss_bytes()
    for _ in range(args.held):
        traced(MATRIX)
    gc.collect()
    grown = rss_bytes() - before
    print(
        f"per call: @flow overhead {statistics.median(overheads) / 1e6:.3f} ms, "
        f"snapshot of the value {statistics.median(baselines) / 1e6:.3f} ms, "
        f"ratio {statistics.median(ratios):.2f}x (median of {args.repeats} repeats of "
        f"{args.calls} calls)"
    )
    print(
        f"memory: RSS +{grown / 2**20:.1f} MiB with {args.held} logs held, "
        f"{grown / args.held / 2**20:.2f} MiB per held log"
    )


if __name__ == "__main__":
    main()
