"""Issue 10, spans: what `flowtrace.otel` costs the program, in one run.

    PYTHONPATH=src python bench/otel_spans.py [--markdown] [--repeats 7] [--rounds 3]

1. `bench/overhead.py` with the processor installed: the recorder's figures (and the OTel
   reference's, whose spans now pass the processor's filter, outside any flow) against a run
   without it. The two runs alternate, `--rounds` times each, each a fresh interpreter running
   overhead.py unchanged; medians of each run's medians are compared.
2. The caller's cost per OpenTelemetry span inside a flow: the same `with
   tracer.start_as_current_span(...)` on a provider without flowtrace and on one with its
   processor (a kept LLM span; a dropped HTTP span), and on the private provider; interleaved
   repeats, medians. Logs go to a trivial sink (a deque append at each end, as overhead.py's
   default), so this is the cost on the caller's thread, not the worker's.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import flowtrace
import flowtrace._pipeline
import flowtrace.otel
from flowtrace import flow
from flowtrace._sinks import add_sink, remove_sink

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
HEADING = "## Issue 10, spans"
perf_ns = time.perf_counter_ns

LLM_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 40,
}

# --- 1. overhead.py with and without the processor ----------------------------------------

_WITH_PROCESSOR = """
import sys
sys.path.insert(0, {bench!r})
import flowtrace.otel, overhead
flowtrace.otel.install_global()  # the global provider: a provider with only the processor
overhead.otel_provider.add_span_processor(flowtrace.otel.span_processor())  # the reference's too
sys.argv = ["overhead.py", *sys.argv[1:]]
overhead.main()
"""


def _overhead_run(with_processor: bool, args: list[str]) -> dict[str, tuple[float, float]]:
    """One overhead.py run: per case, (flowtrace ovh ns, OTel ovh ns) of its medians table."""
    if with_processor:
        command = [sys.executable, "-c", _WITH_PROCESSOR.format(bench=str(BENCH)), *args]
    else:
        command = [sys.executable, str(BENCH / "overhead.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
    rows: dict[str, tuple[float, float]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("Best repeat"):
            break  # the medians table comes first
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[1] in ("call", "trace"):
            rows[cells[0]] = (float(cells[6].replace(",", "")), float(cells[3].replace(",", "")))
    return rows


def overhead_with_processor(rounds: int, args: list[str]) -> list[str]:
    runs: dict[bool, list[dict[str, tuple[float, float]]]] = {False: [], True: []}
    for index in range(rounds):
        for with_processor in (False, True) if index % 2 == 0 else (True, False):
            print(f"overhead.py round {index + 1}, processor={with_processor}", file=sys.stderr)
            runs[with_processor].append(_overhead_run(with_processor, args))
    lines = [
        "| case | flowtrace ovh ns, without | with the processor | ratio "
        "| OTel ovh ns, without | with the processor | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in runs[False][0]:
        without = [run[case] for run in runs[False]]
        with_ = [run[case] for run in runs[True]]
        flow_a = statistics.median(row[0] for row in without)
        flow_b = statistics.median(row[0] for row in with_)
        otel_a = statistics.median(row[1] for row in without)
        otel_b = statistics.median(row[1] for row in with_)
        lines.append(
            f"| {case} | {flow_a:,.0f} | {flow_b:,.0f} | {flow_b / flow_a:.2f}x "
            f"| {otel_a:,.0f} | {otel_b:,.0f} | {otel_b / otel_a:.2f}x |"
        )
    return lines


# --- 2. the caller's cost per span ------------------------------------------------------------

started: deque[Any] = deque(maxlen=10_000)
ended: deque[Any] = deque(maxlen=10_000)


class DequeSink:
    log_started = started.append
    log_ended = ended.append


def _provider(processor: bool) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    if processor:
        provider.add_span_processor(flowtrace.otel.span_processor())
    return provider


def _span_loop(
    provider: TracerProvider, scope: str, attributes: dict[str, Any], inside: bool = True
) -> Callable[[int], int]:
    tracer = provider.get_tracer(scope)

    def spans(n: int) -> int:
        start = perf_ns()
        for _ in range(n):
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=attributes):
                pass
        return perf_ns() - start

    def loop(n: int) -> int:
        if not inside:
            return spans(n)
        with flow("bench"):
            return spans(n)

    return loop


def _empty_loop(n: int) -> int:
    with flow("bench"):
        start = perf_ns()
        for _ in range(n):
            pass
        return perf_ns() - start


def span_costs(repeats: int, n: int) -> list[str]:
    plain = _provider(False)
    with_processor = _provider(True)
    loops: dict[str, Callable[[int], int]] = {
        "bare": _empty_loop,
        "sdk span, no flowtrace": _span_loop(plain, "openai", LLM_ATTRIBUTES),
        "kept LLM span (processor)": _span_loop(with_processor, "openai", LLM_ATTRIBUTES),
        "dropped HTTP span (processor)": _span_loop(
            with_processor, "opentelemetry.instrumentation.httpx", {"http.method": "POST"}
        ),
        "LLM span outside any flow (processor)": _span_loop(
            with_processor, "openai", LLM_ATTRIBUTES, inside=False
        ),
        "private provider span": _span_loop(
            flowtrace.otel.tracer_provider(), "openai", LLM_ATTRIBUTES
        ),
    }
    for loop in loops.values():
        loop(max(n // 10, 100))  # warm up
    samples: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            gc.collect()
            gc.disable()
            try:
                samples[name].append(loops[name](n) / n)
            finally:
                gc.enable()
    base = samples["sdk span, no flowtrace"]
    bare = samples["bare"]
    lines = [
        "| span inside a flow | ns per span | added by flowtrace, ns | vs the SDK span alone |",
        "|---|---|---|---|",
    ]
    for name in names[1:]:
        values = samples[name]
        per_span = statistics.median(v - b for v, b in zip(values, bare, strict=True))
        added = statistics.median(v - b for v, b in zip(values, base, strict=True))
        own = statistics.median(b - z for b, z in zip(base, bare, strict=True))
        shown = "-" if name.startswith("sdk") else f"{added:,.0f}"
        ratio = "-" if name.startswith("sdk") else f"+{added / own:.0%}"
        lines.append(f"| {name} | {per_span:,.0f} | {shown} | {ratio} |")
    return lines


# --- 3. the same in CPU instructions (valgrind's callgrind: exact, whatever the load) ----------

_HARNESS = """
import collections, sys
import flowtrace, flowtrace._pipeline, flowtrace.otel
from flowtrace import flow
from flowtrace._sinks import add_sink, remove_sink
from opentelemetry.sdk.trace import TracerProvider

remove_sink(flowtrace._pipeline._pipeline)
opened, closed = collections.deque(maxlen=5000), collections.deque(maxlen=5000)

class DequeSink:
    log_started = opened.append
    log_ended = closed.append

add_sink(DequeSink())
kind, n = sys.argv[1], int(sys.argv[2])
attributes = {attributes!r}
plain = TracerProvider(shutdown_on_exit=False)
mine = TracerProvider(shutdown_on_exit=False)
mine.add_span_processor(flowtrace.otel.span_processor())
if kind == "flow+processor":
    flowtrace.otel.install_global()
if kind.startswith("flow"):
    f = flow(lambda a, b: a + b)
    for _ in range(n):
        f(1, 2)
else:
    provider, scope, inside = {{
        "sdk": (plain, "openai", True),
        "sdk_http": (plain, "opentelemetry.instrumentation.httpx", True),
        "kept": (mine, "openai", True),
        "dropped": (mine, "opentelemetry.instrumentation.httpx", True),
        "outside": (mine, "openai", False),
        "private": (flowtrace.otel.tracer_provider(), "openai", True),
    }}[kind]
    if kind in ("dropped", "sdk_http"):
        attributes = {{"http.method": "POST"}}
    tracer = provider.get_tracer(scope)
    def spans():
        for _ in range(n):
            with tracer.start_as_current_span("chat", attributes=attributes):
                pass
    if inside:
        with flow("bench"):
            spans()
    else:
        spans()
"""


def _instructions(kind: str, n: int) -> int:
    harness = _HARNESS.format(attributes=LLM_ATTRIBUTES)
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-c", harness, kind, str(n)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr
    return int(match.group(1))


def instruction_costs(n: int) -> list[str]:
    def per(kind: str) -> float:
        """Per call: n calls against n/10, so one-time costs (first calls, imports) cancel."""
        print(f"callgrind: {kind}", file=sys.stderr)
        return (_instructions(kind, n) - _instructions(kind, n // 10)) / (n - n // 10)

    flow_alone, flow_with = per("flow"), per("flow+processor")
    sdk = per("sdk")
    lines = [
        "| what | instructions per call or span | added by flowtrace |",
        "|---|---|---|",
        f"| `@flow` f(1, 2), no processor | {flow_alone:,.0f} | - |",
        f"| `@flow` f(1, 2), processor installed | {flow_with:,.0f} "
        f"| {flow_with - flow_alone:+,.0f} ({flow_with / flow_alone:.3f}x) |",
        f"| SDK span inside a flow, no flowtrace | {sdk:,.0f} | - |",
    ]
    for kind, label in (
        ("kept", "kept LLM span (processor)"),
        ("outside", "LLM span outside any flow (processor)"),
        ("private", "private provider span inside a flow"),
    ):
        cost = per(kind)
        lines.append(f"| {label} | {cost:,.0f} | {cost - sdk:+,.0f} (+{(cost - sdk) / sdk:.0%}) |")
    http = per("sdk_http")
    dropped = per("dropped")
    lines.append(f"| SDK HTTP span inside a flow, no flowtrace | {http:,.0f} | - |")
    lines.append(
        f"| dropped HTTP span inside a flow (processor) | {dropped:,.0f} "
        f"| {dropped - http:+,.0f} (+{(dropped - http) / http:.0%}) |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help=f"write to {RESULTS}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="overhead.py runs of each kind")
    parser.add_argument("--spans", type=int, default=20_000, help="spans per timed loop")
    parser.add_argument(
        "--overhead-args", default="--repeats 5 --scale 0.3", help="overhead.py's arguments"
    )
    parser.add_argument(
        "--instructions", type=int, default=2000, help="calls or spans under callgrind (0: skip)"
    )
    args = parser.parse_args()

    remove_sink(flowtrace._pipeline._pipeline)  # the recorder alone, as overhead.py measures it
    add_sink(DequeSink())
    counted = instruction_costs(args.instructions) if args.instructions else []
    costs = span_costs(args.repeats, args.spans)
    overhead = overhead_with_processor(args.rounds, args.overhead_args.split())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    section = [
        "`bench/overhead.py` unchanged, with the processor installed (`install_global()`, and "
        "added to overhead.py's OTel reference provider): medians of "
        f"{args.rounds} alternating runs of each (`overhead.py {args.overhead_args}`):",
        "",
        *overhead,
        "",
        f"The caller's cost per span inside a flow (medians of {args.repeats} interleaved "
        f"repeats of {args.spans:,} spans; logs to a trivial sink):",
        "",
        *costs,
        "",
        *(
            [
                f"The same in CPU instructions (valgrind's callgrind: a run of "
                f"{args.instructions:,} calls or spans against one of a tenth as many, so "
                "one-time costs cancel; exact, whatever the load):",
                "",
                *counted,
                "",
            ]
            if counted
            else []
        ),
        f"- `{' '.join(['python', 'bench/otel_spans.py', *sys.argv[1:]])}`, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; 1-minute load average {load:.2f} on "
        f"{os.cpu_count()} CPUs (a shared machine: the ratios matter, not the ns).",
        "- A kept span costs the caller a small log object and two deque appends (its start, "
        "its end), a ContextVar set and reset; the span is read and mapped on the worker. A "
        "dropped span costs the filter: a ContextVar read (outside a flow: nothing more), the "
        "scope's name and its attribute names.",
    ]
    print("\n".join(section))
    if args.markdown:
        sys.path.insert(0, str(BENCH))
        from overhead import write_markdown

        write_markdown([HEADING, "", *section], HEADING)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
