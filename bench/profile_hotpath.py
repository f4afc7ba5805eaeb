"""Where `@flow`'s per-call time goes (issue 2): a cProfile of the hot path, then a
breakdown of its pieces timed alone, then what-if variants of the costliest pieces.

    PYTHONPATH=src python bench/profile_hotpath.py [--markdown]

cProfile gives the structure (which functions run, how often per traced call); it inflates
small functions, so the ns figures that matter come from the timed breakdown (min of several
`timeit` repeats, gc disabled, the bench's deque sink registered). Nothing in src/ is changed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import sys
import time
import timeit
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import wrapt
from overhead import DequeSink, f_floor, flow_logs, machine, write_markdown

from flowtrace import _config, _decorator, flow
from flowtrace._capture import capture_value, ensure_stdout_tee
from flowtrace._context import current
from flowtrace._log import Log, add_sink, announce_start

HEADING = "## Recorder hot-path profile (issue 2)"


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


def f_bare(a: int, b: int) -> int:
    return a + b


# --- 1. cProfile --------------------------------------------------------------------------


def profile(label: str, run: Callable[[], None], n: int, per: int, out: list[str]) -> None:
    """Top functions by own time, per traced call (`per` logs per `run`)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        run()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    total_calls = 0
    for (file, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total_calls += ncalls
        where = f"{file.rsplit('/', 1)[-1]}:{line}" if line else ""
        rows.append((tottime, cumtime, ncalls, f"{name} {where}".strip()))
    rows.sort(reverse=True)
    logs = n * per
    out.append(f"### cProfile: {label} ({n:,} runs, {per} log(s) each)")
    out.append("")
    out.append(
        "Profiled ns are inflated by cProfile's per-call hook and by other load; read the "
        "call structure here and the costs in the breakdown below."
    )
    out.append("")
    out.append(
        f"Function calls per log (Python and C, as cProfile counts them): "
        f"{total_calls / logs:.1f}"
    )
    out.append("")
    out.append("| function | calls per log | own ns per log (profiled) | cum ns per log |")
    out.append("|---|---|---|---|")
    for tottime, cumtime, ncalls, name in rows[:16]:
        out.append(
            f"| `{name}` | {ncalls / logs:.2f} | {tottime / logs * 1e9:,.0f} "
            f"| {cumtime / logs * 1e9:,.0f} |"
        )
    out.append("")


# --- 2. breakdown ---------------------------------------------------------------------------


def ns(stmt: Callable[[], Any], number: int = 200_000, repeat: int = 7) -> float:
    gc.collect()
    gc.disable()
    try:
        return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9
    finally:
        gc.enable()


def breakdown(out: list[str]) -> None:
    spec = f_flow._self_wrapper.__closure__[0].cell_contents  # the _Spec of f_flow
    options = spec.options
    path = spec.path
    args = (1, 2)
    kwargs: dict[str, Any] = {}
    empty = ns(lambda: None)

    def trivial(wrapped: Any, instance: Any, a: Any, k: Any) -> Any:
        return wrapped(*a, **k)

    wrapt_trivial = wrapt.FunctionWrapper(f_bare, trivial)

    def closure(*a: Any, **k: Any) -> Any:
        return f_bare(*a, **k)

    log = Log(path, None)
    inputs = _decorator._inputs_of_call(spec, None, args, kwargs)

    def set_reset() -> None:
        current.reset(current.set(log))

    def log_close() -> None:
        Log(path, None).close()

    def new_log_succeed() -> None:
        _decorator._succeed(Log(path, None), options, 3)

    def new_log_freeze() -> None:
        _decorator._freeze(Log(path, None))

    def new_log_start() -> None:
        _decorator._start(Log(path, None))

    bare_call = ns(lambda: f_bare(1, 2))
    flow_call = ns(lambda: f_flow(1, 2))
    log_new = ns(lambda: Log(path, None))
    parent = Log(path, None)
    measured = [
        ("bare `f(1, 2)`", bare_call, "reference"),
        ("`@flow` `f(1, 2)`, whole call", flow_call, "reference"),
        ("wrapt.FunctionWrapper with a trivial Python wrapper (minus bare)",
         ns(lambda: wrapt_trivial(1, 2)) - bare_call, "dispatch"),
        ("plain closure `def w(*a, **k): return f(*a, **k)` (minus bare)",
         ns(lambda: closure(1, 2)) - bare_call, "dispatch, for comparison"),
        ("`_inputs_of_call` (capture_args + capture_kwargs + tuple)",
         ns(lambda: _decorator._inputs_of_call(spec, None, args, kwargs)) - empty, "open"),
        ("`Log(path, None)` (`Log.__init__`, 30 slots, 2 clock reads)",
         log_new - empty, "open"),
        ("`Log(path, parent)` (child)", ns(lambda: Log(path, parent)) - empty, "open"),
        ("`_config.get_settings()` (called by `_new_log` per log)",
         ns(_config.get_settings) - empty, "open"),
        ("`_new_log` (Log + 7 option copies + get_settings)",
         ns(lambda: _decorator._new_log(options, path)) - empty, "open"),
        ("`_open_log` (= _new_log + inputs + set_call_inputs + _start)",
         ns(lambda: _decorator._open_log(spec, inputs)) - empty, "open"),
        ("`_start` (minus Log creation)", ns(new_log_start) - log_new, "open"),
        ("  `ensure_stdout_tee()`", ns(ensure_stdout_tee) - empty, "open"),
        ("  `announce_start(log)` (one sink, no-op `log_started`)",
         ns(lambda: announce_start(log)) - empty, "open"),
        ("`current.set` + `current.reset`", ns(set_reset) - empty, "context"),
        ("`_succeed` (minus Log creation)", ns(new_log_succeed) - log_new, "close"),
        ("  `_freeze` (6 getattr + UNSET checks)", ns(new_log_freeze) - log_new, "close"),
        ("  `capture_value(3)`", ns(lambda: capture_value(3)) - empty, "close"),
        ("  `Log.close()` (clock read, 4 stores, sink append)",
         ns(log_close) - log_new, "close"),
        ("`time.time_ns()`", ns(time.time_ns) - empty, "primitive"),
        ("`time.perf_counter_ns()`", ns(time.perf_counter_ns) - empty, "primitive"),
        ("empty Python function call", ns(lambda: f_bare(1, 2)) - empty, "primitive"),
    ]  # fmt: skip
    flow_logs.clear()
    out.append("### Breakdown of `@flow` on `f(1, 2)`, pieces timed alone (ns, min of 7)")
    out.append("")
    out.append(f"`lambda: None` loop cost ({empty:.0f} ns) subtracted from every piece.")
    out.append("")
    out.append("| piece | ns | phase |")
    out.append("|---|---|---|")
    for name, value, phase in measured:
        out.append(f"| {name} | {value:,.0f} | {phase} |")
    out.append("")


# --- 3. what-if variants of the costliest pieces --------------------------------------------

_UNSET = object()
_counter = itertools.count()


class LeanLog:
    """What-if: only the per-call fields are slots written in __init__; the ~20 user-settable
    fields read a class-level default until set (they live in a lazily created __dict__)."""

    __slots__ = (
        "__dict__",
        "_call_inputs",
        "_number",
        "_start_mono_ns",
        "duration_ns",
        "output",
        "parent",
        "path",
        "root",
        "status",
    )
    attributes = None
    version_id = environment = user = source = save = None
    inputs = output_message = messages = _UNSET
    provider_request = provider_response = _UNSET
    metadata = error = traceback = end_ns = ended_how = None
    stdout_parts = items = delivery = None

    def __init__(self, path: str, parent: LeanLog | None) -> None:
        self._number = next(_counter)
        self.path = path
        self.parent = parent
        self.root = self if parent is None else parent.root
        self.status = "incomplete"
        self._call_inputs = None
        self.output = _UNSET
        self.duration_ns = None
        self._start_mono_ns = time.perf_counter_ns()  # wall time = anchor + mono offset


_lean_var: ContextVar[Any] = ContextVar("lean", default=None)
_lean_sink: deque[Any] = deque(maxlen=10_000)


def lean_wrapper(fn: Callable[..., Any]) -> Any:
    """What-if: the whole hot path inlined in one wrapt wrapper: scalar args kept as is, one
    Log, one clock read at each end, no get_settings / stdout-tee check / start sink loop /
    _freeze field scan (a log no user code has seen cannot have user-set fields)."""
    scalars = frozenset({int, str, float, bool, type(None)})

    def call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for v in args:
            if type(v) not in scalars:
                args = tuple([capture_value(x) for x in args])
                break
        log = LeanLog("bench/f", _lean_var.get())
        log._call_inputs = (None, False, args, kwargs)
        token = _lean_var.set(log)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            _lean_var.reset(token)
        log.output = result if type(result) in scalars else capture_value(result)
        log.duration_ns = time.perf_counter_ns() - log._start_mono_ns
        log.status = "complete"
        _lean_sink.append(log)
        return result

    return wrapt.FunctionWrapper(fn, call)


def closure_dispatch(fn: Callable[..., Any], call: Callable[..., Any]) -> Callable[..., Any]:
    """What-if: the same wrapper function, dispatched by a plain closure instead of wrapt."""

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return call(fn, None, args, kwargs)

    return dispatch


def what_if(out: list[str]) -> None:
    empty = ns(lambda: None)
    parent = Log("p", None)
    lean_parent = LeanLog("p", None)
    f_lean = lean_wrapper(f_bare)
    f_today_closure = closure_dispatch(f_bare, f_flow._self_wrapper)
    f_lean_closure = closure_dispatch(f_bare, f_lean._self_wrapper)

    def f_with_self(a: int, b: int) -> int:
        return a + b

    f_with_self.__self__ = None  # type: ignore[attr-defined]
    f_wrapt_self = wrapt.FunctionWrapper(f_with_self, f_flow._self_wrapper)
    bare = ns(lambda: f_bare(1, 2))
    rows = [
        ("`Log(path, parent)` today", ns(lambda: Log("p", parent)) - empty),
        ("`LeanLog(path, parent)`: 9 slots set, the rest class defaults, 1 clock read",
         ns(lambda: LeanLog("p", lean_parent)) - empty),
        ("`@flow` `f(1, 2)` overhead today", ns(lambda: f_flow(1, 2)) - bare),
        ("inlined lean wrapper `f(1, 2)` overhead (same wrapt dispatch, LeanLog, "
         "same sink append)", ns(lambda: f_lean(1, 2)) - bare),
        ("today's wrapper logic, wrapt dispatch but the function has a `__self__ = None` "
         "attribute (wrapt's failing `getattr(wrapped, '__self__')` avoided)",
         ns(lambda: f_wrapt_self(1, 2)) - bare),
        ("today's wrapper logic, dispatched by a plain closure instead of wrapt",
         ns(lambda: f_today_closure(1, 2)) - bare),
        ("inlined lean wrapper, dispatched by a plain closure",
         ns(lambda: f_lean_closure(1, 2)) - bare),
        ("floor tracer (for reference)", ns(lambda: f_floor(1, 2)) - bare),
    ]  # fmt: skip
    flow_logs.clear()
    out.append("### What-if variants (ns, min of 7; bench code, not src/)")
    out.append("")
    out.append("| variant | ns |")
    out.append("|---|---|")
    for name, value in rows:
        out.append(f"| {name} | {value:,.0f} |")
    out.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="write to bench/RESULTS.md")
    args = parser.parse_args()
    add_sink(DequeSink())
    for _ in range(1000):  # warm up (first call installs the stdout tee)
        f_flow(1, 2)
        root_flow()
    out: list[str] = [f"Machine: {machine()}", ""]
    profile("`@flow` f(1, 2)", lambda: f_flow(1, 2), 100_000, 1, out)
    profile("`@flow` root + 10 children (sync)", root_flow, 10_000, 11, out)
    breakdown(out)
    what_if(out)
    text = "\n".join(out)
    sys.__stdout__.write(text + "\n")
    if args.markdown:
        write_markdown([HEADING, "", *out], HEADING)
        print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
