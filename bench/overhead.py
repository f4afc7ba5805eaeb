"""Recorder overhead (issue 2): bare call vs a minimal tracer (the floor) vs an OpenTelemetry
SDK span (the industry reference) vs `@flow`, in one run.

    PYTHONPATH=src python bench/overhead.py [--markdown] [--pipeline] [--repeats 9] [--gc]

Overhead = (instrumented time - bare time) per call (per trace for the 10-child cases).
Each measurement is a `perf_counter_ns` loop; every implementation is timed once per repeat,
interleaved, and medians over repeats of the overheads and ratios are reported (and the best
repeat, for comparison). The garbage collector is disabled while
timing (collected before each loop) unless `--gc` is given.

By default flowtrace's logs go to a trivial sink that appends each log to a bounded deque as it
opens and as it closes (the floor's delivery cost), in place of the delivery pipeline: this
measures the recorder. `--pipeline` keeps the real pipeline (delivering to a temporary
embedded store, or to `FLOWTRACE_BASE_URL`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import flowtrace
import flowtrace._pipeline
from flowtrace import flow
from flowtrace._log import Log
from flowtrace._sinks import add_sink, remove_sink

perf_ns = time.perf_counter_ns
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Recorder overhead (issue 2)"
SINK_SIZE = 10_000

# --- the floor: a minimal tracer ------------------------------------------------------------

_floor_parent: ContextVar[dict[str, Any] | None] = ContextVar("floor_parent", default=None)
floor_records: deque[dict[str, Any]] = deque(maxlen=SINK_SIZE)


def floor_trace(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Parent pointer in a ContextVar, two clock reads, a dict appended to a deque. Arguments
    and result are kept by reference: nothing is snapshotted or encoded."""
    name = fn.__qualname__
    append = floor_records.append
    var = _floor_parent

    if iscoroutinefunction(fn):

        @wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            record = {
                "name": name,
                "parent": var.get(),
                "start": perf_ns(),
                "end": None,
                "args": args,
                "kwargs": kwargs,
                "result": None,
            }
            token = var.set(record)
            try:
                result = await fn(*args, **kwargs)
            finally:
                var.reset(token)
            record["end"] = perf_ns()
            record["result"] = result
            append(record)
            return result

        return async_wrapper

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record = {
            "name": name,
            "parent": var.get(),
            "start": perf_ns(),
            "end": None,
            "args": args,
            "kwargs": kwargs,
            "result": None,
        }
        token = var.set(record)
        try:
            result = fn(*args, **kwargs)
        finally:
            var.reset(token)
        record["end"] = perf_ns()
        record["result"] = result
        append(record)
        return result

    return wrapper


# --- the reference: OpenTelemetry SDK ---------------------------------------------------------


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


otel_provider = TracerProvider()
otel_provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
tracer = otel_provider.get_tracer("bench")

# --- flowtrace's sink for the benchmark -------------------------------------------------------

flow_logs: deque[Log] = deque(maxlen=SINK_SIZE)
flow_started: deque[Log] = deque(maxlen=SINK_SIZE)


class DequeSink:
    """The floor's delivery cost: a deque append as each log opens and as it closes."""

    log_started = flow_started.append
    log_ended = flow_logs.append


# --- the functions, in every flavour ----------------------------------------------------------


def _payload(seed: str) -> dict[str, Any]:
    text = f"{seed} lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "messages": [
            {"role": "user" if i % 2 else "assistant", "content": text, "n": i} for i in range(12)
        ],
        "tags": ["bench", "payload", seed],
    }


PAYLOAD_IN = _payload("in")
PAYLOAD_OUT = _payload("out")
PAYLOAD_BYTES = len(json.dumps(PAYLOAD_IN))

# bare


def f_bare(a: int, b: int) -> int:
    return a + b


def child_bare(i: int) -> int:
    return i


def root_bare() -> None:
    for i in range(10):
        child_bare(i)


async def achild_bare(i: int) -> int:
    return i


async def aroot_bare() -> None:
    for i in range(10):
        await achild_bare(i)


def p_bare(d: dict[str, Any]) -> dict[str, Any]:
    return PAYLOAD_OUT


# floor


@floor_trace
def f_floor(a: int, b: int) -> int:
    return a + b


@floor_trace
def child_floor(i: int) -> int:
    return i


@floor_trace
def root_floor() -> None:
    for i in range(10):
        child_floor(i)


@floor_trace
async def achild_floor(i: int) -> int:
    return i


@floor_trace
async def aroot_floor() -> None:
    for i in range(10):
        await achild_floor(i)


@floor_trace
def p_floor(d: dict[str, Any]) -> dict[str, Any]:
    return PAYLOAD_OUT


# OpenTelemetry: idiomatic, no attributes


def f_otel(a: int, b: int) -> int:
    with tracer.start_as_current_span("f"):
        return a + b


def child_otel(i: int) -> int:
    with tracer.start_as_current_span("child"):
        return i


def root_otel() -> None:
    with tracer.start_as_current_span("root"):
        for i in range(10):
            child_otel(i)


async def achild_otel(i: int) -> int:
    with tracer.start_as_current_span("child"):
        return i


async def aroot_otel() -> None:
    with tracer.start_as_current_span("root"):
        for i in range(10):
            await achild_otel(i)


def p_otel(d: dict[str, Any]) -> dict[str, Any]:
    with tracer.start_as_current_span("p"):
        return PAYLOAD_OUT


# OpenTelemetry with the arguments as attributes (a dict must be encoded to be an attribute)


def f_otel_attrs(a: int, b: int) -> int:
    with tracer.start_as_current_span("f") as span:
        span.set_attribute("a", a)
        span.set_attribute("b", b)
        return a + b


def child_otel_attrs(i: int) -> int:
    with tracer.start_as_current_span("child") as span:
        span.set_attribute("i", i)
        return i


def root_otel_attrs() -> None:
    with tracer.start_as_current_span("root"):
        for i in range(10):
            child_otel_attrs(i)


async def achild_otel_attrs(i: int) -> int:
    with tracer.start_as_current_span("child") as span:
        span.set_attribute("i", i)
        return i


async def aroot_otel_attrs() -> None:
    with tracer.start_as_current_span("root"):
        for i in range(10):
            await achild_otel_attrs(i)


def p_otel_attrs(d: dict[str, Any]) -> dict[str, Any]:
    with tracer.start_as_current_span("p") as span:
        span.set_attribute("d", json.dumps(d))
        return PAYLOAD_OUT


# flowtrace


@flow
def f_flow(a: int, b: int) -> int:
    return a + b


@flow
def child_flow(i: int) -> int:
    return i


@flow
def root_flow() -> None:
    for i in range(10):
        child_flow(i)


@flow
async def achild_flow(i: int) -> int:
    return i


@flow
async def aroot_flow() -> None:
    for i in range(10):
        await achild_flow(i)


@flow
def p_flow(d: dict[str, Any]) -> dict[str, Any]:
    return PAYLOAD_OUT


# --- loops ------------------------------------------------------------------------------------


def loop_f(fn: Callable[[int, int], int], n: int) -> int:
    start = perf_ns()
    for _ in range(n):
        fn(1, 2)
    return perf_ns() - start


def loop_root(fn: Callable[[], None], n: int) -> int:
    start = perf_ns()
    for _ in range(n):
        fn()
    return perf_ns() - start


def loop_async_root(fn: Callable[[], Any], n: int) -> int:
    # One event loop; each `await fn()` is one whole trace (a root awaiting 10 children).
    async def driver() -> int:
        start = perf_ns()
        for _ in range(n):
            await fn()
        return perf_ns() - start

    return asyncio.run(driver())


def loop_payload(fn: Callable[[dict[str, Any]], Any], n: int) -> int:
    d = PAYLOAD_IN
    start = perf_ns()
    for _ in range(n):
        fn(d)
    return perf_ns() - start


IMPLS = ("bare", "floor", "otel", "otel_attrs", "flow")

CASES: list[tuple[str, str, Callable[..., int], int, dict[str, Any]]] = [
    ("f(1, 2)", "call", loop_f, 200_000,
     {"bare": f_bare, "floor": f_floor, "otel": f_otel, "otel_attrs": f_otel_attrs,
      "flow": f_flow}),
    ("root + 10 children (sync)", "trace", loop_root, 5_000,
     {"bare": root_bare, "floor": root_floor, "otel": root_otel,
      "otel_attrs": root_otel_attrs, "flow": root_flow}),
    ("root + 10 children (async)", "trace", loop_async_root, 5_000,
     {"bare": aroot_bare, "floor": aroot_floor, "otel": aroot_otel,
      "otel_attrs": aroot_otel_attrs, "flow": aroot_flow}),
    (f"~{PAYLOAD_BYTES // 100 / 10:.1f} KB dict in and out", "call", loop_payload, 20_000,
     {"bare": p_bare, "floor": p_floor, "otel": p_otel, "otel_attrs": p_otel_attrs,
      "flow": p_flow}),
]  # fmt: skip


# --- measuring --------------------------------------------------------------------------------


def between_loops(pipeline: bool) -> None:
    if pipeline:
        flowtrace.flush(timeout=30)
    otel_provider.force_flush()
    gc.collect()


def measure(
    loop: Callable[..., int],
    fns: dict[str, Any],
    n: int,
    repeats: int,
    pipeline: bool,
    use_gc: bool,
) -> dict[str, list[float]]:
    """ns per call (or per trace) of each implementation, one sample per repeat."""
    for impl in IMPLS:  # warm up: first calls, tee install, caches, OTel worker thread
        loop(fns[impl], max(n // 20, 100))
    samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(repeats):
        order = IMPLS if r % 2 == 0 else tuple(reversed(IMPLS))  # interleave, cancel drift
        for impl in order:
            between_loops(pipeline)
            if not use_gc:
                gc.disable()
            try:
                elapsed = loop(fns[impl], n)
            finally:
                gc.enable()
            samples[impl].append(elapsed / n)
    return samples


def summarize(samples: dict[str, list[float]], how: str) -> dict[str, float]:
    """`median`: medians of the per-repeat overheads (instrumented - bare of the same repeat)
    and of the per-repeat ratios, so load that drifts between repeats cancels out.
    `min`: best repeat of each implementation, minus the best bare."""
    bare = samples["bare"]
    if how == "min":
        out = {impl: min(values) - min(bare) for impl, values in samples.items()}
        out["bare"] = min(bare)
        out["flow/floor"] = out["flow"] / out["floor"]
        out["otel/flow"] = out["otel"] / out["flow"]
        out["otel_attrs/flow"] = out["otel_attrs"] / out["flow"]
        return out
    ovh = {
        impl: [v - b for v, b in zip(values, bare, strict=True)] for impl, values in samples.items()
    }
    out = {impl: statistics.median(values) for impl, values in ovh.items()}
    out["bare"] = statistics.median(bare)
    for name, num, den in (
        ("flow/floor", "flow", "floor"),
        ("otel/flow", "otel", "flow"),
        ("otel_attrs/flow", "otel_attrs", "flow"),
    ):
        out[name] = statistics.median(
            [a / b for a, b in zip(ovh[num], ovh[den], strict=True) if b > 0] or [float("nan")]
        )
    return out


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, nproc={os.cpu_count()}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def table(rows: list[dict[str, Any]], how: str) -> list[str]:
    head = (
        "| case | unit | bare ns | floor ovh ns | OTel ovh ns | OTel+attrs ovh ns "
        "| flowtrace ovh ns | flowtrace/floor (target <= 2) "
        "| OTel/flowtrace (target >= 8) | OTel+attrs/flowtrace |"
    )
    lines = [head, "|" + "---|" * 10]
    for row in rows:
        m = summarize(row["samples"], how)
        lines.append(
            f"| {row['case']} | {row['unit']} | {m['bare']:,.0f} | {m['floor']:,.0f} "
            f"| {m['otel']:,.0f} | {m['otel_attrs']:,.0f} | {m['flow']:,.0f} "
            f"| {m['flow/floor']:.2f}x | {m['otel/flow']:.2f}x | {m['otel_attrs/flow']:.2f}x |"
        )
    return lines


def notes(args: argparse.Namespace) -> list[str]:
    delivery = (
        "the real pipeline (`--pipeline`: no fake sink, `flowtrace.configure(...)` decides)"
        if args.pipeline
        else "a trivial sink appending ended logs to `deque(maxlen=10000)`"
    )
    return [
        f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; flowtrace {flowtrace.__version__}, "
        f"`{' '.join(['python', 'bench/overhead.py', *sys.argv[1:]])}`",
        f"- {args.repeats} interleaved repeats; gc "
        f"{'enabled' if args.gc else 'disabled while timing (collected before each loop)'}; "
        f"iterations per loop: "
        + ", ".join(f"{case} {max(int(n * args.scale), 10):,}" for case, _, _, n, _ in CASES)
        + ".",
        "- Overhead = instrumented time - bare time of the same repeat, per call (`call`) or "
        "per whole trace of 11 logs (`trace`). Async: one `asyncio.run` driver awaiting the root "
        "n times, each await one trace.",
        "- floor: minimal tracer in the bench (ContextVar parent pointer, `perf_counter_ns` at "
        "start and end, a dict appended to a deque); stores args/result by reference, "
        "snapshots and encodes nothing.",
        "- OTel: SDK `TracerProvider` + `BatchSpanProcessor` + an exporter whose `export()` "
        "discards; `with tracer.start_as_current_span(name):` and no attributes. OTel+attrs: "
        "also `span.set_attribute` per argument (the payload dict is `json.dumps`-ed, since an "
        "attribute cannot hold a dict). With default queue settings the BatchSpanProcessor "
        "may log 'Queue full, dropping Span' under load: dropped spans skip export, which only "
        "flatters OTel.",
        f"- flowtrace: `@flow` with defaults; delivery: {delivery}.",
        f"- Payload case: a {PAYLOAD_BYTES:,}-byte (JSON) dict argument and a same-size dict "
        "result. The floor keeps references; `@flow` copies argument and result (it must: "
        "they may be mutated after the call; plain containers are copied within the budgets), "
        "so that row's flowtrace/floor ratio compares unlike work and has no target.",
    ]


def write_markdown(section: list[str], heading: str = HEADING) -> None:
    """Replace (or append) the `heading` section of RESULTS.md; other sections are kept."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    replaced = False
    while i < len(lines):
        if lines[i].strip() == heading:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("## "):
                j += 1
            out.extend([*section, ""])
            replaced = True
            i = j
            continue
        out.append(lines[i])
        i += 1
    if not replaced:
        if out and out[-1].strip():
            out.append("")
        out.extend([*section, ""])
    RESULTS.write_text("\n".join(out).rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help=f"write the table to {RESULTS}")
    parser.add_argument("--pipeline", action="store_true", help="use the real pipeline")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gc", action="store_true", help="leave gc enabled while timing")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    if args.pipeline:
        overrides: dict[str, Any] = {}
        if "FLOWTRACE_BASE_URL" not in os.environ and "FLOWTRACE_DB_PATH" not in os.environ:
            overrides["db_path"] = str(Path(tempfile.mkdtemp()) / "bench.db")
        flowtrace.configure(**overrides)
    else:
        # The recorder alone: the delivery pipeline's sink is swapped for deque appends.
        remove_sink(flowtrace._pipeline._pipeline)
        add_sink(DequeSink())

    rows = []
    for case, unit, loop, n, fns in CASES:
        n = max(int(n * args.scale), 10)
        print(f"measuring {case} ...", file=sys.stderr, flush=True)
        samples = measure(loop, fns, n, args.repeats, args.pipeline, args.gc)
        rows.append({"case": case, "unit": unit, "samples": samples})
    if not flow_logs and not args.pipeline:
        raise SystemExit("no flowtrace log reached the sink: the benchmark measured nothing")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    section = [
        "Medians over repeats (of per-repeat overheads and per-repeat ratios):",
        "",
        *table(rows, "median"),
        "",
        "Best repeat of each (min), for comparison; less sensitive to other load on the machine:",
        "",
        *table(rows, "min"),
        "",
        *notes(args),
        f"- 1-minute load average at the end of the run: {load:.2f} on {os.cpu_count()} CPUs "
        "(other processes share this machine; absolute ns move with it, the interleaved "
        "ratios much less).",
    ]
    print()
    print("\n".join(section))
    if args.markdown:
        write_markdown([HEADING, "", *section])
        print(f"\nwrote {RESULTS}")
    if args.pipeline:
        flowtrace.shutdown(timeout=30)
    otel_provider.shutdown()


if __name__ == "__main__":
    main()
