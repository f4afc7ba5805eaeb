"""Recorder overhead in CPU instructions (issue 2): exact and unaffected by machine load.

    PYTHONPATH=src python bench/instructions.py [--calls 20000]

Runs `f(1, 2)` bare, through the bench's floor tracer, and through `@flow` (delivery swapped
for deque appends, as in bench/overhead.py) under valgrind's callgrind, once with 0 calls and
once with N, and reports (instructions(N) - instructions(0)) / N per call. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap

HARNESS = textwrap.dedent(
    """
    import collections, contextvars, sys, time
    import flowtrace._pipeline
    from flowtrace import flow
    from flowtrace._sinks import add_sink, remove_sink

    remove_sink(flowtrace._pipeline._pipeline)
    opened, closed = collections.deque(maxlen=5000), collections.deque(maxlen=5000)

    class DequeSink:
        log_started = opened.append
        log_ended = closed.append

    add_sink(DequeSink())

    parent = contextvars.ContextVar("parent", default=None)
    records = collections.deque(maxlen=5000)

    def floor(fn):
        def wrapper(*args, **kwargs):
            record = {"name": "f", "parent": parent.get(), "start": time.perf_counter_ns(),
                      "args": args}
            token = parent.set(record)
            try:
                result = fn(*args, **kwargs)
            finally:
                parent.reset(token)
            record["end"] = time.perf_counter_ns()
            record["result"] = result
            records.append(record)
            return result
        return wrapper

    def f(a, b):
        return a + b

    fn = {"bare": f, "floor": floor(f), "flow": flow(f)}[sys.argv[1]]
    for _ in range(int(sys.argv[2])):
        fn(1, 2)
    """
)


def instructions(kind: str, calls: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            HARNESS,
            kind,
            str(calls),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    per_call = {
        kind: (instructions(kind, args.calls) - instructions(kind, 0)) / args.calls
        for kind in ("bare", "floor", "flow")
    }
    floor = per_call["floor"] - per_call["bare"]
    flowtrace = per_call["flow"] - per_call["bare"]
    print(
        f"instructions per call: bare {per_call['bare']:,.0f}, floor overhead {floor:,.0f}, "
        f"@flow overhead {flowtrace:,.0f}: {flowtrace / floor:.2f}x the floor"
    )


if __name__ == "__main__":
    main()
