"""Issue 10, items 3 and 4: what the OTLP export costs the caller, and what trace propagation
costs, in one run.

    PYTHONPATH=src python bench/export_propagation_bench.py [--repeats 9] [--calls 20000]

OTLP export: `@flow` f(1, 2) calls with the real pipeline (embedded store), export off and on
(an OTLP receiver subprocess on loopback that decodes nothing and answers 200), interleaved per
repeat: the caller's ns per call, and the process's CPU time per log (worker, sender and export
threads included, measured until the logs are delivered and exported). Medians of the
per-repeat ratios.

Propagation: `flowtrace.propagation_headers()` inside a flow (a root, and 10 levels deep),
`continue_trace(headers)` entered and left, and parsing the headers, against the same run's
`@flow` f(1, 2) call.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import flowtrace
from flowtrace import _otlp_export, _w3c

RECEIVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


@flowtrace.flow(path="bench/f")
def f(a: int, b: int) -> int:
    return a + b


def _calls(n: int) -> tuple[float, float]:
    """(caller ns per call, process CPU ns per log until delivered and exported)."""
    gc.collect()
    gc.disable()
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    for i in range(n):
        f(i, 2)
    caller = (time.perf_counter_ns() - start) / n
    gc.enable()
    assert flowtrace.flush(120)
    assert _otlp_export.flush(120)
    return caller, (time.process_time_ns() - cpu) / n


def bench_export(repeats: int, calls: int, endpoint: str) -> list[tuple[float, ...]]:
    rows = []
    for _ in range(repeats):
        flowtrace.configure(otlp_endpoint="")
        off_caller, off_cpu = _calls(calls)
        flowtrace.configure(otlp_endpoint=endpoint)
        on_caller, on_cpu = _calls(calls)
        exported = flowtrace.stats()["otlp"]["exported"]
        assert exported == calls, exported
        rows.append((off_caller, on_caller, off_cpu, on_cpu))
    flowtrace.configure(otlp_endpoint="")
    return rows


def _per_call(fn: Callable[[], object], n: int) -> float:
    gc.collect()
    gc.disable()
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    return elapsed / n


def bench_propagation(repeats: int, calls: int) -> dict[str, list[float]]:
    headers = flowtrace.propagation_headers  # the public function, as a user calls it
    results: dict[str, list[float]] = {"f": [], "root": [], "deep": [], "continue": [], "parse": []}
    incoming = {
        "traceparent": f"00-{'ab' * 16}-{_w3c.span_id_of('log_x_1')}-01",
        "tracestate": "flowtrace=log_x_1",
    }

    def enter_and_leave() -> None:
        with flowtrace.continue_trace(incoming):
            pass

    for _ in range(repeats):
        results["f"].append(_per_call(lambda: f(1, 2), calls))
        with flowtrace.flow("bench/root"):
            results["root"].append(_per_call(headers, calls))
        blocks = [flowtrace.flow(f"bench/level{i}") for i in range(10)]
        for block in blocks:
            block.__enter__()
        results["deep"].append(_per_call(headers, calls))
        for block in reversed(blocks):
            block.__exit__(None, None, None)
        results["continue"].append(_per_call(enter_and_leave, calls))
        results["parse"].append(_per_call(lambda: _w3c.parse_headers(incoming), calls))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    flowtrace.configure(db_path=str(Path(tempfile.mkdtemp()) / "bench.db"), otlp_endpoint="")
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        f(0, 0)
        assert flowtrace.flush(60)  # warm: the worker, the store
        rows = bench_export(args.repeats, args.calls, endpoint)
    finally:
        receiver.terminate()
        receiver.wait()
    median = statistics.median
    off_caller, on_caller = median(r[0] for r in rows), median(r[1] for r in rows)
    off_cpu, on_cpu = median(r[2] for r in rows), median(r[3] for r in rows)
    print("OTLP export, `@flow` f(1, 2), real pipeline (embedded store), medians:")
    print(f"  caller ns/call: off {off_caller:,.0f}, on {on_caller:,.0f}")
    print(f"  caller on/off: {median(r[1] / r[0] for r in rows):.3f}x")
    print(f"  process CPU ns/log: off {off_cpu:,.0f}, on {on_cpu:,.0f}")
    print(f"  CPU on/off: {median(r[3] / r[2] for r in rows):.3f}x")
    results = bench_propagation(args.repeats, args.calls)
    print("Propagation, ns per call (median), and as a share of the same run's @flow f(1, 2):")
    reference = median(results["f"])
    for name, label in (
        ("f", "@flow f(1, 2) call"),
        ("root", "propagation_headers() in a root flow"),
        ("deep", "propagation_headers() 10 levels deep"),
        ("continue", "with continue_trace(headers): (enter + leave)"),
        ("parse", "parsing traceparent + tracestate"),
    ):
        value = median(results[name])
        print(f"  {label}: {value:,.0f} ns ({value / reference:.2f}x)")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
