"""The recorder: what @flow and `with flow(...)` capture, for every kind of callable."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

import flowtrace
from flowtrace import current_log, flow
from flowtrace._log import Log, set_clock
from flowtrace.testing import CapturedLogs, capture_logs

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


class Boom(Exception):
    pass


def only(captured: CapturedLogs, path: str) -> dict[str, Any]:
    records = captured.by_path(path)
    assert len(records) == 1, records
    return records[0]


# --- the public surface ------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert flowtrace.__all__ == [
        "Flow",
        "Log",
        "Settings",
        "TracedThreadPoolExecutor",
        "configure",
        "current_log",
        "flow",
        "flush",
        "instrument_anthropic",
        "instrument_openai",
        "propagate",
        "shutdown",
        "stats",
    ]
    assert sorted(flowtrace.__all__) == flowtrace.__all__


# --- inputs and outputs --------------------------------------------------------------------------


def test_inputs_bound_by_name_with_defaults_and_output() -> None:
    @flow(path="t/add")
    def add(a: int, b: int = 2, *rest: int, scale: int = 1, **extra: Any) -> int:
        return (a + b + sum(rest)) * scale

    with capture_logs() as captured:
        assert add(1, 2, 3, 4, scale=2, tag="x") == 20
        assert add(5) == 7
    first, second = captured.records
    assert first["inputs"] == {"a": 1, "b": 2, "rest": [3, 4], "scale": 2, "tag": "x"}
    assert first["output"] == "20"
    assert second["inputs"] == {"a": 5, "b": 2, "rest": [], "scale": 1}
    assert first["trace_status"] == "complete"
    assert "trace_parent_id" not in first


def test_arguments_are_snapshotted_at_call_time() -> None:
    @flow(path="t/mutate")
    def mutate(items: list[int], options: dict[str, Any]) -> list[int]:
        items.append(99)
        options["seen"] = True
        return items

    with capture_logs() as captured:
        mutate([1, 2], {"k": 1})
    record = only(captured, "t/mutate")
    assert record["inputs"] == {"items": [1, 2], "options": {"k": 1}}
    assert json.loads(record["output"]) == [1, 2, 99]


def test_string_output_and_chat_message_output() -> None:
    @flow(path="t/text")
    def text() -> str:
        return "hello"

    @flow(path="t/chat")
    def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"role": "assistant", "content": "hi there", "refusal": None}

    conversation = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    with capture_logs() as captured:
        text()
        chat(conversation)
    assert only(captured, "t/text")["output"] == "hello"
    record = only(captured, "t/chat")
    assert record["output_message"] == {"role": "assistant", "content": "hi there"}
    assert "output" not in record
    assert record["messages"] == conversation
    assert "messages" not in record.get("inputs", {})


def test_redacting_and_disabling_capture() -> None:
    def drop_key(inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k != "api_key"}

    @flow(path="t/redacted", capture_inputs=drop_key, capture_output=lambda out: out.upper())
    def call(prompt: str, api_key: str) -> str:
        return prompt

    @flow(path="t/blind", capture_inputs=False, capture_output=False)
    def blind(secret: str) -> str:
        return secret

    with capture_logs() as captured:
        assert call("hi", api_key="sk-123") == "hi"
        assert blind("s3cret") == "s3cret"
    assert only(captured, "t/redacted")["inputs"] == {"prompt": "hi"}
    assert only(captured, "t/redacted")["output"] == "HI"
    blind_record = only(captured, "t/blind")
    assert "inputs" not in blind_record and "output" not in blind_record
    assert "s3cret" not in json.dumps(captured.records)


def test_default_path_is_module_and_qualname() -> None:
    class Agent:
        @flow
        def run(self) -> None:
            pass

    with capture_logs() as captured:
        Agent().run()
    assert (
        captured.records[0]["path"]
        == "tests/test_recorder/test_default_path_is_module_and_qualname.Agent.run"
    )


def test_with_block_fields_and_current_log() -> None:
    assert current_log() is None
    with capture_logs() as captured:
        with flow("agents/support", inputs={"q": "hi"}, attributes={"model": "m1"}) as log:
            assert current_log() is log
            log.output = {"answer": 42}
            log.metadata = {"tenant": "acme"}
            log.provider_request = {"model": "m1"}
            log.provider_response = {"id": "r1"}
            log.messages = [{"role": "user", "content": "hi"}]
            print("working")
        assert current_log() is None
    record = only(captured, "agents/support")
    assert record["inputs"] == {"q": "hi"}
    assert json.loads(record["output"]) == {"answer": 42}
    assert record["flow"] == {"attributes": {"model": "m1"}}
    assert record["metadata"] == {"tenant": "acme"}
    assert record["provider_request"] == {"model": "m1"}
    assert record["provider_response"] == {"id": "r1"}
    assert record["messages"] == [{"role": "user", "content": "hi"}]
    assert record["stdout"] == "working\n"
    assert log.is_complete and log.log_id == record["log_id"]


def test_values_set_on_a_log_are_frozen_at_its_end() -> None:
    state = {"step": 1}
    with capture_logs() as captured, flow("t/frozen") as log:
        log.output = state
    state["step"] = 2
    assert json.loads(only(captured, "t/frozen")["output"]) == {"step": 1}


def test_timings_come_from_the_injected_clocks() -> None:
    mono = iter([0, 10_000, 2_500_010_000])  # calibration, start, end
    set_clock(wall_ns=lambda: 1_699_999_999_999_990_000, mono_ns=lambda: next(mono))
    try:
        with capture_logs() as captured, flow("t/clock"):
            pass
        record = only(captured, "t/clock")  # encoded under the same clocks
    finally:
        set_clock()
    assert record["start_time"] == "2023-11-14T22:13:20.000000Z"
    assert record["end_time"] == "2023-11-14T22:13:22.500000Z"
    assert record["provider_latency"] == 2.5


# --- errors --------------------------------------------------------------------------------


def _raise(error: BaseException) -> None:
    raise error


def test_sync_exception_is_the_same_object_with_its_traceback() -> None:
    error = Boom("bad input")

    @flow(path="t/fails")
    def fails() -> None:
        _raise(error)

    with capture_logs() as captured, pytest.raises(Boom) as info:
        fails()
    assert info.value is error
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-2:] == ["fails", "_raise"]
    record = only(captured, "t/fails")
    assert record["error"] == "Boom: bad input"
    recorded = record["metadata"]["flowtrace"]["traceback"]
    assert "in _raise" in recorded
    assert "_decorator.py" not in recorded  # flowtrace's own frames are left out
    assert record["trace_status"] == "complete"


def test_async_generator_and_async_generator_exceptions_propagate_unchanged() -> None:
    error = Boom("async")

    @flow(path="t/afails")
    async def afails() -> None:
        await asyncio.sleep(0)
        _raise(error)

    @flow(path="t/gfails")
    def gfails() -> Iterator[int]:
        yield 1
        _raise(error)

    @flow(path="t/agfails")
    async def agfails() -> AsyncIterator[int]:
        yield 1
        _raise(error)

    async def consume_async_gen() -> None:
        async for _ in agfails():
            pass

    with capture_logs() as captured:
        with pytest.raises(Boom) as info:
            asyncio.run(afails())
        assert info.value is error
        with pytest.raises(Boom) as info:
            list(gfails())
        assert info.value is error
        with pytest.raises(Boom) as info:
            asyncio.run(consume_async_gen())
        assert info.value is error
    for path in ("t/afails", "t/gfails", "t/agfails"):
        record = only(captured, path)
        assert record["error"] == "Boom: async"
        assert "_raise" in record["metadata"]["flowtrace"]["traceback"]


def test_with_block_error_is_recorded_and_reraised() -> None:
    error = Boom("in block")
    with capture_logs() as captured, pytest.raises(Boom) as info, flow("t/block"):
        raise error
    assert info.value is error
    assert only(captured, "t/block")["error"] == "Boom: in block"


def test_async_with_block() -> None:
    async def main() -> str:
        async with flow("t/async-block", inputs={"n": 1}) as log:
            await asyncio.sleep(0)
            log.output = "done"
            return log.log_id

    with capture_logs() as captured:
        log_id = asyncio.run(main())
    assert only(captured, "t/async-block")["log_id"] == log_id


@pytest.mark.parametrize(
    ("error", "ended"),
    [
        (KeyboardInterrupt(), "interrupted: KeyboardInterrupt"),
        (SystemExit(3), "interrupted: SystemExit"),
        (GeneratorExit(), "interrupted: GeneratorExit"),
    ],
)
def test_interruptions_propagate_untouched_and_are_not_failures(
    error: BaseException, ended: str
) -> None:
    @flow(path="t/interrupted")
    def interrupted() -> None:
        raise error

    with capture_logs() as captured, pytest.raises(type(error)) as info:
        interrupted()
    assert info.value is error
    record = only(captured, "t/interrupted")
    assert "error" not in record
    assert record["metadata"]["flowtrace"] == {"ended": ended}
    assert record["trace_status"] == "complete"


async def _cancelled_once_ready(
    work: Callable[[asyncio.Event], Coroutine[Any, Any, object]],
) -> None:
    """Run `work(ready)` as a task and cancel it once it has set `ready`."""
    ready = asyncio.Event()
    task = asyncio.create_task(work(ready))
    await ready.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancellation_is_recorded_as_cancelled() -> None:
    @flow(path="t/cancelled")
    async def slow(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.Event().wait()

    with capture_logs() as captured:
        asyncio.run(_cancelled_once_ready(slow))
    record = only(captured, "t/cancelled")
    assert "error" not in record
    assert record["metadata"]["flowtrace"] == {"ended": "cancelled"}


# --- transparency ---------------------------------------------------------------------------------


def test_decorated_functions_are_transparent() -> None:
    def plain(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    async def coro(a: int) -> int:
        return a

    def gen(n: int) -> Iterator[int]:
        yield from range(n)

    async def agen(n: int) -> AsyncIterator[int]:
        yield n

    for original in (plain, coro, gen, agen):
        wrapped = flow(original)
        assert wrapped.__wrapped__ is original
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert wrapped.__name__ == original.__name__
        assert wrapped.__doc__ == original.__doc__
        assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(original)
        assert inspect.isgeneratorfunction(wrapped) == inspect.isgeneratorfunction(original)
        assert inspect.isasyncgenfunction(wrapped) == inspect.isasyncgenfunction(original)
    sentinel = object()
    assert flow(lambda: sentinel)() is sentinel


def test_methods_bind_and_leave_out_self_and_cls_by_binding() -> None:
    class Service:
        factor = 3

        @flow(path="t/method")
        def method(this, x: int) -> int:
            return x * this.factor

        @flow(path="t/classmethod")
        @classmethod
        def build(klass, x: int) -> int:
            return x * klass.factor

        @classmethod
        @flow(path="t/classmethod-inner")
        def build_inner(cls, x: int) -> int:
            return x + cls.factor

        @flow(path="t/static")
        @staticmethod
        def static(self: int) -> int:  # a parameter named self that is NOT bound
            return self

    service = Service()
    with capture_logs() as captured:
        assert service.method(2) == 6
        assert Service.method(service, 4) == 12
        assert Service.build(2) == 6
        assert service.build(1) == 3
        assert Service.build_inner(1) == 4
        assert Service.static(7) == 7
    assert [r["inputs"] for r in captured.by_path("t/method")] == [{"x": 2}, {"x": 4}]
    assert [r["inputs"] for r in captured.by_path("t/classmethod")] == [{"x": 2}, {"x": 1}]
    assert only(captured, "t/classmethod-inner")["inputs"] == {"x": 1}
    assert only(captured, "t/static")["inputs"] == {"self": 7}
    assert inspect.signature(service.method) == inspect.signature(lambda x: None).replace(
        parameters=[
            inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="int")
        ],
        return_annotation="int",
    )


# --- generators ----------------------------------------------------------------------------------


@flow(path="t/tokens")
def tokens(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"t{i} "


def test_generator_exhausted_joins_strings() -> None:
    with capture_logs() as captured:
        assert list(tokens(3)) == ["t0 ", "t1 ", "t2 "]
    record = only(captured, "t/tokens")
    assert record["output"] == "t0 t1 t2 "
    assert "metadata" not in record


def test_generator_closed_early_is_complete_with_what_was_yielded() -> None:
    with capture_logs() as captured:
        for token in tokens(10):
            if token == "t1 ":
                break
    record = only(captured, "t/tokens")
    assert record["output"] == "t0 t1 "
    assert record["metadata"]["flowtrace"] == {"ended": "closed early"}
    assert record["trace_status"] == "complete"


def test_generator_abandoned_unfinished_ends_when_collected() -> None:
    with capture_logs() as captured:
        gen = tokens(10)
        next(gen)
        del gen  # CPython finalizes it here, which closes it
    assert only(captured, "t/tokens")["output"] == "t0 "


def test_generator_never_started_records_nothing() -> None:
    with capture_logs() as captured:
        gen = tokens(3)
        del gen
    assert captured.records == []


def test_generator_of_objects_is_a_list_and_send_and_throw_reach_the_body() -> None:
    @flow(path="t/echo")
    def echo() -> Iterator[dict[str, int]]:
        received = 0
        while True:
            try:
                received = yield {"got": received}
            except Boom:
                received = -1

    with capture_logs() as captured:
        gen = echo()
        assert next(gen) == {"got": 0}
        assert gen.send(5) == {"got": 5}
        assert gen.throw(Boom()) == {"got": -1}
        gen.close()
    assert json.loads(only(captured, "t/echo")["output"]) == [{"got": 0}, {"got": 5}, {"got": -1}]


def test_async_generator_streams_and_closes_early() -> None:
    @flow(path="t/astream")
    async def astream(n: int) -> AsyncIterator[str]:
        for i in range(n):
            await asyncio.sleep(0)
            yield str(i)

    async def main() -> list[str]:
        full = [item async for item in astream(3)]
        stream = astream(10)
        async for item in stream:
            if item == "1":
                break
        await stream.aclose()
        return full

    with capture_logs() as captured:
        assert asyncio.run(main()) == ["0", "1", "2"]
    full, early = captured.by_path("t/astream")
    assert full["output"] == "012"
    assert early["output"] == "01"
    assert early["metadata"]["flowtrace"] == {"ended": "closed early"}


def test_async_generator_abandoned_with_break_in_asyncio_run_is_closed_early() -> None:
    """Issue 9 item 16: asyncio.run cancels the pending aclose() of a generator left with
    `break`, which throws CancelledError in at its yield: its consumer stopped, it was not
    cancelled while working."""

    @flow(path="t/abandoned")
    async def abandoned(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield str(i)

    @flow(path="t/cancelled-inside")
    async def cancelled_inside(ready: asyncio.Event) -> AsyncIterator[str]:
        yield "first"
        ready.set()
        await asyncio.Event().wait()  # cancelled here, while working
        yield "never"

    async def main() -> None:
        async for item in abandoned(10):
            if item == "1":
                break

        async def consume(ready: asyncio.Event) -> None:
            async for _ in cancelled_inside(ready):
                pass

        await _cancelled_once_ready(consume)

    with capture_logs() as captured:
        asyncio.run(main())
    record = only(captured, "t/abandoned")
    assert record["metadata"]["flowtrace"] == {"ended": "closed early"}
    assert record["output"] == "01"
    inside = only(captured, "t/cancelled-inside")
    assert inside["metadata"]["flowtrace"] == {"ended": "cancelled"}
    assert inside["output"] == "first"


def test_generator_nests_under_the_flow_that_iterates_it() -> None:
    @flow(path="t/producer")
    def producer() -> Iterator[str]:
        return tokens(2)

    with capture_logs() as captured, flow("t/consumer") as consumer:
        stream = producer()
        "".join(stream)
    assert only(captured, "t/tokens")["trace_parent_id"] == consumer.log_id
    assert only(captured, "t/producer")["trace_parent_id"] == consumer.log_id


# --- nesting -------------------------------------------------------------------------------------


def test_nested_flows_form_a_tree() -> None:
    @flow(path="t/leaf")
    def leaf(i: int) -> int:
        return i

    @flow(path="t/root")
    def root() -> int:
        return sum(leaf(i) for i in range(3))

    with capture_logs() as captured:
        root()
    (tree,) = captured.trees()
    assert tree["path"] == "t/root"
    assert [child["inputs"] for child in tree["children"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    root_log = next(log for log in captured.logs if log.path == "t/root")
    assert all(log.trace_id == root_log.log_id for log in captured.logs)


def test_concurrent_tasks_nest_under_their_own_parent() -> None:
    @flow(path="t/task-leaf")
    async def task_leaf(task: int, step: int) -> str:
        await asyncio.sleep(0)
        return f"{task}:{step}"

    @flow(path="t/task")
    async def task(n: int) -> int:
        for step in range(3):
            await task_leaf(n, step)
        return n

    @flow(path="t/gather")
    async def gather() -> list[int]:
        return await asyncio.gather(*(task(n) for n in range(100)))

    with capture_logs() as captured:
        asyncio.run(gather())
    (tree,) = captured.trees()
    assert len(tree["children"]) == 100
    for child in tree["children"]:
        n = child["inputs"]["n"]
        assert [leaf["output"] for leaf in child["children"]] == [f"{n}:{s}" for s in range(3)]


def test_threads_start_their_own_trace_unless_propagated() -> None:
    @flow(path="t/work")
    def work(i: int) -> int:
        return i

    with capture_logs() as captured, flow("t/parent") as parent:
        with flowtrace.TracedThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(work, range(20))) == list(range(20))
        with flowtrace.TracedThreadPoolExecutor(max_workers=2) as pool:
            pool.submit(work, 99).result()
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as plain_pool:
            plain_pool.submit(work, -1).result()
            plain_pool.submit(flowtrace.propagate(work), -2).result()
    by_input = {r["inputs"]["i"]: r for r in captured.by_path("t/work")}
    for i in [*range(20), 99, -2]:
        assert by_input[i]["trace_parent_id"] == parent.log_id
    assert "trace_parent_id" not in by_input[-1]


def test_asyncio_to_thread_carries_the_context() -> None:
    @flow(path="t/in-thread")
    def in_thread() -> None:
        pass

    async def main() -> str:
        async with flow("t/async-parent") as parent:
            await asyncio.to_thread(in_thread)
            return parent.log_id

    with capture_logs() as captured:
        parent_id = asyncio.run(main())
    assert only(captured, "t/in-thread")["trace_parent_id"] == parent_id


def _stream(path: str) -> Iterator[int]:
    with flow(path):
        yield 1
        yield 2


async def _astream(path: str) -> AsyncIterator[int]:
    async with flow(path):
        yield 1
        await asyncio.sleep(0)
        yield 2


def _assert_later_flows_are_roots(captured: CapturedLogs, *paths: str) -> None:
    assert "trace_parent_id" not in only(captured, "t/later")
    for path in paths:
        assert only(captured, path)["trace_status"] == "complete"


async def _current_then_a_later_flow() -> Log | None:
    """The current log once the generators are done; then a flow, which must be a root."""
    seen = current_log()
    async with flow("t/later"):
        pass
    return seen


def _run_and_check_later_flows_are_roots(
    main: Callable[[], Coroutine[Any, Any, Log | None]], *paths: str
) -> None:
    with capture_logs() as captured:
        assert asyncio.run(main()) is None
    _assert_later_flows_are_roots(captured, *paths)


def test_interleaved_generators_leave_no_finished_log_current() -> None:
    """Issue 9 item 8: two generators each holding a block, advanced in turn."""
    with capture_logs() as captured:
        assert list(zip(_stream("t/a"), _stream("t/b"), strict=False)) == [(1, 1), (2, 2)]
        assert current_log() is None
        a, b = _stream("t/c"), _stream("t/d")
        assert [next(a), next(b), next(a), next(b)] == [1, 1, 2, 2]
        assert list(a) == list(b) == []
        assert current_log() is None
        with flow("t/later"):
            pass
    _assert_later_flows_are_roots(captured, "t/a", "t/b", "t/c", "t/d")


def test_interleaved_async_generators_leave_no_finished_log_current() -> None:
    async def main() -> Log | None:
        a, b = _astream("t/a"), _astream("t/b")
        assert [await anext(a), await anext(b), await anext(a), await anext(b)] == [1, 1, 2, 2]
        assert [x async for x in a] == [] and [x async for x in b] == []
        return await _current_then_a_later_flow()

    _run_and_check_later_flows_are_roots(main, "t/a", "t/b")


def test_a_block_left_in_another_task_leaves_no_finished_log_current() -> None:
    """A generator's block entered in one task (or context) and left in another cannot reset
    the context it was entered in: that context's current log is then a finished log, which
    neither `current_log()` nor a new log's parent may be."""

    async def main() -> Log | None:
        a, b = _astream("t/a"), _astream("t/b")
        assert await asyncio.gather(anext(a), anext(b)) == [1, 1]  # entered in two tasks
        assert [await anext(a), await anext(b)] == [2, 2]
        assert [x async for x in a] == [] and [x async for x in b] == []
        c, d = _astream("t/c"), _astream("t/d")
        assert await asyncio.create_task(anext(c)) == 1
        assert await anext(d) == 1  # d is entered here, in main's context...
        assert [await anext(c), await asyncio.create_task(anext(d))] == [2, 2]
        assert [x async for x in c] == []
        assert await asyncio.create_task(anext(d, None)) is None  # ...and left in a task
        return await _current_then_a_later_flow()

    _run_and_check_later_flows_are_roots(main, "t/a", "t/b", "t/c", "t/d")


def test_one_flow_object_entered_by_concurrent_tasks() -> None:
    shared = flow("t/shared")

    async def worker(i: int) -> str:
        with shared as log:
            await asyncio.sleep(0)
            log.output = str(i)
            return log.log_id

    async def main() -> list[str]:
        return await asyncio.gather(*(worker(i) for i in range(10)))

    with capture_logs() as captured:
        ids = asyncio.run(main())
    records = {r["log_id"]: r for r in captured.by_path("t/shared")}
    assert [records[log_id]["output"] for log_id in ids] == [str(i) for i in range(10)]


# --- recursion ----------------------------------------------------------------------------------


def _deepest(make: Any, kind: str) -> int:
    """How deep a recursion of `kind` goes, bare (`make` is the identity) or decorated, run in a
    new thread so the depth does not depend on the test runner's own stack."""
    reached = [0]

    def plain(n: int) -> int:
        reached[0] = max(reached[0], n)
        return target(n + 1)  # type: ignore[no-any-return]

    def generator(n: int) -> Iterator[int]:
        reached[0] = max(reached[0], n)
        yield from target(n + 1)

    class Callable:
        def __call__(self, n: int) -> int:
            reached[0] = max(reached[0], n)
            return target(n + 1)  # type: ignore[no-any-return]

    target = make({"plain": plain, "generator": generator, "callable": Callable()}[kind])

    def run() -> None:
        try:
            result = target(1)
            if kind == "generator":
                list(result)
        except RecursionError:
            pass

    import threading

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return reached[0]


@pytest.fixture
def recorder_only() -> Iterator[None]:
    """Logs reach only the test's sinks, not the delivery pipeline (deep traces are issue 9
    item 1, the pipeline's)."""
    pipeline = flowtrace._pipeline._pipeline
    flowtrace._sinks.remove_sink(pipeline)
    try:
        yield
    finally:
        flowtrace._sinks.add_sink(pipeline)


@pytest.mark.usefixtures("recorder_only")
@pytest.mark.parametrize(
    ("kind", "bare_frames", "decorated_frames"),
    [
        ("plain", 1, 2),  # the wrapper's frame and the function's
        ("generator", 1, 3),  # the wrapper's `send` is a call the interpreter counts too
        ("callable", 2, 4),  # a callable object's call slot and __call__, and the proxy's
    ],
)
def test_a_decorated_call_costs_one_python_frame_of_the_recursion_limit(
    kind: str, bare_frames: int, decorated_frames: int
) -> None:
    """Issue 9 item 12: @flow adds one Python frame per call (generators and callable objects:
    two and three were added; a plain function: one, as before)."""
    bare = _deepest(lambda fn: fn, kind)
    with capture_logs() as captured:
        decorated = _deepest(flow, kind)
    assert decorated >= bare * bare_frames // decorated_frames - 2
    assert len(captured.logs) == decorated  # every level recorded, and closed


@pytest.mark.usefixtures("recorder_only")
def test_an_error_through_a_deep_recursion_is_recorded_at_every_level_cheaply() -> None:
    """A RecursionError through 500 decorated levels took ~10 s: each level formatted the
    whole traceback below it on the call path. Now each captures a bounded number of frames
    (code and line), formatted on the worker."""

    @flow(path="t/deep")
    def deep(n: int) -> int:
        return deep(n + 1)

    def run() -> None:
        with pytest.raises(RecursionError):
            deep(0)

    import threading

    with capture_logs() as captured:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    records = captured.by_path("t/deep")
    assert len(records) > 400
    assert all(record["error"].startswith("RecursionError") for record in records)
    outermost = min(records, key=lambda record: record["inputs"]["n"])
    recorded = outermost["metadata"]["flowtrace"]["traceback"]
    assert recorded.count('", line ') <= 16 + 48 + 4  # kept frames (+ a few chained ones)
    assert "more frames not recorded]" in recorded
    assert recorded.endswith("RecursionError: maximum recursion depth exceeded\n")
    assert "in deep\n    return deep(n + 1)\n" in recorded


# --- stdout -------------------------------------------------------------------------------------


def test_stdout_is_captured_per_log_and_still_reaches_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @flow(path="t/printer")
    def printer() -> None:
        print("outer before")
        inner()
        print("outer after")

    @flow(path="t/inner")
    def inner() -> None:
        print("inner line")

    with capture_logs() as captured:
        printer()
    assert only(captured, "t/printer")["stdout"] == "outer before\nouter after\n"
    assert only(captured, "t/inner")["stdout"] == "inner line\n"
    assert capsys.readouterr().out == "outer before\ninner line\nouter after\n"


def test_stdout_isolation_across_threads_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    @flow(path="t/speaker")
    async def speaker(thread: int, task: int) -> None:
        for line in range(5):
            print(f"thread {thread} task {task} line {line}")
            await asyncio.sleep(0)

    def run_thread(thread: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(speaker(thread, task) for task in range(10)))

        asyncio.run(main())

    import concurrent.futures

    with capture_logs() as captured, concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(run_thread, range(20)))
    records = captured.by_path("t/speaker")
    assert len(records) == 200
    for record in records:
        thread, task = record["inputs"]["thread"], record["inputs"]["task"]
        expected = "".join(f"thread {thread} task {task} line {i}\n" for i in range(5))
        assert record["stdout"] == expected
    terminal = capsys.readouterr().out.splitlines()
    assert len(terminal) == 1000
    assert sorted(terminal) == sorted(
        f"thread {a} task {b} line {c}" for a in range(20) for b in range(10) for c in range(5)
    )


def test_a_stream_the_user_installs_still_gets_everything() -> None:
    import contextlib
    import io

    buffer = io.StringIO()
    with capture_logs() as captured, contextlib.redirect_stdout(buffer), flow("t/redirected"):
        print("to the buffer")
    assert buffer.getvalue() == "to the buffer\n"
    assert only(captured, "t/redirected")["stdout"] == "to the buffer\n"
    with flow("t/after"):
        pass
    assert sys.stdout is not buffer


def test_logging_records_are_captured_when_enabled() -> None:
    flowtrace.configure(capture_logging=True)
    logger = logging.getLogger("tests.app")
    logger.setLevel(logging.INFO)
    try:
        with capture_logs() as captured, flow("t/logged"):
            logger.info("step one")
            logging.getLogger("flowtrace").warning("not into the log")
    finally:
        flowtrace.configure()
    assert only(captured, "t/logged")["stdout"] == "INFO tests.app: step one\n"


def test_printed_output_is_kept_within_the_string_budget_while_the_log_is_open() -> None:
    """Issue 9 item 9: an open log holds what will be stored and a count, not all it printed."""
    flowtrace.configure(max_string_chars=100, capture_logging=True)
    logger = logging.getLogger("tests.app")
    logger.setLevel(logging.INFO)
    try:
        with capture_logs() as captured, flow("t/chatty") as log:
            for _ in range(1000):
                print("x" * 9)  # 10 characters a line
            assert log.stdout == ("x" * 9 + "\n") * 10 + "...[truncated, 10000 chars]"
            assert sum(map(len, log.stdout_parts or [])) == 100
            for _ in range(10):
                logger.info("step")  # "INFO tests.app: step\n": 21 characters each
            assert sum(map(len, log.stdout_parts or [])) == 100
        record = only(captured, "t/chatty")
    finally:
        flowtrace.configure()
    assert record["stdout"] == ("x" * 9 + "\n") * 10 + "...[truncated, 10210 chars]"


def test_printing_hundreds_of_megabytes_in_one_flow_holds_no_more_than_the_budget() -> None:
    """220 MB printed inside one open flow (to /dev/null) grew RSS by ~344 MB before."""
    code = textwrap.dedent(
        """
        import resource, sys
        from flowtrace import flow
        from flowtrace.testing import capture_logs
        from flowtrace._sinks import remove_sink
        from flowtrace._pipeline import _pipeline
        remove_sink(_pipeline)  # nothing delivered: the process measures the recorder
        chunk = "y" * 1_000_000
        with capture_logs() as captured:
            with flow("t/printer") as warm:
                print(chunk)  # the tee installed, the first megabyte kept
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            with flow("t/printer") as log:
                for i in range(220):
                    sys.stdout.write(chunk[:-8] + "%08d" % i)  # a new megabyte each time
            grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            stdout = captured.records[-1]["stdout"]
        assert stdout.endswith("...[truncated, 220000000 chars]"), stdout[-40:]
        print(grown_kib, len(stdout), file=sys.stderr)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_SRC, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    grown_kib, stored = map(int, result.stderr.split())
    assert stored == 65536 + len("...[truncated, 220000000 chars]")
    assert grown_kib < 32 * 1024, f"RSS grew by {grown_kib} KiB while printing 220 MB"


# --- settings and the guard ------------------------------------------------------------------


def test_disabled_records_nothing_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    @flow(path="t/off")
    def off(x: int) -> int:
        return x + 1

    monkeypatch.setenv("FLOWTRACE_DISABLED", "1")
    flowtrace.configure()
    try:
        with capture_logs() as captured:
            assert off(1) == 2
            assert list(tokens(2)) == ["t0 ", "t1 "]
        assert captured.records == []
    finally:
        monkeypatch.delenv("FLOWTRACE_DISABLED")
        flowtrace.configure()
    assert flowtrace._config.get_settings().enabled


class _EntryKind:
    """One way into the recorder, run once: its result, what current_log() was inside, and
    whether the user's exception came out unchanged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inside: list[object] = []

    def run(self) -> object:
        inside = self.inside
        error = Boom("user error")

        def body(value: int) -> int:
            inside.append(current_log())
            return value * 2

        if self.name == "function":
            return flow(path="t/kind")(body)(21)
        if self.name == "async":

            async def coroutine(value: int) -> int:
                return body(value)

            return asyncio.run(flow(path="t/kind")(coroutine)(21))
        if self.name == "generator":

            def generator(value: int) -> Iterator[int]:
                yield body(value)
                yield body(value + 1)

            return list(flow(path="t/kind")(generator)(21))
        if self.name == "async generator":

            async def agen(value: int) -> AsyncIterator[int]:
                yield body(value)

            async def drain() -> list[int]:
                return [item async for item in flow(path="t/kind")(agen)(21)]

            return asyncio.run(drain())
        if self.name == "with":
            with flow("t/kind", inputs={"v": 21}) as log:
                log.output = "set"
                result = body(21)
            with pytest.raises(Boom) as raised, flow("t/kind"):
                raise error
            assert raised.value is error
            return result

        async def block() -> int:
            async with flow("t/kind") as log:
                log.metadata["k"] = "v"
                return body(21)

        return asyncio.run(block())


class _CountingSink:
    def __init__(self) -> None:
        self.started: list[object] = []
        self.ended: list[object] = []

    def log_started(self, log: object) -> None:
        self.started.append(log)

    def log_ended(self, log: object) -> None:
        self.ended.append(log)


_ENTRY_KINDS = ["function", "async", "generator", "async generator", "with", "async with"]
_EXPECTED_RESULTS = {"generator": [42, 44], "async generator": [42]}


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
@pytest.mark.parametrize("kind", _ENTRY_KINDS)
def test_every_entry_kind_goes_through_the_one_opener(kind: str, enabled: bool) -> None:
    """Disabled records nothing and changes nothing, for every way into the recorder."""
    sink = _CountingSink()
    entry = _EntryKind(kind)
    flowtrace.configure(enabled=enabled)
    flowtrace._sinks.add_sink(sink)
    try:
        result = entry.run()
    finally:
        flowtrace._sinks.remove_sink(sink)
        flowtrace.configure()
    assert result == _EXPECTED_RESULTS.get(kind, 42)
    assert current_log() is None
    if not enabled:
        assert sink.started == sink.ended == []
        assert all(log is None for log in entry.inside)
        return
    logs = 2 if kind == "with" else 1  # the with-block kind also runs a failing block
    assert len(sink.started) == len(sink.ended) == logs
    assert all(log is sink.started[0] for log in entry.inside)


def test_configure_rejects_unknown_settings_and_reads_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TypeError, match="nonsense"):
        flowtrace.configure(nonsense=1)
    monkeypatch.setenv("FLOWTRACE_MAX_ITEMS", "7")
    monkeypatch.setenv("FLOWTRACE_STATUS_FIELD", "log_status")
    try:
        settings = flowtrace.configure(batch_size=3)
        assert (settings.max_items, settings.status_field, settings.batch_size) == (
            7,
            "log_status",
            3,
        )
    finally:
        monkeypatch.delenv("FLOWTRACE_MAX_ITEMS")
        monkeypatch.delenv("FLOWTRACE_STATUS_FIELD")
        flowtrace.configure()


def test_internal_failures_never_reach_user_code(
    fail_on_internal_errors: list[tuple[str, BaseException | None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenSink:
        def log_started(self, log: object) -> None:
            raise RuntimeError("sink broke at start")

        def log_ended(self, log: object) -> None:
            raise RuntimeError("sink broke at end")

    @flow(path="t/guarded")
    def guarded(x: int) -> int:
        return x * 2

    sink = BrokenSink()
    flowtrace._sinks.add_sink(sink)
    try:
        assert guarded(21) == 42
        assert guarded(1) == 2
    finally:
        flowtrace._sinks.remove_sink(sink)
    kinds = [kind for kind, _ in fail_on_internal_errors]
    assert kinds == ["log-open", "log-end", "log-open", "log-end"]
    # logged once per kind, on the flowtrace logger
    logged = [r for r in caplog.records if r.name == "flowtrace"]
    assert len(logged) == 2
    fail_on_internal_errors.clear()


def test_exception_whose_str_raises_is_still_recorded() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    @flow(path="t/hostile")
    def hostile() -> None:
        raise Hostile()

    with capture_logs() as captured, pytest.raises(Hostile):
        hostile()
    assert only(captured, "t/hostile")["error"].startswith("test_exception_whose_str_raises")


def test_pytest_fixture_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from flowtrace import flow

        @flow(path="user/fn")
        def fn():
            return "ok"

        def test_user(flowtrace_logs):
            fn()
            assert flowtrace_logs.records[0]["output"] == "ok"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_callables_that_are_not_functions_are_proxied_transparently() -> None:
    import functools

    class Scorer:
        """Scores."""

        def __call__(self, text: str) -> int:
            return len(text)

    scorer = Scorer()
    traced_scorer = flow(path="t/scorer")(scorer)
    traced_pow = flow(path="t/pow")(functools.partial(pow, 2))
    with capture_logs() as captured:
        assert traced_scorer("abc") == 3
        assert traced_pow(10) == 1024
    assert traced_scorer.__wrapped__ is scorer
    assert isinstance(traced_scorer, Scorer)  # wrapt's proxy passes isinstance checks
    assert only(captured, "t/scorer")["output"] == "3"
    assert only(captured, "t/pow")["output"] == "1024"


def test_testing_helpers_work_without_pytest_installed() -> None:
    import subprocess

    code = (
        "import sys; sys.modules['pytest'] = None\n"  # makes `import pytest` fail
        "from flowtrace import flow\n"
        "from flowtrace.testing import capture_logs\n"
        "with capture_logs() as captured:\n"
        "    flow(path='t/no-pytest')(lambda: 1)()\n"
        "print(captured.records[0]['path'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "t/no-pytest\n"), result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_keeps_inherited_ids_and_makes_new_ones_of_its_own() -> None:
    with flow("t/open-across-fork") as parent:
        before = flow("t/before")
        with before as earlier:
            pass
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report ids through the pipe, then leave at once
            with flow("t/in-child") as child:
                pass
            os.write(write, f"{parent.log_id} {child.log_id}".encode())
            os._exit(0)
        os.close(write)
        inherited, made_in_child = os.read(read, 200).decode().split()
        os.close(read)
        os.waitpid(pid, 0)
    assert inherited == parent.log_id
    prefix = earlier.log_id.rsplit("_", 1)[0]
    assert not made_in_child.startswith(prefix)


def test_flow_options_reach_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    @flow(
        path="t/options",
        attributes={"model": "m", "temperature": 0},
        metadata={"team": "support"},
        user="ada",
        environment="staging",
        source="cli",
    )
    def options() -> str:
        return "ok"

    @flow(path="t/default-environment")
    def default_environment() -> None:
        pass

    monkeypatch.setenv("FLOWTRACE_ENVIRONMENT", "production")
    flowtrace.configure()
    try:
        with capture_logs() as captured:
            options()
            default_environment()
        defaulted = only(captured, "t/default-environment")  # encoded under these settings
    finally:
        monkeypatch.delenv("FLOWTRACE_ENVIRONMENT")
        flowtrace.configure()
    record = only(captured, "t/options")
    assert record["flow"] == {"attributes": {"model": "m", "temperature": 0}}
    assert (record["metadata"], record["user"], record["environment"], record["source"]) == (
        {"team": "support"},
        "ada",
        "staging",
        "cli",
    )
    assert defaulted["environment"] == "production"
    # version_id goes to the query: tests/test_pipeline_http.py::test_version_id_reaches_the_request


@pytest.mark.parametrize("enabled", [True, False])
def test_async_generator_receives_what_is_sent_and_thrown(enabled: bool) -> None:
    @flow(path="t/aecho")
    async def aecho() -> AsyncIterator[dict[str, int]]:
        received = 0
        while True:
            try:
                received = yield {"got": received}
            except Boom:
                received = -1

    async def main() -> list[dict[str, int]]:
        gen = aecho()
        seen = [await gen.asend(None), await gen.asend(5), await gen.athrow(Boom())]
        await gen.aclose()
        return seen

    flowtrace.configure(enabled=enabled)
    try:
        with capture_logs() as captured:
            assert asyncio.run(main()) == [{"got": 0}, {"got": 5}, {"got": -1}]
    finally:
        flowtrace.configure()
    if enabled:
        record = only(captured, "t/aecho")
        assert json.loads(record["output"]) == [{"got": 0}, {"got": 5}, {"got": -1}]
        assert record["metadata"]["flowtrace"] == {"ended": "closed early"}
    else:
        assert captured.records == []
