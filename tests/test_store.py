"""The contract's trace rules as the store enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrace.models import FlowLogRequest, FlowLogUpdateRequest, FlowUpsertRequest, LogQuery
from flowtrace.store import ListQuery, Store, StoreError
from tests.store_helpers import FakeClock, at, open_store, patch, req


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_target: str, clock: FakeClock) -> Iterator[Store]:
    yield from open_store(store_target, clock)


def _status(excinfo: pytest.ExceptionInfo[StoreError]) -> int:
    return excinfo.value.status_code


def _counts(store: Store) -> tuple[int, int, int]:
    flows = store.list_flows()
    return len(flows), sum(f.version_count for f in flows), store.list_logs().total


# --- flows and versions ------------------------------------------------------------------------


def test_first_log_creates_the_flow_by_path(store: Store) -> None:
    created = store.log(req(path="support/answer", output="hi"))
    assert created.id.startswith("log_")
    assert created.flow_id.startswith("fl_")
    assert created.version_id.startswith("flv_")
    again = store.log(req(path="/support/answer/"))
    assert again.flow_id == created.flow_id
    [flow] = store.list_flows()
    assert (flow.path, flow.name, flow.log_count) == ("support/answer", "answer", 2)


def test_same_attributes_in_any_key_order_are_one_version(store: Store) -> None:
    first = store.log(req(path="f", flow={"attributes": {"model": "m", "t": {"a": 1, "b": 2}}}))
    second = store.log(req(path="f", flow={"attributes": {"t": {"b": 2, "a": 1}, "model": "m"}}))
    other = store.log(req(path="f", flow={"attributes": {"model": "n"}}))
    assert first.version_id == second.version_id != other.version_id
    versions = store.list_versions(first.flow_id)
    assert [v.version_logs_count for v in versions] == [2, 1]


def test_log_by_flow_id_and_unknown_flow_id(store: Store) -> None:
    flow_id = store.log(req(path="f")).flow_id
    assert store.log(req(id=flow_id)).flow_id == flow_id
    with pytest.raises(StoreError) as excinfo:
        store.log(req(id="fl_nope"))
    assert _status(excinfo) == 404


def test_log_without_path_or_id_is_422(store: Store) -> None:
    with pytest.raises(StoreError) as excinfo:
        store.log(req(output="x"))
    assert _status(excinfo) == 422
    assert isinstance(excinfo.value.detail, list)
    assert excinfo.value.detail[0]["loc"] == ["body", "path"]


def test_path_and_id_of_different_flows_is_422(store: Store) -> None:
    flow_id = store.log(req(path="a")).flow_id
    with pytest.raises(StoreError) as excinfo:
        store.log(req(id=flow_id, path="b"))
    assert _status(excinfo) == 422


def test_version_id_query_targets_that_version(store: Store) -> None:
    first = store.log(req(path="f", flow={"attributes": {"v": 1}}))
    store.log(req(path="f", flow={"attributes": {"v": 2}}))
    targeted = store.log(req(output="x"), LogQuery(version_id=first.version_id))
    assert (targeted.flow_id, targeted.version_id) == (first.flow_id, first.version_id)
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f"), LogQuery(version_id="flv_unknown"))
    assert _status(excinfo) == 404
    with pytest.raises(StoreError) as excinfo:
        store.log(
            req(path="f", flow={"attributes": {"v": 2}}), LogQuery(version_id=first.version_id)
        )
    assert _status(excinfo) == 422


def test_version_id_of_another_flow_is_404(store: Store) -> None:
    version_id = store.log(req(path="a")).version_id
    store.log(req(path="b"))
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="b"), LogQuery(version_id=version_id))
    assert _status(excinfo) == 404


def test_environment_targets_the_deployed_version(store: Store) -> None:
    flow = store.upsert_flow(FlowUpsertRequest(path="f", attributes={"model": "a"}))
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f"), LogQuery(environment="production"))
    assert _status(excinfo) == 404
    assert flow.version_id is not None
    deployed = store.deploy(flow.id, "production", flow.version_id)
    assert deployed.version_id == flow.version_id
    store.log(req(path="f", flow={"attributes": {"model": "b"}}))  # a newer version
    created = store.log(req(path="f"), LogQuery(environment="production"))
    assert created.version_id == flow.version_id
    [v1, _] = store.list_versions(flow.id)
    assert v1.environments == ["production"]


def test_deploy_refuses_unknown_flow_and_foreign_version(store: Store) -> None:
    a = store.upsert_flow(FlowUpsertRequest(path="a", attributes={}))
    b = store.upsert_flow(FlowUpsertRequest(path="b", attributes={}))
    assert b.version_id is not None
    for flow_id, version_id in (("fl_nope", b.version_id), (a.id, b.version_id), (a.id, "x")):
        with pytest.raises(StoreError) as excinfo:
            store.deploy(flow_id, "prod", version_id)
        assert _status(excinfo) == 404


def test_upsert_flow_names_its_version(store: Store) -> None:
    made = store.upsert_flow(
        FlowUpsertRequest(path="f", attributes={"k": 1}, version_name="v1", version_description="d")
    )
    same = store.upsert_flow(FlowUpsertRequest(id=made.id, attributes={"k": 1}))
    assert (same.id, same.version_id, same.version_name) == (made.id, made.version_id, "v1")
    assert store.get_flow(made.id).version_description == "d"
    with pytest.raises(StoreError) as excinfo:
        store.get_flow("fl_nope")
    assert _status(excinfo) == 404


# --- trace rules -------------------------------------------------------------------------------


def test_trace_id_is_the_root_log_id(store: Store) -> None:
    store.log(req(path="f", log_id="root"))
    store.log(req(path="f", log_id="child", trace_parent_id="root"))
    store.log(req(path="g", log_id="grandchild", trace_parent_id="child"))
    record = store.get_log("grandchild")
    assert record.trace_id == "root"
    assert record.trace_flow_id == store.get_log("root").flow.id
    assert record.trace_parent_id == "child"


def test_unknown_parent_is_404_and_completed_parent_409(store: Store) -> None:
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f", trace_parent_id="nope"))
    assert _status(excinfo) == 404
    store.log(req(path="f", log_id="done", trace_status="complete"))
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f", trace_parent_id="done"))
    assert _status(excinfo) == 409


def test_patch_complete_closes_the_log_to_children(store: Store) -> None:
    store.log(req(path="f", log_id="p"))
    store.log(req(path="f", log_id="c1", trace_parent_id="p"))
    store.update("p", patch(trace_status="complete"))
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f", log_id="c2", trace_parent_id="p"))
    assert _status(excinfo) == 409
    with pytest.raises(StoreError) as excinfo:
        store.update("p", patch(trace_status="incomplete"))
    assert _status(excinfo) == 409
    assert store.update("p", patch(trace_status="complete")).trace_status == "complete"


def test_identical_replay_returns_the_same_response_once(store: Store) -> None:
    body = {"path": "f", "log_id": "L", "inputs": {"a": 1, "b": [1, 2]}, "output": "o"}
    first = store.log(req(**body))
    again = store.log(req(**dict(reversed(list(body.items())))))
    assert again == first
    assert store.list_logs().total == 1
    assert store.list_flows()[0].log_count == 1


def test_replay_with_a_different_body_is_409(store: Store) -> None:
    store.log(req(path="f", log_id="L", output="one"))
    with pytest.raises(StoreError) as excinfo:
        store.log(req(path="f", log_id="L", output="two"))
    assert _status(excinfo) == 409
    assert store.get_log("L").output == "one"


def test_replay_of_a_child_is_accepted_after_its_parent_closed(store: Store) -> None:
    store.log(req(path="f", log_id="p"))
    child = req(path="f", log_id="c", trace_parent_id="p", trace_status="complete")
    first = store.log(child)
    store.update("p", patch(trace_status="complete"))
    assert store.log(child) == first


def test_ancestors_widen_over_children_at_every_level(store: Store) -> None:
    store.log(req(path="f", log_id="a", start_time=at(10), end_time=at(20)))
    store.log(req(path="f", log_id="b", trace_parent_id="a", start_time=at(11), end_time=at(19)))
    store.log(req(path="f", log_id="c", trace_parent_id="b", start_time=at(5), end_time=at(30)))
    for log_id in ("a", "b"):
        record = store.get_log(log_id)
        assert (record.start_time, record.end_time) == (at(5), at(30))
    # a child inside the range changes nothing
    store.log(req(path="f", log_id="d", trace_parent_id="b", start_time=at(12), end_time=at(13)))
    assert (store.get_log("a").start_time, store.get_log("a").end_time) == (at(5), at(30))


def test_completing_without_end_time_uses_the_clock_and_widens(
    store: Store, clock: FakeClock
) -> None:
    store.log(req(path="f", log_id="p", start_time=at(0)))
    store.log(req(path="f", log_id="c", trace_parent_id="p", start_time=at(1)))
    clock.now = at(50)
    store.update("c", patch(trace_status="complete"))
    assert store.get_log("c").end_time == at(50)
    assert store.get_log("p").end_time == at(50)


def test_children_nest_in_start_order(store: Store) -> None:
    store.log(req(path="f", log_id="root", start_time=at(0)))
    for name, start in (("late", 3), ("early", 1), ("mid", 2)):
        store.log(req(path="f", log_id=name, trace_parent_id="root", start_time=at(start)))
    store.log(req(path="f", log_id="deep", trace_parent_id="mid", start_time=at(2.5)))
    root = store.get_log("root")
    assert [c.id for c in root.trace_children] == ["early", "mid", "late"]
    assert [c.id for c in root.trace_children[1].trace_children] == ["deep"]
    assert [c.id for c in store.get_log("mid").trace_children] == ["deep"]


def test_save_false_keeps_the_log_without_payloads(store: Store) -> None:
    store.log(
        req(
            path="f",
            log_id="s",
            save=False,
            inputs={"secret": 1},
            output="out",
            messages=[{"role": "user", "content": "hi"}],
            output_message={"role": "assistant", "content": "yo"},
            stdout="printed",
            provider_request={"a": 1},
            provider_response={"b": 2},
            error="boom",
            metadata={"kept": True},
        )
    )
    store.update("s", patch(output="later", inputs={"x": 1}))
    record = store.get_log("s")
    payloads = ("inputs", "output", "messages", "output_message", "stdout")
    assert all(getattr(record, name) is None for name in payloads)
    assert record.provider_request is None
    assert record.provider_response is None
    assert (record.error, record.metadata, record.save) == ("boom", {"kept": True}, False)


def test_failed_request_changes_nothing(store: Store) -> None:
    store.log(req(path="existing", log_id="done", trace_status="complete"))
    before = _counts(store)
    attempts = [
        (req(path="new/flow", flow={"attributes": {"x": 1}}, trace_parent_id="done"), None),
        (req(path="new/flow", trace_parent_id="missing"), None),
        (req(path="new/flow"), LogQuery(environment="production")),
        (req(path="new/flow"), LogQuery(version_id="flv_missing")),
    ]
    for request, query in attempts:
        with pytest.raises(StoreError):
            store.log(request, query)
    assert _counts(store) == before
    assert [f.path for f in store.list_flows()] == ["existing"]


# --- updates -----------------------------------------------------------------------------------


def test_patch_sets_fields_and_null_unsets(store: Store) -> None:
    store.log(req(path="f", log_id="L", output="o", error="e", inputs={"a": 1}))
    store.update("L", patch(output=None, error=None, messages=[{"role": "user", "content": "q"}]))
    record = store.get_log("L")
    assert (record.output, record.error, record.inputs) == (None, None, {"a": 1})
    assert record.messages is not None
    assert record.messages[0].content == "q"
    assert store.list_flows()[0].error_count == 0
    store.update("L", patch(error="late failure"))
    assert store.list_flows()[0].error_count == 1


def test_patch_unknown_log_is_404(store: Store) -> None:
    with pytest.raises(StoreError) as excinfo:
        store.update("nope", patch(trace_status="complete"))
    assert _status(excinfo) == 404


def test_responses_answer_in_the_status_dialect_of_the_request(store: Store) -> None:
    created = store.log(req(path="f", log_id="L", log_status="incomplete"))
    assert created.log_status == "incomplete"
    assert "trace_status" not in created.model_fields_set
    updated = store.update("L", patch(log_status="complete"))
    assert updated.log_status == "complete"
    assert "trace_status" not in updated.model_fields_set
    assert store.update("L", patch(output="x")).trace_status == "complete"
    read = store.get_log("L")
    assert read.trace_status == "complete"
    assert "log_status" not in read.model_fields_set
    assert store.get_log("L", status_field="log_status").log_status == "complete"
    default = store.log(req(path="f"))
    assert default.trace_status == "incomplete"


# --- batch -------------------------------------------------------------------------------------


def test_batch_applies_each_operation_on_its_own_in_order(store: Store) -> None:
    results = store.batch(
        [
            {"op": "log", "body": {"path": "f", "log_id": "p"}},
            {"op": "log", "body": {"path": "f", "log_id": "c", "trace_parent_id": "p"}},
            {"op": "log", "body": {"path": "f", "unknown_field": 1}},
            {"op": "log", "body": {"path": "g", "trace_parent_id": "missing"}},
            {"op": "update", "log_id": "p", "body": {"log_status": "complete"}},
            {"op": "log", "body": {"path": "f", "trace_parent_id": "p"}},
            {"op": "log", "query": {"version_id": "flv_x"}, "body": {"path": "h"}},
            {"op": "explode"},
            {"op": "update", "log_id": "missing", "body": {}},
            {"op": "log", "body": {"path": "f", "log_id": "p"}},
        ]
    )
    assert [r.status for r in results] == [200, 200, 422, 404, 200, 409, 404, 422, 404, 200]
    assert results[0].body == {
        "id": "p",
        "flow_id": results[0].body["flow_id"],
        "version_id": results[0].body["version_id"],
        "trace_status": "incomplete",
    }
    assert results[2].body["detail"][0]["loc"] == ["body", "unknown_field"]
    assert {"loc", "msg", "type"} <= set(results[2].body["detail"][0])
    assert results[4].body["log_status"] == "complete"
    assert [c["id"] for c in results[4].body["trace_children"]] == ["c"]
    assert results[9].body == results[0].body  # replay inside the same batch
    assert [f.path for f in store.list_flows()] == ["f"]  # failed ops created no flow g or h
    assert store.list_logs().total == 2


def test_batch_of_nothing(store: Store) -> None:
    assert store.batch([]) == []


# --- delete ------------------------------------------------------------------------------------


def test_delete_removes_the_log_and_its_subtree(store: Store) -> None:
    store.log(req(path="f", log_id="root", inputs={"q": "needle"}))
    store.log(req(path="f", log_id="a", trace_parent_id="root"))
    store.log(req(path="f", log_id="a1", trace_parent_id="a", error="x"))
    store.log(req(path="f", log_id="b", trace_parent_id="root"))
    store.delete_logs(["a", "unknown"])
    assert [c.id for c in store.get_log("root").trace_children] == ["b"]
    for gone in ("a", "a1"):
        with pytest.raises(StoreError):
            store.get_log(gone)
    [flow] = store.list_flows()
    assert (flow.log_count, flow.error_count) == (2, 0)
    store.delete_logs(["root"])
    assert store.list_logs().total == 0
    assert store.list_logs(ListQuery(search="needle")).total == 0
    store.delete_logs(["root"])  # again: nothing to do, no error


def test_a_rule_refusing_after_a_write_aborts_the_whole_batch(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operations fail alone because every check runs before any write; were a rule ever
    to refuse after writing, the batch must fail whole rather than keep half an operation."""
    from flowtrace.store._repository import Repository

    def refuse_late(*args: object) -> None:
        raise StoreError(409, "late refusal")

    store.log(req(path="f", log_id="p"))
    for backend in Repository.__subclasses__():
        monkeypatch.setattr(backend, "widen", refuse_late)
    with pytest.raises(RuntimeError, match="refused after writing"):
        store.batch(
            [
                {"op": "log", "body": {"path": "g", "log_id": "ok"}},
                {"op": "log", "body": {"path": "f", "log_id": "c", "trace_parent_id": "p"}},
            ]
        )
    assert [r.id for r in store.list_logs().records] == ["p"]
    assert [f.path for f in store.list_flows()] == ["f"]
    monkeypatch.undo()
    created = store.log(req(path="g"))  # the rolled-back flow left no stale cache entry
    assert store.get_flow(created.flow_id).path == "g"


def test_completing_patch_takes_the_logs_real_end_and_end_of_log_fields(tmp_path: Path) -> None:
    """flowtrace extension: a log sent early is completed with what it only knew at its end."""
    with Store(tmp_path / "ext.db") as store:
        store.log(FlowLogRequest(path="a/b", log_id="L1", start_time="2024-01-01T00:00:00Z"))
        record = store.update(
            "L1",
            FlowLogUpdateRequest.model_validate(
                {
                    "trace_status": "complete",
                    "end_time": "2024-01-01T00:00:05Z",
                    "stdout": "printed\n",
                    "metadata": {"k": 1},
                    "provider_latency": 5.0,
                    "output": "done",
                }
            ),
        )
    assert record.end_time is not None
    assert record.end_time.isoformat() == "2024-01-01T00:00:05+00:00"
    assert (record.stdout, record.metadata, record.provider_latency, record.output) == (
        "printed\n",
        {"k": 1},
        5.0,
        "done",
    )


def test_one_log_id_twice_in_a_batch_is_a_replay_the_second_time(store: Store) -> None:
    """Whether the first insert is still pending or already sent (a new flow between them is
    looked up in the database), the second is answered by the replay rule."""
    first = {"path": "twice/a", "log_id": "same", "inputs": {"n": 1}}
    ops = [
        {"op": "log", "body": first},
        {"op": "log", "body": {**first, "inputs": {"n": 2}}},  # pending: a different body
        {"op": "log", "body": {"path": "twice/new-flow", "log_id": "other"}},
        {"op": "log", "body": first},  # sent by now: the same body
        {"op": "log", "body": {**first, "inputs": {"n": 3}}},
    ]
    results = store.batch(ops)
    assert [r.status for r in results] == [200, 409, 200, 200, 409]
    assert results[3].body == results[0].body
    assert store.get_log("same").inputs == {"n": 1}
    assert store.list_logs().total == 2
