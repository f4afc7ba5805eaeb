"""Scrubbing wired into delivery (issue 11): what the recorder captured is scrubbed on the worker,
once, before it reaches any destination: the memory exporter, the embedded store (a real SQLite
file), a real `flowtrace serve` on loopback, the spool; `capture_logs()` shows the same.

The structures are test_scrub's: random nested records with secrets injected at random depths
(under secret-looking keys, as header mappings, pairs and entries, as text); the detectors are
its independent ones. Here they travel through a real flow: inputs, metadata, provider
request and printed output of a `with flow(...)` block.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowtrace
from flowtrace import _pipeline, flow
from flowtrace._contract import RECORDER_METADATA_KEY, scrubbed
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.store import Store
from flowtrace.testing import capture_logs
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.serverutil import RunningServer, start_server
from tests.test_scrub import (
    ORACLE_TEXT,
    anything,
    records,
    strings_in,
    with_secrets,
)

SLOW_ENOUGH = settings(
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    deadline=None,
)


def secrets_in(
    record: dict[str, Any], data: st.DataObject
) -> tuple[dict[str, Any], Any, list[str]]:
    """test_scrub's injection, in the fields a block records here (its chat messages are
    the recorder's to recognise, tested elsewhere)."""
    record.pop("messages", None)
    expected, counts, secrets, _ = with_secrets(record, data)
    return expected, counts, secrets


def record_flow(record: dict[str, Any]) -> str:
    """Record `record`'s payloads as one block: its inputs, metadata, provider request, output
    and printed output. Returns the log's id."""
    with flow("scrub/e2e", inputs=record["inputs"], metadata=record["metadata"]) as log:
        log.provider_request = record["provider_request"]
        if "output" in record:
            log.output = record["output"]
        if record.get("stdout"):
            print(record["stdout"], end="")
    return log.log_id


def expected_body(expected: dict[str, Any]) -> dict[str, Any]:
    """The payloads a destination must receive for the record (scrubbed as test_scrub says)."""
    out = {
        "inputs": expected["inputs"],
        "metadata": expected["metadata"],
        "provider_request": expected["provider_request"],
    }
    if "output" in expected:
        out["output"] = expected["output"]
    if expected.get("stdout"):
        out["stdout"] = expected["stdout"]
    return out


def delivered_payloads(body: dict[str, Any]) -> dict[str, Any]:
    out = {name: body[name] for name in ("inputs", "provider_request", "output") if name in body}
    metadata = dict(body.get("metadata") or {})
    metadata.pop(RECORDER_METADATA_KEY, None)  # what flowtrace notes of its own
    out["metadata"] = metadata
    if body.get("stdout"):
        out["stdout"] = body["stdout"]
    return out


def assert_no_secret_in(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} reached the destination"
    found = ORACLE_TEXT.search(text)
    assert found is None, f"{found.group()!r} reached the destination"


@pytest.fixture
def memory() -> Iterator[MemoryExporter]:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        yield exporter


# --- the memory exporter: exactly what scrubbing should make of it, nothing else changed ----------


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(records, st.data())
def test_secrets_at_random_depths_never_reach_the_exporter_and_the_rest_is_unchanged(
    record: dict[str, Any], data: st.DataObject
) -> None:
    expected, counts, secrets = secrets_in(record, data)
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        log_id = record_flow(record)
        assert flowtrace.flush(WAIT_S)
        scrub_counts = flowtrace.stats()["scrubbed"]
    body = exporter.logs[log_id]
    assert delivered_payloads(body) == expected_body(expected)
    assert_no_secret_in(json.dumps([op.body for op in exporter.operations()]), secrets)
    assert scrub_counts == dict(counts)


def test_token_counts_model_names_and_prompts_that_mention_a_password_stay(
    memory: MemoryExporter,
) -> None:
    request = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "I forgot my password, how do I reset it?"}],
    }
    usage = {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42}

    @flow(path="scrub/llm")
    def call(prompt: str, model: str) -> dict[str, Any]:
        log = flowtrace.current_log()
        assert log is not None
        log.provider_request = request
        log.metadata["usage"] = usage
        return {"text": "Use the 'Forgot password' link.", "usage": usage}

    call("My password is not working", "gpt-4o-mini")
    assert flowtrace.flush(WAIT_S)
    (body,) = memory.logs.values()
    assert body["inputs"] == {"prompt": "My password is not working", "model": "gpt-4o-mini"}
    assert body["provider_request"] == request
    assert body["metadata"]["usage"] == usage
    assert json.loads(body["output"]) == {"text": "Use the 'Forgot password' link.", "usage": usage}
    assert flowtrace.stats()["scrubbed"] == {}


def test_scrub_false_delivers_what_was_recorded() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter, scrub=False):

        @flow(path="scrub/off")
        def login(password: str) -> str:
            return "ok"

        login("hunter2")
        assert flowtrace.flush(WAIT_S)
    (body,) = exporter.logs.values()
    assert body["inputs"] == {"password": "hunter2"}


def test_scrub_off_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWTRACE_SCRUB", "0")
    assert flowtrace.configure().scrub is False
    monkeypatch.setenv("FLOWTRACE_SCRUB", "1")
    assert flowtrace.configure().scrub is True
    monkeypatch.delenv("FLOWTRACE_SCRUB")
    flowtrace.configure()


def test_allow_list_extra_patterns_and_callback_from_configure() -> None:
    exporter = MemoryExporter()
    seen: list[str] = []

    def keep_the_test_key(match: flowtrace.ScrubMatch) -> bool:
        seen.append(match.rule)
        return match.value == "test-key-not-secret"

    options = flowtrace.ScrubOptions(
        allow_keys=["csrf_token"],
        extra_patterns={"ssn": "ssn"},
        callback=keep_the_test_key,
    )
    with fresh_pipeline(exporter, scrub=options):
        with flow("scrub/options") as log:
            log.metadata.update(
                csrf_token="abc123abc123",
                ssn="078-05-1120",
                api_key="test-key-not-secret",
                password="hunter2",
            )
        assert flowtrace.flush(WAIT_S)
    metadata = exporter.logs[log.log_id]["metadata"]
    assert metadata["csrf_token"] == "abc123abc123"  # allow-listed
    assert metadata["ssn"] == scrubbed("ssn")  # an extra pattern
    assert metadata["api_key"] == "test-key-not-secret"  # the callback kept it
    assert metadata["password"] == scrubbed("password")
    assert sorted(seen) == ["api key", "password", "ssn"]


def test_a_dict_of_options_works_too_and_wrong_options_raise_at_configure() -> None:
    assert flowtrace.configure(scrub={"allow_keys": ["x"]}).scrub == {"allow_keys": ["x"]}
    with pytest.raises(TypeError, match="unknown"):
        flowtrace.configure(scrub={"allow": ["x"]})
    with pytest.raises(ValueError, match="not a regular expression"):
        flowtrace.configure(scrub={"extra_patterns": ["("]})
    with pytest.raises(TypeError, match="redact must be a function"):
        flowtrace.configure(redact="no")
    flowtrace.configure()


def test_the_redact_hook_runs_after_scrubbing_on_the_worker() -> None:
    exporter = MemoryExporter()
    threads: list[str] = []

    def redact(record: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        assert record["inputs"]["api_key"] == scrubbed("api key")  # scrubbed first
        record["inputs"]["email"] = "<email>"
        return record

    with fresh_pipeline(exporter, redact=redact):

        @flow(path="scrub/redact")
        def signup(email: str, api_key: str) -> None:
            pass

        signup("ada@example.com", "k-123456789")
        assert flowtrace.flush(WAIT_S)
    (body,) = exporter.logs.values()
    assert body["inputs"] == {"email": "<email>", "api_key": scrubbed("api key")}
    assert threads == [_pipeline.WORKER_NAME]  # once, on the worker: never in the call


def test_a_raising_redact_hook_sends_the_log_without_its_payloads_counted_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not the scrubbed body: the hook is there for what scrubbing cannot see (names, emails),
    # so a log it failed on keeps its identity, times and status, not its payloads.
    exporter = MemoryExporter()

    def redact(record: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug in the hook")

    with (
        caplog.at_level(logging.WARNING, logger="flowtrace"),
        fresh_pipeline(exporter, redact=redact),
    ):

        @flow(path="scrub/broken-redact")
        def signup(email: str) -> str:
            return "welcome"

        signup("ada@example.com")
        signup("bob@example.com")
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert len(exporter.logs) == 2  # nothing dropped
    for body in exporter.logs.values():
        assert body["path"] == "scrub/broken-redact" and "inputs" not in body
        assert "ada@" not in json.dumps(body) and "output" not in body
    assert stats["withheld"] == 2 and stats["dropped"] == {}
    warnings = [r for r in caplog.records if "redact hook raised" in r.getMessage()]
    assert len(warnings) <= 1  # once per process (an earlier test may have said it already)


@SLOW_ENOUGH
@given(anything(), anything())
def test_hostile_objects_in_a_flow_never_make_delivery_raise(inputs: Any, metadata: Any) -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("scrub/hostile", inputs={"value": inputs}) as log:
            log.metadata["value"] = metadata
            log.provider_request = {"body": inputs}
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["dropped"] == {}
    body = exporter.logs[log.log_id]
    for text in strings_in(body):
        assert ORACLE_TEXT.search(text) is None


def test_a_retried_and_spooled_body_is_the_one_scrubbed_body(tmp_path: Path) -> None:
    exporter = MemoryExporter(destination="scrub-retry")
    exporter.fail_next(503)
    secret = "sk-proj-" + "Rt7yU1" * 7
    with fresh_pipeline(exporter, spool="always", spool_dir=str(tmp_path / "spool")) as pipe:

        @flow(path="scrub/retry")
        def call(api_key: str, note: str) -> str:
            return f"used {api_key}"

        call(secret, "hello")
        assert flowtrace.flush(WAIT_S)
        spool = pipe.spool()
        assert spool is not None
        spool_bytes = b"".join(p.read_bytes() for p in spool.path.parent.glob("*") if p.is_file())
    sent = [op.body for op in exporter.operations()]
    assert len(sent) == 2 and sent[0] == sent[1]  # the retry resent the same body
    assert sent[0]["inputs"] == {"api_key": scrubbed("api key"), "note": "hello"}
    assert sent[0]["output"] == f"used {scrubbed('openai key')}"
    assert spool_bytes and secret.encode() not in spool_bytes


def test_capture_logs_shows_what_would_be_sent() -> None:
    @flow(path="scrub/captured")
    def connect(dsn: str, password: str) -> str:
        return "connected"

    with capture_logs() as captured:
        connect("postgres://app:s3cretpw@db.internal/app", "hunter2")
    (record,) = captured.records
    assert record["inputs"] == {
        "dsn": f"postgres://app:{scrubbed('url password')}@db.internal/app",
        "password": scrubbed("password"),
    }
    assert captured.logs[0].args == ("postgres://app:s3cretpw@db.internal/app", "hunter2")


# --- the embedded store and a real server ---------------------------------------------------------


def database_text(path: Path) -> str:
    """Everything the SQLite file holds, as SQL text (every table, every row)."""
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


@SLOW_ENOUGH
@given(records, st.data())
def test_secrets_never_reach_the_embedded_store(
    tmp_path_factory: pytest.TempPathFactory, record: dict[str, Any], data: st.DataObject
) -> None:
    expected, _, secrets = secrets_in(record, data)
    db = tmp_path_factory.mktemp("embedded") / "flowtrace.db"
    with fresh_pipeline(db_path=str(db), spool="off"):
        log_id = record_flow(record)
        assert flowtrace.flush(WAIT_S)
    assert_no_secret_in(database_text(db), secrets)
    store = Store(db)
    try:
        stored = store.get_log(log_id)
    finally:
        store.close()
    assert stored.inputs == expected["inputs"]
    assert stored.provider_request == expected["provider_request"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("server") / "flowtrace.db") as running:
        yield running


@SLOW_ENOUGH
@given(records, st.data())
def test_secrets_never_reach_a_real_server(
    server: RunningServer, record: dict[str, Any], data: st.DataObject
) -> None:
    expected, _, secrets = secrets_in(record, data)
    with fresh_pipeline(base_url=server.base_url, api_key=server.api_key, spool="off"):
        log_id = record_flow(record)
        assert flowtrace.flush(WAIT_S)
    with server.client() as client:
        answer = client.get(f"/logs/{log_id}")
    assert answer.status_code == 200
    assert_no_secret_in(answer.text, secrets)
    stored = answer.json()
    assert stored["inputs"] == expected["inputs"]
    assert stored["provider_request"] == expected["provider_request"]


# --- a real OpenAI-style request ------------------------------------------------------------------


class FakeChatCompletions(BaseHTTPRequestHandler):
    """A local stand-in for the OpenAI chat completions endpoint."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatCompletions)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_openai_style_request_with_its_authorization_header_never_reaches_the_store(
    tmp_path: Path, fake_openai: str
) -> None:
    api_key = "sk-proj-" + "Zq9xW2" * 8
    db = tmp_path / "flowtrace.db"
    sent: list[httpx.Request] = []
    ids: list[str] = []

    @flow(path="scrub/openai")
    def chat(prompt: str) -> str:
        with httpx.Client(
            base_url=fake_openai,
            headers={"Authorization": f"Bearer {api_key}"},
            event_hooks={"request": [sent.append]},
        ) as client:
            response = client.post(
                "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": prompt}],
                },
            )
        request = sent[-1]
        log = flowtrace.current_log()
        assert log is not None
        ids.append(log.log_id)
        log.provider_request = {
            "method": request.method,
            "url": str(request.url),
            "headers": dict(request.headers),
            "json": json.loads(request.content),
        }
        log.provider_response = response.json()
        return str(response.json()["choices"][0]["message"]["content"])

    with fresh_pipeline(db_path=str(db), spool="off"):
        assert chat("what is my password policy?") == "hi"
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["scrubbed"] == {"auth": 1}
    assert sent[0].headers["authorization"] == f"Bearer {api_key}"  # it was really sent
    assert "Zq9xW2" not in database_text(db)
    store = Store(db)
    try:
        stored = store.get_log(ids[0])
    finally:
        store.close()
    assert stored.provider_request is not None and stored.provider_response is not None
    assert stored.provider_request["headers"]["authorization"] == scrubbed("auth")
    assert stored.provider_request["json"] == {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "what is my password policy?"}],
    }
    assert stored.provider_response["usage"]["total_tokens"] == 4
    assert stored.inputs == {"prompt": "what is my password policy?"}


def test_copy_of_record_is_untouched() -> None:
    record = {"inputs": {"password": "x1"}}
    before = copy.deepcopy(record)
    with capture_logs() as captured, flow("scrub/copy", inputs=record["inputs"]):
        pass
    assert captured.records[0]["inputs"] == {"password": scrubbed("password")}
    assert record == before
