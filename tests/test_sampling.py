"""Sampling by trace (issue 11, flowtrace._sampling): decided once at the root from its id,
inherited by every log of the trace (threads, tasks), whole traces kept or dropped, and the tail
rule that keeps a trace with an error or a slow root."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import itertools
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowtrace
from flowtrace import _held, _log, _sampling, _w3c, flow
from flowtrace._capture import InputBinder
from flowtrace._held import HELD_ENDED
from flowtrace._options import FlowOptions, LogOptions
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.testing import capture_logs
from tests.pipelineutil import WAIT_S, fresh_pipeline


@pytest.fixture
def memory() -> Iterator[Callable[..., MemoryExporter]]:
    """Start a fresh pipeline with the given settings, delivering to a memory exporter."""
    stack: list[Any] = []

    def start(**settings: Any) -> MemoryExporter:
        exporter = MemoryExporter()
        context = fresh_pipeline(exporter, **settings)
        context.__enter__()
        stack.append(context)
        return exporter

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def traces(exporter: MemoryExporter) -> dict[str, set[str]]:
    """Delivered logs by trace: root id -> the ids of every log under it (itself included)."""
    parents = {log_id: body.get("trace_parent_id") for log_id, body in exporter.logs.items()}
    out: dict[str, set[str]] = {}
    for log_id in parents:
        root = log_id
        while parents.get(root) is not None:
            root = parents[root]  # type: ignore[assignment]
        out.setdefault(root, set()).add(log_id)
    return out


@contextlib.contextmanager
def stepping_clock() -> Iterator[list[int]]:
    """A monotonic clock that moves only when a test moves it (so two runs have equal times)."""
    now = [10**12]
    _log.set_clock(mono_ns=lambda: now[0], wall_ns=lambda: 1_700_000_000 * 10**9 + now[0])
    try:
        yield now
    finally:
        _log.set_clock()


@flow(path="sampling/child")
def child(i: int) -> int:
    return i


@flow(path="sampling/root")
def root(n: int, fail: bool = False) -> int:
    total = sum(child(i) for i in range(n))
    if fail:
        raise ValueError("failed")
    return total


# --- the share, whole traces --------------------------------------------------------------------


def test_ten_thousand_traces_at_a_tenth_keep_the_share_and_exactly_the_decided_ones(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.1)
    ids: list[str] = []
    for _ in range(10_000):
        with flow("sampling/trace") as log:
            child(1)
            child(2)
        ids.append(log.log_id)
    assert flowtrace.flush(WAIT_S)
    stats = flowtrace.stats()
    delivered = traces(exporter)
    kept = {log_id for log_id in ids if log_id in delivered}
    # exactly the roots the decision keeps (it is a function of the root's id: reproducible)
    assert kept == {log_id for log_id in ids if _sampling.is_sampled(log_id, 0.1)}
    # and their share is a tenth, within 5 standard deviations of a binomial draw
    sd = math.sqrt(10_000 * 0.1 * 0.9)
    assert abs(len(kept) - 1_000) < 5 * sd, len(kept)
    # never a part of a trace: every kept trace has its root and both children
    assert all(len(delivered[log_id]) == 3 for log_id in kept)
    assert len(exporter.logs) == 3 * len(kept)
    assert stats["sampled_out"] == 10_000 - len(kept)
    assert stats["sampled_out_logs"] == 3 * (10_000 - len(kept))
    assert stats["kept_by_tail"] == 0 and stats["dropped"] == {}


def test_every_trace_with_an_error_is_kept_at_rate_zero_whole(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="sampling/flaky")
    def flaky(i: int) -> int:
        if i == 1:
            raise KeyError(i)
        return i

    @flow(path="sampling/recovers")
    def recovers() -> str:  # a child's error, handled: the trace still had an error
        child(0)
        with contextlib.suppress(KeyError):
            flaky(1)
        return "recovered"

    failed_ids, recovered_ids = [], []
    for _ in range(50):
        with pytest.raises(ValueError, match="failed"):
            root(3, fail=True)
        recovers()
        root(3)  # fine: dropped
    assert flowtrace.flush(WAIT_S)
    delivered = traces(exporter)
    for root_id, logs in delivered.items():
        path = exporter.logs[root_id]["path"]
        (failed_ids if path == "sampling/root" else recovered_ids).append(root_id)
        assert len(logs) == (4 if path == "sampling/root" else 3)  # whole
    assert len(failed_ids) == 50 and len(recovered_ids) == 50
    stats = flowtrace.stats()
    assert stats["sampled_out"] == 50 and stats["kept_by_tail_error"] == 100
    assert all("error" in exporter.logs[i] for i in failed_ids)


def test_a_slow_trace_past_the_threshold_is_kept_and_a_quick_one_dropped(
    memory: Callable[..., MemoryExporter],
) -> None:
    with stepping_clock() as now:
        exporter = memory(sample_rate=0.0, sample_keep_slower_than_s=1.0)

        @flow(path="sampling/slow")
        def takes(seconds: float) -> None:
            child(0)
            now[0] += int(seconds * 1e9)

        takes(0.5)
        takes(2.0)
        takes(1.0)  # at the threshold: kept
    assert flowtrace.flush(WAIT_S)
    kept = sorted(
        exporter.logs[r]["provider_latency"]
        for r in traces(exporter)
        if exporter.logs[r]["path"] == "sampling/slow"
    )
    assert kept == [1.0, 2.0]
    assert len(exporter.logs) == 4  # each with its child
    assert flowtrace.stats()["kept_by_tail_slow"] == 2


# --- held roots: an unsampled plain function's root, a record in the context --------------------


def _held_dropped() -> int:
    return _sampling._count(_sampling.held_dropped)


def children_everywhere(fail_in: str | None) -> None:
    """Children of the current flow in a thread (propagate), a traced pool, `asyncio.to_thread`
    (from an undecorated coroutine: only the context it copies can carry the flow there) and
    an asyncio task; `fail_in` names the one that raises (and is handled)."""

    @flow(path="sampling/worker")
    def worker(where: str) -> str:
        if where == fail_in:
            raise RuntimeError(where)
        return where

    def quietly(where: str) -> None:
        with contextlib.suppress(RuntimeError):
            worker(where)

    async def in_task() -> None:
        await asyncio.create_task(asyncio.to_thread(quietly, "to_thread"))
        await asyncio.create_task(async_worker("task"))

    @flow(path="sampling/async_worker")
    async def async_worker(where: str) -> None:
        quietly(where)

    thread = threading.Thread(target=flowtrace.propagate(quietly), args=("thread",))
    thread.start()
    thread.join()
    with flowtrace.TracedThreadPoolExecutor(1) as pool:
        pool.submit(quietly, "pool").result()
    asyncio.run(in_task())


@flow(path="sampling/held", sample_rate=0.0)
def held_everywhere(fail_in: str | None) -> str:
    """`children_everywhere` under a root that is a plain function with scalar arguments (the
    recorder's cheapest unsampled root, `_held.HeldRoot`)."""
    children_everywhere(fail_in)
    return "done"


def test_a_held_root_is_inherited_across_threads_pools_to_thread_and_tasks(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory()
    dropped_alone = _held_dropped()
    assert held_everywhere(None) == "done"
    assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}
    assert flowtrace.stats()["sampled_out_logs"] == 6  # the root, 4 workers, 1 async worker
    assert _held_dropped() == dropped_alone  # the async child made it a Log: dropped as one
    for where in ("thread", "pool", "to_thread", "task"):
        before = set(traces(exporter))
        assert held_everywhere(where) == "done"
        assert flowtrace.flush(WAIT_S)
        (root_id,) = set(traces(exporter)) - before  # one more trace, not a stray root
        assert exporter.logs[root_id]["path"] == "sampling/held"
        assert len(traces(exporter)[root_id]) == 6, where  # kept whole by the error in `where`
        assert exporter.logs[root_id]["inputs"] == {"fail_in": where}


def test_generators_async_generators_and_blocks_under_a_held_root_are_in_its_trace(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="sampling/gen")
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    @flow(path="sampling/agen")
    async def letters(text: str) -> Any:
        for letter in text:
            yield letter

    async def collect() -> list[str]:
        return [letter async for letter in letters("ab")]

    @flow(path="sampling/held-mixed")
    def mixed(fail: bool) -> int:
        total = sum(numbers(3))
        assert asyncio.run(collect()) == ["a", "b"]
        with flow("sampling/block"):
            if fail:
                raise ValueError("kept")
        return total

    assert mixed(False) == 3
    with pytest.raises(ValueError, match="kept"):
        mixed(True)
    assert flowtrace.flush(WAIT_S)
    (logs,) = traces(exporter).values()  # the failed one, whole; the other dropped whole
    paths = sorted(exporter.logs[log_id]["path"] for log_id in logs)
    assert paths == ["sampling/agen", "sampling/block", "sampling/gen", "sampling/held-mixed"]
    assert flowtrace.stats()["sampled_out_logs"] == 4


def test_a_childless_held_root_is_dropped_without_a_log_and_counted(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="sampling/leaf")
    def leaf(a: int, b: str, c: float | None = None) -> int:
        return a

    before = _held_dropped()
    for i in range(100):
        assert leaf(i, "x", None) == i
    assert _held_dropped() - before == 100  # the recorder's cheapest end, each time
    assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}
    stats = flowtrace.stats()
    assert stats["sampled_out"] == stats["sampled_out_logs"] == 100


def test_a_held_root_that_fails_is_kept_with_what_it_printed_and_set(
    memory: Callable[..., MemoryExporter], capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = memory(sample_rate=0.0)
    raised = ValueError("no")

    @flow(path="sampling/fails")
    def fails(q: str, n: int) -> None:
        print("thinking")
        log = flowtrace.current_log()
        assert log is not None and not log.sampled
        log.metadata["tenant"] = "acme"
        raise raised

    @flow(path="sampling/fails-alone")
    def fails_alone(q: str) -> None:
        raise KeyError(q)

    with pytest.raises(ValueError, match="no") as caught:
        fails("hi", 2)
    assert caught.value is raised  # the user's exception, unchanged
    with pytest.raises(KeyError):
        fails_alone("k")
    assert flowtrace.flush(WAIT_S)
    assert "thinking" in capsys.readouterr().out
    by_path = {body["path"]: body for body in exporter.logs.values()}
    failed = by_path["sampling/fails"]
    assert failed["inputs"] == {"q": "hi", "n": 2}
    assert failed["stdout"] == "thinking\n"
    assert failed["metadata"]["tenant"] == "acme"
    assert failed["error"] == "ValueError: no"
    assert by_path["sampling/fails-alone"]["inputs"] == {"q": "k"}
    assert by_path["sampling/fails-alone"]["error"].startswith("KeyError")
    assert flowtrace.stats()["kept_by_tail_error"] == 2


def test_a_held_root_slow_without_children_is_kept_with_its_duration(
    memory: Callable[..., MemoryExporter],
) -> None:
    with stepping_clock() as now:
        exporter = memory(sample_rate=0.0, sample_keep_slower_than_s=1.0)

        @flow(path="sampling/slow-leaf")
        def takes(seconds: float) -> float:
            now[0] += int(seconds * 1e9)
            return seconds

        before = _held_dropped()
        assert [takes(0.5), takes(3.0)] == [0.5, 3.0]
        assert _held_dropped() - before == 1
    assert flowtrace.flush(WAIT_S)
    (body,) = exporter.logs.values()
    assert body["provider_latency"] == 3.0 and body["output"] == "3.0"
    assert flowtrace.stats()["kept_by_tail_slow"] == 1


def test_an_interrupted_held_root_is_dropped_and_the_interruption_goes_on(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="sampling/interrupted")
    def interrupted(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted(1)
    assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}
    assert flowtrace.stats()["sampled_out"] == 1
    assert flowtrace.current_log() is None  # nothing of it is left in the context


def test_a_log_opened_under_a_held_root_after_it_was_dropped_is_dropped_too(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)
    go = threading.Event()
    threads: list[threading.Thread] = []

    def later() -> None:
        go.wait(WAIT_S)
        child(1)

    @flow(path="sampling/left-early")
    def left_early(n: int) -> int:
        # a copied context (not `propagate`, which makes the root a Log): it holds the record
        thread = threading.Thread(target=contextvars.copy_context().run, args=(later,))
        thread.start()
        threads.append(thread)
        return n

    before = _held_dropped()
    left_early(1)  # ends before anything opened under it: dropped as a record
    assert _held_dropped() - before == 1
    go.set()
    threads[0].join()
    assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}
    assert flowtrace.stats()["sampled_out_logs"] == 2  # the root and its late child


# --- held children: the calls under a held root, records too ---------------------------------


def _tree(exporter: MemoryExporter, log_id: str) -> dict[str, Any]:
    """A delivered log and everything under it, without ids: what a trace looks like."""
    body = exporter.logs[log_id]
    children = sorted(
        (i for i, b in exporter.logs.items() if b.get("trace_parent_id") == log_id),
        key=lambda i: exporter.logs[i]["start_time"],
    )
    kept = ("path", "inputs", "output", "error", "stdout", "start_time", "end_time")
    shape = {key: body[key] for key in kept if key in body}
    shape["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "flowtrace"}
    shape["children"] = [_tree(exporter, child_id) for child_id in children]
    return shape


def _only_trace(exporter: MemoryExporter) -> dict[str, Any]:
    (root_id,) = traces(exporter)
    return _tree(exporter, root_id)


def _three_levels(now: list[int]) -> Callable[..., int]:
    """A root of plain functions with scalar arguments: the root, 3 children, 6 grandchildren,
    each moving the clock a millisecond; a leaf can fail (handled); with `note`, a middle sets
    its log's metadata and a leaf prints (both make Logs of records on the way); the root can
    run slow or fail."""

    @flow(path="held/leaf")
    def leaf(i: int, fail: bool, speak: bool) -> int:
        now[0] += 10**6
        if fail:
            raise KeyError(i)
        if speak and i == 3:
            print("leaf 3 speaks")
        return i * 10

    @flow(path="held/middle")
    def middle(i: int, fail_leaf: bool, note: bool) -> int:
        now[0] += 10**6
        if note:
            log = flowtrace.current_log()
            assert log is not None
            log.metadata = {"note": i}
        total = leaf(2 * i, False, note)
        with contextlib.suppress(KeyError):
            total += leaf(2 * i + 1, fail_leaf and i == 1, note)
        return total

    @flow(path="held/top")
    def top(slow_s: float, fail_leaf: bool, note: bool, fail: bool) -> int:
        total = sum(middle(i, fail_leaf, note) for i in range(3))
        now[0] += int(slow_s * 1e9)
        if fail:
            raise ValueError("top failed")
        return total

    return top


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("slow root", {"slow_s": 2.0, "fail_leaf": False, "note": False, "fail": False}),
        ("failed root", {"slow_s": 0.0, "fail_leaf": False, "note": False, "fail": True}),
        ("a leaf failed", {"slow_s": 0.0, "fail_leaf": True, "note": False, "fail": False}),
        ("logs made on the way", {"slow_s": 2.0, "fail_leaf": False, "note": True, "fail": False}),
    ],
)
def test_a_kept_trace_of_held_children_is_delivered_as_the_sampled_trace_would_be(
    memory: Callable[..., MemoryExporter], case: str, kwargs: dict[str, Any]
) -> None:
    """Children of a held root are records until the trace is kept; then each is the Log a
    sampled run makes, in the same tree, with the same inputs, outputs, errors, prints,
    metadata and times."""
    args = tuple(kwargs.values())
    shapes = []
    for rate in (1.0, 0.0):
        exporter = memory(sample_rate=rate, sample_keep_slower_than_s=1.0)
        with stepping_clock() as now:
            top = _three_levels(now)
            with contextlib.suppress(ValueError):
                top(*args)
            assert flowtrace.flush(WAIT_S)  # (the worker reads the clock too)
        shapes.append(_only_trace(exporter))
    sampled, kept = shapes
    assert kept == sampled, case
    assert len(sampled["children"]) == 3
    assert all(len(middle["children"]) == 2 for middle in sampled["children"])


def test_a_dropped_trace_of_held_children_makes_no_log_and_counts_each(
    memory: Callable[..., MemoryExporter], capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = memory(sample_rate=0.0, sample_keep_slower_than_s=1.0)
    with stepping_clock() as now:
        top = _three_levels(now)
        number = _log.next_number()
        assert top(0.5, False, False, False) == sum(range(0, 60, 10))
        # only the root drew a log number (its decision's): no child was made a Log
        assert _log.next_number() == number + 2
        top(0.0, False, True, False)  # some made Logs on the way (current_log()): dropped too
        assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}
    assert capsys.readouterr().out == "leaf 3 speaks\n"
    stats = flowtrace.stats()
    assert stats["sampled_out"] == 2 and stats["sampled_out_logs"] == 2 * 10
    assert stats["kept_by_tail"] == 0


def test_a_held_childs_result_is_copied_as_it_returned(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="held/returns-a-list")
    def listing(n: int) -> list[int]:
        return list(range(n))

    @flow(path="held/mutates")
    def mutates(n: int) -> None:
        numbers = listing(n)
        numbers.append(99)  # after the call returned: not what it returned
        raise RuntimeError("keep it")

    with pytest.raises(RuntimeError):
        mutates(3)
    assert flowtrace.flush(WAIT_S)
    (body,) = (b for b in exporter.logs.values() if b["path"] == "held/returns-a-list")
    assert body["output"] == "[0,1,2]"


@pytest.mark.parametrize("root_fails", [False, True])
def test_a_held_child_still_running_when_its_root_ends_goes_with_its_trace(
    memory: Callable[..., MemoryExporter], root_fails: bool
) -> None:
    """A thread that outlives the root (a copied context carries the record), and a log it
    opens after the root ended: dropped with a dropped trace (each counted once), delivered
    under its root in a kept one."""
    exporter = memory(sample_rate=0.0)
    started, finish = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    @flow(path="held/after-the-root")
    def after_the_root(i: int) -> int:
        return i

    @flow(path="held/outlives")
    def outlives(i: int) -> int:
        started.set()
        finish.wait(WAIT_S)
        return after_the_root(i)  # its root has ended: this makes its Log (counted once)

    @flow(path="held/leaves-early")
    def leaves_early(n: int) -> int:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(outlives, n))
        thread.start()
        threads.append(thread)
        started.wait(WAIT_S)
        if root_fails:
            raise ValueError("root failed")
        return n

    with contextlib.suppress(ValueError):
        leaves_early(7)
    finish.set()
    threads[0].join()
    assert flowtrace.flush(WAIT_S)
    stats = flowtrace.stats()
    if not root_fails:
        assert exporter.logs == {}
        assert stats["sampled_out"] == 1 and stats["sampled_out_logs"] == 3
        return
    tree = _only_trace(exporter)
    assert tree["path"] == "held/leaves-early" and tree["error"] == "ValueError: root failed"
    (outlived,) = tree["children"]
    assert (outlived["path"], outlived["inputs"], outlived["output"]) == (
        "held/outlives",
        {"i": 7},
        "7",
    )
    assert [c["path"] for c in outlived["children"]] == ["held/after-the-root"]
    assert stats["kept_by_tail_error"] == 1


def test_a_held_child_that_ends_after_its_root_was_taken_releases_itself(
    memory: Callable[..., MemoryExporter],
) -> None:
    """The race of a child that starts as a record just as its root ends, listed after the
    root's end took its records (made here in that order, with the recorder's records): its
    own end releases it, as one more log of a dropped trace (counted), or a late log of a kept
    one (delivered once, as any log of a kept trace that ends after its root)."""
    exporter = memory(sample_rate=0.0)
    options = LogOptions(FlowOptions(), "held/raced", InputBinder(child.__wrapped__))
    for kept in (False, True):
        root_record: list[Any] = [_log.next_number(), 0, options, (1,), []]
        if kept:
            root_log = _held.held_log(root_record)
        root_record.append(HELD_ENDED)  # the root ends
        assert _held.drop_children(root_record) == 0  # and takes its records: none yet
        late = [root_record, 0, options, (2,), root_record, 5, 2]
        root_record[4].append(late)  # the child, listed behind what was taken
        if kept:
            root_log.error = "kept"
            root_log.close(None, 0)
        late.append(HELD_ENDED)  # the child's end, as a record
        _held.release_late(late)
        _held.release_late(late)  # (once only)
    assert flowtrace.flush(WAIT_S)
    assert flowtrace.stats()["sampled_out_logs"] == 1  # the dropped root's late child
    by_input = {body["inputs"]["i"]: body for body in exporter.logs.values()}
    assert sorted(by_input) == [1, 2]
    root_id = next(i for i, body in exporter.logs.items() if body["inputs"]["i"] == 1)
    assert by_input[1]["error"] == "kept"
    late_body = by_input[2]  # under its root, or, if the root's end was planned first, apart
    assert late_body.get("trace_parent_id") == root_id or (
        late_body["metadata"]["flowtrace"]["late_child_of"] == root_id
    )
    assert by_input[2]["output"] == "2"


def test_dropped_traces_of_held_children_leave_no_cycle_for_the_collector(
    memory: Callable[..., MemoryExporter],
) -> None:
    """A child record refers to its root's, which lists it until the root's end takes it: a
    dropped trace's records are freed by reference counting alone."""
    memory(sample_rate=0.0)
    with stepping_clock() as now:
        top = _three_levels(now)
        gc.collect()
        gc.disable()
        try:
            for _ in range(200):
                top(0.0, False, False, False)
            assert gc.collect() == 0
        finally:
            gc.enable()
    assert flowtrace.stats()["sampled_out_logs"] == 200 * 10


def test_held_traces_across_racing_threads_count_every_call_once(
    memory: Callable[..., MemoryExporter],
) -> None:
    """Roots that end while threads with copied contexts still make calls under them (some
    before, some after the root's end; some traces failing, some slow, some asking for the
    current log on the way): every call is delivered once or counted dropped once."""
    exporter = memory(sample_rate=0.0, sample_keep_slower_than_s=0.003)
    rng = random.Random(11)
    calls = itertools.count()
    threads: list[threading.Thread] = []

    @flow(path="race/leaf")
    def leaf(i: int) -> int:
        next(calls)
        if rng.random() < 0.1:
            flowtrace.current_log()
        if rng.random() < 0.3:
            time.sleep(rng.random() / 2000)
        return i

    @flow(path="race/middle")
    def middle(i: int, depth: int) -> int:
        next(calls)
        return sum(middle(j, depth - 1) if depth else leaf(j) for j in range(rng.randint(0, 3)))

    @flow(path="race/root")
    def race(n: int, fail: bool) -> None:
        next(calls)
        started = [
            threading.Thread(target=contextvars.copy_context().run, args=(middle, k, 2))
            for k in range(n)
        ]
        for thread in started:
            thread.start()
        threads.extend(started)
        if rng.random() < 0.5:
            for thread in started:
                thread.join()
        middle(0, 1)
        if fail:
            raise ValueError("kept")

    for _ in range(300):
        with contextlib.suppress(ValueError):
            race(rng.randint(0, 4), rng.random() < 0.3)
    for thread in threads:
        thread.join()
    assert flowtrace.flush(WAIT_S)
    made = next(calls)
    stats = flowtrace.stats()
    assert len(exporter.logs) + stats["sampled_out_logs"] == made
    parents = {body.get("trace_parent_id") for body in exporter.logs.values()} - {None}
    assert parents <= set(exporter.logs)  # kept traces are whole


def test_a_failure_deep_in_held_children_keeps_the_whole_trace(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="held/deep")
    def deep(level: int) -> int:
        if level == 0:
            raise LookupError("bottom")
        return deep(level - 1) + 1

    with pytest.raises(LookupError):
        deep(300)  # records 300 deep, made Logs by the failure at the bottom, in a loop
    assert flowtrace.flush(WAIT_S)
    (logs,) = traces(exporter).values()
    assert len(logs) == 301
    assert all(exporter.logs[i]["error"] == "LookupError: bottom" for i in logs)


def test_a_held_root_decides_as_is_sampled_says_and_sends_its_decision() -> None:
    @flow(path="sampling/held-decision")
    def decide(i: int) -> Any:
        return flowtrace.current_log(), flowtrace.propagation_headers()

    for rate in (0.0, 0.3):
        flowtrace.configure(sample_rate=rate)
        for i in range(200):
            log, headers = decide(i)
            assert log.sampled == _sampling.is_sampled(log.log_id, rate)
            assert _flag(headers) == ("01" if log.sampled else "00")
            assert headers["tracestate"] == _w3c.format_tracestate(log.log_id)
    flowtrace.configure()


# --- the decision: per flow, environment, inheritance --------------------------------------------


def test_a_flows_own_rate_wins_at_the_root_and_is_ignored_below_it(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)

    @flow(path="sampling/always", sample_rate=1.0)
    def always() -> int:
        return never()

    @flow(path="sampling/never", sample_rate=0.0)
    def never() -> int:  # a child: its trace's decision is its root's
        return 1

    always()
    never()
    with flow("sampling/block", sample_rate=1.0):
        child(0)
    assert flowtrace.flush(WAIT_S)
    paths = sorted(body["path"] for body in exporter.logs.values())
    assert paths == ["sampling/always", "sampling/block", "sampling/child", "sampling/never"]
    with pytest.raises(ValueError, match="sample_rate"):
        flow(sample_rate=1.5)


def test_the_rate_from_the_environment_and_wrong_rates(
    monkeypatch: pytest.MonkeyPatch, memory: Callable[..., MemoryExporter]
) -> None:
    monkeypatch.setenv("FLOWTRACE_SAMPLE_RATE", "0.25")
    exporter = memory()
    assert flowtrace.configure().sample_rate == 0.25 and _sampling.rate == 0.25
    ids = []
    for _ in range(400):
        with flow("sampling/env") as log:
            pass
        ids.append(log.log_id)
    assert flowtrace.flush(WAIT_S)
    assert set(exporter.logs) == {i for i in ids if _sampling.is_sampled(i, 0.25)}
    monkeypatch.setenv("FLOWTRACE_SAMPLE_RATE", "2")
    with pytest.raises(ValueError, match="FLOWTRACE_SAMPLE_RATE"):
        flowtrace.configure()
    monkeypatch.delenv("FLOWTRACE_SAMPLE_RATE")
    with pytest.raises(ValueError, match="sample_rate"):
        flowtrace.configure(sample_rate=-0.1)
    with pytest.raises(TypeError, match="sample_keep_slower_than_s"):
        flowtrace.configure(sample_keep_slower_than_s="1")


def run_everywhere(fail_in: str | None) -> str:
    """`children_everywhere` under an unsampled block's root; returns the root's id."""
    with flow("sampling/everywhere", sample_rate=0.0) as log:
        children_everywhere(fail_in)
        assert log.sampled is False
    return log.log_id


def test_the_decision_is_inherited_across_threads_pools_and_tasks(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory()
    run_everywhere(fail_in=None)
    assert flowtrace.flush(WAIT_S)
    assert exporter.logs == {}  # not one log of the unsampled trace escaped it
    assert flowtrace.stats()["sampled_out_logs"] == 6  # the root, 4 workers, 1 async worker
    for where in ("thread", "pool", "to_thread", "task"):
        root_id = run_everywhere(fail_in=where)
        assert flowtrace.flush(WAIT_S)
        delivered = traces(exporter)
        assert len(delivered[root_id]) == 6, where  # kept whole by the error in `where`


def test_a_log_of_a_decided_trace_that_ends_later_follows_its_trace(
    memory: Callable[..., MemoryExporter],
) -> None:
    exporter = memory(sample_rate=0.0)
    go, started = threading.Event(), threading.Event()

    @flow(path="sampling/late")
    def late() -> str:
        started.set()
        go.wait(WAIT_S)
        return "done"

    for fail in (False, True):
        go.clear()
        started.clear()
        expected = pytest.raises(ValueError, match="root failed")
        with expected if fail else contextlib.nullcontext(), flow("sampling/outlived"):
            thread = threading.Thread(target=flowtrace.propagate(late))
            thread.start()
            started.wait(WAIT_S)
            if fail:
                raise ValueError("root failed")
        go.set()
        thread.join()
    assert flowtrace.flush(WAIT_S)
    (kept,) = traces(exporter).values()  # the failed one, with its child that ended later
    assert sorted(exporter.logs[i]["path"] for i in kept) == ["sampling/late", "sampling/outlived"]
    assert all(exporter.status_of(i) == "complete" for i in kept)
    assert flowtrace.stats()["sampled_out_logs"] == 2


def test_a_trace_too_big_to_hold_is_released_whole(
    memory: Callable[..., MemoryExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sampling, "HOLD_MAX_LOGS", 5)
    exporter = memory(sample_rate=0.0)
    root(12)
    assert flowtrace.flush(WAIT_S)
    (logs,) = traces(exporter).values()
    assert len(logs) == 13
    assert flowtrace.stats()["kept_by_tail_too_big"] == 1


def test_is_sampled_reproduces_the_recorders_decision() -> None:
    for rate in (0.0, 0.3, 1.0):
        flowtrace.configure(sample_rate=rate)
        for _ in range(200):
            with flow("sampling/decision") as log:
                pass
            assert log.sampled == _sampling.is_sampled(log.log_id, rate)
    flowtrace.configure()
    assert _sampling.is_sampled("log_0123456789abcdef_1", 1.0)
    assert not _sampling.is_sampled("log_0123456789abcdef_1", 0.0)


# --- across services ---------------------------------------------------------------------------


def _caller_headers(log_id: str, sampled: bool) -> dict[str, str]:
    return {
        "traceparent": _w3c.format_traceparent("ab" * 16, _w3c.span_id_of(log_id), sampled),
        "tracestate": _w3c.format_tracestate(log_id),
    }


def _flag(headers: dict[str, str]) -> str:
    return headers["traceparent"].rsplit("-", 1)[1]


def test_the_decision_goes_out_in_the_traceparent_flag(
    memory: Callable[..., MemoryExporter],
) -> None:
    memory(sample_rate=0.0)
    with flow("sampling/out") as unsampled:
        with flow("sampling/out-child"):
            inner = flowtrace.propagation_headers()
        outer = flowtrace.propagation_headers()
    with flow("sampling/out", sample_rate=1.0):
        kept = flowtrace.propagation_headers()
    assert not unsampled.sampled
    assert _flag(inner) == _flag(outer) == "00" and _flag(kept) == "01"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Start a fresh pipeline with the given settings, delivering to a SQLite file (which,
    unlike the memory exporter, takes a remote caller's children before the caller's log)."""
    with contextlib.ExitStack() as stack:

        def start(**settings: Any) -> None:
            stack.enter_context(fresh_pipeline(db_path=str(tmp_path / "s.db"), **settings))

        yield start


def _roots_under_callers(logs: list[Any]) -> dict[str, list[Any]]:
    """The local roots (and their logs) under each remote caller, from captured logs."""
    out: dict[str, list[Any]] = {}
    for log in logs:
        top = log
        while top.parent is not None and not top.parent.remote:
            top = top.parent
        out.setdefault(top.parent_id, []).append(log)
    return out


def test_a_trusted_caller_that_did_not_sample_is_followed_and_errors_are_still_kept(
    embedded: Callable[..., None],
) -> None:
    embedded(sample_rate=1.0)  # this service would keep everything
    onward = []
    with capture_logs() as captured:
        for i in range(20):
            with flowtrace.continue_trace(_caller_headers(f"log_caller_{i}", sampled=False)):
                with contextlib.suppress(ValueError):
                    root(2, fail=i % 2 == 0)
                with flow("sampling/handler"):
                    onward.append(flowtrace.propagation_headers())
        assert flowtrace.flush(WAIT_S)
    by_caller = _roots_under_callers(captured.logs)
    # Only the failed local roots, each whole (root + 2 children), under their caller.
    assert sorted(by_caller) == sorted(f"log_caller_{i}" for i in range(0, 20, 2))
    assert all(len(logs) == 3 for logs in by_caller.values())
    assert {_flag(headers) for headers in onward} == {"00"}  # passed on as decided
    stats = flowtrace.stats()
    assert stats["kept_by_tail_error"] == 10 and stats["sampled_out"] == 30
    assert stats["dropped"] == {}


def test_a_trusted_caller_that_sampled_is_followed_at_rate_zero(
    embedded: Callable[..., None],
) -> None:
    embedded(sample_rate=0.0)
    with capture_logs() as captured:
        with flowtrace.continue_trace(_caller_headers("log_caller_s", sampled=True)):
            root(3)
            onward = flowtrace.propagation_headers()
            with flow("sampling/handler"):
                inside = flowtrace.propagation_headers()
        assert flowtrace.flush(WAIT_S)
    assert len(_roots_under_callers(captured.logs)["log_caller_s"]) == 5  # root, 3, handler
    assert _flag(onward) == _flag(inside) == "01"
    assert flowtrace.stats()["sampled_out"] == 0


def test_local_roots_under_untrusted_headers_are_decided_here_each_as_a_root(
    embedded: Callable[..., None],
) -> None:
    embedded(sample_rate=0.5)
    ids = []
    # The caller claims its trace is not sampled: untrusted, that is not followed.
    untrusted = _caller_headers("log_caller_u", sampled=False)
    with capture_logs() as captured:
        with flowtrace.continue_trace(untrusted, trusted=False):
            for _ in range(200):
                with flow("sampling/untrusted") as log:
                    child(1)
                ids.append(log.log_id)
        assert flowtrace.flush(WAIT_S)
    roots = {log.log_id for log in captured.logs if log.path == "sampling/untrusted"}
    assert roots == {log_id for log_id in ids if _sampling.is_sampled(log_id, 0.5)}
    assert 60 <= len(roots) <= 140
    children = [log for log in captured.logs if log.path == "sampling/child"]
    assert sorted(log.parent.log_id for log in children) == sorted(roots)  # whole traces
    assert flowtrace.stats()["sampled_out"] == 200 - len(roots)


def test_a_decided_root_is_freed_by_reference_counting_alone(
    memory: Callable[..., MemoryExporter],
) -> None:
    """An unsampled root is its own hold while open; once decided it refers to the decision
    instead, so a busy service's dropped traces do not wait for the cycle collector."""
    memory(sample_rate=0.0)
    refs = []
    gc.disable()
    try:
        for fail in (False, True):  # dropped, and kept by the tail rule
            with contextlib.suppress(ValueError), flow("sampling/freed") as log:
                child(1)
                if fail:
                    raise ValueError("kept")
            assert log.trace_hold is (_sampling.KEPT if fail else _sampling.DROPPED)
            refs.append(weakref.ref(log))
            del log
        assert flowtrace.flush(WAIT_S)
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
