"""Caller cost of an instrumented LLM call (issue 10): the real OpenAI and Anthropic SDKs against
a local fake server (a process of its own), with and without `instrument_*`, in one run.

    PYTHONPATH=src python bench/llm_calls.py [--calls 200] [--repeats 7] [--pipeline] [--markdown]
    PYTHONPATH=src python bench/llm_calls.py --count [--calls 100]

For each case, every repeat times `--calls` calls of a plain client and of an instrumented one
(same server, same requests; the order alternates between repeats), and reports:
- the caller thread's CPU time per call (`time.thread_time_ns`): the SDK call's own client-side
  cost, without the wait on the server, which is where our work lands;
- the wall time per call.
The figures are medians over repeats of the per-repeat ratio (instrumented / plain). By
default the logs go to a trivial sink (a deque append as each opens and closes, as
bench/overhead.py measures the recorder): what the caller pays. `--pipeline` keeps the real
pipeline, to a temporary embedded store as a user's would: the worker then maps each span and
writes SQLite on its own thread, which the caller's CPU time does not count but a busy
machine's wall time and cache do.

On a loaded machine the timings drift by more than what is measured: `--count` counts the
Python function calls each SDK call makes instead (cProfile: exact, unaffected by the load),
plain and instrumented, and reports what the instrumentation adds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLOWTRACE_DB_PATH", os.path.join(tempfile.mkdtemp(), "bench.db"))

import anthropic  # noqa: E402
import openai  # noqa: E402

import flowtrace  # noqa: E402
import flowtrace._pipeline  # noqa: E402
from flowtrace._log import Log  # noqa: E402
from flowtrace._sinks import add_sink, remove_sink  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Issue 10, LLM calls"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


class DequeSink:
    """The floor's delivery cost: a deque append as each log opens and as it closes."""

    def __init__(self) -> None:
        self.started: deque[Log] = deque(maxlen=1000)
        self.ended: deque[Log] = deque(maxlen=1000)
        self.log_started = self.started.append
        self.log_ended = self.ended.append


def start_fake() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_llm"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def cases(openai_url: str) -> dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]]:
    """name -> (one call on a client, a new client)."""
    anthropic_url = openai_url.removesuffix("/v1")

    def new_openai() -> openai.OpenAI:
        return openai.OpenAI(api_key="k", base_url=openai_url, max_retries=0)

    def new_anthropic() -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key="k", base_url=anthropic_url, max_retries=0)

    def new_async_openai() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key="k", base_url=openai_url, max_retries=0)

    def chat(client: Any) -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def chat_stream(client: Any) -> Any:
        return list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        )

    def messages(client: Any) -> Any:
        return client.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES[1:]
        )

    def messages_stream(client: Any) -> Any:
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES[1:]
        ) as stream:
            return stream.get_final_text()

    def chat_parse(client: Any) -> Any:  # the fake's plain answer: no response_format
        return client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES)

    def chat_stream_helper(client: Any) -> Any:
        with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
            return stream.get_final_completion()

    def responses_stream_helper(client: Any) -> Any:
        with client.responses.stream(model="gpt-4.1", input="Hi") as stream:
            return stream.get_final_response()

    loop = asyncio.new_event_loop()

    def async_chat(client: Any) -> Any:
        return loop.run_until_complete(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        )

    return {
        "openai chat.completions.create": (chat, new_openai),
        "openai chat.completions.create stream=True": (chat_stream, new_openai),
        "openai AsyncOpenAI chat.completions.create": (async_chat, new_async_openai),
        "openai chat.completions.parse": (chat_parse, new_openai),
        "openai chat.completions.stream()": (chat_stream_helper, new_openai),
        "openai responses.stream()": (responses_stream_helper, new_openai),
        "anthropic messages.create": (messages, new_anthropic),
        "anthropic messages.stream": (messages_stream, new_anthropic),
    }


def timed(call: Callable[[Any], Any], client: Any, calls: int) -> tuple[float, float]:
    """(caller CPU ns, wall ns) per call."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(calls):
        call(client)
    return (time.thread_time_ns() - cpu) / calls, (time.perf_counter_ns() - wall) / calls


def measure(calls: int, repeats: int) -> list[dict[str, Any]]:
    process, url = start_fake()
    rows = []
    try:
        for name, (call, new_client) in cases(url).items():
            plain = new_client()
            traced = new_client()
            if "anthropic" in name:
                flowtrace.instrument_anthropic(traced)
            else:
                flowtrace.instrument_openai(traced)
            for client in (plain, traced):  # warm: connections, imports, caches
                timed(call, client, 20)
            cpu_ratios, wall_ratios, plain_cpu, plain_wall = [], [], [], []
            for repeat in range(repeats):
                order = [(plain, False), (traced, True)]
                results: dict[bool, tuple[float, float]] = {}
                for client, instrumented in order if repeat % 2 == 0 else order[::-1]:
                    results[instrumented] = timed(call, client, calls)
                    flowtrace.flush()
                cpu_ratios.append(results[True][0] / results[False][0])
                wall_ratios.append(results[True][1] / results[False][1])
                plain_cpu.append(results[False][0])
                plain_wall.append(results[False][1])
            rows.append(
                {
                    "case": name,
                    "plain_cpu_us": statistics.median(plain_cpu) / 1000,
                    "cpu_added": statistics.median(cpu_ratios) - 1,
                    "plain_wall_us": statistics.median(plain_wall) / 1000,
                    "wall_added": statistics.median(wall_ratios) - 1,
                }
            )
            print(rows[-1], flush=True)
    finally:
        process.kill()
        process.wait()
    return rows


def markdown(rows: list[dict[str, Any]], calls: int, repeats: int, pipeline: bool) -> str:
    lines = [
        f"`python bench/llm_calls.py --calls {calls} --repeats {repeats}"
        f"{' --pipeline' if pipeline else ''}` "
        f"(Python {sys.version.split()[0]}, openai {openai.__version__}, "
        f"anthropic {anthropic.__version__}; fake server in its own process on loopback; "
        "median of per-repeat ratios, same run)",
        "",
        "| call | plain: caller CPU / call | added (caller CPU) "
        "| plain: wall / call | added (wall) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['plain_cpu_us']:.0f} µs "
            f"| {row['cpu_added']:+.1%} ({row['cpu_added'] * row['plain_cpu_us']:+.0f} µs) "
            f"| {row['plain_wall_us']:.0f} µs | {row['wall_added']:+.1%} |"
        )
    return "\n".join(lines)


#: Where flowtrace's own functions are (the checkout's sources).
FLOWTRACE_SRC = str(Path(flowtrace.__file__).parent)


def python_calls(call: Callable[[Any], Any], client: Any, calls: int) -> tuple[int, int]:
    """Python function calls made by `calls` calls (cProfile's count: exact, load-free), and
    of those, flowtrace's own: its functions' calls plus the calls they make (the builtins
    included). The total also moves by a few dozen from run to run (the garbage collector's
    and finalizers' timing, the connection pool); flowtrace's own count does not."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        call(client)
    profile.disable()
    stats: Any = pstats.Stats(profile)
    own = 0
    for (filename, _, _), (_, count, _, _, callers) in stats.stats.items():
        if filename.startswith(FLOWTRACE_SRC):
            own += count
        else:
            own += sum(c[1] for k, c in callers.items() if k[0].startswith(FLOWTRACE_SRC))
    return int(stats.total_calls), own


def measure_python_calls(calls: int) -> str:
    process, url = start_fake()
    lines = [
        f"`python bench/llm_calls.py --count --calls {calls}` (openai {openai.__version__}, "
        f"anthropic {anthropic.__version__}; Python function calls per SDK call, counted by "
        "cProfile: exact, and unaffected by the machine's load)",
        "",
        "| call | SDK call alone: function calls / call | added by the instrumentation | added "
        "| flowtrace's own calls / call |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    try:
        for case, (call, new_client) in cases(url).items():
            plain, traced = new_client(), new_client()
            if "anthropic" in case:
                flowtrace.instrument_anthropic(traced)
            else:
                flowtrace.instrument_openai(traced)
            for client in (plain, traced):
                timed(call, client, 10)
            alone = python_calls(call, plain, calls)[0] / calls
            total, own = python_calls(call, traced, calls)
            added = total / calls - alone
            lines.append(
                f"| {case} | {alone:,.0f} | {added:+,.0f} | {added / alone:+.1%} "
                f"| {own / calls:,.1f} |"
            )
            print(lines[-1], flush=True)
    finally:
        process.kill()
        process.wait()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--pipeline", action="store_true", help="deliver through the pipeline")
    parser.add_argument("--count", action="store_true", help="count Python function calls")
    args = parser.parse_args()
    if not args.pipeline:
        remove_sink(flowtrace._pipeline._pipeline)
        add_sink(DequeSink())
    if args.count:
        print(measure_python_calls(args.calls))
        return
    rows = measure(args.calls, args.repeats)
    print(markdown(rows, args.calls, args.repeats, args.pipeline) if args.markdown else "")


if __name__ == "__main__":
    main()
