"""The wire contract through HTTP: every endpoint, every error status, every trace rule.

A real server (uvicorn on a free loopback port, in a thread) answers an httpx client; the
module's tests share it, each serving a fresh store of its own (`shared_servers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrace._contract import BATCH_OPS
from flowtrace.store import Store
from tests.serverutil import (
    DEFAULT_API_KEY,
    RunningServer,
    SharedServer,
    SharedServers,
    serve_in_thread,
    start_server,
)

REQUIRED_FLOW_FIELDS = {
    "path",
    "id",
    "name",
    "version_id",
    "attributes",
    "type",
    "status",
    "created_at",
    "updated_at",
    "last_used_at",
    "version_logs_count",
}


@pytest.fixture
def app_server(
    tmp_path: Path, store_target: str, shared_servers: SharedServers
) -> Iterator[SharedServer]:
    """The contract's server over each backend (SQLite, PostgreSQL): the same answers."""
    with shared_servers.serve(tmp_path / "flowtrace.db", store=Store(store_target)) as running:
        yield running


@pytest.fixture
def client(app_server: SharedServer) -> Iterator[httpx.Client]:
    with app_server.client() as http:
        yield http


def log(client: httpx.Client, body: dict[str, Any], **query: str) -> dict[str, Any]:
    response = client.post("/flows/log", json=body, params=query)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def get_log(client: httpx.Client, log_id: str) -> dict[str, Any]:
    response = client.get(f"/logs/{log_id}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def complete(client: httpx.Client, log_id: str, **fields: Any) -> dict[str, Any]:
    response = client.patch(f"/flows/logs/{log_id}", json={"trace_status": "complete", **fields})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def logs_of_flow(client: httpx.Client, flow_id: str, **filters: Any) -> dict[str, Any]:
    response = client.get("/logs", params={"file_id": flow_id, "size": 1000, **filters})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_field_error(response: httpx.Response, loc: list[Any], error_type: str) -> None:
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and e["type"] == error_type and e["msg"] for e in errors), errors


# --- health, auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/v5/health"])
def test_health_is_public_and_advertises_batch(app_server: SharedServer, path: str) -> None:
    response = httpx.get(app_server.root_url + path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "batch": True, "batch_operations": list(BATCH_OPS)}


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-KEY": b"wrong"}, {"X-API-KEY": b""}, {"X-API-KEY": "t\u00e9st-key".encode()}],
    ids=["missing", "wrong", "empty", "non-ascii"],
)
def test_requests_without_the_right_key_are_401(
    app_server: SharedServer, headers: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=app_server.base_url, headers=headers) as anonymous:
        for response in (
            anonymous.post("/flows/log", json={"path": "a"}),
            anonymous.get("/flows"),
            anonymous.get("/logs/x"),
            anonymous.delete("/logs", params={"id": "x"}),
        ):
            assert response.status_code == 401
            assert isinstance(response.json()["detail"], str)


def test_any_configured_key_is_accepted(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "db", api_keys=("one", "two")) as running:
        for key in ("one", "two"):
            response = httpx.get(running.base_url + "/flows", headers={"X-API-KEY": key})
            assert response.status_code == 200


def test_without_keys_the_server_is_open(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "db", api_keys=()) as running:
        response = httpx.post(running.base_url + "/flows/log", json={"path": "open"})
        assert response.status_code == 200


# --- POST /flows/log ------------------------------------------------------------------------


def test_log_creates_flow_and_answers_ids_and_status(client: httpx.Client) -> None:
    created = log(client, {"path": "support/answer", "output": "hi"})
    assert set(created) == {"id", "flow_id", "version_id", "trace_status"}
    assert created["trace_status"] == "incomplete"
    flow = client.get(f"/flows/{created['flow_id']}").json()
    assert flow["path"] == "support/answer"
    assert flow["name"] == "answer"


def test_log_keeps_client_log_id_and_every_field(client: httpx.Client) -> None:
    body: dict[str, Any] = {
        "path": "full",
        "log_id": "client-chosen-1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ],
        "output_message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
        },
        "run_id": "run-1",
        "start_time": "2025-01-01T10:00:00Z",
        "end_time": "2025-01-01T10:00:02Z",
        "output": "out",
        "created_at": "2025-01-01T10:00:00Z",
        "error": "boom",
        "provider_latency": 1.5,
        "stdout": "printed\n",
        "provider_request": {"model": "m"},
        "provider_response": {"choices": []},
        "inputs": {"question": "why?", "nested": {"n": [1, 2]}},
        "source": "test",
        "metadata": {"k": "v"},
        "source_datapoint_id": "dp-1",
        "user": "u-1",
        "environment": "staging",
        "trace_status": "complete",
        "flow": {"attributes": {"model": "m"}},
    }
    created = log(client, body)
    assert created["id"] == "client-chosen-1"
    assert created["trace_status"] == "complete"
    stored = get_log(client, "client-chosen-1")
    unchanged = {"start_time", "end_time", "created_at", "path", "log_id", "flow"}
    for field in body.keys() - unchanged - {"messages", "output_message"}:
        assert stored[field] == body[field], field
    for field in ("start_time", "end_time", "created_at"):  # written back with microseconds
        assert stored[field] == body[field].replace("Z", ".000000Z")
    assert stored["messages"][0] == {"role": "system", "content": "be brief"}
    assert stored["messages"][1]["content"] == [{"type": "text", "text": "hello"}]
    assert stored["output_message"]["tool_calls"][0]["function"]["name"] == "f"
    assert stored["flow"]["attributes"] == {"model": "m"}


def test_read_back_has_the_fields_clients_parse_as_required(client: httpx.Client) -> None:
    created = log(client, {"path": "req/fields"})
    stored = get_log(client, created["id"])
    assert stored["id"] == created["id"]
    assert stored["trace_id"] == created["id"]
    assert stored["trace_flow_id"] == created["flow_id"]
    assert stored["trace_children"] == []
    assert stored["evaluator_logs"] == []
    assert stored["trace_status"] == "incomplete"
    assert set(stored["flow"]) >= REQUIRED_FLOW_FIELDS
    assert stored["flow"]["type"] == "flow"
    assert stored["flow"]["status"] == "committed"
    assert stored["flow"]["version_id"] == created["version_id"]


def test_unset_fields_are_omitted_not_null(client: httpx.Client) -> None:
    created = log(client, {"path": "sparse", "inputs": {"a": 1}})
    stored = get_log(client, created["id"])
    for absent in ("output", "error", "messages", "stdout", "user", "log_status"):
        assert absent not in stored
    assert None not in (value for key, value in stored.items() if key != "flow")


def test_unknown_field_is_422_naming_it(client: httpx.Client) -> None:
    response = client.post("/flows/log", json={"path": "p", "bogus": 1})
    assert_field_error(response, ["body", "bogus"], "extra_forbidden")


@pytest.mark.parametrize(
    ("body", "loc", "error_type"),
    [
        ({"messages": [{"role": "robot"}]}, ["body", "messages", 0, "role"], "literal_error"),
        ({"inputs": [1, 2]}, ["body", "inputs"], "dict_type"),
        ({"start_time": "yesterday"}, ["body", "start_time"], "datetime_from_date_parsing"),
        ({"trace_status": "done"}, ["body", "trace_status"], "literal_error"),
        ({"flow": {}}, ["body", "flow", "attributes"], "missing"),
        ({"provider_latency": "fast"}, ["body", "provider_latency"], "float_parsing"),
        ({"log_id": ""}, ["body", "log_id"], "string_too_short"),
    ],
)
def test_invalid_field_is_422_naming_field_and_reason(
    client: httpx.Client, body: dict[str, Any], loc: list[Any], error_type: str
) -> None:
    assert_field_error(client.post("/flows/log", json=body), loc, error_type)


def test_an_empty_log_id_is_422_and_nothing_is_stored(client: httpx.Client) -> None:
    response = client.post("/flows/log", json={"path": "empty/id", "log_id": ""})
    assert_field_error(response, ["body", "log_id"], "string_too_short")
    assert client.get("/logs").json()["total"] == 0
    batch = client.post(
        "/flows/logs/batch",
        json={"operations": [{"op": "log", "body": {"path": "empty/id", "log_id": ""}}]},
    )
    assert batch.json()["results"][0]["status"] == 422
    assert client.get("/logs").json()["total"] == 0


def test_body_that_is_not_an_object_is_422(client: httpx.Client) -> None:
    response = client.post("/flows/log", json=[1, 2])
    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"path": "a",}',
        b"not json",
        b'{"provider_latency": NaN}',
        b'{"x": 1e400}',
        b'{"output": "\\ud800"}',
        b"\xff\xfe",
    ],
    ids=["truncated", "trailing-comma", "text", "nan", "overflow", "lone-surrogate", "binary"],
)
def test_malformed_json_is_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/flows/log", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("Malformed JSON")


def test_body_without_content_type_is_415(client: httpx.Client) -> None:
    # A page on any site could send it (no preflight): only a body declared JSON is read.
    response = client.post("/flows/log", content=b'{"path": "no-ct"}')
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == "Content-Type must be application/json (none was sent)"


def test_failed_request_changes_nothing(client: httpx.Client) -> None:
    response = client.post(
        "/flows/log", json={"path": "never/created", "trace_parent_id": "missing"}
    )
    assert response.status_code == 404
    flows = client.get("/flows").json()["records"]
    assert all(flow["path"] != "never/created" for flow in flows)


# --- body limit -----------------------------------------------------------------------------


@pytest.fixture
def small_server(tmp_path: Path, shared_servers: SharedServers) -> Iterator[SharedServer]:
    with shared_servers.serve(tmp_path / "db", max_body_bytes=1000) as running:
        yield running


def test_body_over_limit_is_413(small_server: SharedServer) -> None:
    with small_server.client() as client:
        response = client.post("/flows/log", json={"path": "p", "output": "x" * 2000})
        assert response.status_code == 413
        assert "1000" in response.json()["detail"]
        # The connection stays usable and a body within the limit goes through.
        assert client.post("/flows/log", json={"path": "p", "output": "x"}).status_code == 200


def test_streamed_body_over_limit_is_413(small_server: SharedServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"path": "p", "output": "'
        for _ in range(40):
            yield b"x" * 100
        yield b'"}'

    with small_server.client() as client:
        response = client.post(
            "/flows/log", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413


def test_streamed_body_within_limit_is_accepted(small_server: SharedServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"path": "p", '
        yield b'"output": "small"}'

    with small_server.client() as client:
        response = client.post(
            "/flows/log", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200, response.text


# --- trace rules ----------------------------------------------------------------------------


def test_trace_id_is_the_root_and_children_nest_in_start_order(client: httpx.Client) -> None:
    root = log(client, {"path": "agent", "start_time": "2025-01-01T00:00:00Z"})
    late = log(
        client,
        {"path": "agent/tool", "trace_parent_id": root["id"], "start_time": "2025-01-01T00:00:05Z"},
    )
    early = log(
        client,
        {"path": "agent/llm", "trace_parent_id": root["id"], "start_time": "2025-01-01T00:00:01Z"},
    )
    grandchild = log(
        client,
        {
            "path": "agent/llm/x",
            "trace_parent_id": early["id"],
            "start_time": "2025-01-01T00:00:02Z",
        },
    )
    for created in (late, early, grandchild):
        assert get_log(client, created["id"])["trace_id"] == root["id"]
    tree = get_log(client, root["id"])
    assert [child["id"] for child in tree["trace_children"]] == [early["id"], late["id"]]
    nested = tree["trace_children"][0]["trace_children"]
    assert [child["id"] for child in nested] == [grandchild["id"]]
    assert tree["trace_children"][0]["trace_flow_id"] == root["flow_id"]


def test_unknown_parent_is_404(client: httpx.Client) -> None:
    response = client.post("/flows/log", json={"path": "p", "trace_parent_id": "nope"})
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


def test_child_of_completed_parent_is_409(client: httpx.Client) -> None:
    parent = log(client, {"path": "p"})
    complete(client, parent["id"])
    response = client.post("/flows/log", json={"path": "p/c", "trace_parent_id": parent["id"]})
    assert response.status_code == 409
    assert isinstance(response.json()["detail"], str)


def test_parent_logged_complete_refuses_children(client: httpx.Client) -> None:
    parent = log(client, {"path": "p", "trace_status": "complete"})
    response = client.post("/flows/log", json={"path": "p/c", "trace_parent_id": parent["id"]})
    assert response.status_code == 409


def test_ancestors_widen_to_cover_children(client: httpx.Client) -> None:
    root = log(
        client,
        {"path": "w", "start_time": "2025-01-01T10:00:00Z", "end_time": "2025-01-01T10:00:10Z"},
    )
    middle = log(
        client,
        {
            "path": "w/m",
            "trace_parent_id": root["id"],
            "start_time": "2025-01-01T10:00:01Z",
            "end_time": "2025-01-01T10:00:02Z",
        },
    )
    log(
        client,
        {
            "path": "w/m/leaf",
            "trace_parent_id": middle["id"],
            "start_time": "2025-01-01T09:59:00Z",
            "end_time": "2025-01-01T10:01:00Z",
        },
    )
    for ancestor in (root["id"], middle["id"]):
        stored = get_log(client, ancestor)
        assert stored["start_time"] == "2025-01-01T09:59:00.000000Z"
        assert stored["end_time"] == "2025-01-01T10:01:00.000000Z"


def test_identical_replay_is_idempotent(client: httpx.Client) -> None:
    body = {"path": "replay", "log_id": "r-1", "inputs": {"a": 1}, "trace_status": "complete"}
    first = log(client, body)
    second = log(client, body)
    assert first == second
    flow_logs = logs_of_flow(client, first["flow_id"])
    assert flow_logs["total"] == 1


def test_replay_with_a_different_body_is_409(client: httpx.Client) -> None:
    log(client, {"path": "replay", "log_id": "r-2", "output": "one"})
    response = client.post("/flows/log", json={"path": "replay", "log_id": "r-2", "output": "two"})
    assert response.status_code == 409
    assert get_log(client, "r-2")["output"] == "one"


# --- versions and environments --------------------------------------------------------------


def test_same_attributes_in_any_key_order_are_one_version(client: httpx.Client) -> None:
    first = log(
        client, {"path": "v", "flow": {"attributes": {"model": "m", "p": {"x": 1, "y": [1, 2]}}}}
    )
    reordered = log(
        client, {"path": "v", "flow": {"attributes": {"p": {"y": [1, 2], "x": 1}, "model": "m"}}}
    )
    other = log(client, {"path": "v", "flow": {"attributes": {"model": "n"}}})
    assert first["flow_id"] == reordered["flow_id"] == other["flow_id"]
    assert first["version_id"] == reordered["version_id"]
    assert other["version_id"] != first["version_id"]
    versions = client.get(f"/flows/{first['flow_id']}/versions").json()["records"]
    assert {v["version_id"] for v in versions} == {first["version_id"], other["version_id"]}


def test_log_against_a_version_id(client: httpx.Client) -> None:
    flow = client.post("/flows", json={"path": "byver", "attributes": {"k": 1}}).json()
    created = log(client, {"path": "byver"}, version_id=flow["version_id"])
    assert created["version_id"] == flow["version_id"]
    response = client.post("/flows/log", json={"path": "byver"}, params={"version_id": "nope"})
    assert response.status_code == 404


def test_environment_targets_the_deployed_version(client: httpx.Client) -> None:
    one = client.post("/flows", json={"path": "env", "attributes": {"v": 1}}).json()
    two = client.post("/flows", json={"path": "env", "attributes": {"v": 2}}).json()
    flow_id = one["id"]
    assert two["id"] == flow_id
    assert two["version_id"] != one["version_id"]

    response = client.post("/flows/log", json={"path": "env"}, params={"environment": "prod"})
    assert response.status_code == 404  # nothing deployed yet

    deployed = client.post(
        f"/flows/{flow_id}/environments/prod", json={"version_id": one["version_id"]}
    )
    assert deployed.status_code == 200, deployed.text
    assert log(client, {"path": "env"}, environment="prod")["version_id"] == one["version_id"]

    # The original API's form: version_id as a query parameter.
    redeployed = client.post(
        f"/flows/{flow_id}/environments/prod", params={"version_id": two["version_id"]}
    )
    assert redeployed.status_code == 200, redeployed.text
    assert log(client, {"path": "env"}, environment="prod")["version_id"] == two["version_id"]

    response = client.post("/flows/log", json={"path": "env"}, params={"environment": "other"})
    assert response.status_code == 404


def test_deploy_errors(client: httpx.Client) -> None:
    flow = client.post("/flows", json={"path": "dep", "attributes": {}}).json()
    unknown_flow = client.post("/flows/nope/environments/prod", json={"version_id": "x"})
    assert unknown_flow.status_code == 404
    unknown_version = client.post(
        f"/flows/{flow['id']}/environments/prod", json={"version_id": "x"}
    )
    assert unknown_version.status_code == 404
    no_version = client.post(f"/flows/{flow['id']}/environments/prod")
    assert_field_error(no_version, ["body", "version_id"], "missing")


# --- PATCH /flows/logs/{id} -----------------------------------------------------------------


def test_update_completes_and_returns_the_full_record(client: httpx.Client) -> None:
    created = log(client, {"path": "upd", "inputs": {"a": 1}})
    updated = complete(client, created["id"], output="done")
    assert updated["id"] == created["id"]
    assert updated["trace_status"] == "complete"
    assert updated["output"] == "done"
    assert updated["inputs"] == {"a": 1}
    assert set(updated["flow"]) >= REQUIRED_FLOW_FIELDS
    assert get_log(client, created["id"])["output"] == "done"


def test_update_with_null_unsets_a_field(client: httpx.Client) -> None:
    created = log(client, {"path": "upd", "output": "x", "error": "e"})
    response = client.patch(f"/flows/logs/{created['id']}", json={"error": None})
    assert response.status_code == 200, response.text
    stored = get_log(client, created["id"])
    assert "error" not in stored
    assert stored["output"] == "x"


def test_update_errors(client: httpx.Client) -> None:
    assert client.patch("/flows/logs/nope", json={"output": "x"}).status_code == 404
    created = log(client, {"path": "upd"})
    assert_field_error(
        client.patch(f"/flows/logs/{created['id']}", json={"path": "x"}),
        ["body", "path"],
        "extra_forbidden",
    )
    malformed = client.patch(
        f"/flows/logs/{created['id']}", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400


# --- status dialects ------------------------------------------------------------------------


def test_log_status_dialect_is_answered_in_kind(client: httpx.Client) -> None:
    created = log(client, {"path": "dialect", "log_status": "incomplete"})
    assert created["log_status"] == "incomplete"
    assert "trace_status" not in created
    response = client.patch(f"/flows/logs/{created['id']}", json={"log_status": "complete"})
    assert response.status_code == 200
    assert response.json()["log_status"] == "complete"
    assert "trace_status" not in response.json()
    refused = client.post("/flows/log", json={"path": "d/c", "trace_parent_id": created["id"]})
    assert refused.status_code == 409  # complete under either name closes the log


def test_trace_status_dialect_is_answered_in_kind(client: httpx.Client) -> None:
    created = log(client, {"path": "dialect", "trace_status": "complete"})
    assert created["trace_status"] == "complete"
    assert "log_status" not in created
    assert get_log(client, created["id"])["trace_status"] == "complete"


def test_both_status_names_in_one_body_are_422(client: httpx.Client) -> None:
    both = {"trace_status": "complete", "log_status": "complete"}
    assert client.post("/flows/log", json={"path": "x", **both}).status_code == 422
    created = log(client, {"path": "x"})
    assert client.patch(f"/flows/logs/{created['id']}", json=both).status_code == 422


@pytest.mark.parametrize("started", ["in a thread", "by flowtrace serve --status-field"])
def test_server_default_dialect_applies_to_reads(tmp_path: Path, started: str) -> None:
    if started == "in a thread":
        running: Any = serve_in_thread(tmp_path / "db", status_field_default="log_status")
    else:
        running = start_server(tmp_path / "db", extra_args=["--status-field", "log_status"])
    with running, running.client() as client:
        created = log(client, {"path": "x"})
        assert created["log_status"] == "incomplete"
        stored = get_log(client, created["id"])
        assert stored["log_status"] == "incomplete"
        assert "trace_status" not in stored
        explicit = log(client, {"path": "x", "trace_status": "complete"})
        assert explicit["trace_status"] == "complete"


# --- datetimes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        "2025-03-01T12:00:00Z",
        "2025-03-01T13:00:00+01:00",
        "2025-03-01T12:00:00",
        1740830400,
        1740830400.0,
    ],
    ids=["iso-z", "iso-offset", "naive", "epoch-int", "epoch-float"],
)
def test_datetimes_as_iso_or_epoch_seconds(client: httpx.Client, sent: str | float) -> None:
    created = log(client, {"path": "t", "start_time": sent})
    assert get_log(client, created["id"])["start_time"] == "2025-03-01T12:00:00.000000Z"


# --- GET /logs, DELETE /logs ----------------------------------------------------------------


def test_list_logs_pages_and_filters(client: httpx.Client) -> None:
    version_a = {"attributes": {"v": "a"}}
    version_b = {"attributes": {"v": "b"}}
    ids = []
    for n in range(5):
        created = log(
            client,
            {
                "path": "listed",
                "flow": version_a if n < 3 else version_b,
                "inputs": {"q": f"needle-{n}" if n % 2 == 0 else "hay"},
                "start_time": f"2025-01-0{n + 1}T00:00:00Z",
                "trace_status": "complete",
            },
        )
        ids.append(created)
    flow_id = ids[0]["flow_id"]
    log(client, {"path": "elsewhere"})

    everything = logs_of_flow(client, flow_id)
    assert everything["total"] == 5
    assert {r["id"] for r in everything["records"]} == {c["id"] for c in ids}

    first_page = client.get("/logs", params={"file_id": flow_id, "page": 1, "size": 2}).json()
    second_page = client.get("/logs", params={"file_id": flow_id, "page": 2, "size": 2}).json()
    assert (first_page["page"], first_page["size"], first_page["total"]) == (1, 2, 5)
    assert len(first_page["records"]) == len(second_page["records"]) == 2
    assert not {r["id"] for r in first_page["records"]} & {r["id"] for r in second_page["records"]}

    by_version = logs_of_flow(client, flow_id, version_id=ids[3]["version_id"])
    assert {r["id"] for r in by_version["records"]} == {ids[3]["id"], ids[4]["id"]}

    searched = logs_of_flow(client, flow_id, search="needle")
    assert {r["id"] for r in searched["records"]} == {ids[0]["id"], ids[2]["id"], ids[4]["id"]}

    dated = logs_of_flow(
        client, flow_id, start_date="2025-01-02T00:00:00Z", end_date="2025-01-03T12:00:00Z"
    )
    assert {r["id"] for r in dated["records"]} == {ids[1]["id"], ids[2]["id"]}


def test_list_logs_can_include_trace_children(client: httpx.Client) -> None:
    root = log(client, {"path": "tree"})
    child = log(client, {"path": "tree", "trace_parent_id": root["id"]})
    with_children = logs_of_flow(client, root["flow_id"], include_trace_children=True)
    record = next(r for r in with_children["records"] if r["id"] == root["id"])
    assert [c["id"] for c in record["trace_children"]] == [child["id"]]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"page": 0}, ["query", "page"]),
        ({"size": 0}, ["query", "size"]),
        ({"size": "many"}, ["query", "size"]),
        ({"start_date": "soon"}, ["query", "start_date"]),
    ],
)
def test_list_logs_bad_query_is_422(
    client: httpx.Client, params: dict[str, Any], loc: list[Any]
) -> None:
    response = client.get("/logs", params=params)
    assert response.status_code == 422
    assert any(e["loc"] == loc for e in response.json()["detail"])


def test_delete_logs(client: httpx.Client) -> None:
    one, two, kept = (log(client, {"path": "del"}) for _ in range(3))
    response = client.delete("/logs", params=[("id", one["id"]), ("id", two["id"])])
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/logs/{one['id']}").status_code == 404
    assert client.get(f"/logs/{two['id']}").status_code == 404
    assert get_log(client, kept["id"])["id"] == kept["id"]
    assert_field_error(client.delete("/logs"), ["query", "id"], "missing")


def test_unknown_log_is_404(client: httpx.Client) -> None:
    response = client.get("/logs/nope")
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


# --- flows ----------------------------------------------------------------------------------


def test_flow_upsert_get_list_versions(client: httpx.Client) -> None:
    created = client.post(
        "/flows",
        json={
            "path": "team/bot",
            "attributes": {"model": "m"},
            "version_name": "first",
            "version_description": "the first one",
        },
    )
    assert created.status_code == 200, created.text
    flow = created.json()
    assert set(flow) >= REQUIRED_FLOW_FIELDS
    assert (flow["path"], flow["name"], flow["attributes"]) == ("team/bot", "bot", {"model": "m"})

    again = client.post("/flows", json={"path": "team/bot", "attributes": {"model": "m"}})
    assert again.json()["version_id"] == flow["version_id"]
    by_id = client.post("/flows", json={"id": flow["id"], "attributes": {"model": "n"}}).json()
    assert by_id["id"] == flow["id"]
    assert by_id["version_id"] != flow["version_id"]

    fetched = client.get(f"/flows/{flow['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["path"] == "team/bot"

    listed = client.get("/flows").json()
    assert listed["total"] == 1
    assert listed["page"] == 1
    assert [f["id"] for f in listed["records"]] == [flow["id"]]
    assert client.get("/flows", params={"name": "nothing-like-it"}).json()["total"] == 0

    versions = client.get(f"/flows/{flow['id']}/versions").json()["records"]
    assert {v["version_id"] for v in versions} == {flow["version_id"], by_id["version_id"]}
    first = next(v for v in versions if v["version_id"] == flow["version_id"])
    assert first["version_name"] == "first"


def test_flow_errors(client: httpx.Client) -> None:
    assert client.get("/flows/nope").status_code == 404
    assert client.get("/flows/nope/versions").status_code == 404
    assert client.post("/flows", json={"id": "nope", "attributes": {}}).status_code == 404
    assert_field_error(client.post("/flows", json={"path": "x"}), ["body", "attributes"], "missing")


def test_save_false_keeps_the_log_but_not_its_payloads(client: httpx.Client) -> None:
    created = log(
        client,
        {"path": "private", "save": False, "inputs": {"secret": 1}, "output": "s", "user": "u"},
    )
    stored = get_log(client, created["id"])
    assert "inputs" not in stored
    assert "output" not in stored
    assert stored["user"] == "u"


# --- batch extension ------------------------------------------------------------------------


def test_batch_applies_each_operation_on_its_own(client: httpx.Client) -> None:
    parent = log(client, {"path": "batch"})
    log(client, {"path": "batch", "log_id": "dup", "output": "first"})
    operations: list[dict[str, Any]] = [
        {"op": "log", "body": {"path": "batch", "log_id": "b-ok", "trace_parent_id": parent["id"]}},
        {"op": "log", "body": {"path": "batch", "bogus": True}},
        {"op": "log", "body": {"path": "batch", "trace_parent_id": "missing"}},
        {"op": "update", "log_id": parent["id"], "body": {"trace_status": "complete"}},
        {"op": "log", "body": {"path": "batch", "trace_parent_id": parent["id"]}},
        {"op": "update", "log_id": "missing", "body": {"output": "x"}},
        {"op": "frobnicate"},
        {"op": "log", "body": {"path": "batch", "log_id": "dup", "output": "first"}},
        {"op": "log", "body": {"path": "batch", "log_id": "dup", "output": "second"}},
        {"op": "log", "query": {"version_id": "nope"}, "body": {"path": "batch"}},
        {"op": "log", "body": {"path": "batch", "log_id": "b-dialect", "log_status": "complete"}},
    ]
    response = client.post("/flows/logs/batch", json={"operations": operations})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 404, 200, 409, 404, 422, 200, 409, 404, 200]
    assert results[0]["body"]["id"] == "b-ok"
    assert results[3]["body"]["trace_status"] == "complete"
    assert any(e["loc"][-1] == "bogus" for e in results[1]["body"]["detail"])
    assert isinstance(results[2]["body"]["detail"], str)
    assert results[10]["body"]["log_status"] == "complete"
    assert get_log(client, "b-ok")["trace_parent_id"] == parent["id"]
    assert get_log(client, parent["id"])["trace_status"] == "complete"
    assert get_log(client, "dup")["output"] == "first"


def test_a_batch_that_prefers_the_minimal_answer_gets_updates_without_records(
    client: httpx.Client,
) -> None:
    """`Prefer: return=minimal`: an update's result is `{"id"}` (a root's record would carry
    its whole tree); creates and refusals are answered as always, and the updates stored."""
    root = log(client, {"path": "batch/minimal"})
    operations: list[dict[str, Any]] = [
        {"op": "log", "body": {"path": "batch/minimal", "trace_parent_id": root["id"]}},
        {"op": "update", "log_id": root["id"], "body": {"output": "o", "trace_status": "complete"}},
        {"op": "update", "log_id": root["id"], "body": {"trace_status": "incomplete"}},
        {"op": "update", "log_id": "missing", "body": {"output": "x"}},
    ]
    response = client.post(
        "/flows/logs/batch", json={"operations": operations}, headers={"Prefer": "return=minimal"}
    )
    assert response.headers["Preference-Applied"] == "return=minimal"
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 409, 404]
    assert results[0]["body"]["trace_status"] == "incomplete"  # a create's answer, as always
    assert results[1]["body"] == {"id": root["id"]}
    stored = get_log(client, root["id"])
    assert (stored["output"], stored["trace_status"]) == ("o", "complete")
    assert stored["trace_children"][0]["id"] == results[0]["body"]["id"]


def test_batch_envelope_errors(client: httpx.Client) -> None:
    assert_field_error(client.post("/flows/logs/batch", json={}), ["body", "operations"], "missing")
    assert client.post("/flows/logs/batch", json={"operations": [], "x": 1}).status_code == 422
    malformed = client.post(
        "/flows/logs/batch", content=b"[", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    empty = client.post("/flows/logs/batch", json={"operations": []})
    assert empty.status_code == 200
    assert empty.json() == {"results": []}


def test_batch_can_be_withdrawn(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "db", batch=False) as running, running.client() as client:
        response = client.post("/flows/logs/batch", json={"operations": []})
        assert response.status_code == 404
        health = httpx.get(running.root_url + "/healthz").json()
        assert health == {"status": "ok", "batch": False, "batch_operations": []}
        assert log(client, {"path": "still/works"})["id"]


# --- OpenAPI --------------------------------------------------------------------------------


def test_openapi_document_describes_every_route(app_server: SharedServer) -> None:
    document = httpx.get(app_server.root_url + "/openapi.json", timeout=30).json()
    paths = document["paths"]
    expected = {
        ("/v5/flows/log", "post"),
        ("/v5/flows/logs/{log_id}", "patch"),
        ("/v5/flows/logs/batch", "post"),
        ("/v5/logs/{log_id}", "get"),
        ("/v5/logs", "get"),
        ("/v5/logs", "delete"),
        ("/v5/flows", "post"),
        ("/v5/flows", "get"),
        ("/v5/flows/{flow_id}", "get"),
        ("/v5/flows/{flow_id}/versions", "get"),
        ("/v5/flows/{flow_id}/environments/{environment}", "post"),
        ("/healthz", "get"),
    }
    assert expected <= {(path, method) for path, ops in paths.items() for method in ops}
    log_op = paths["/v5/flows/log"]["post"]
    assert "FlowLogRequest" in str(log_op["requestBody"])
    assert "CreateFlowLogResponse" in str(log_op["responses"]["200"])
    assert {"400", "401", "404", "409", "413", "422"} <= set(log_op["responses"])


def test_the_middleware_s_refusals_are_documented_where_they_can_happen(
    app_server: SharedServer, tmp_path: Path
) -> None:
    """415 on every write with a body under /v5 (the OTLP receiver's encodings aside), 403
    on every operation of a server without keys (its Host and Origin rules), as answered."""
    document = httpx.get(app_server.root_url + "/openapi.json", timeout=30).json()
    paths = document["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "403" not in responses, (path, method)  # keys: no Host or Origin rule
            checked = path.startswith("/v5/") and "requestBody" in operation
            assert ("415" in responses) == (checked and method in ("post", "patch")), path
    refusal = paths["/v5/flows/log"]["post"]["responses"]["415"]
    assert refusal["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    answer = httpx.post(
        app_server.base_url + "/flows/log",
        content=b"{}",
        headers={**app_server.headers, "Content-Type": "text/plain"},
        timeout=30,
    )
    assert answer.status_code == 415 and isinstance(answer.json()["detail"], str)
    with serve_in_thread(tmp_path / "keyless.db", api_keys=()) as keyless:
        keyless_paths = httpx.get(keyless.root_url + "/openapi.json", timeout=30).json()["paths"]
        assert all(
            "403" in operation["responses"]
            for operations in keyless_paths.values()
            for operation in operations.values()
        )
        foreign = httpx.get(
            keyless.base_url + "/flows", headers={"Origin": "https://evil.example"}, timeout=30
        )
        assert foreign.status_code == 403 and isinstance(foreign.json()["detail"], str)


def test_api_key_is_documented(app_server: SharedServer) -> None:
    document = httpx.get(app_server.root_url + "/openapi.json", timeout=30).json()
    schemes = document["components"]["securitySchemes"].values()
    assert any(s.get("name") == "X-API-KEY" and s.get("in") == "header" for s in schemes)


def test_default_key_constant_matches_fixture(app_server: SharedServer) -> None:
    assert app_server.api_key == DEFAULT_API_KEY


# --- datetimes out of range ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # A subprocess: were a datetime out of range a 500 again, the in-process guard hook would
    # turn it into a test error instead of the assertion's message.
    with start_server(tmp_path_factory.mktemp("out-of-range") / "db") as running:
        yield running


@pytest.mark.parametrize(
    "start_time",
    [1e20, "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"],
    ids=["epoch-overflow", "year-9999-west", "year-1-east"],
)
def test_out_of_range_datetimes_are_422(
    server_process: RunningServer, start_time: float | str
) -> None:
    with server_process.client() as client:
        response = client.post("/flows/log", json={"path": "t", "start_time": start_time})
        assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/flows", "GET, POST"),  # two routes share the path
        ("PUT", "/logs", "GET, DELETE"),
        ("PUT", "/flows/some-id", "GET"),
        ("DELETE", "/flows/logs/some-id", "PATCH"),
    ],
)
def test_405_allow_names_every_method_of_the_path(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


def test_405_allow_prefers_a_concrete_path_over_a_template(client: httpx.Client) -> None:
    # /flows/log is POST only, although the GET /flows/{flow_id} template would take it
    response = client.request("DELETE", "/flows/log")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_busy_database_is_503_with_retry_after() -> None:
    """A write the database could not take now (StoreBusy: nothing was written) is answered
    so that the client retries it, when the store says."""
    from flowtrace.server._errors import store_error_response
    from flowtrace.store import StoreBusy

    response = store_error_response(StoreBusy("the database is locked", retry_after_s=2))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.body == b'{"detail":"the database is locked"}'
