"""Distributed tracing: W3C trace context out of a flow, continued in another service, and the
store's rules for a child whose parent lives in another service."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowtrace
from flowtrace import _w3c
from flowtrace._config import get_settings
from flowtrace._contract import (
    RECORDER_METADATA_KEY,
    RECORDER_REMOTE_PARENT,
    remote_parent_id,
)
from flowtrace.store import Store, StoreError
from flowtrace.testing import capture_logs
from tests.pipelineutil import fresh_pipeline
from tests.serverutil import (
    SHUTDOWN_TIMEOUT,
    STARTUP_TIMEOUT,
    RunningServer,
    _child_env,
    start_server,
)
from tests.store_helpers import FakeClock, at, req

SERVICE = Path(__file__).with_name("propagation_service.py")


def _headers_of(log_id: str, trace_id: str = "1" * 32, sampled: bool = True) -> dict[str, str]:
    """What a flowtrace caller sends from inside log `log_id`."""
    return {
        "traceparent": _w3c.format_traceparent(trace_id, _w3c.span_id_of(log_id), sampled),
        "tracestate": _w3c.format_tracestate(log_id),
    }


def _remote_note(body: dict[str, Any]) -> dict[str, Any] | None:
    note = (body.get("metadata") or {}).get(RECORDER_METADATA_KEY) or {}
    found: dict[str, Any] | None = note.get(RECORDER_REMOTE_PARENT)
    return found


# --- headers ---------------------------------------------------------------------------------


def test_headers_out_of_a_flow_name_its_trace_and_its_log() -> None:
    seen: dict[str, dict[str, str]] = {}
    with capture_logs() as logs, flowtrace.flow("t/root") as root:
        seen["root"] = flowtrace.propagation_headers()
        with flowtrace.flow("t/inner") as inner:
            seen["inner"] = flowtrace.propagation_headers()
    assert len(logs.logs) == 2
    trace_id = _w3c.trace_id_of(root.log_id)
    assert seen["root"] == {
        "traceparent": f"00-{trace_id}-{_w3c.span_id_of(root.log_id)}-01",
        "tracestate": f"flowtrace={root.log_id}",
    }
    assert seen["inner"]["traceparent"] == f"00-{trace_id}-{_w3c.span_id_of(inner.log_id)}-01"
    assert seen["inner"]["tracestate"] == f"flowtrace={inner.log_id}"
    assert flowtrace.propagation_headers() == {}  # outside any flow


def test_ids_are_deterministic_and_spans_keep_their_own() -> None:
    assert _w3c.trace_id_of("log_a_1") == _w3c.trace_id_of("log_a_1")
    assert _w3c.trace_id_of("log_a_1") != _w3c.trace_id_of("log_a_2")
    assert len(_w3c.trace_id_of("x")) == 32 and len(_w3c.span_id_of("x")) == 16
    assert _w3c.trace_id_of("x")[:16] != _w3c.span_id_of("x")  # not one digest read twice
    span_log = "span_" + "ab" * 16 + "_" + "cd" * 8
    assert _w3c.trace_id_of(span_log) == "ab" * 16
    assert _w3c.span_id_of(span_log) == "cd" * 8


def test_valid_headers_are_read_case_insensitively_with_other_vendors() -> None:
    headers = _headers_of("log_abc_1", sampled=False)
    pairs = [
        ("TraceParent", headers["traceparent"]),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("TRACESTATE", "rojo=00f067aa0ba902b7, " + headers["tracestate"]),
        ("x-other", "ignored"),
    ]
    context = _w3c.parse_headers(pairs)
    assert context == _w3c.RemoteContext("1" * 32, _w3c.span_id_of("log_abc_1"), False, "log_abc_1")
    # a later version's extra fields are ignored, its first four read as version 00's
    later = "cc-" + headers["traceparent"][3:] + "-what-comes-next"
    found = _w3c.parse_headers({"traceparent": later, "tracestate": headers["tracestate"]})
    assert found is not None and found.log_id == "log_abc_1"


_GOOD = _headers_of("log_abc_1")
_SPAN = _w3c.span_id_of("log_abc_1")
HOSTILE_TRACEPARENTS = [
    "",
    "garbage",
    _GOOD["traceparent"].upper(),  # uppercase hex is invalid
    "00-" + "0" * 32 + f"-{_SPAN}-01",  # zero trace id
    "00-" + "1" * 32 + "-" + "0" * 16 + "-01",  # zero parent id
    "ff-" + "1" * 32 + f"-{_SPAN}-01",  # version ff is forbidden
    _GOOD["traceparent"] + "-extra",  # version 00 has exactly four fields
    _GOOD["traceparent"] + "\r\nx-injected: 1",
    _GOOD["traceparent"] + " " * 300,
    "00-" + "1" * 33 + f"-{_SPAN}-01",
    "00-" + "g" * 32 + f"-{_SPAN}-01",
    "00-" + "1" * 32 + f"-{_SPAN}-1",
]


@pytest.mark.parametrize("traceparent", HOSTILE_TRACEPARENTS)
def test_an_invalid_traceparent_continues_nothing(traceparent: str) -> None:
    assert (
        _w3c.parse_headers({"traceparent": traceparent, "tracestate": _GOOD["tracestate"]}) is None
    )


def test_a_repeated_traceparent_continues_nothing() -> None:
    pairs = [("traceparent", _GOOD["traceparent"])] * 2
    assert _w3c.parse_headers(pairs) is None


HOSTILE_TRACESTATES = [
    "flowtrace=log_abc_1,flowtrace=log_abc_1",  # twice: neither is believed
    "flowtrace=",
    "flowtrace=log abc",
    "flowtrace=log_abc_1'; DROP TABLE logs;--",
    "flowtrace=<script>alert(1)</script>",
    "flowtrace=" + "a" * 200,  # longer than any log id
    "flowtrace=log_\u00e9t\u00e9",
    "x" * 10_000 + ",flowtrace=log_abc_1",  # past the bound: not read at all
    "flowtrace=log_other_9",  # another log than the traceparent's span
]


@pytest.mark.parametrize("tracestate", HOSTILE_TRACESTATES)
def test_a_bad_or_foreign_tracestate_entry_is_not_followed(tracestate: str) -> None:
    context = _w3c.parse_headers({"traceparent": _GOOD["traceparent"], "tracestate": tracestate})
    assert context is not None and context.log_id is None  # the W3C context alone


@given(
    st.lists(
        st.tuples(st.sampled_from(["traceparent", "tracestate", "TraceParent", "x"]), st.text()),
        max_size=6,
    )
)
def test_no_header_value_makes_parsing_raise(pairs: list[tuple[str, str]]) -> None:
    context = _w3c.parse_headers(pairs)
    assert context is None or (len(context.trace_id), len(context.span_id)) == (32, 16)


# --- continuing a trace in this process ------------------------------------------------------


def test_flows_in_a_continued_trace_are_children_of_the_remote_log() -> None:
    headers = _headers_of("log_caller_7", trace_id="ab" * 16)
    with capture_logs() as logs, fresh_pipeline() as pipe:
        with flowtrace.continue_trace(headers):
            assert flowtrace.current_log() is None  # the caller's log is not this process's
            through = flowtrace.propagation_headers()  # a call made outside the flows
            with flowtrace.flow("svc/handle") as handled:
                with flowtrace.flow("svc/step"):
                    pass
                onward = flowtrace.propagation_headers()
        assert flowtrace.current_log() is None
        assert pipe.flush(10)
    root, step = sorted(logs.logs, key=lambda log: log.path)
    assert root.parent_id == "log_caller_7" and step.parent is handled
    assert through == headers  # passed on as it came
    # onward calls stay in the caller's trace, from this service's log
    assert onward["traceparent"] == f"00-{'ab' * 16}-{_w3c.span_id_of(handled.log_id)}-01"
    stored = _stored(handled.log_id)
    assert stored.trace_parent_id == "log_caller_7"
    note = (stored.metadata or {})[RECORDER_METADATA_KEY][RECORDER_REMOTE_PARENT]
    assert note == {
        "log_id": "log_caller_7",
        "trace_id": "ab" * 16,
        "span_id": _w3c.span_id_of("log_caller_7"),
        "sampled": True,
        "linked": True,
    }
    assert _stored("log_caller_7").placeholder  # the caller has not delivered it yet


def test_untrusted_headers_are_noted_not_linked() -> None:
    with capture_logs() as logs, fresh_pipeline() as pipe:
        untrusted = flowtrace.continue_trace(_headers_of("log_caller_8"), trusted=False)
        with untrusted, flowtrace.flow("svc/untrusted") as handled:
            onward = flowtrace.propagation_headers()
        assert pipe.flush(10)
    assert len(logs.logs) == 1
    stored = _stored(handled.log_id)
    assert stored.trace_parent_id is None
    note = (stored.metadata or {})[RECORDER_METADATA_KEY][RECORDER_REMOTE_PARENT]
    assert note["log_id"] == "log_caller_8" and note["linked"] is False
    (record,) = logs.records  # the body as it went, also for a test's captured logs
    assert "trace_parent_id" not in record and _remote_note(record) == note
    # an untrusted caller's trace is not continued onward either
    assert onward["traceparent"].split("-")[1] == _w3c.trace_id_of(handled.log_id)


def test_without_valid_headers_continue_trace_changes_nothing() -> None:
    with capture_logs() as logs:
        with flowtrace.continue_trace({"traceparent": "nonsense"}), flowtrace.flow("svc/plain"):
            pass
        with flowtrace.continue_trace(None):
            pass
    assert [log.parent for log in logs.logs] == [None]


def _stored(log_id: str) -> Any:
    with Store(Path(get_settings().db_path)) as store:
        return store.get_log(log_id)


# --- the store's rules for remote children -------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s.db", clock=FakeClock()) as opened:
        yield opened


def _remote_child(log_id: str, parent_id: str, start: float, end: float, **more: Any) -> Any:
    note = {"log_id": parent_id, "trace_id": "1" * 32, "span_id": "2" * 16, "linked": True}
    return req(
        path="svc/child",
        log_id=log_id,
        trace_parent_id=parent_id,
        start_time=at(start),
        end_time=at(end),
        trace_status="complete",
        metadata={"flowtrace": {"remote_parent": note}, **more},
    )


def test_a_remote_child_before_its_parent_waits_under_a_placeholder(store: Store) -> None:
    store.log(_remote_child("b1", "a1", 1, 2))
    pending = store.get_log("a1")
    assert pending.placeholder and pending.trace_status == "incomplete"
    assert [child.id for child in pending.trace_children] == ["b1"]
    # the caller's own create fills it (a plain create: the caller does not know)
    store.log(req(path="svc/caller", log_id="a1", start_time=at(0), end_time=at(3),
                  trace_status="complete", output="done"))  # fmt: skip
    filled = store.get_log("a1")
    assert not filled.placeholder and filled.flow is not None
    assert filled.flow.path == "svc/caller" and filled.output == "done"
    assert [child.id for child in filled.trace_children] == ["b1"]
    assert store.get_log("b1").trace_id == "a1"


def test_a_remote_child_after_its_parent_completed_is_taken(store: Store) -> None:
    store.log(req(path="svc/caller", log_id="a2", start_time=at(0), end_time=at(1),
                  trace_status="complete"))  # fmt: skip
    store.log(_remote_child("b2", "a2", 0.5, 5))
    parent = store.get_log("a2")
    assert parent.trace_status == "complete"  # not reopened
    assert parent.end_time == at(5)  # widened over the child
    assert [child.id for child in parent.trace_children] == ["b2"]


def test_without_the_marker_the_contract_rules_stand(store: Store) -> None:
    store.log(req(path="svc/caller", log_id="a3", trace_status="complete"))
    with pytest.raises(StoreError) as complete:
        store.log(req(path="svc/x", log_id="c1", trace_parent_id="a3"))
    with pytest.raises(StoreError) as missing:
        store.log(req(path="svc/x", log_id="c2", trace_parent_id="nowhere"))
    # a marker naming another parent, or not linked, is no marker
    other = _remote_child("c3", "nowhere", 0, 1)
    other.metadata["flowtrace"]["remote_parent"]["log_id"] = "a3"
    with pytest.raises(StoreError) as mismatched:
        store.log(other)
    unlinked = _remote_child("c4", "nowhere", 0, 1)
    unlinked.metadata["flowtrace"]["remote_parent"]["linked"] = False
    with pytest.raises(StoreError) as not_linked:
        store.log(unlinked)
    statuses = [e.value.status_code for e in (complete, missing, mismatched, not_linked)]
    assert statuses == [409, 404, 404, 404]


def test_remote_parent_id_reads_only_a_linked_marker() -> None:
    assert remote_parent_id({"flowtrace": {"remote_parent": {"log_id": "a", "linked": True}}})
    assert remote_parent_id({"flowtrace": {"remote_parent": {"log_id": "a"}}}) is None
    assert remote_parent_id({"flowtrace": "x"}) is None and remote_parent_id(None) is None


# --- two services on loopback and one `flowtrace serve` --------------------------------------


class Service:
    """tests/propagation_service.py in a subprocess (its own pipeline), delivering to `server`."""

    def __init__(self, server: RunningServer) -> None:
        command = [sys.executable, str(SERVICE), server.base_url, server.api_key or ""]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, env=_child_env())
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("service on "):
            self.process.kill()
            raise RuntimeError(f"service did not start: {line!r}")
        self.url = line.split()[-1]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("server") / "flowtrace.db") as running:
        yield running


@pytest.fixture(scope="module")
def service(server: RunningServer) -> Iterator[Service]:
    running = Service(server)
    yield running
    running.stop()


@pytest.fixture
def delivering(server: RunningServer) -> Iterator[httpx.Client]:
    """This process as service A, delivering to `server`; an instrumented client."""
    client = flowtrace.instrument_httpx(httpx.Client(timeout=STARTUP_TIMEOUT))
    with fresh_pipeline(base_url=server.base_url, api_key=server.api_key), client:
        yield client


def test_b_delivering_first_files_its_log_under_a(
    server: RunningServer, service: Service, delivering: httpx.Client
) -> None:
    with flowtrace.flow("a/call-b") as calling:
        answer = delivering.get(f"{service.url}/work", params={"name": "first"}).json()
        assert answer["flushed"]  # B's log is stored while A's is still open...
        assert server.stored_log(calling.log_id)["placeholder"] is True  # ...under a placeholder
    assert flowtrace.flush(30)
    b = server.stored_log(answer["log_id"])
    assert b["trace_parent_id"] == calling.log_id and b["trace_id"] == calling.log_id
    a = server.stored_log(calling.log_id)
    assert not a.get("placeholder") and a["flow"]["path"] == "a/call-b"
    assert [child["id"] for child in a["trace_children"]] == [answer["log_id"]]


def test_b_delivering_after_a_completed_files_its_log_under_a(
    server: RunningServer, service: Service, delivering: httpx.Client
) -> None:
    with flowtrace.flow("a/call-b-later") as calling:
        assert delivering.get(f"{service.url}/deferred", params={"name": "later"}).is_success
    assert flowtrace.flush(30)
    assert server.stored_log(calling.log_id)["trace_status"] == "complete"
    (later,) = httpx.get(f"{service.url}/release", timeout=STARTUP_TIMEOUT).json()
    assert later["flushed"]
    b = server.stored_log(later["log_id"])
    assert b["trace_parent_id"] == calling.log_id
    a = server.stored_log(calling.log_id)
    assert a["trace_status"] == "complete"
    assert [child["id"] for child in a["trace_children"]] == [later["log_id"]]
    assert a["end_time"] >= b["end_time"]  # widened over its late child


def test_a_to_b_to_c(server: RunningServer, service: Service, delivering: httpx.Client) -> None:
    c_url = f"{service.url}/work?name=c"
    with flowtrace.flow("a/chain") as calling:
        b = delivering.get(f"{service.url}/work", params={"name": "b", "call": c_url}).json()
    assert flowtrace.flush(30)
    c = b["called"]
    stored_c = server.stored_log(c["log_id"])
    assert stored_c["trace_parent_id"] == b["log_id"]
    assert stored_c["trace_id"] == calling.log_id
    assert server.stored_log(b["log_id"])["trace_parent_id"] == calling.log_id


def _raw_get(url: str, target: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """A GET with header bytes as given (no client validates them away): (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall((head + "\r\n").encode("utf-8"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


def test_hostile_headers_never_fail_and_never_link(
    server: RunningServer, service: Service, delivering: httpx.Client
) -> None:
    with flowtrace.flow("a/victim") as victim:
        own = flowtrace.propagation_headers()
    with flowtrace.flow("a/other") as other:
        pass
    assert flowtrace.flush(30)
    foreign = _headers_of(other.log_id)
    attempts: list[list[tuple[str, str]]] = [
        [("traceparent", t), ("tracestate", own["tracestate"])] for t in HOSTILE_TRACEPARENTS
    ]
    attempts += [
        [("traceparent", own["traceparent"]), ("tracestate", s)] for s in HOSTILE_TRACESTATES
    ]
    attempts += [
        [("traceparent", foreign["traceparent"]), ("tracestate", own["tracestate"])],  # mixed
        [("traceparent", own["traceparent"])] * 2,
        [("tracestate", own["tracestate"])] * 40,
        [("traceparent", own["traceparent"]), ("tracestate", "x" * 60_000)],
    ]
    stored: list[str] = []
    for headers in attempts:
        status, body = _raw_get(service.url, "/work?name=hostile", headers)
        assert status == 200, (headers, body)
        answer = json.loads(body)
        assert answer["flushed"]
        stored.append(answer["log_id"])
    for log_id in stored:
        log = server.stored_log(log_id)
        assert log.get("trace_parent_id") is None and log["trace_id"] == log_id, log
        note = (log.get("metadata") or {}).get("flowtrace", {}).get("remote_parent")
        assert note is None or (note["linked"] is False and "log_id" not in note)
    assert server.stored_log(victim.log_id)["trace_children"] == []
    assert server.stored_log(other.log_id)["trace_children"] == []
    stats = httpx.get(f"{service.url}/stats", timeout=30).json()
    assert stats["dropped"] == {} and stats["last_error"] is None


# --- the ASGI middleware and the httpx hook, in process ---------------------------------------


def _echo_app() -> Any:
    """An ASGI app that runs one flow per request and answers its log's parent and note."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})
            return
        async with flowtrace.flow("svc/asgi") as log:
            pass
        body = json.dumps({"log_id": log.log_id, "parent_id": log.parent_id}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def _get(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request through `app`, in process (httpx's ASGI transport drives the app)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.get("/", headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("trusted", [True, False])
def test_the_middleware_continues_each_requests_trace(trusted: bool) -> None:
    from flowtrace.asgi import FlowtraceMiddleware

    app = FlowtraceMiddleware(_echo_app(), trusted=lambda scope: trusted)
    with capture_logs() as logs:
        continued = _get(app, _headers_of("log_caller_9")).json()
        plain = _get(app).json()
    assert continued["parent_id"] == "log_caller_9" and plain["parent_id"] is None
    under_remote, alone = logs.logs
    assert under_remote.parent is not None and under_remote.parent.remote
    assert _remote_linked(under_remote) is trusted
    assert alone.parent is None


def _remote_linked(log: Any) -> bool:
    linked: bool = log.parent.linked
    return linked


def test_a_failing_trust_predicate_means_untrusted(caplog: pytest.LogCaptureFixture) -> None:
    from flowtrace.asgi import FlowtraceMiddleware

    def broken(scope: Any) -> bool:
        raise RuntimeError("predicate bug")

    app = FlowtraceMiddleware(_echo_app(), trusted=broken)
    with capture_logs() as logs, caplog.at_level(logging.WARNING):
        assert _get(app, _headers_of("log_caller_10")).is_success
    assert _remote_linked(logs.logs[0]) is False
    assert any("predicate bug" in r.getMessage() for r in caplog.records)


OWN_TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def test_the_httpx_hook_adds_headers_only_inside_a_flow_and_never_overrides() -> None:
    seen: list[httpx.Headers] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200)

    client = flowtrace.instrument_httpx(httpx.Client(transport=httpx.MockTransport(record)))
    assert flowtrace.instrument_httpx(client) is client  # idempotent: one hook
    assert len(client.event_hooks["request"]) == 1
    with client:
        client.get("http://b/outside")
        with flowtrace.flow("a/calls") as calling:
            client.get("http://b/inside")
            client.get(
                "http://b/own", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
    outside, inside, own = seen
    assert "traceparent" not in outside and "tracestate" not in outside
    assert inside["tracestate"] == f"flowtrace={calling.log_id}"
    assert inside["traceparent"].split("-")[2] == _w3c.span_id_of(calling.log_id)
    assert own["traceparent"] == OWN_TRACEPARENT
    assert "tracestate" not in own


def test_async_with_continue_trace() -> None:
    async def served() -> None:
        continued = flowtrace.continue_trace(_headers_of("log_caller_11"))
        async with continued, flowtrace.flow("svc/async"):
            pass

    with capture_logs() as logs:
        asyncio.run(served())
    assert logs.logs[0].parent_id == "log_caller_11"
