"""The fast embedded path (`Store.ingest`, store/_ingest.py): what it makes of a body the client
built is what the request path makes of the same request, replay identity included; the trace
rules still apply; one bad operation fails alone; no answer is built for an update; a write
waiting for another process's lock is bounded and can be interrupted."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowtrace.store as store_module
import flowtrace.store._reads as store_reads
from flowtrace._capture import CapturedTraceback
from flowtrace._log import Log
from flowtrace._options import FlowOptions, LogOptions
from flowtrace._planner import Counters, PlannedOp, Planner
from flowtrace._request_bodies import complete_body, create_body, log_query
from flowtrace.models import FlowLogRequest, LogQuery
from flowtrace.store import IngestOperation, ListQuery, Store, StoreBusy
from flowtrace.store._ingest import prepare_create
from flowtrace.store._prepare import prepare_log
from tests.scriptutil import run_script, script_env
from tests.store_helpers import FakeClock

NOW_US = 1_750_000_000_123_456
NOW_WIRE = "2025-06-15T15:06:40.123456Z"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
chat_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(max_size=20)}
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def logs(draw: st.DrawFn) -> tuple[Log, dict[str, str]]:
    """A log as the recorder leaves it, with a random mix of what a log can carry."""
    options = FlowOptions(
        attributes=draw(st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        metadata=draw(st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        user=draw(st.none() | st.text(max_size=5)),
        environment=draw(st.none() | st.sampled_from(["prod", "staging"])),
        source=draw(st.none() | st.text(max_size=5)),
        save=draw(st.none() | st.booleans()),
        version_id=draw(st.none() | st.just("flv_1")),
    )
    parent = Log(LogOptions(FlowOptions(), "ingest/parent"), None) if draw(st.booleans()) else None
    log = Log(LogOptions(options, draw(st.sampled_from(["a/b", "c", "ünï/cødé"]))), parent)
    if draw(st.booleans()):
        log.inputs = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    if draw(st.booleans()):
        log.messages = draw(chat_messages)
    choice = draw(st.sampled_from(["result", "output", "message", "none"]))
    if choice == "result":
        log.result = draw(json_values)
    elif choice == "output":
        log.output = draw(json_values)
    elif choice == "message":
        log.output_message = {"role": "assistant", "content": draw(st.text(max_size=10))}
    if draw(st.booleans()):
        log.error = "ValueError: " + draw(st.text(max_size=10))
        log.error_trace = CapturedTraceback(ValueError("x"), "ValueError: x", __file__)
        log.ended_how = "error"
    if draw(st.booleans()):
        printed = draw(st.text(max_size=30))
        log.stdout_parts, log.stdout_chars = [printed], len(printed)
    if draw(st.booleans()):
        log.provider_request = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2))
    if draw(st.booleans()):
        log.duration_ns = draw(st.integers(min_value=0, max_value=10**12))
    return log, log_query(log)


def prepared_both_ways(body: dict[str, Any], query: dict[str, str]) -> tuple[Any, Any]:
    fast = prepare_create(body, query, NOW_US, NOW_WIRE)
    request = FlowLogRequest.model_validate(body)
    slow = prepare_log(request, LogQuery.model_validate(query) if query else None, NOW_US, NOW_WIRE)
    return fast, slow


@settings(max_examples=300)
@given(logs(), st.sampled_from(["trace_status", "log_status"]))
def test_a_body_prepares_as_the_request_path_prepares_it(
    made: tuple[Log, dict[str, str]], status_field: Any
) -> None:
    log, query = made
    body = create_body(log, status_field)
    fast, slow = prepared_both_ways(body, query)
    # the replay identity first: a log sent over HTTP, replayed here, is the same log
    assert fast.request_digest == slow.request_digest
    for name in ("start_us", "end_us", "complete", "has_error", "inputs", "output", "status"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert json.loads(fast.data) == json.loads(slow.data)
    assert fast.status_field == slow.status_field
    for name in ("log_id", "path", "id", "trace_parent_id"):
        assert getattr(fast.request, name) == getattr(slow.request, name), name
    assert (fast.request.flow is None) == (slow.request.flow is None)
    if fast.request.flow is not None:
        assert fast.request.flow.attributes == slow.request.flow.attributes  # type: ignore[union-attr]
    assert (fast.query is None) == (slow.query is None)


# --- through the store ------------------------------------------------------------------------


def opened(path: str, parent: Log | None = None) -> Log:
    return Log(LogOptions(FlowOptions(), path), parent)


def ended(path: str, parent: Log | None = None, **fields: Any) -> Log:
    """A log that has ended (a parent must still be open: a late child is a root)."""
    return end(opened(path, parent), **fields)


def end(log: Log, **fields: Any) -> Log:
    for name, value in fields.items():
        setattr(log, name, value)
    log.duration_ns = 1000
    return log


def create(log: Log, incomplete: bool = False) -> IngestOperation:
    body = create_body(log, "trace_status")
    if incomplete:
        body["trace_status"] = "incomplete"
    return IngestOperation("log", log.log_id, body, log_query(log))


def test_a_log_sent_through_the_request_path_is_a_replay_here_and_back(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        first, second = ended("replay/a", output="x"), ended("replay/b", output="y")
        [result] = store.batch([{"op": "log", "body": create_body(first, "trace_status")}])
        assert result.status == 200
        assert store.ingest([create(first)]) == [(200, result.body)]  # recognised, not stored
        [(status, answer)] = store.ingest([create(second)])
        assert status == 200
        [again] = store.batch([{"op": "log", "body": create_body(second, "trace_status")}])
        assert (again.status, again.body) == (200, answer)
        assert sum(f.log_count for f in store.list_flows()) == 2


def test_a_batch_looks_its_ids_up_once_and_still_sees_a_create_made_in_it(
    tmp_path: Path,
) -> None:
    """The replay rule, answered from one lookup of the batch's ids: a log stored before (a
    replay with its body, a conflict with another), a new log created twice in one batch (the
    second is a replay of the first), all as the one-by-one path answers."""
    with Store(tmp_path / "s.db") as store:
        stored, new = ended("batch/stored", output="x"), ended("batch/new", output="y")
        [(status, stored_answer)] = store.ingest([create(stored)])
        assert status == 200
        other_body = dict(create(stored).body, output='"changed"')
        results = store.ingest(
            [
                create(stored),
                IngestOperation("log", stored.log_id, other_body, log_query(stored)),
                create(new),
                create(new),
            ]
        )
        assert results[0] == (200, stored_answer)
        assert results[1][0] == 409  # the same id with another body
        assert results[2][0] == 200 and results[3] == results[2]
        assert sum(f.log_count for f in store.list_flows()) == 2


def test_the_replay_digest_covers_every_field_and_ignores_only_the_store_s_clock(
    tmp_path: Path,
) -> None:
    """The digest is taken from the columns' JSON (not a second encoding of the body): the same
    body with its top-level keys in another order, sent later, is a replay; any field changed
    (a column, a payload, the targeting query, a payload that `save=false` keeps out of the
    store) is a conflict."""
    with Store(tmp_path / "s.db") as store:
        log = ended("digest/log", output="x")
        body = dict(create(log).body, metadata={"k": 1}, save=False)
        [(status, answer)] = store.ingest([IngestOperation("log", log.log_id, body)])
        assert status == 200
        reordered = dict(reversed(list(body.items())))
        assert store.ingest([IngestOperation("log", log.log_id, reordered)]) == [(200, answer)]
        changed = [
            dict(body, end_time="2030-01-01T00:00:00.000000Z"),  # a column
            dict(body, metadata={"k": 2}),  # the stored data
            dict(body, inputs={"changed": True}),  # a payload kept out by save=false
            dict(body, output="y"),
        ]
        results = store.ingest([IngestOperation("log", log.log_id, b) for b in changed])
        aimed = store.ingest([IngestOperation("log", log.log_id, body, {"environment": "x"})])
        assert [status for status, _ in results + aimed] == [409] * 5


_T = "2025-01-01T00:00:00.000000Z"
#: Requests and the digests stored files keep for them (any change makes their replays 409s).
_PINNED_DIGESTS = [
    (
        {"path": "a/b", "log_id": "log_1", "start_time": _T, "end_time": _T},
        {"inputs": {"q": 1}, "output": "o", "trace_status": "complete"},
        None,
        "32e45db54c23c0a39a48d68510af5408",
    ),
    (
        {"path": "a/b", "log_id": "log_2", "start_time": _T, "save": False},
        {"metadata": {"m": [1, {"z": 2, "a": 1}]}, "log_status": "incomplete"},
        None,
        "b82a0bdccb0067740dfea2c40789a28a",
    ),
    (
        {"path": "a/b", "log_id": "log_3", "save": False, "trace_parent_id": "log_1"},
        {"output": "kept out", "error": "E"},
        None,
        "1d1584b295f2266939b414456982fba2",
    ),
    (
        {"path": "c", "log_id": "log_4", "flow": {"attributes": {"model": "m", "t": 0.5}}},
        {"user": "u", "environment": "prod", "stdout": "s", "provider_latency": 0.25},
        {"environment": "prod"},
        "fa2e908c0ef6bb4652b29d214774879c",
    ),
]


@pytest.mark.parametrize(("routing", "fields", "query", "digest"), _PINNED_DIGESTS)
def test_a_request_s_replay_digest_is_the_one_stored_files_keep(
    routing: dict[str, Any], fields: dict[str, Any], query: dict[str, str] | None, digest: str
) -> None:
    """Digests are kept in every stored file and spool: a request must digest as it always
    did, by both paths (a save=false one without payloads included)."""
    fast, slow = prepared_both_ways({**routing, **fields}, query or {})
    assert fast.request_digest.hex() == slow.request_digest.hex() == digest


_SAVE_FALSE_DIGEST = """
from flowtrace.models import FlowLogRequest
from flowtrace.store._prepare import prepare_log
request = FlowLogRequest.model_validate({
    "path": "a/b", "log_id": "log_1", "save": False, "inputs": {"q": 1}, "output": "o",
    "stdout": "s", "messages": [{"role": "user", "content": "hi"}],
    "start_time": "2025-01-01T00:00:00.000000Z",
})
print(prepare_log(request, None, 1).request_digest.hex())
"""


def test_a_save_false_request_s_digest_is_the_same_in_every_process() -> None:
    """The payloads `save=false` keeps out of the store are in the digest in a fixed order,
    not in a set's (which changes with each process's string hashing): a request retried to a
    restarted server, or replayed from another process's spool, is a replay, not a 409."""
    digests = {
        run_script(_SAVE_FALSE_DIGEST, dict(script_env(), PYTHONHASHSEED=str(seed))).stdout
        for seed in (1, 2, 3)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 32


def test_the_trace_rules_still_apply(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        parent, unknown = opened("rules/parent"), opened("rules/unknown")
        late, orphan = ended("rules/late", parent), ended("rules/orphan", unknown)
        end(parent), end(unknown)
        bad = ended("rules//empty-part")
        results = store.ingest([create(parent), create(late), create(orphan), create(bad)])
        statuses = [status for status, _ in results]
        assert statuses == [200, 409, 404, 422]  # the parent went complete: no child under it
        assert results[3][1]["detail"][0]["loc"] == ["body", "path"]


def test_a_parent_inserted_in_the_batch_is_found_without_a_query_until_it_changes(
    tmp_path: Path,
) -> None:
    """A child whose parent this transaction inserted takes it from the transaction's own
    record (no SELECT by id); once the parent is written again (closed by an update) it is read
    back, so a child under the now complete parent is refused as the rules say."""
    with Store(tmp_path / "s.db") as store:
        statements: list[str] = []
        store._db._writer.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        root, closed = opened("cache/root"), opened("cache/closed")
        children = [ended("cache/child", root) for _ in range(3)]
        late = ended("cache/late", closed)
        end(root), end(closed)
        close = IngestOperation(
            "update", closed.log_id, complete_body(closed, "trace_status", True)
        )
        operations = [create(root, incomplete=True), *map(create, children)]
        operations += [create(closed, incomplete=True), close, create(late)]
        results = store.ingest(operations)
        assert [status for status, _ in results] == [200] * 6 + [409]
        lookups = [sql for sql in statements if sql.startswith("SELECT seq, parent_seq")]
        assert len(lookups) == 1  # the late child's, after the update: none for the first three
        stored = store.get_log(root.log_id).trace_children
        assert [child.id for child in stored] == [child.log_id for child in children]


def test_an_update_closes_a_log_and_builds_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_answer(*args: object) -> None:
        raise AssertionError("an answer was built")

    monkeypatch.setattr(store_reads, "get_log_by_seq", no_answer)
    with Store(tmp_path / "s.db") as store:
        root = opened("update/root")
        child = ended("update/child", root)
        end(root, output="done")
        update = IngestOperation("update", root.log_id, complete_body(root, "trace_status", True))
        results = store.ingest([create(root, incomplete=True), create(child), update])
        assert results[2] == (200, {"id": root.log_id})
        monkeypatch.undo()
        record = store.get_log(root.log_id)
        assert (record.trace_status, record.output) == ("complete", "done")


def test_one_operation_that_fails_otherwise_than_by_a_rule_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = [ended(f"alone/{n}") for n in range(3)]
    real = store_module.create_log

    def breaks_on_the_middle_one(cache: Any, session: Any, prepared: Any) -> Any:
        if prepared.request.log_id == logs[1].log_id:
            raise RecursionError("maximum recursion depth exceeded")
        return real(cache, session, prepared)

    monkeypatch.setattr(store_module, "create_log", breaks_on_the_middle_one)
    with Store(tmp_path / "s.db") as store:
        results = store.ingest([create(log) for log in logs])
        assert [status for status, _ in results] == [200, 500, 200]
        assert "RecursionError" in results[1][1]["detail"]
        assert sum(f.log_count for f in store.list_flows()) == 2


def test_a_trace_hundreds_of_levels_deep_goes_in_one_batch(tmp_path: Path) -> None:
    chain: list[Log] = []
    parent: Log | None = None
    for _ in range(400):
        parent = Log(LogOptions(FlowOptions(), "deep/level"), parent)
        chain.append(parent)
    for log in chain:
        log.duration_ns = 1000
    operations = [create(log, incomplete=True) for log in chain]
    operations += [
        IngestOperation("update", log.log_id, complete_body(log, "trace_status", True))
        for log in reversed(chain)
    ]
    with Store(tmp_path / "s.db") as store:
        results = store.ingest(operations)
        assert {status for status, _ in results} == {200}
        assert store.get_log(chain[-1].log_id).trace_status == "complete"


def test_a_write_waiting_for_another_process_s_lock_is_bounded_and_interruptible(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.ingest([create(ended("lock/first"))])
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            started = time.monotonic()
            with pytest.raises(StoreBusy, match="locked"):
                store.ingest([create(ended("lock/second"))], timeout_s=0.3)
            assert time.monotonic() - started < 2.0
            threading.Timer(0.2, store.interrupt).start()
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="interrupted"):
                store.ingest([create(ended("lock/third"))], timeout_s=30.0)
            assert time.monotonic() - started < 2.0
        finally:
            holder.execute("ROLLBACK")
            holder.close()


# --- the fast path stores what the request path stores ---------------------------------------


def _varied_traces(planner: Planner, token: object) -> list[PlannedOp]:
    """The planner's operations for logs of every kind a program makes: errors, fields the
    user set, metadata, save=false, large inputs, attributes, children, a child sent early
    then closed by an update (with inputs set late), a late child."""

    def accept(log: Log) -> Log:
        log.delivery = token
        planner.started(log)
        return log

    def finish(log: Log, **fields: Any) -> None:
        end(log, **fields)
        planner.ended(log)

    def plan() -> list[PlannedOp]:
        ops, _ = planner.plan(512, 0.0, 60.0, "trace_status")
        return ops

    flows = {
        "plain": FlowOptions(),
        "rich": FlowOptions(
            attributes={"model": "m-1", "temperature": 0.5},
            metadata={"team": "search", "nested": {"k": [1, 2]}},
            user="ana",
            environment="prod",
            source="tests",
        ),
        "unsaved": FlowOptions(save=False, metadata={"kept": True}),
    }
    root = accept(Log(LogOptions(flows["rich"], "paths/root"), None))
    early = accept(Log(LogOptions(flows["plain"], "paths/early"), root))
    ops = plan()  # nothing has ended: nothing goes yet
    failing = accept(Log(LogOptions(flows["plain"], "paths/failing"), early))
    trace = CapturedTraceback(ValueError("no"), "ValueError: no", __file__)
    finish(failing, error="ValueError: no", ended_how="error", error_trace=trace)
    ops += plan()  # root and early go early, as incomplete; failing goes complete
    closed = accept(Log(LogOptions(flows["plain"], "paths/closed"), early))
    finish(closed, result={"answer": 42, "text": "x" * 70_000}, stdout_parts=["hi\n"])
    closed.stdout_chars = 3
    ops += plan()
    late = accept(Log(LogOptions(flows["unsaved"], "paths/late"), closed))  # closed is done
    finish(late, inputs={"secret": "s"}, output="kept out")
    finish(early, inputs={"set": "late"}, output_message={"role": "assistant", "content": "ok"})
    big = accept(Log(LogOptions(flows["rich"], "paths/big"), root))
    finish(big, inputs={"items": list(range(2_000)), "deep": [[[[1]]]]}, user="bob")
    finish(root, metadata={"mine": "yes"}, output="done")
    ops += plan()
    assert {op.operation.kind for op in ops} == {"log", "update"}
    return ops


def test_the_fast_path_stores_what_the_request_path_stores_row_for_row(tmp_path: Path) -> None:
    """The same operations through `Store.ingest` and through `Store.batch` (the request
    path: each body validated and dumped as a request from the network) leave the same rows,
    byte for byte (the JSON kept, the replay digest, times, flags, the trace's links), the
    same counters, and the same answers to every create and refusal."""
    token = object()
    ops = [op.operation for op in _varied_traces(Planner(token, Counters()), token)]
    rows = {}
    answers = {}
    for way in ("ingest", "batch"):
        with Store(tmp_path / f"{way}.db", clock=FakeClock()) as store:
            if way == "ingest":
                answers[way] = store.ingest(ops)
            else:
                results = store.batch([op.to_batch_item() for op in ops])
                answers[way] = [(result.status, result.body) for result in results]
        with sqlite3.connect(tmp_path / f"{way}.db") as db:
            rows[way] = (
                db.execute(f"SELECT {_LOG_COLUMNS} FROM logs ORDER BY seq").fetchall(),
                db.execute(_COUNTERS).fetchall(),
            )
    assert rows["ingest"] == rows["batch"]
    stored, _ = rows["ingest"]
    assert len(stored) == len([op for op in ops if op.kind == "log"]) == 6
    assert [op.kind for op in ops].count("update") == 2  # the root and the log sent early
    assert sum('"late_child_of"' in row[13] for row in stored) == 1
    creates = [n for n, op in enumerate(ops) if op.kind == "log"]
    flow_ids = ("flow_id", "version_id")  # made anew by each store
    for n in creates:
        fast, slow = answers["ingest"][n], answers["batch"][n]
        assert fast[0] == slow[0] == 200
        assert {k: v for k, v in fast[1].items() if k not in flow_ids} == {
            k: v for k, v in slow[1].items() if k not in flow_ids
        }
    assert [status for status, _ in answers["ingest"]] == [s for s, _ in answers["batch"]]


def test_logs_of_functions_that_alternate_in_one_batch_each_find_their_own_version(
    tmp_path: Path,
) -> None:
    """The transaction remembers where a function's logs go (its flow and version): two
    versions of one path and another flow, alternating, each new at its first log, are stored
    as the request path stores them."""
    token = object()
    planner = Planner(token, Counters())
    functions = [
        LogOptions(FlowOptions(attributes={"v": 1}), "memo/shared"),
        LogOptions(FlowOptions(attributes={"m": "x"}), "memo/other"),
        LogOptions(FlowOptions(attributes={"v": 2}), "memo/shared"),
    ]
    for n in range(9):
        log = Log(functions[n % 3], None)
        log.delivery = token
        planner.started(log)
        end(log)
        planner.ended(log)
    ops = [op.operation for op in planner.plan(512, 0.0, 60.0, "trace_status")[0]]
    rows = {}
    for way in ("ingest", "batch"):
        with Store(tmp_path / f"{way}.db", clock=FakeClock()) as store:
            if way == "ingest":
                assert [status for status, _ in store.ingest(ops)] == [200] * 9
            else:
                results = store.batch([op.to_batch_item() for op in ops])
                assert [result.status for result in results] == [200] * 9
        with sqlite3.connect(tmp_path / f"{way}.db") as db:
            rows[way] = db.execute(f"SELECT {_LOG_COLUMNS} FROM logs ORDER BY seq").fetchall()
    assert rows["ingest"] == rows["batch"]
    routes = [(row[2], row[3]) for row in rows["ingest"]]  # (flow_ref, version_ref)
    assert len(set(routes)) == 3
    assert routes == routes[:3] * 3
    assert routes[0][0] == routes[2][0] != routes[1][0]  # one flow, two versions


_LOG_COLUMNS = (
    "seq, id, flow_ref, version_ref, trace_seq, parent_seq, start_us, end_us, complete,"
    " has_error, request_digest, inputs, output, data, placeholder"
)
_COUNTERS = (
    "SELECT f.seq, f.path, f.kind, f.log_count, f.root_count, f.error_count, v.seq,"
    " v.attributes, v.log_count FROM flows f JOIN versions v ON v.flow_ref = f.seq"
    " ORDER BY f.seq, v.seq"
)


def test_the_embedded_path_writes_without_the_wire_models(tmp_path: Path) -> None:
    """A program's default destination takes plain logs (creates, and the updates of logs sent
    early) without importing the wire models: building them (pydantic) took ~100 ms, which a
    short program's exit waited for. A chat message needs them, and gets them."""
    code = """
        import sys
        import flowtrace

        @flowtrace.flow(path="lean/child")
        def child(i):
            return i

        @flowtrace.flow(path="lean/root")
        def root(n):
            return sum(child(i) for i in range(n))

        for n in range(20):
            root(n)
        with flowtrace.flow("lean/block"):
            root(2)
        assert flowtrace.flush(30)
        print("flowtrace.models" in sys.modules, "pydantic.main" in sys.modules)
        with flowtrace.flow("lean/chat") as log:
            log.messages = [{"role": "user", "content": "hi"}]
        assert flowtrace.flush(30)
        print("flowtrace.models" in sys.modules, flowtrace.stats()["sent"])
    """
    done = run_script(code, script_env(db_path=tmp_path / "lean.db"))
    assert done.returncode == 0, done.stderr
    # 20 roots over 190 children, a block over a root over 2 children; then the chat log
    assert done.stdout.splitlines() == ["False False", "True 215"]
    with Store(tmp_path / "lean.db") as store:
        (chat,) = (r for r in store.list_logs(ListQuery(size=500)).records if r.messages)
    assert chat.messages is not None and chat.messages[0].content == "hi"
