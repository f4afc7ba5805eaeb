"""The fast path of `POST /flows/log` and `PATCH /flows/logs/{id}` answers exactly as their
FastAPI routes do.

Two servers, one with the fast path and one without (`fast_log=False`), get the same requests
in the same order; every answer must match: status, Content-Type, and the body (ids the servers
generate excepted: those must only be present in both). Then its group commit: logs that
arrive while the store is writing are written together, each answered as if alone.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrace.models import CreateFlowLogResponse, FlowLogRequest, FlowLogResponse, LogQuery
from flowtrace.server._store_thread import StoreThread
from flowtrace.store import Store, StoreError, UpdateWrite
from tests.pipelineutil import WAIT_S, wait_until
from tests.serverutil import DEFAULT_API_KEY, InProcessServer, serve_in_thread

# Each case: requests sent in order (json body or raw content, headers, query params).
Request = dict[str, Any]
_JSON_TYPE = {"headers": {"Content-Type": "application/json"}}
_TEXT = {"Content-Type": "text/plain"}
_MAX_BODY = 4096  # both servers' body limit
_MINIMAL = {"Prefer": "return=minimal"}


def _patch(log_id: str, body: Any, **more: Any) -> Request:
    return {"method": "PATCH", "url": f"/flows/logs/{log_id}", "json": body, **more}


CASES: dict[str, list[Request]] = {
    "minimal": [{"json": {"path": "fast/minimal"}}],
    "complete": [
        {
            "json": {
                "path": "fast/complete",
                "flow": {"attributes": {"model": "m", "t": 0.5}},
                "inputs": {"q": "é"},
                "output": "a",
                "start_time": "2025-01-01T00:00:00Z",
                "end_time": 1735689601.5,
                "trace_status": "complete",
            }
        }
    ],
    "log-status-dialect": [{"json": {"path": "fast/dialect", "log_status": "complete"}}],
    "both-status-names": [
        {"json": {"path": "fast/both", "log_status": "complete", "trace_status": "complete"}}
    ],
    "replay-and-conflict": [
        {"json": {"path": "fast/replay", "log_id": "fast-replay-1", "output": "a"}},
        {"json": {"path": "fast/replay", "log_id": "fast-replay-1", "output": "a"}},
        {"json": {"path": "fast/replay", "log_id": "fast-replay-1", "output": "b"}},
    ],
    "minimal-update-answer": [
        {"json": {"path": "fast/prefer", "log_id": "fast-prefer", "trace_status": "incomplete"}},
        _patch("fast-prefer", {"output": "a"}, headers=_MINIMAL),
        _patch("fast-prefer", {"output": "b"}, headers={"Prefer": "return=representation"}),
        _patch("fast-prefer", {"error": "e"}, headers={"Prefer": 'wait=5, RETURN="minimal"; x'}),
        _patch("fast-prefer", {"log_status": "complete"}, headers=_MINIMAL),
        _patch("fast-prefer", {"log_status": "incomplete"}, headers=_MINIMAL),  # 409
        _patch("fast-nobody", {}, headers=_MINIMAL),  # 404
        _patch("fast-prefer", {"inputs": [1]}, headers=_MINIMAL),  # 422
    ],
    "parent-rules": [
        {"json": {"path": "fast/parent", "trace_parent_id": "nobody"}},
        {"json": {"path": "fast/parent", "log_id": "fast-p", "trace_status": "complete"}},
        {"json": {"path": "fast/parent", "trace_parent_id": "fast-p"}},
    ],
    "no-path": [{"json": {"output": "x"}}],
    "id-and-path-disagree": [
        {"json": {"path": "fast/agree"}},
        {"json": {"id": "fl_unknown", "path": "fast/agree"}},
    ],
    "unknown-field": [{"json": {"path": "fast/u", "bogus": 1}}],
    "invalid-fields": [
        {
            "json": {
                "messages": [{"role": "robot"}],
                "inputs": [1],
                "start_time": "yesterday",
                "flow": {},
                "provider_latency": "fast",
            }
        }
    ],
    "not-an-object": [{"json": [1, 2]}, {"json": None}, {"json": "text"}, {"json": 5}],
    "malformed": [
        {"content": raw, "headers": {"Content-Type": "application/json"}}
        for raw in (b"{", b'{"path": "a",}', b"not json", b'{"x": NaN}', b'{"x": 1e400}')
    ]
    + [
        {"content": b'{"output": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
        {"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
    ],
    "empty-body": [
        {"content": b""},
        {"content": b"", "headers": {"Content-Type": "application/json"}},
    ],
    "content-types": [
        {"content": b'{"path": "fast/ct"}'},
        {"content": b'{"path": "fast/ct"}', "headers": {"Content-Type": "text/plain"}},
        {"content": b'{"path": "fast/ct"}', "headers": {"Content-Type": "application/x-json"}},
        {"content": b'{"path": "fast/ct"}', "headers": {"Content-Type": "application/ld+json"}},
        {
            "content": b'{"path": "fast/ct"}',
            "headers": {"Content-Type": "Application/JSON; charset=utf-8"},
        },
        {"content": b"{", "headers": {"Content-Type": "text/plain"}},
    ],
    "query-targeting": [
        {"json": {"path": "fast/q"}, "params": {"version_id": "ver_unknown"}},
        {"json": {"path": "fast/q-new"}, "params": {"environment": "production"}},
        {"json": {"path": "fast/q"}, "params": {"environment": ""}},
        {"json": {}, "params": {"version_id": "ver_unknown"}},
        {"json": {"path": "fast/q"}, "params": [("version_id", "a"), ("version_id", "b")]},
        {"json": {"path": "fast/q"}, "params": {"unrelated": "1"}},
    ],
    "other-methods-and-paths": [
        {"method": "GET"},
        {"method": "PUT", "json": {"path": "fast/m"}},
        {"url": "/flows/log/", "json": {"path": "fast/m"}},
        {"method": "PATCH", "url": "/flows/logs/", "json": {}},
        {"method": "PATCH", "url": "/flows/logs/fast-u/extra", "json": {}},
    ],
    "update": [
        {"json": {"path": "fast/u", "log_id": "fast-u", "inputs": {"a": 1}}},
        {"json": {"path": "fast/u", "log_id": "fast-u-child", "trace_parent_id": "fast-u"}},
        _patch("fast-u-child", {"trace_status": "complete", "output": "o", "stdout": "s"}),
        _patch("fast-u", {"output": "x", "end_time": "2025-01-01T00:00:01Z", "metadata": {}}),
        _patch("fast-u", {"log_status": "complete", "error": "boom"}),
        _patch("fast-u", {"trace_status": "incomplete"}),  # reopening: 409
        _patch("fast-u", {"output": None}, params={"ignored": "1"}),
    ],
    "update-refusals": [
        _patch("nobody", {"trace_status": "complete"}),
        _patch("batch", {"trace_status": "complete"}),
        _patch("fast-u", {"bogus": 1}),
        _patch("fast-u", {"output": 5, "end_time": "later", "messages": [{"role": "robot"}]}),
        _patch("fast-u", [1]),
        {"method": "PATCH", "url": "/flows/logs/fast-u", "content": b""},
        {"method": "PATCH", "url": "/flows/logs/fast-u", "content": b"{", **_JSON_TYPE},
        {"method": "PATCH", "url": "/flows/logs/fast-u", "content": b"{}"},
        {"method": "PATCH", "url": "/flows/logs/fast-u", "content": b"{", "headers": _TEXT},
    ],
    # The chain's checks, which the fast path does itself in front of it, in its order.
    "guard-refusals": [
        {"keyless": True, "json": {"path": "fast/key"}},
        {"keyless": True, "method": "PATCH", "url": "/flows/logs/fast-u", "json": {}},
        {"headers": {"X-API-KEY": "wrong"}, "json": {"path": "fast/key"}},
        {"keyless": True, "headers": {"Authorization": "Bearer wrong"}, "json": {}},
        {"keyless": True, "headers": {"Authorization": f"Bearer {DEFAULT_API_KEY}"}, "json": {}},
        {"headers": {"X-API-KEY": "wrong", "Content-Type": "text/plain"}, "content": b"{}"},
        {"json": {"path": "fast/big", "output": "x" * _MAX_BODY}},
        _patch("fast-u", {"output": "x" * _MAX_BODY}),
        {"content": lambda: iter([b'{"path": "fast/big", "output": "', b"x" * _MAX_BODY, b'"}'])},
        {"content": b"x" * (_MAX_BODY + 1), "headers": _TEXT},
        {"method": "PATCH", "url": "/flows/logs/fast-u", "content": b"{}", "headers": _TEXT},
    ],
}
KEYLESS_CASES: dict[str, list[Request]] = {
    "host-and-origin": [
        {"json": {"path": "fast/host"}},
        {"json": {"path": "fast/host"}, "headers": {"Host": "evil.example"}},
        {"json": {"path": "fast/host"}, "headers": {"Origin": "http://evil.example"}},
        {"json": {"path": "fast/host"}, "headers": {"Origin": "null"}},
        _patch("nobody", {}, headers={"Host": "rebound.example:8000"}),
        {"json": {"path": "fast/host"}, "headers": {"Host": "evil.example", **_TEXT}},
    ],
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[InProcessServer]]:
    root = Path(tmp_path_factory.mktemp("fastlog"))
    with (
        serve_in_thread(root / "fast.db", fast_log=True, max_body_bytes=_MAX_BODY) as fast,
        serve_in_thread(root / "slow.db", fast_log=False, max_body_bytes=_MAX_BODY) as slow,
    ):
        yield [fast, slow]


@pytest.fixture(scope="module")
def keyless_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[InProcessServer]]:
    root = Path(tmp_path_factory.mktemp("fastlog-keyless"))
    with (
        serve_in_thread(root / "fast.db", api_keys=(), fast_log=True) as fast,
        serve_in_thread(root / "slow.db", api_keys=(), fast_log=False) as slow,
    ):
        yield [fast, slow]


def _send(client: httpx.Client, request: Request) -> httpx.Response:
    """`request` through `client`, or through a client without its key (`"keyless"`); a
    callable `content` is a fresh streamed body each time (sent chunked, no length)."""
    content = request.get("content")
    if request.get("keyless"):
        with httpx.Client(base_url=client.base_url) as keyless:
            return _send(keyless, {**request, "keyless": False})
    return client.request(
        request.get("method", "POST"),
        request.get("url", "/flows/log"),
        json=request.get("json"),
        content=content() if callable(content) else content,
        headers=request.get("headers"),
        params=request.get("params"),
    )


_WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _comparable(response: httpx.Response) -> tuple[int, str | None, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.content
    if response.status_code == 200 and isinstance(body, dict):
        if "flow" in body:  # an update's answer: the log's record
            return response.status_code, response.headers.get("content-type"), _generic(body)
        for key in ("flow_id", "version_id"):
            body[key] = "<generated>" if body.get(key) else body.get(key)
        if str(body.get("id")).startswith("log_"):  # no log_id was sent
            body["id"] = "<generated>"
    return response.status_code, response.headers.get("content-type"), body


def _generic(value: Any) -> Any:
    """A record with what each server makes of its own replaced: its clock's times (the
    cases send 2025 times only), the flow and version ids it generated."""
    if isinstance(value, dict):
        return {key: _generic(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_generic(item) for item in value]
    if isinstance(value, str) and _WIRE_TIME.fullmatch(value) and not value.startswith("2025"):
        return "<server clock>"
    if isinstance(value, str) and value.startswith(("fl_", "flv_")):
        return "<generated>"
    return value


def _assert_same_answers(servers: list[InProcessServer], requests: list[Request]) -> None:
    fast, slow = servers
    with fast.client() as fast_client, slow.client() as slow_client:
        for request in requests:
            got = _comparable(_send(fast_client, request))
            expected = _comparable(_send(slow_client, request))
            assert got == expected, request


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_answers_as_the_fastapi_route(servers: list[InProcessServer], case: str) -> None:
    _assert_same_answers(servers, CASES[case])


def test_an_update_that_prefers_the_minimal_answer_gets_it_and_is_applied(
    servers: list[InProcessServer],
) -> None:
    """`Prefer: return=minimal` (RFC 7240): `{"id"}` and `Preference-Applied`, from either
    route; the update is stored all the same."""
    for number, server in enumerate(servers):
        log_id = f"prefer-applied-{number}"
        with server.client() as client:
            client.post("/flows/log", json={"path": "fast/applied", "log_id": log_id})
            answer = client.patch(f"/flows/logs/{log_id}", json={"output": "x"}, headers=_MINIMAL)
            assert answer.json() == {"id": log_id}
            assert answer.headers["Preference-Applied"] == "return=minimal"
            full = client.patch(f"/flows/logs/{log_id}", json={"trace_status": "complete"})
            assert "Preference-Applied" not in full.headers
            assert full.json()["output"] == "x"
            assert full.json()["trace_status"] == "complete"


@pytest.mark.parametrize("case", sorted(KEYLESS_CASES))
def test_fast_path_without_keys_answers_as_the_chain(
    keyless_servers: list[InProcessServer], case: str
) -> None:
    """Without keys the chain's Host and Origin rules come first; the fast path keeps them."""
    _assert_same_answers(keyless_servers, KEYLESS_CASES[case])


def test_fast_path_answers_every_status(
    servers: list[InProcessServer], keyless_servers: list[InProcessServer]
) -> None:
    """The cases above reach each answer the route and the chain in front of it can give."""
    seen: set[int] = set()
    for server, cases in ((servers[0], CASES), (keyless_servers[0], KEYLESS_CASES)):
        with server.client() as client:
            for requests in cases.values():
                seen.update(_send(client, request).status_code for request in requests)
    assert {200, 400, 401, 403, 404, 405, 409, 413, 415, 422} <= seen


# --- group commit ---------------------------------------------------------------------------


class _GatedStore(Store):
    """A store whose first write waits for `release`, so that other requests arrive meanwhile
    (`entered` says it is waiting); records the size of every group written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_many(
        self, writes: Sequence[tuple[FlowLogRequest, LogQuery | None] | UpdateWrite]
    ) -> list[CreateFlowLogResponse | FlowLogResponse | StoreError | None]:
        if not self.groups:
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the first write"
        self.groups.append(len(writes))
        return super().write_many(writes)


def _queued_writes(running: InProcessServer) -> int:
    """How many writes wait for the store in the fast front's group writer (no event says
    that a request has reached it)."""
    return len(running.app.fast_log._writer._waiting)


def test_logs_arriving_during_a_write_are_written_together(tmp_path: Path) -> None:
    """Creates and updates that arrive during a write go in the next one, in arrival order
    (an update of a log created earlier in the same group finds it), each answered alone."""
    store = _GatedStore(tmp_path / "slow.db")
    create, update = "POST /flows/log", "PATCH /flows/logs/"
    writes: list[tuple[str, dict[str, Any]]] = [
        (create, {"path": "group/a", "log_id": "first", "trace_status": "incomplete"}),
        (create, {"path": "group/a", "log_id": "g1", "trace_parent_id": "first"}),
        (create, {"path": "group/a", "trace_parent_id": "missing"}),
        (create, {"path": "group/a", "log_id": "g1", "trace_parent_id": "first"}),
        (create, {"path": "group/a", "log_id": "g1", "output": "different"}),
        (update + "g1", {"log_status": "complete", "output": "done"}),
        (update + "missing", {"trace_status": "complete"}),
        (create, {"path": "group/b", "log_status": "complete"}),
    ]
    expected = [200, 200, 404, 200, 409, 200, 404, 200]

    def send(client: httpx.Client, write: tuple[str, dict[str, Any]]) -> httpx.Response:
        method, _, url = write[0].partition(" ")
        return client.request(method, url, json=write[1])

    with (
        serve_in_thread(tmp_path / "slow.db", store=store) as running,
        running.client() as client,
    ):
        first = threading.Thread(target=send, args=(client, writes[0]))
        first.start()
        assert store.entered.wait(WAIT_S)  # the first write is under way; the rest arrive now
        with ThreadPoolExecutor(len(writes) - 1) as pool:
            # In order: each request is sent once the one before is waiting for the store.
            answers = []
            for queued, write in enumerate(writes[1:], 1):
                answers.append(pool.submit(send, client, write))
                assert wait_until(lambda queued=queued: _queued_writes(running) == queued)
            store.release.set()
            responses = [answer.result() for answer in answers]
        first.join()
        assert [r.status_code for r in responses] == expected[1:], [r.text for r in responses]
        assert responses[2].json() == responses[0].json()  # the replay
        assert "log_status" in responses[4].json()
        assert responses[4].json()["output"] == "done"  # the update's answer: the record
        trace = client.get("/logs/first").json()
        assert trace["trace_children"][0]["id"] == "g1"
        assert trace["trace_children"][0]["trace_status"] == "complete"
    assert store.groups == [1, len(writes) - 1]


class _BrokenStore(Store):
    """A store whose writes fail in a way no refusal explains: a server fault."""

    def log(self, request: FlowLogRequest, query: LogQuery | None = None) -> CreateFlowLogResponse:
        raise RuntimeError("the disk caught fire")

    def write_many(self, writes: Sequence[Any]) -> list[Any]:
        raise RuntimeError("the disk caught fire")


def test_a_server_fault_is_answered_500_as_the_chain_does(
    tmp_path: Path, fail_on_internal_errors: list[tuple[str, BaseException | None]]
) -> None:
    """In front of the chain, the fast path answers an unexpected error as the chain's
    catch-all does: a 500 without internals, logged and reported; the server serves on."""
    with (
        serve_in_thread(tmp_path / "f.db", store=_BrokenStore(tmp_path / "f.db")) as fast,
        serve_in_thread(
            tmp_path / "s.db", store=_BrokenStore(tmp_path / "s.db"), fast_log=False
        ) as slow,
    ):
        _assert_same_answers([fast, slow], [{"json": {"path": "fast/fault"}}])
        with fast.client() as client:
            answer = client.post("/flows/log", json={"path": "fast/fault"})
            assert (answer.status_code, answer.json()) == (500, {"detail": "internal server error"})
            assert client.get("/flows").status_code == 200
    assert {kind for kind, _ in fail_on_internal_errors} == {"server.unhandled"}
    fail_on_internal_errors.clear()


def test_the_store_thread_answers_raises_and_ends_with_its_owner() -> None:
    """The writer's own thread: results and exceptions come back to the awaiting task, and
    the thread ends once nothing holds its `StoreThread` (a server's app gone)."""

    def fail(arg: int) -> int:
        raise ValueError(f"no {arg}")

    async def use(worker: StoreThread) -> int:
        with pytest.raises(ValueError, match="no 3"):
            await worker.run(fail, 3)
        return await worker.run(lambda n: n * 2, 21)

    worker = StoreThread("test-store-thread")
    (thread,) = [t for t in threading.enumerate() if t.name == "test-store-thread"]
    assert asyncio.run(use(worker)) == 42
    del worker
    gc.collect()
    thread.join(5.0)
    assert not thread.is_alive()
