"""The OTLP export: every log as a span to an OTLP/HTTP endpoint, beside the main destination,
decoded on the other side with opentelemetry-proto."""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import flowtrace
from flowtrace import _op_taps, _otlp_export, _w3c
from flowtrace._config import Settings, get_settings
from flowtrace._otlp_encode import SpanDraft, draft_attributes, encode_export_request
from flowtrace.store import Store
from tests.otlp_receiver import Receiver, attributes_of
from tests.pipelineutil import fresh_pipeline
from tests.serverutil import InProcessServer, serve_in_thread


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _main_store_log(log_id: str) -> Any:
    with Store(Path(get_settings().db_path)) as store:
        return store.get_log(log_id)


def _export() -> _otlp_export.OtlpExport:
    export = _otlp_export.current()
    assert export is not None
    return export


def test_logs_arrive_as_spans_with_ids_parentage_status_and_events(receiver: Receiver) -> None:
    @flowtrace.flow(path="otlp/answer")
    def answer(question: str) -> str:
        retrieve(question)
        with contextlib.suppress(ValueError):
            fail()
        return "42"

    @flowtrace.flow(path="otlp/retrieve")
    def retrieve(question: str) -> list[str]:
        return [question, "doc"]

    @flowtrace.flow(path="otlp/fail")
    def fail() -> None:
        raise ValueError("no luck")

    seen: dict[str, str] = {}
    with fresh_pipeline(otlp_endpoint=receiver.url, otlp_headers="x-team=a%20b,authorization=k"):
        with flowtrace.flow("otlp/outer") as outer:
            seen["outer"] = outer.log_id
            answer("why?")
        assert flowtrace.flush(30)
        assert _otlp_export.flush(30)
        stats = flowtrace.stats()["otlp"]
    spans = receiver.by_name()
    assert set(spans) == {"otlp/outer", "otlp/answer", "otlp/retrieve", "otlp/fail"}
    trace_id = bytes.fromhex(_w3c.trace_id_of(seen["outer"]))
    assert {span.trace_id for span in spans.values()} == {trace_id}
    root = spans["otlp/outer"]
    assert root.parent_span_id == b"" and root.span_id == bytes.fromhex(
        _w3c.span_id_of(seen["outer"])
    )
    assert spans["otlp/answer"].parent_span_id == root.span_id
    for child in ("otlp/retrieve", "otlp/fail"):
        assert spans[child].parent_span_id == spans["otlp/answer"].span_id
    # status and the exception event
    failed = spans["otlp/fail"]
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert failed.status.message == "ValueError: no luck"
    (event,) = failed.events
    facts = attributes_of(event)
    assert event.name == "exception" and facts["exception.type"] == "ValueError"
    assert facts["exception.message"] == "no luck"
    assert 'raise ValueError("no luck")' in facts["exception.stacktrace"]
    assert spans["otlp/answer"].status.code == Status.STATUS_CODE_UNSET
    # attributes
    answered = attributes_of(spans["otlp/answer"])
    assert answered["input.value"] == '{"question": "why?"}'
    assert answered["output.value"] == "42"
    assert answered["flowtrace.trace_status"] == "complete"
    assert answered["flowtrace.log_id"] == _main_store_log(answered["flowtrace.log_id"]).id
    assert answered["openinference.span.kind"] == "CHAIN"
    assert spans["otlp/answer"].kind == Span.SPAN_KIND_INTERNAL
    assert spans["otlp/answer"].end_time_unix_nano >= spans["otlp/answer"].start_time_unix_nano
    # the request: gzip, protobuf, the configured headers; the resource names the service
    headers = receiver.requests[0]
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-team"] == "a b" and headers["authorization"] == "k"
    assert receiver.resources[0]["telemetry.sdk.name"] == "flowtrace"
    assert stats["exported"] == 4 and stats["dropped"] == {}


def test_a_log_sent_early_is_one_span_with_its_end(receiver: Receiver) -> None:
    with fresh_pipeline(otlp_endpoint=receiver.url, live_after_s=0.0) as pipe:
        with flowtrace.flow("otlp/long") as long:
            # sent early, as an incomplete create, before it ends
            assert flowtrace.flush(30)
            assert _main_store_log(long.log_id).trace_status == "incomplete"
            long.output = "finally"
        assert pipe.flush(30)
        assert _otlp_export.flush(30)
    (span,) = receiver.wait_for(1)
    facts = attributes_of(span)
    assert facts["output.value"] == "finally" and facts["flowtrace.trace_status"] == "complete"


def test_a_continued_trace_keeps_the_callers_trace_id(receiver: Receiver) -> None:
    headers = {
        "traceparent": f"00-{'ab' * 16}-{_w3c.span_id_of('log_caller_1')}-01",
        "tracestate": "flowtrace=log_caller_1",
    }
    with fresh_pipeline(otlp_endpoint=receiver.url):
        served = flowtrace.flow("otlp/served")
        with flowtrace.continue_trace(headers), served, flowtrace.flow("otlp/inside"):
            pass
        assert flowtrace.flush(30) and _otlp_export.flush(30)
    spans = receiver.by_name()
    served, inside = spans["otlp/served"], spans["otlp/inside"]
    assert served.trace_id == inside.trace_id == bytes.fromhex("ab" * 16)
    assert served.parent_span_id == bytes.fromhex(_w3c.span_id_of("log_caller_1"))
    assert served.kind == Span.SPAN_KIND_SERVER
    assert inside.parent_span_id == served.span_id


def test_retryable_answers_are_retried_until_accepted() -> None:
    with Receiver(statuses=[503, 429]) as receiver:
        with fresh_pipeline(otlp_endpoint=receiver.url):
            with flowtrace.flow("otlp/retried"):
                pass
            assert flowtrace.flush(30) and _otlp_export.flush(30)
            stats = flowtrace.stats()["otlp"]
        assert [span.name for span in receiver.wait_for(1)] == ["otlp/retried"]
        assert len(receiver.requests) == 3
    assert stats["retried"] == 2 and stats["exported"] == 1


def test_a_refused_batch_is_dropped_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(statuses=[400, 400])
    with receiver, fresh_pipeline(otlp_endpoint=receiver.url) as pipe:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                with flowtrace.flow("otlp/refused"):
                    pass
                assert pipe.flush(30) and _otlp_export.flush(30)
        stats = flowtrace.stats()
    assert stats["otlp"]["dropped"] == {"rejected": 2} and stats["otlp"]["exported"] == 0
    assert stats["sent"] == 2 and stats["dropped"] == {}  # the main delivery is untouched
    warnings = [r for r in caplog.records if "OTLP endpoint" in r.getMessage()]
    assert len(warnings) == 1 and "400" in warnings[0].getMessage()


def _refusing_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


def test_a_dead_endpoint_does_not_delay_the_main_delivery() -> None:
    with fresh_pipeline(otlp_endpoint=_refusing_url(), retry_deadline_s=60.0) as pipe:
        with flowtrace.flow("otlp/dead") as log:
            pass
        assert pipe.flush(30)  # delivered to the main destination...
        assert _main_store_log(log.log_id).trace_status == "complete"
        assert not _otlp_export.flush(0.5)  # ...while the export keeps retrying
        stats = flowtrace.stats()["otlp"]
    assert stats["exported"] == 0 and "ConnectError" in (stats["last_error"] or "")


def test_a_hanging_endpoint_does_not_delay_the_main_delivery() -> None:
    with Receiver(hold=True) as receiver:
        with fresh_pipeline(otlp_endpoint=receiver.url) as pipe:
            with flowtrace.flow("otlp/first"):
                pass
            assert pipe.flush(30)
            flushing = threading.Thread(target=_otlp_export.flush, args=(30,))
            flushing.start()
            assert receiver.requested.wait(30)  # the export is stuck in its request now
            with flowtrace.flow("otlp/second") as second:
                pass
            assert pipe.flush(30)
            assert _main_store_log(second.log_id).trace_status == "complete"
            receiver.release()
            flushing.join(30)
            assert _otlp_export.flush(30)
        names = sorted(span.name for span in receiver.wait_for(2))
    assert names == ["otlp/first", "otlp/second"]


def test_past_its_bound_the_export_drops_and_counts(receiver: Receiver) -> None:
    settings = Settings(otlp_endpoint=receiver.url)
    export = _otlp_export.OtlpExport(receiver.url, {}, settings, max_queued_ops=2)
    _op_taps.add_tap(export.offer)
    try:
        with fresh_pipeline(batch_size=1000, first_batch_after_s=5.0) as pipe:
            for _ in range(5):
                with flowtrace.flow("otlp/burst"):
                    pass
            assert pipe.flush(30)
            stats = pipe.stats()
        assert export.flush(30)
    finally:
        _op_taps.remove_tap(export.offer)
        export.shutdown(5)
    assert stats["sent"] == 5 and stats["dropped"] == {}
    assert export.stats()["dropped"] == {"queue_full": 5} and receiver.spans == []


def test_shutdown_sends_what_is_left_open_logs_included(receiver: Receiver) -> None:
    settings = Settings(otlp_endpoint=receiver.url, live_after_s=0.0)
    export = _otlp_export.OtlpExport(receiver.url, {}, settings)
    _op_taps.add_tap(export.offer)
    try:
        with fresh_pipeline(live_after_s=0.0) as pipe:
            block = flowtrace.flow("otlp/open")
            block.__enter__()  # never left: open at shutdown
            assert pipe.flush(30)
            pipe.shutdown(5)
            assert export.shutdown(5)
            block.__exit__(None, None, None)
    finally:
        _op_taps.remove_tap(export.offer)
    (span,) = receiver.wait_for(1)
    assert span.name == "otlp/open"
    assert attributes_of(span)["flowtrace.trace_status"] == "incomplete"


# --- configuration ---------------------------------------------------------------------------


def test_the_standard_environment_variables_configure_it() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
    }
    settings = Settings.from_environment(environ)
    assert settings.otlp_endpoint == "http://collector:4318/v1/traces"
    assert settings.otlp_headers == "a=1"
    traces = {
        **environ,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
    }
    settings = Settings.from_environment(traces)
    assert (settings.otlp_endpoint, settings.otlp_headers) == ("http://t/x", "b=2")
    off = Settings.from_environment({**environ, "FLOWTRACE_OTLP_ENDPOINT": ""})
    assert off.otlp_endpoint == ""  # flowtrace's own variable wins: off


def test_headers_parse_and_bad_ones_are_refused() -> None:
    assert _otlp_export.parse_headers("api-key=s%3Dcret, x=1 ,") == {"api-key": "s=cret", "x": "1"}
    assert _otlp_export.parse_headers({"k": "v"}) == {"k": "v"}
    for bad in ("novalue", "=v", "a b=c", {"k": "v\r\nx: 1"}):
        with pytest.raises(ValueError, match="OTLP header"):
            _otlp_export.parse_headers(bad)


def test_without_an_endpoint_nothing_listens_to_the_planner() -> None:
    flowtrace.configure(otlp_endpoint="")
    try:
        assert _otlp_export.current() is None and _op_taps.taps == ()
        assert "otlp" not in flowtrace.stats()
    finally:
        flowtrace.configure()


# --- prompt logs, and a round trip through flowtrace's own OTLP ingest ------------------------


PROMPT_BODY: dict[str, Any] = {
    "log_id": "log_p_1",
    "path": "agents/chat",
    "prompt": {"model": "gpt-4o-mini", "provider": "openai", "temperature": 0.2},
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "output_message": {"role": "assistant", "content": "hello"},
    "prompt_tokens": 12,
    "output_tokens": 3,
    "finish_reason": "stop",
    "trace_status": "complete",
}


def test_prompt_logs_carry_the_genai_attributes() -> None:
    facts = draft_attributes(PROMPT_BODY, "prompt", "complete")
    assert facts["gen_ai.operation.name"] == "chat"
    assert facts["gen_ai.provider.name"] == "openai"
    assert facts["gen_ai.request.model"] == "gpt-4o-mini"
    assert facts["gen_ai.request.temperature"] == 0.2
    assert facts["gen_ai.usage.input_tokens"] == 12 and facts["gen_ai.usage.output_tokens"] == 3
    assert facts["gen_ai.response.finish_reasons"] == ["stop"]
    assert facts["openinference.span.kind"] == "LLM"
    assert '"parts": [{"type": "text", "content": "hi"}]' in facts["gen_ai.input.messages"]


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[InProcessServer]:
    with serve_in_thread(tmp_path / "flowtrace.db") as running:
        yield running


def test_flowtrace_serve_ingests_the_export(app_server: InProcessServer) -> None:
    endpoint = app_server.root_url + "/v1/traces"
    with fresh_pipeline(otlp_endpoint=endpoint, otlp_headers={"X-API-KEY": "test-key"}):
        with flowtrace.flow("otlp/served-root") as root:
            raise_and_catch()
        assert flowtrace.flush(30) and _otlp_export.flush(30)
        assert flowtrace.stats()["otlp"]["exported"] == 2
    trace_hex = _w3c.trace_id_of(root.log_id)
    root_id = f"span_{trace_hex}_{_w3c.span_id_of(root.log_id)}"
    with app_server.client() as client:
        stored = client.get(f"/logs/{root_id}").json()
    assert stored["trace_status"] == "complete"
    (child,) = stored["trace_children"]
    assert child["error"] == "KeyError: 'k'"
    # a prompt span, encoded here, is stored as a prompt log with its model and tokens
    draft = SpanDraft("cd" * 16, "ef" * 8, None, "chat", 1_000, 2_000)
    draft.attributes = draft_attributes(PROMPT_BODY, "prompt", "complete")
    payload = gzip.compress(encode_export_request([draft], {"service.name": "t"}, ("t", "1")))
    answer = httpx.post(
        endpoint,
        content=payload,
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "X-API-KEY": "test-key",
        },
    )
    assert answer.status_code == 200
    with app_server.client() as client:
        prompt = client.get(f"/logs/span_{'cd' * 16}_{'ef' * 8}").json()
    assert prompt["prompt"]["model"] == "gpt-4o-mini"
    assert (prompt["prompt_tokens"], prompt["output_tokens"]) == (12, 3)
    assert prompt["output_message"]["content"] == "hello"


def raise_and_catch() -> None:
    @flowtrace.flow(path="otlp/raises")
    def raises() -> None:
        raise KeyError("k")

    with contextlib.suppress(KeyError):
        raises()
