"""Issue 9 item 2 (server side): a trace hundreds of levels deep is read and completed with
200s whose answers agree with what was committed; never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrace.models import FlowLogRequest
from flowtrace.server._json import dump_json
from flowtrace.store import Store
from tests.serverutil import InProcessServer, serve_in_thread

DEPTH = 300


def chain(store: Store, depth: int) -> list[str]:
    """A root and `depth - 1` descendants, each the only child of the one before."""
    ids = [f"deep-{level:04d}" for level in range(depth)]
    for level, log_id in enumerate(ids):
        parent = ids[level - 1] if level else None
        store.log(FlowLogRequest(path="deep/step", log_id=log_id, trace_parent_id=parent))
    return ids


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[tuple[InProcessServer, list[str]]]:
    store = Store(tmp_path / "deep.db")
    ids = chain(store, DEPTH)
    with serve_in_thread(tmp_path / "deep.db", store=store) as server:
        yield server, ids


def depth_of(record: dict[str, Any]) -> tuple[int, str]:
    depth = 1
    while record["trace_children"]:
        (record,) = record["trace_children"]
        depth += 1
    return depth, record["id"]


def test_a_deep_trace_is_read_whole(deep: tuple[InProcessServer, list[str]]) -> None:
    server, ids = deep
    with server.client() as client:
        answer = client.get(f"/logs/{ids[0]}")
    assert answer.status_code == 200, answer.text[:200]
    assert depth_of(answer.json()) == (DEPTH, ids[-1])


def test_completing_a_deep_trace_answers_what_it_committed(
    deep: tuple[InProcessServer, list[str]],
) -> None:
    server, ids = deep
    with server.client() as client:
        patched = client.patch(
            f"/flows/logs/{ids[0]}", json={"trace_status": "complete", "output": "done"}
        )
        assert patched.status_code == 200, patched.text[:200]
        root = patched.json()
        assert (root["trace_status"], root["output"]) == ("complete", "done")
        assert depth_of(root) == (DEPTH, ids[-1])
        assert client.get(f"/logs/{ids[0]}").json() == root


def test_a_batch_completing_a_deep_trace_is_answered(
    deep: tuple[InProcessServer, list[str]],
) -> None:
    server, ids = deep
    operations = [
        {"op": "update", "log_id": log_id, "body": {"trace_status": "complete"}}
        for log_id in (ids[-1], ids[0])
    ]
    with server.client() as client:
        answer = client.post("/flows/logs/batch", json={"operations": operations})
        assert answer.status_code == 200, answer.text[:200]
        results = answer.json()["results"]
        assert [result["status"] for result in results] == [200, 200]
        assert depth_of(results[-1]["body"]) == (DEPTH, ids[-1])
        assert results[-1]["body"] == client.get(f"/logs/{ids[0]}").json()


def test_answers_are_encoded_at_any_depth() -> None:
    value: dict[str, Any] = {"leaf": ["é", 1.5, None, True, {}]}
    for _ in range(2000):
        value = {"c": [value], "n": 1}
    text = dump_json(value)
    assert text.startswith(b'{"c":[{"c":[')
    assert text.endswith(b'"n":1}],"n":1}')
    assert b'{"leaf":["\xc3\xa9",1.5,null,true,{}]}' in text
    assert httpx.Response(200, content=text).json is not None
