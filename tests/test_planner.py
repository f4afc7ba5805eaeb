"""The delivery planner (`_planner.py`) on its own: no pipeline, no worker thread, no clock.

Each test plays the pipeline's part by hand, as `Pipeline._collect` does it: a log that starts is
accepted (`log.delivery = token`, then `planner.started(log)`), a log that ends is handed over
(`planner.ended(log)`), and `plan(...)` is asked for the next operations, which are then settled
(`delivered` / `give_up`). A small model of the server (`FakeServer`) checks every operation
against the contract's trace rules as it "arrives".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowtrace._contract import StatusField
from flowtrace._log import Log
from flowtrace._options import FlowOptions, LogOptions
from flowtrace._planner import Counters, FlushMarker, PlannedOp, Planner

# --- making logs: the one place that knows how Log and LogOptions are built ------------------


def open_log(path: str, parent: Log | None = None, metadata: dict[str, Any] | None = None) -> Log:
    """An open log, as the recorder opens one (without announcing it to any sink)."""
    return Log(LogOptions(FlowOptions(metadata=metadata), path), parent)


def end(log: Log, duration_ns: int = 1_000) -> None:
    """End `log` the way `Log.close` marks it ended. Not `close()` itself: that also hands the
    log to the process's global sinks (`flowtrace._sinks.on_end`), i.e. to the real delivery
    pipeline of the test process. A log is complete iff `duration_ns` is set (`Log.status`),
    and that, with the ending fields left unset, is all the planner and the bodies read."""
    log.duration_ns = duration_ns


def accept(planner: Planner, token: object, log: Log) -> None:
    """What `Pipeline._take_started` does with a log it accepts."""
    log.delivery = token
    planner.started(log)


# --- a model of the server's trace rules -------------------------------------------------------


class FakeServer:
    """The contract's trace rules that matter for delivery order (as the store applies them): a
    log is created once; its parent must exist (404) and still be open (409); an update closes
    an open log (404 unknown, 409 already complete)."""

    def __init__(self, status_field: StatusField = "trace_status") -> None:
        self.status_field = status_field
        self.status: dict[str, str] = {}  # log_id -> "incomplete" | "complete"
        self.parent_of: dict[str, str | None] = {}

    def answer(self, op: PlannedOp) -> tuple[int, str]:
        """The HTTP status the server answers, and why."""
        operation = op.operation
        body = operation.body
        closes = body[self.status_field] == "complete"
        assert op.final == closes, "an operation is final iff it closes its log"
        if operation.kind == "log":
            log_id = body["log_id"]
            assert log_id == operation.log_id == op.log.log_id
            if log_id in self.status:
                return 409, f"{log_id} created twice"
            parent_id = body.get("trace_parent_id")
            if parent_id is not None and parent_id not in self.status:
                return 404, f"{log_id} created before its parent"
            if parent_id is not None and self.status[parent_id] == "complete":
                return 409, f"{log_id} created under a closed parent"
            self.status[log_id] = body[self.status_field]
            self.parent_of[log_id] = parent_id
            return 201, "created"
        assert closes, "an update closes its log"
        current = self.status.get(operation.log_id)
        if current != "incomplete":
            return (404 if current is None else 409), f"update of {operation.log_id}: {current}"
        self.status[operation.log_id] = "complete"
        return 200, "closed"

    def apply(self, op: PlannedOp) -> None:
        """Deliver `op` to a server that must accept it."""
        status, why = self.answer(op)
        assert status < 300, why


def describe(op: PlannedOp, status_field: StatusField = "trace_status") -> str:
    """`create <path> <status>` or `update <path>`."""
    operation = op.operation
    if operation.kind == "log":
        return f"create {op.log.path} {operation.body[status_field]}"
    return f"update {op.log.path}"


# --- a scenario runner -------------------------------------------------------------------------


@dataclass
class Run:
    """A planner and its logs by name, driven step by step."""

    status_field: StatusField = "trace_status"
    token: object = field(default_factory=object)
    counters: Counters = field(default_factory=Counters)
    logs: dict[str, Log] = field(default_factory=dict)
    planner: Planner = field(init=False)
    server: FakeServer = field(init=False)

    def __post_init__(self) -> None:
        self.planner = Planner(self.token, self.counters)
        self.server = FakeServer(self.status_field)

    def start(self, name: str, parent: str | None = None) -> Log:
        log = open_log(name, None if parent is None else self.logs[parent])
        self.logs[name] = log
        accept(self.planner, self.token, log)
        return log

    def end(self, name: str) -> None:
        log = self.logs[name]
        end(log)
        self.planner.ended(log)

    def plan(
        self,
        max_ops: int = 100,
        now: float = 0.0,
        live_after: float = 10.0,
        include_open: bool = False,
        deliver: bool = True,
    ) -> list[PlannedOp]:
        ops, _ = self.planner.plan(max_ops, now, live_after, self.status_field, include_open)
        if deliver:
            for op in ops:
                self.server.apply(op)
                self.planner.delivered(op)
        return ops

    def describe(self, ops: Sequence[PlannedOp]) -> list[str]:
        return [describe(op, self.status_field) for op in ops]


def run_steps(run: Run, steps: Sequence[str]) -> list[list[str]]:
    """Play `steps` (see `SCENARIOS`); returns the operations of each plan, described."""
    plans: list[list[str]] = []
    for step in steps:
        word, *args = step.split()
        if word == "start":  # start NAME [in PARENT]
            run.start(args[0], args[2] if len(args) == 3 else None)
        elif word == "end":  # end NAME
            run.end(args[0])
        elif word == "clock":  # clock T: the worker's clock when it learns of logs
            run.planner.now = float(args[0])
        elif word == "plan":  # plan [max_ops=N] [now=T] [live_after=S] [open]
            options: dict[str, Any] = {}
            for arg in args:
                if arg == "open":
                    options["include_open"] = True
                else:
                    name, value = arg.split("=")
                    options[name] = int(value) if name == "max_ops" else float(value)
            plans.append(run.describe(run.plan(**options)))
        else:
            raise ValueError(step)
    return plans


# (id, steps, the operations of each plan, counters.sent and counters.held at the end).
# Every plan's operations are delivered (the server accepts them) before the next step.
SCENARIOS: list[tuple[str, list[str], list[list[str]], int, int]] = [
    (
        "a leaf that ended goes once, as a complete create",
        ["start a", "end a", "plan"],
        [["create a complete"]],
        1,
        0,
    ),
    (
        "parent and child ended (nested): the parent goes early, the update closes it",
        ["start a", "start b in a", "end b", "end a", "plan"],
        [["create a incomplete", "create b complete", "update a"]],
        2,
        0,
    ),
    (
        "parent and child ended, the parent first: the same operations",
        ["start a", "start b in a", "end a", "end b", "plan"],
        [["create a incomplete", "create b complete", "update a"]],
        2,
        0,
    ),
    (
        "a child that ended while its parent runs: the parent goes early, is closed later",
        ["start a", "start b in a", "end b", "plan", "end a", "plan"],
        [["create a incomplete", "create b complete"], ["update a"]],
        2,
        0,
    ),
    (
        "a parent that ended while its child runs: the child is created before the update",
        ["start a", "start b in a", "end a", "plan", "end b", "plan"],
        [["create a incomplete", "create b incomplete", "update a"], ["update b"]],
        2,
        0,
    ),
    (
        "siblings each go complete between the parent's create and its update",
        ["start a", "start b in a", "start c in a", "end b", "end c", "end a", "plan"],
        [["create a incomplete", "create b complete", "create c complete", "update a"]],
        3,
        0,
    ),
    (
        "a grandchild that ended brings its ancestors early, outermost first",
        ["start a", "start b in a", "start c in b", "end c", "plan", "end b", "end a", "plan"],
        [
            ["create a incomplete", "create b incomplete", "create c complete"],
            ["update b", "update a"],
        ],
        3,
        0,
    ),
    (
        "nothing waits: an open log younger than live_after is not sent",
        ["clock 0", "start a", "plan now=4.9 live_after=5"],
        [[]],
        0,
        1,
    ),
    (
        "an open log as old as live_after goes early; its end is an update",
        ["clock 0", "start a", "plan now=5 live_after=5", "end a", "plan now=5 live_after=5"],
        [["create a incomplete"], ["update a"]],
        1,
        0,
    ),
    (
        "live_after: only the open logs old enough go early, oldest first",
        [
            "clock 0",
            "start a",
            "clock 3",
            "start b",
            "plan now=5 live_after=5",
            "plan now=8 live_after=5",
        ],
        [["create a incomplete"], ["create b incomplete"]],
        0,
        2,
    ),
    (
        "live_after: an old open child goes early after its parent",
        ["clock 0", "start a", "start b in a", "plan now=5 live_after=5"],
        [["create a incomplete", "create b incomplete"]],
        0,
        2,
    ),
    (
        "a log that ended before it was due goes complete, never early",
        ["clock 0", "start a", "end a", "plan now=100 live_after=5"],
        [["create a complete"]],
        1,
        0,
    ),
    (
        "ended logs are planned before open logs that are due",
        ["clock 0", "start a", "start b", "end b", "plan now=100 live_after=5"],
        [["create b complete", "create a incomplete"]],
        1,
        1,
    ),
    (
        "include_open sends every open log, whatever its age",
        ["start a", "start b in a", "plan open", "end b", "end a", "plan"],
        [["create a incomplete", "create b incomplete"], ["update b", "update a"]],
        2,
        0,
    ),
    (
        "max_ops bounds a plan; the rest waits for the next one",
        [
            "start a",
            "end a",
            "start b",
            "end b",
            "start c",
            "end c",
            "plan max_ops=2",
            "plan max_ops=2",
        ],
        [["create a complete", "create b complete"], ["create c complete"]],
        3,
        0,
    ),
    (
        "max_ops is checked between logs: a log's closing brings its parent's create along",
        ["start a", "start b in a", "end b", "plan max_ops=1"],
        [["create a incomplete", "create b complete"]],
        1,
        1,
    ),
    (
        "max_ops bounds the open logs sent early too",
        ["start a", "start b", "start c", "plan max_ops=2 open", "plan max_ops=2 open"],
        [["create a incomplete", "create b incomplete"], ["create c incomplete"]],
        0,
        3,
    ),
    (
        "a log created early is not sent early again",
        ["start a", "plan open", "plan open", "plan now=100 live_after=0"],
        [["create a incomplete"], [], []],
        0,
        1,
    ),
]


@pytest.mark.parametrize(
    ("steps", "expected", "sent", "held"),
    [pytest.param(*case[1:], id=case[0]) for case in SCENARIOS],
)
def test_scenario(steps: list[str], expected: list[list[str]], sent: int, held: int) -> None:
    run = Run()
    assert run_steps(run, steps) == expected
    assert run.counters.sent == sent
    assert run.counters.held == held
    assert run.counters.dropped == {}


def test_operations_carry_parent_ids_queries_and_increasing_seqs() -> None:
    run = Run()
    a = run.start("a")
    b = run.start("b", "a")
    run.end("b")
    run.end("a")
    ops = run.plan()
    assert [(op.operation.kind, op.operation.log_id, op.final) for op in ops] == [
        ("log", a.log_id, False),
        ("log", b.log_id, True),
        ("update", a.log_id, True),
    ]
    assert [op.seq for op in ops] == [1, 2, 3]
    assert run.planner.planned_seq == 3
    assert "trace_parent_id" not in ops[0].operation.body
    assert ops[1].operation.body["trace_parent_id"] == a.log_id
    assert [op.operation.query for op in ops] == [{}, {}, {}]
    assert all(op.attempts == 0 for op in ops)


def test_version_id_goes_as_the_create_query() -> None:
    run = Run()
    log = Log(LogOptions(FlowOptions(version_id="v1"), "a"), None)
    accept(run.planner, run.token, log)
    end(log)
    run.planner.ended(log)
    (op,) = run.plan()
    assert op.operation.query == {"version_id": "v1"}


def test_an_early_create_of_a_log_that_ended_carries_its_fields_but_says_incomplete() -> None:
    run = Run()
    run.start("a")
    run.start("b", "a")
    run.end("a")  # a ends first: it is created early (for b), already ended
    create_a, _create_b, update_a = run.plan()
    assert create_a.operation.body["trace_status"] == "incomplete"
    assert create_a.operation.body["provider_latency"] == 1e-06
    assert "end_time" in create_a.operation.body
    assert update_a.operation.body["trace_status"] == "complete"
    assert update_a.operation.body["provider_latency"] == 1e-06


@pytest.mark.parametrize("status_field", ["trace_status", "log_status"])
def test_status_field_names_the_status_in_every_body(status_field: StatusField) -> None:
    other = "log_status" if status_field == "trace_status" else "trace_status"
    run = Run(status_field=status_field)
    run.start("a")
    run.start("b", "a")
    run.end("b")
    run.end("a")
    ops = run.plan()
    assert [op.operation.body[status_field] for op in ops] == [
        "incomplete",
        "complete",
        "complete",
    ]
    assert all(other not in op.operation.body for op in ops)


# --- flush markers -------------------------------------------------------------------------


def test_flush_markers_get_the_seq_planned_before_them() -> None:
    run = Run()
    first, second, third = FlushMarker(), FlushMarker(), FlushMarker()
    run.planner.add_marker(first)  # nothing planned before it
    run.start("a")
    run.end("a")
    run.planner.add_marker(second)
    run.start("b")
    run.start("c", "b")
    run.end("c")
    run.planner.add_marker(third)
    assert run.planner.has_marker
    assert run.planner.ready_logs == 2
    ops, markers = run.planner.plan(100, 0.0, 10.0, "trace_status")
    assert [describe(op) for op in ops] == [
        "create a complete",
        "create b incomplete",
        "create c complete",
    ]
    assert markers == [first, second, third]
    assert [m.target_seq for m in markers] == [0, 1, 3]
    assert not run.planner.has_marker
    assert run.planner.ready_logs == 0
    assert all(m.ok and not m.done.is_set() for m in markers)  # the pipeline sets them


def test_a_flush_marker_behind_max_ops_waits_for_the_next_plan() -> None:
    run = Run()
    marker = FlushMarker()
    for name in "ab":
        run.start(name)
        run.end(name)
    run.planner.add_marker(marker)
    ops, markers = run.planner.plan(1, 0.0, 10.0, "trace_status")
    assert [describe(op) for op in ops] == ["create a complete"]
    assert markers == []
    assert marker.target_seq == -1
    ops, markers = run.planner.plan(1, 0.0, 10.0, "trace_status")
    assert [describe(op) for op in ops] == ["create b complete"]
    assert markers == []  # max_ops was reached with b
    ops, markers = run.planner.plan(1, 0.0, 10.0, "trace_status")
    assert ops == []
    assert markers == [marker]
    assert marker.target_seq == 2


def test_abandon_drops_what_is_held_and_fails_waiting_markers() -> None:
    run = Run()
    run.start("a")
    run.start("b")
    run.end("b")
    marker = FlushMarker()
    run.planner.add_marker(marker)
    assert run.planner.abandon("shutdown") == 2
    assert run.counters.held == 0
    assert run.counters.dropped == {"shutdown": 2}
    assert marker.done.is_set()
    assert not marker.ok
    assert run.planner.ready_logs == 0
    assert run.planner.open_logs() == 0
    assert run.plan(include_open=True) == []


# --- live_after --------------------------------------------------------------------------------


def test_next_live_at_is_when_the_oldest_open_unsent_log_is_due() -> None:
    run = Run()
    assert run.planner.next_live_at(5.0) is None
    run.planner.now = 1.0
    run.start("a")
    run.planner.now = 2.5
    run.start("b")
    run.start("c")
    assert run.planner.open_logs() == 3
    assert run.planner.next_live_at(5.0) == 6.0
    assert run.describe(run.plan(now=6.0, live_after=5.0)) == ["create a incomplete"]
    assert run.planner.next_live_at(5.0) == 7.5
    run.end("b")  # an ended log is no longer waiting to go live
    run.end("c")
    assert run.planner.next_live_at(5.0) is None
    assert run.planner.open_logs() == 0


# --- settling: counters, failures ------------------------------------------------------------


def test_delivered_counts_a_log_as_sent_once_on_its_closing_operation() -> None:
    run = Run()
    run.start("a")
    run.start("b", "a")
    run.end("b")
    create_a, create_b = run.plan(deliver=False)
    assert run.counters.held == 2
    run.planner.delivered(create_a)  # an incomplete create closes nothing
    assert (run.counters.sent, run.counters.held) == (0, 2)
    run.planner.delivered(create_b)
    assert (run.counters.sent, run.counters.held) == (1, 1)
    run.end("a")
    (update_a,) = run.plan(deliver=False)
    run.planner.delivered(update_a)
    assert (run.counters.sent, run.counters.held) == (2, 0)


def test_give_up_counts_a_log_once_and_a_late_success_does_not_count() -> None:
    run = Run()
    run.start("a")
    run.start("b", "a")
    run.end("b")
    run.end("a")
    create_a, create_b, update_a = run.plan(deliver=False)
    run.planner.give_up(create_a, "retry_deadline")
    run.planner.give_up(update_a, "retry_deadline")  # the same log: counted once
    run.planner.delivered(create_b)
    assert run.counters.dropped == {"retry_deadline": 1}
    assert (run.counters.sent, run.counters.held) == (1, 0)
    run.planner.delivered(update_a)  # a failed log is never counted as sent
    assert (run.counters.sent, run.counters.held) == (1, 0)


def test_children_of_a_given_up_parent_are_dropped_as_parent_dropped() -> None:
    run = Run()
    run.start("a")
    (create_a,) = run.plan(include_open=True, deliver=False)
    run.planner.give_up(create_a, "rejected")
    assert run.counters.dropped == {"rejected": 1}
    assert run.counters.held == 0
    run.start("b", "a")  # started after the refusal: dropped, nothing is sent
    run.start("c", "a")
    run.end("b")
    assert run.plan() == []
    assert run.plan(include_open=True) == []  # c, still open, is not sent early either
    run.end("c")
    run.end("a")
    assert run.plan() == []
    assert run.counters.dropped == {"rejected": 1, "parent_dropped": 2}
    assert (run.counters.sent, run.counters.held) == (0, 0)


def test_a_child_planned_with_its_refused_parent_is_still_sent() -> None:
    # The planner only knows of a refusal once it is settled: a child planned in the same
    # sequence as its parent goes out (and the server answers it).
    run = Run()
    run.start("a")
    run.start("b", "a")
    run.end("b")
    create_a, create_b = run.plan(deliver=False)
    run.planner.give_up(create_a, "rejected")
    run.planner.give_up(create_b, "rejected")
    run.end("a")
    assert run.plan() == []
    assert run.counters.dropped == {"rejected": 2}
    assert (run.counters.sent, run.counters.held) == (0, 0)


def test_a_created_child_is_still_closed_when_its_parent_s_update_is_refused() -> None:
    run = Run()
    run.start("a")
    run.start("b", "a")
    assert run.describe(run.plan(include_open=True)) == [
        "create a incomplete",
        "create b incomplete",
    ]
    run.end("a")
    (update_a,) = run.plan(deliver=False)
    run.planner.give_up(update_a, "rejected")  # e.g. a 422 on the PATCH
    run.end("b")
    assert run.describe(run.plan()) == ["update b"]
    assert run.server.status[run.logs["b"].log_id] == "complete"
    assert run.counters.dropped == {"rejected": 1}
    assert (run.counters.sent, run.counters.held) == (1, 0)


def test_a_grandchild_of_a_refused_log_is_dropped_not_sent() -> None:
    run = Run()
    run.start("a")
    (create_a,) = run.plan(include_open=True, deliver=False)
    run.planner.give_up(create_a, "rejected")
    run.start("b", "a")
    run.start("c", "b")
    run.end("c")  # c is planned before b: b is dropped while c is being planned
    assert run.describe(run.plan(deliver=False)) == []
    assert run.counters.dropped == {"rejected": 1, "parent_dropped": 2}
    assert run.counters.held == 0


# --- forks: a parent from another generation ----------------------------------------------


@pytest.mark.parametrize("registered", [True, False], ids=["parent-seen", "parent-accepted"])
def test_a_child_of_a_parent_from_another_generation_is_detached(registered: bool) -> None:
    # Before the fork, the parent was accepted (its delivery is the old pipeline's token) and
    # maybe seen by the old planner (a LogState of the old token). The child's planner does not
    # deliver it: the child starts a trace of its own, noting where it came from.
    old_token = object()
    old_planner = Planner(old_token, Counters())
    parent = open_log("parent")
    parent.delivery = old_token
    if registered:
        old_planner.started(parent)
    run = Run()
    child = open_log("child", parent, metadata={"k": 1})
    run.logs["child"] = child
    accept(run.planner, run.token, child)
    grandchild = run.start("grandchild", "child")
    run.end("grandchild")
    run.end("child")
    end(parent)
    run.planner.ended(parent)  # not ours: ignored
    ops = run.plan()
    assert run.describe(ops) == [
        "create child incomplete",
        "create grandchild complete",
        "update child",
    ]
    body = ops[0].operation.body
    assert "trace_parent_id" not in body
    assert body["metadata"] == {"k": 1, "flowtrace": {"forked_from": parent.log_id}}
    assert ops[1].operation.body["trace_parent_id"] == child.log_id
    assert "metadata" not in ops[1].operation.body
    assert child.delivery.detached
    assert not grandchild.delivery.detached
    assert (run.counters.sent, run.counters.held) == (2, 0)


def test_a_detached_leaf_goes_complete_without_its_parent() -> None:
    old_token = object()
    parent = open_log("parent")
    parent.delivery = old_token
    run = Run()
    child = open_log("child", parent)
    accept(run.planner, run.token, child)
    end(child)
    run.planner.ended(child)
    (op,) = run.plan()
    assert describe(op) == "create child complete"
    assert "trace_parent_id" not in op.operation.body
    assert op.operation.body["metadata"] == {"flowtrace": {"forked_from": parent.log_id}}


# --- a child that starts after its parent was closed ---------------------------------------


def test_a_child_that_starts_after_its_parent_closed_is_not_created_under_it() -> None:
    """An asyncio task created in the parent that first runs after the parent returned: the
    recorder never opens a log under a log that has ended (issue 9 item 8), so it is a root,
    not a create the server would refuse (409)."""
    run = Run()
    run.start("a")
    run.end("a")
    assert run.describe(run.plan()) == ["create a complete"]
    task = run.start("task", "a")
    assert task.parent is None
    run.end("task")
    (op,) = run.plan()  # FakeServer: "task under a closed parent" if it named a
    assert describe(op) == "create task complete"
    assert "trace_parent_id" not in op.operation.body


def test_a_child_whose_end_is_not_collected_yet_is_not_closed_before_its_children() -> None:
    run = Run()
    run.start("a")
    b = run.start("b", "a")
    run.end("a")  # collected: a ended while its child b runs (an asyncio task, a thread)
    # Then, on b's thread, after the worker's last collect: b starts c, c ends, b ends.
    c = open_log("c", b)
    end(c)
    end(b)
    # The worker plans what it collected (a's end); only then does it learn of c.
    assert run.describe(run.plan()) == [
        "create a incomplete",
        "create b incomplete",
        "update a",
    ]
    accept(run.planner, run.token, c)
    run.planner.ended(c)
    run.planner.ended(b)
    assert run.describe(run.plan()) == ["create c complete", "update b"]


# --- depth -------------------------------------------------------------------------------------


def test_a_very_deep_chain_can_be_planned() -> None:
    depth = 3000
    run = Run()
    chain: list[Log] = []
    parent: Log | None = None
    for index in range(depth):  # iteratively: the test itself must not recurse
        parent = open_log(f"n{index}", parent)
        accept(run.planner, run.token, parent)
        chain.append(parent)
    for log in reversed(chain):  # the innermost ends first
        end(log)
        run.planner.ended(log)
    ops = run.plan(max_ops=10 * depth)
    assert len(ops) == 2 * depth - 1  # depth - 1 early creates and updates, one leaf
    assert (run.counters.sent, run.counters.held) == (depth, 0)


# --- properties over random trees and histories -----------------------------------------------


@dataclass
class History:
    """A random tree of logs and what happens to it, in order."""

    parents: list[int | None]
    live_after: float
    events: list[tuple[Any, ...]]  # ("start", i) ("end", i) ("collect", dt) ("plan", max_ops)
    final_max_ops: int


@st.composite
def histories(draw: st.DrawFn) -> History:
    count = draw(st.integers(1, 9))
    parents: list[int | None] = [None]
    for index in range(1, count):
        parents.append(draw(st.none() | st.integers(0, index - 1)))
    children: list[list[int]] = [[] for _ in range(count)]
    for index, parent in enumerate(parents):
        if parent is not None:
            children[parent].append(index)
    # nested: a log ends after all its children (plain calls); outlive: a child starts while its
    # parent is open, and may end after it (an asyncio task, a generator left running).
    nested = draw(st.booleans())
    started = [False] * count
    ended = [False] * count
    events: list[tuple[Any, ...]] = []
    while not all(ended):
        choices: list[tuple[Any, ...]] = []
        for index in range(count):
            parent = parents[index]
            if not started[index]:
                if parent is None or (started[parent] and not ended[parent]):
                    choices.append(("start", index))
            elif not ended[index]:
                kids = children[index]
                if all(ended[k] for k in kids) if nested else all(started[k] for k in kids):
                    choices.append(("end", index))
        event = draw(st.sampled_from(choices))
        (started if event[0] == "start" else ended)[event[1]] = True
        events.append(event)
        # The worker may learn of what happened (and its clock move), and may plan, at any time.
        if draw(st.booleans()):
            events.append(("collect", draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))))
        if draw(st.booleans()):
            events.append(("plan", draw(st.integers(1, 4))))
    live_after = draw(st.sampled_from([0.0, 1.0, 2.5, math.inf]))
    return History(parents, live_after, events, draw(st.integers(1, 4)))


class Replay:
    """Plays a History against a Planner the way the pipeline would, settling every planned
    operation at once (in order) with what `answer` says."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.token = object()
        self.counters = Counters()
        self.planner = Planner(self.token, self.counters)
        self.server = FakeServer()
        self.logs: dict[int, Log] = {}  # by their number in the history
        self.number: dict[Log, int] = {}
        self.started: list[Log] = []  # appended by the user's threads, drained by `collect`
        self.ended: list[Log] = []
        self.clock = 0.0
        self.ops: list[PlannedOp] = []

    def answer(self, op: PlannedOp) -> bool:
        self.server.apply(op)
        return True

    def settle(self, ops: list[PlannedOp]) -> None:
        for op in ops:
            self.ops.append(op)
            if self.answer(op):
                self.planner.delivered(op)
            else:
                self.planner.give_up(op, "rejected")

    def collect(self) -> None:
        self.planner.now = self.clock
        for log in self.started:
            accept(self.planner, self.token, log)
        for log in self.ended:
            self.planner.ended(log)
        self.started.clear()
        self.ended.clear()

    def plan(self, max_ops: int, include_open: bool = False) -> list[PlannedOp]:
        ops, _ = self.planner.plan(
            max_ops, self.clock, self.history.live_after, "trace_status", include_open
        )
        self.settle(ops)
        return ops

    def play(self) -> None:
        parents = self.history.parents
        for event in self.history.events:
            kind, arg = event
            if kind == "start":
                parent = parents[arg]
                log = open_log(f"n{arg}", None if parent is None else self.logs[parent])
                self.logs[arg] = log
                self.number[log] = arg
                self.started.append(log)
            elif kind == "end":
                end(self.logs[arg])  # the user's thread ends it; the worker learns of it later
                self.ended.append(self.logs[arg])
            elif kind == "collect":
                self.clock += arg
                self.collect()
            else:  # the worker's loop: `_collect`, then plan and deliver (`_send_next`)
                self.collect()
                self.plan(arg)
        self.collect()
        for _ in range(10 * len(self.logs) + 10):  # the final flush: everything has ended
            ops = self.plan(self.history.final_max_ops, include_open=True)
            if not ops and not self.planner.ready_logs:
                break
        else:
            pytest.fail("planning did not come to an end")


@given(histories())
def test_every_log_is_delivered_once_in_an_order_the_server_accepts(history: History) -> None:
    replay = Replay(history)
    replay.play()  # FakeServer: parents exist and are open when a child is created
    ops = replay.ops
    assert [op.seq for op in ops] == list(range(1, len(ops) + 1))
    index_of_create: dict[Log, int] = {}
    index_of_close: dict[Log, int] = {}
    for index, op in enumerate(ops):
        if op.operation.kind == "log":
            assert op.log not in index_of_create, "created once"
            index_of_create[op.log] = index
        if op.final:
            assert op.log not in index_of_close, "closed once"
            index_of_close[op.log] = index
    for log in replay.logs.values():
        kinds = [describe(op) for op in ops if op.log is log]
        assert kinds in (
            [f"create {log.path} complete"],
            [f"create {log.path} incomplete", f"update {log.path}"],
        )
        assert replay.server.status[log.log_id] == "complete"
        parent = log.parent
        if parent is not None:
            assert replay.server.parent_of[log.log_id] == parent.log_id
            assert index_of_create[parent] < index_of_create[log]
            assert index_of_create[log] < index_of_close[parent]
    assert replay.counters.sent == len(replay.logs)
    assert replay.counters.held == 0
    assert replay.counters.dropped == {}
    assert replay.planner.ready_logs == 0
    assert replay.planner.open_logs() == 0


class RefusingReplay(Replay):
    """The server refuses the operations whose (log number, kind) is in `refused`, and what the
    contract's rules forbid (an unknown or closed parent, a log created twice)."""

    def __init__(self, history: History, refused: set[tuple[int, str]]) -> None:
        super().__init__(history)
        self.refused = refused
        self.failed: set[Log] = set()

    def plan(self, max_ops: int, include_open: bool = False) -> list[PlannedOp]:
        failed_before = set(self.failed)
        ops = super().plan(max_ops, include_open)
        for op in ops:
            # Once a refusal is settled, nothing more of that log is sent, and no child of it is
            # created; a child that already exists is still closed (its update needs no parent).
            assert op.log not in failed_before
            if op.operation.kind == "log":
                assert op.log.parent not in failed_before
        return ops

    def answer(self, op: PlannedOp) -> bool:
        if (self.number[op.log], op.operation.kind) in self.refused:
            status = 422
        else:  # e.g. a child sent in the same sequence as its refused parent: 404
            status, _ = self.server.answer(op)
        if status >= 300:
            self.failed.add(op.log)
            return False
        return True


@given(histories(), st.sets(st.tuples(st.integers(0, 8), st.sampled_from(["log", "update"]))))
def test_refusals_drop_logs_and_the_counters_add_up(
    history: History, refused: set[tuple[int, str]]
) -> None:
    replay = RefusingReplay(history, refused)
    replay.play()
    count = len(history.parents)
    counters = replay.counters
    assert counters.held == 0
    assert counters.sent + sum(counters.dropped.values()) == count
    assert set(counters.dropped) <= {"rejected", "parent_dropped"}
    assert counters.dropped.get("rejected", 0) == len(replay.failed)
    closed = {op.log for op in replay.ops if op.final}
    assert counters.sent == len(closed - replay.failed)


def test_a_late_child_is_filed_under_the_nearest_open_ancestor_noting_its_parent() -> None:
    run = Run()
    root = run.start("root")
    a = run.start("a", "root")
    run.end("a")
    assert run.describe(run.plan()) == ["create root incomplete", "create a complete"]
    run.start("task", "a")  # e.g. an asyncio task created in `a`, first run after `a` returned
    run.end("task")
    (create_task,) = run.plan()
    assert describe(create_task) == "create task complete"
    body = create_task.operation.body
    assert body["trace_parent_id"] == root.log_id
    assert body["metadata"] == {"flowtrace": {"late_child_of": a.log_id}}
    run.end("root")
    assert run.describe(run.plan()) == ["update root"]
    assert (run.counters.sent, run.counters.held, run.counters.dropped) == (3, 0, {})


def test_a_late_child_of_a_refused_root_is_a_root_of_its_own() -> None:
    # It started after its parent had ended, so the recorder filed it as a root (noting the
    # parent): the parent's fate does not reach it.
    run = Run()
    a = run.start("a")
    run.end("a")
    (create_a,) = run.plan(deliver=False)
    run.planner.give_up(create_a, "rejected")
    run.start("task", "a")
    run.end("task")
    (create_task,) = run.plan()
    body = create_task.operation.body
    assert "trace_parent_id" not in body
    assert body["metadata"] == {"flowtrace": {"late_child_of": a.log_id}}
    assert run.counters.dropped == {"rejected": 1}
    assert run.counters.held == 0
