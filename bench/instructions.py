"""Recorder overhead in CPU instructions (issue 2): exact and unaffected by machine load.

    PYTHONPATH=src python bench/instructions.py [--calls 20000] [--case f|payload|trace]

Runs a case (`f(1, 2)`; a ~2 KB dict in and out; a root calling 10 children) bare, through the
bench's floor tracer, and through `@flow` (delivery swapped for deque appends, as in
bench/overhead.py) under valgrind's callgrind, once with 0 calls and once with N, and reports
(instructions(N) - instructions(0)) / N per call. Needs valgrind.
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

    kind, calls, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    wrap = {"bare": lambda fn: fn, "floor": floor, "flow": flow}[kind]

    def payload(seed):
        text = f"{seed} lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2
        return {"model": "gpt-4o-mini", "temperature": 0.2, "tags": ["bench", "payload", seed],
                "messages": [{"role": "user" if i % 2 else "assistant", "content": text, "n": i}
                             for i in range(12)]}

    if case == "f":
        f = wrap(lambda a, b: a + b)
        run = lambda: f(1, 2)
    elif case == "payload":  # a ~2 KB dict in, another out (both copied by @flow)
        PAYLOAD_IN, PAYLOAD_OUT = payload("in"), payload("out")
        p = wrap(lambda d: PAYLOAD_OUT)
        run = lambda: p(PAYLOAD_IN)
    else:  # "trace": a root calling 10 children
        child = wrap(lambda i: i)

        @wrap
        def root():
            for i in range(10):
                child(i)

        run = root
    for _ in range(calls):
        run()
    """
)

CASES = ("f", "payload", "trace")


def instructions(kind: str, calls: int, case: str) -> int:
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
            case,
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
    parser.add_argument(
        "--case",
        choices=CASES,
        default="f",
        help="f(1, 2); a ~2 KB dict in and out; a root and 10 children (per trace)",
    )
    args = parser.parse_args()
    per_call = {
        kind: (instructions(kind, args.calls, args.case) - instructions(kind, 0, args.case))
        / args.calls
        for kind in ("bare", "floor", "flow")
    }
    floor = per_call["floor"] - per_call["bare"]
    flowtrace = per_call["flow"] - per_call["bare"]
    print(
        f"{args.case}: instructions per call: bare {per_call['bare']:,.0f}, floor overhead "
        f"{floor:,.0f}, @flow overhead {flowtrace:,.0f}: {flowtrace / floor:.2f}x the floor"
    )


if __name__ == "__main__":
    main()
