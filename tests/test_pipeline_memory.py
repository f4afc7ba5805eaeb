"""The pipeline's delivery order, batching, retries and bounds, against the MemoryExporter."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowtrace
from flowtrace import Log, flow
from flowtrace._pipeline import Pipeline
from flowtrace.exporters import Outcome
from flowtrace.exporters.memory import MemoryExporter
from tests.pipelineutil import WAIT_S, Gate, fresh_pipeline, wait_until


def _all_complete(exporter: MemoryExporter, ids: list[str]) -> bool:
    return all(exporter.status_of(i) == "complete" for i in ids)


def test_nested_trace_parent_created_before_children_and_closed_after() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("root") as root:
            with flow("a") as a, flow("a1") as a1:
                pass
            with flow("b") as b:
                pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    ops = exporter.operations()
    order = [(op.kind, op.log_id, op.body.get("trace_status")) for op in ops]
    assert order == [
        ("log", root.log_id, "incomplete"),
        ("log", a.log_id, "incomplete"),
        ("log", a1.log_id, "complete"),
        ("update", a.log_id, "complete"),
        ("log", b.log_id, "complete"),
        ("update", root.log_id, "complete"),
    ]
    assert exporter.logs[a1.log_id]["trace_parent_id"] == a.log_id
    assert stats["sent"] == 4


def test_single_log_sent_once_complete() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("alone") as log:
            log.output = "done"
        assert flowtrace.flush(WAIT_S)
    [op] = exporter.operations()
    assert op.kind == "log"
    assert op.body["trace_status"] == "complete"
    assert op.body["output"] == "done"


def test_parent_is_visible_while_children_run_and_closed_after() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("agent") as root:
            with flow("step"):
                pass
            assert flowtrace.flush(WAIT_S)  # the child went out, so its parent exists, open
            assert exporter.status_of(root.log_id) == "incomplete"
        assert flowtrace.flush(WAIT_S)
        assert exporter.status_of(root.log_id) == "complete"


def test_long_running_log_goes_out_early() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter, live_after_s=0.02):
        with flow("slow") as log:
            assert wait_until(lambda: exporter.status_of(log.log_id) == "incomplete")
            log.output = "late"
        assert flowtrace.flush(WAIT_S)
    assert exporter.status_of(log.log_id) == "complete"
    assert exporter.logs[log.log_id]["output"] == "late"


def test_log_status_dialect() -> None:
    exporter = MemoryExporter(status_field="log_status")
    with fresh_pipeline(exporter, status_field="log_status"):
        with flow("r"), flow("c"):
            pass
        assert flowtrace.flush(WAIT_S)
    for op in exporter.operations():
        assert "trace_status" not in op.body
        assert "log_status" in op.body


def test_retries_reuse_the_same_operations() -> None:
    exporter = MemoryExporter()
    exporter.fail_next(503, times=3)
    with fresh_pipeline(exporter):
        with flow("r") as log:
            pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    calls = exporter.calls
    assert len(calls) == 4
    assert all(call == calls[0] for call in calls)  # same log_id, same body, every time
    assert exporter.status_of(log.log_id) == "complete"
    assert stats["sent"] == 1
    assert stats["retried"] == 3
    assert stats["dropped"] == {}


def test_refused_log_is_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    exporter = MemoryExporter()
    detail = {"detail": [{"loc": ["body", "inputs"], "msg": "bad inputs", "type": "x"}]}

    def refuse_first(ops: object) -> list[Outcome]:
        assert isinstance(ops, list)
        return [Outcome(422, detail)] + [Outcome(200, {}) for _ in ops[1:]]

    with fresh_pipeline(exporter), caplog.at_level(logging.WARNING, logger="flowtrace"):
        exporter.script(refuse_first)
        with flow("bad"):
            pass
        with flow("good"):
            pass
        assert flowtrace.flush(WAIT_S)
        with flow("later"):
            pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    warnings = [r.getMessage() for r in caplog.records if r.name == "flowtrace"]
    assert len(warnings) == 1
    assert "422" in warnings[0]
    assert "body.inputs" in warnings[0]
    assert stats["dropped"] == {"rejected": 1}
    assert stats["sent"] == 2


def test_children_of_a_refused_parent_are_dropped_not_sent() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("root") as root:
            exporter.fail_next(400, body={"detail": "nope"})
            with flow("first"):
                pass
            assert flowtrace.flush(WAIT_S)
            with flow("second"):
                pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert root.log_id not in exporter.logs
    assert stats["sent"] == 0
    assert sum(stats["dropped"].values()) == 3


def test_full_queue_drops_newest_counts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    exporter = MemoryExporter()
    gate = Gate()
    exporter.script(gate)
    with fresh_pipeline(exporter, queue_size=10), caplog.at_level(logging.WARNING, "flowtrace"):
        with flow("first"):
            pass
        assert gate.entered.wait(WAIT_S)  # the worker is busy delivering "first"
        kept = []
        for i in range(50):
            with flow(f"n{i}") as log:
                pass
            kept.append(log)
        gate.opened.set()
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    delivered = [log for log in kept if log.log_id in exporter.logs]
    assert [log.path for log in delivered] == [f"n{i}" for i in range(9)]  # oldest kept
    assert stats["dropped"] == {"queue_full": 41}
    warnings = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1


class LocalMemoryExporter(MemoryExporter):
    """A MemoryExporter the pipeline treats as the local disk (as the embedded store)."""

    local = True


def _logs_behind_a_busy_sender(pipe: Pipeline, gate: Gate, count: int) -> None:
    """Log "first", hold the sender in its export (at `gate`), then `count` logs more, until
    the worker has taken them all from the queue."""
    with flow("first"):
        pass
    assert gate.entered.wait(WAIT_S)  # the sender is busy with "first"
    for i in range(count):
        with flow(f"n{i}"):
            pass
    assert wait_until(lambda: pipe._queue.waiting() == 0)


@pytest.mark.parametrize("local", [True, False])
def test_the_worker_plans_ahead_of_a_busy_sender_only_for_a_remote_destination(
    local: bool,
) -> None:
    # Both are Python on one GIL: planning while the sender writes to SQLite only slows the
    # writes (each statement lets the GIL go); for the network, planning ahead overlaps.
    exporter = LocalMemoryExporter() if local else MemoryExporter()
    gate = Gate()
    exporter.script(gate)
    with fresh_pipeline(exporter, batch_size=10) as pipe:
        _logs_behind_a_busy_sender(pipe, gate, 50)
        outbox = pipe._outbox
        assert outbox is not None
        assert wait_until(lambda: local or outbox.memory_ops == 50)
        with pipe.lock:  # the worker collects and plans under it: its step is done
            planned = outbox.memory_ops
        gate.opened.set()
        assert flowtrace.flush(WAIT_S)
    assert planned == (0 if local else 50)
    assert len(exporter.logs) == 51


def test_the_worker_sleeps_while_a_local_sender_is_busy_past_the_batch_interval() -> None:
    # A send that came due while the local sender was busy made the worker loop without
    # sleeping, taking the interpreter lock from the sender at each SQLite call (a loop at the
    # bound of a small queue ran 10x slower). It now sleeps until the sender wakes it.
    exporter = LocalMemoryExporter()
    gate = Gate()
    exporter.script(gate)
    with fresh_pipeline(exporter, batch_size=10, batch_interval_s=0.02) as pipe:
        _logs_behind_a_busy_sender(pipe, gate, 20)
        looks = []
        collect = pipe._collect
        pipe._collect = lambda: (looks.append(None), collect())[1]  # type: ignore[method-assign]
        time.sleep(0.3)  # a window in which a spinning worker looks thousands of times
        seen = len(looks)
        gate.opened.set()
        assert flowtrace.flush(WAIT_S)
    assert seen < 100  # its polls (every 10-20 ms), not a spin
    assert len(exporter.logs) == 21


def test_flush_times_out_while_the_destination_hangs() -> None:
    exporter = MemoryExporter()
    gate = Gate()
    exporter.script(gate)
    with fresh_pipeline(exporter):
        with flow("stuck"):
            pass
        assert gate.entered.wait(WAIT_S)
        assert flowtrace.flush(0.05) is False
        gate.opened.set()
        assert flowtrace.flush(WAIT_S) is True


def test_threads_children_and_many_traces_all_complete() -> None:
    exporter = MemoryExporter()
    logs = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with flow(f"t{n}") as root:
            for _i in range(20):
                with flow("child") as child, flow("grandchild") as grandchild:
                    pass
                with lock:
                    logs.extend([child, grandchild])
        with lock:
            logs.append(root)

    with fresh_pipeline(exporter, batch_size=7):
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert _all_complete(exporter, [log.log_id for log in logs])
    assert stats["sent"] == len(logs)
    assert stats["dropped"] == {}
    assert stats["queued"] == 0


# --- property: any tree shape, any flush points, any batch size: delivered in a valid order --


def trees() -> st.SearchStrategy[list[object]]:
    """A node is the list of its children."""
    return st.recursive(st.just([]), lambda children: st.lists(children, max_size=4), max_leaves=12)


def _run_tree(node: list[object], flush_at: set[int], counter: list[int], logs: list[Log]) -> None:
    with flow("node") as log:
        logs.append(log)
        counter[0] += 1
        if counter[0] in flush_at:
            assert flowtrace.flush(WAIT_S)
        for child in node:
            assert isinstance(child, list)
            _run_tree(child, flush_at, counter, logs)


@settings(max_examples=40, deadline=None)
@given(
    forest=st.lists(trees(), min_size=1, max_size=4),
    flush_at=st.sets(st.integers(1, 30), max_size=5),
    batch_size=st.integers(1, 8),
    live_after_s=st.sampled_from([0.0, 60.0]),
)
def test_any_tree_is_delivered_completely_in_a_valid_order(
    forest: list[list[object]], flush_at: set[int], batch_size: int, live_after_s: float
) -> None:
    exporter = MemoryExporter()
    logs: list[Log] = []
    with fresh_pipeline(exporter, batch_size=batch_size, live_after_s=live_after_s):
        for tree in forest:
            _run_tree(tree, flush_at, [0], logs)
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    # the memory exporter refuses children of missing or complete parents: nothing was refused
    assert stats["dropped"] == {}
    assert stats["sent"] == len(logs)
    assert _all_complete(exporter, [log.log_id for log in logs])
    for log in logs:
        expected_parent = log.parent.log_id if log.parent is not None else None
        assert exporter.logs[log.log_id].get("trace_parent_id") == expected_parent
