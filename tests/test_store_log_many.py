"""`Store.log_many`, the server's group commit: each log as `Store.log` would have it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrace.models import CreateFlowLogResponse, LogQuery
from flowtrace.store import Store, StoreError
from tests.store_helpers import open_store, req


@pytest.fixture
def store(store_target: str) -> Iterator[Store]:
    yield from open_store(store_target)


def test_each_log_is_stored_or_refused_on_its_own(store: Store) -> None:
    results = store.log_many(
        [
            (req(path="g", log_id="a", trace_status="incomplete"), None),
            (req(path="g", trace_parent_id="missing"), None),  # 404
            (req(path="g", log_id="b", trace_parent_id="a"), None),  # sees "a" of this group
            (req(path="g", log_id="a", trace_status="incomplete"), None),  # a replay
            (req(path="g", log_id="a", output="other"), None),  # 409
            (req(path="g", log_status="complete"), LogQuery(version_id="flv_unknown")),  # 404
        ]
    )
    statuses = [r.status_code if isinstance(r, StoreError) else 200 for r in results]
    assert statuses == [200, 404, 200, 200, 409, 404]
    first, child, replay = results[0], results[2], results[3]
    assert isinstance(first, CreateFlowLogResponse) and isinstance(child, CreateFlowLogResponse)
    assert replay == first
    assert child.flow_id == first.flow_id and child.version_id == first.version_id
    assert store.get_log("a").trace_children[0].id == "b"
    assert store.list_logs().total == 2  # the refused ones left nothing
    [flow] = store.list_flows()
    assert flow.log_count == 2


def test_answers_match_store_log(tmp_path: Path) -> None:
    requests = [
        (req(path="m", log_id="x", log_status="complete"), None),
        (req(path="m", flow={"attributes": {"k": 1}}), None),
        (req(output="no flow"), None),
    ]
    with Store(tmp_path / "one.db") as one, Store(tmp_path / "many.db") as many:
        singly: list[object] = []
        for request, query in requests:
            try:
                singly.append(one.log(request, query).model_dump(exclude={"flow_id", "version_id"}))
            except StoreError as refusal:
                singly.append((refusal.status_code, refusal.detail))
        grouped = [
            (r.status_code, r.detail)
            if isinstance(r, StoreError)
            else r.model_dump(exclude={"flow_id", "version_id"})
            for r in many.log_many(requests)
        ]
    for answer in (*singly, *grouped):
        if isinstance(answer, dict) and answer["id"] != "x":
            answer["id"] = "<generated>"
    assert grouped == singly
