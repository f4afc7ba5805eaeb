"""`flowtrace.otel`: OpenTelemetry spans inside a flow become its child logs, with the user's
own provider (the processor), a private provider, or the global one (only when asked)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind

import flowtrace
import flowtrace.otel
from flowtrace import flow
from flowtrace._contract import span_log_id
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.store import Store
from flowtrace.testing import capture_logs
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.scriptutil import run_script, script_env

LLM_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-5",
    "gen_ai.usage.input_tokens": 20,
    "gen_ai.usage.output_tokens": 5,
    "gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "hi"}]}]
    ),
}


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    """The user's own provider, with flowtrace's processor added."""
    user_provider = TracerProvider()
    user_provider.add_span_processor(flowtrace.otel.span_processor())
    yield user_provider
    user_provider.shutdown()


def _log_id(span: Any) -> str:
    context = span.get_span_context()
    return span_log_id(f"{context.trace_id:032x}", f"{context.span_id:016x}")


# --- nothing global ---------------------------------------------------------------------------


def test_the_global_provider_is_never_touched_unless_asked(provider: TracerProvider) -> None:
    before = trace_api.get_tracer_provider()
    with capture_logs() as captured, flow("work"):
        private = flowtrace.otel.tracer_provider()
        flowtrace.otel.span_processor()
        with private.get_tracer("t").start_as_current_span("chat", attributes=LLM_ATTRIBUTES):
            pass
        with provider.get_tracer("t").start_as_current_span("chat", attributes=LLM_ATTRIBUTES):
            pass
    assert trace_api.get_tracer_provider() is before
    assert private is flowtrace.otel.tracer_provider() and private is not before
    assert len(captured.by_kind("prompt")) == 2


# --- the processor: what it keeps ---------------------------------------------------------------


def test_the_processor_ignores_spans_outside_flows(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    with capture_logs() as captured, tracer.start_as_current_span("c", attributes=LLM_ATTRIBUTES):
        pass
    assert captured.logs == []


def test_the_processor_keeps_llm_work_and_drops_the_rest(provider: TracerProvider) -> None:
    http = provider.get_tracer("opentelemetry.instrumentation.httpx")
    llm = provider.get_tracer("opentelemetry.instrumentation.openai.v1")
    with capture_logs() as captured, flow("work") as work:
        with http.start_as_current_span("POST", kind=SpanKind.CLIENT):
            pass
        with llm.start_as_current_span("openai.chat"):  # by its scope alone
            pass
        with http.start_as_current_span("GET", attributes={"http.method": "GET"}):
            pass
    records = captured.records
    assert [r["path"] for r in records] == ["flow/openai.chat", "work"]
    assert records[0]["trace_parent_id"] == work.log_id


def test_two_processors_on_one_provider_make_one_log() -> None:
    """`span_processor()` added by hand and again by `install_global()`: one log per span."""
    user_provider = TracerProvider()
    user_provider.add_span_processor(flowtrace.otel.span_processor())
    user_provider.add_span_processor(flowtrace.otel.span_processor())
    tracer = user_provider.get_tracer("anthropic")
    with capture_logs() as captured, flow("work"):
        with tracer.start_as_current_span("c", attributes=LLM_ATTRIBUTES):
            pass
        with user_provider.get_tracer("app").start_as_current_span("late") as span:
            span.set_attributes(LLM_ATTRIBUTES)
    assert sorted(log.path for log in captured.logs) == ["prompt/c", "prompt/late", "work"]


def test_should_capture_keeps_more(provider: TracerProvider) -> None:
    user_provider = TracerProvider()
    user_provider.add_span_processor(
        flowtrace.otel.span_processor(lambda span: span.name.startswith("retrieve"))
    )
    tracer = user_provider.get_tracer("app")
    with capture_logs() as captured, flow("work"):
        with tracer.start_as_current_span("retrieve docs", attributes={"k": 3}):
            pass
        with tracer.start_as_current_span("render"):
            pass
    [record] = captured.by_kind("flow")[:1]
    assert record["path"] == "flow/retrieve docs"
    assert record["metadata"]["k"] == 3
    assert len(captured.logs) == 2  # the span and the flow, not "render"


def test_a_failing_should_capture_is_swallowed(
    fail_on_internal_errors: list[tuple[str, BaseException | None]],
) -> None:
    user_provider = TracerProvider()
    user_provider.add_span_processor(flowtrace.otel.span_processor(lambda span: 1 / 0 > 0))
    tracer = user_provider.get_tracer("app")
    with capture_logs() as captured, flow("work"), tracer.start_as_current_span("x"):
        pass
    assert [kind for kind, _ in fail_on_internal_errors] == ["otel-span"]
    fail_on_internal_errors.clear()
    assert [log.path for log in captured.logs] == ["work"]


def test_llm_attributes_set_after_the_start_still_count(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("app")
    with capture_logs() as captured, flow("work") as work, tracer.start_as_current_span("c") as s:
        s.set_attributes(LLM_ATTRIBUTES)
    [prompt] = captured.by_kind("prompt")
    assert prompt["trace_parent_id"] == work.log_id
    assert prompt["prompt_tokens"] == 20


# --- the private provider ----------------------------------------------------------------------


def test_the_private_provider_records_spans_outside_flows_as_roots() -> None:
    tracer = flowtrace.otel.tracer_provider().get_tracer("app")
    with (
        capture_logs() as captured,
        tracer.start_as_current_span("plain step"),
        tracer.start_as_current_span("inner"),
    ):
        pass
    records = {r["path"]: r for r in captured.records}
    assert set(records) == {"flow/plain step", "flow/inner"}
    assert "trace_parent_id" not in records["flow/plain step"]
    assert records["flow/inner"]["trace_parent_id"] == records["flow/plain step"]["log_id"]


# --- the tree ----------------------------------------------------------------------------------


def _request_tree(provider: TracerProvider) -> dict[str, Any]:
    """A server span around a flow around a chain span around an HTTP span around an LLM call
    around a nested flow: the ids of what should be logged."""
    server = provider.get_tracer("opentelemetry.instrumentation.fastapi")
    chain = provider.get_tracer("openinference.instrumentation.langchain")
    http = provider.get_tracer("opentelemetry.instrumentation.httpx")
    anthropic = provider.get_tracer("anthropic")
    ids: dict[str, Any] = {}
    with (
        server.start_as_current_span("POST /answer", kind=SpanKind.SERVER),
        flow("handle") as handle,
        chain.start_as_current_span(
            "RunnableSequence", attributes={"openinference.span.kind": "CHAIN"}
        ) as chain_span,
        http.start_as_current_span("POST", kind=SpanKind.CLIENT),
        anthropic.start_as_current_span(
            "chat claude-sonnet-4-5", kind=SpanKind.CLIENT, attributes=LLM_ATTRIBUTES
        ) as llm_span,
        flow("on_response") as nested,
    ):
        ids.update(
            handle=handle.log_id,
            chain=_log_id(chain_span),
            llm=_log_id(llm_span),
            nested=nested.log_id,
        )
    return ids


def test_a_server_span_a_flow_a_chain_an_llm_call_and_a_nested_flow_make_the_right_tree(
    provider: TracerProvider,
) -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        ids = _request_tree(provider)
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["dropped"] == {}
    logs = exporter.logs
    assert set(logs) == set(ids.values())  # neither the server span nor the HTTP span
    assert "trace_parent_id" not in logs[ids["handle"]]
    assert logs[ids["chain"]]["trace_parent_id"] == ids["handle"]
    assert logs[ids["llm"]]["trace_parent_id"] == ids["chain"]  # the HTTP span is transparent
    assert logs[ids["nested"]]["trace_parent_id"] == ids["llm"]
    assert exporter.kinds[ids["llm"]] == "prompt_log"
    assert exporter.kinds[ids["chain"]] == "log"
    assert logs[ids["llm"]]["prompt"]["provider"] == "anthropic"
    assert all(exporter.status_of(log_id) == "complete" for log_id in ids.values())


def test_the_tree_in_the_embedded_store(provider: TracerProvider, tmp_path: Path) -> None:
    db = tmp_path / "flowtrace.db"
    with fresh_pipeline(db_path=str(db)):
        ids = _request_tree(provider)
        assert flowtrace.flush(WAIT_S)
    with Store(db) as store:
        record = store.get_log(ids["handle"]).model_dump(mode="json", exclude_none=True)
    [chain] = record["trace_children"]
    [llm] = chain["trace_children"]
    [nested] = llm["trace_children"]
    assert (chain["id"], llm["id"], nested["id"]) == (ids["chain"], ids["llm"], ids["nested"])
    assert llm["flow"]["type"] == "prompt" and llm["prompt_tokens"] == 20
    assert llm["messages"] == [{"role": "user", "content": "hello"}]
    assert llm["trace_status"] == "complete"


def test_a_span_ended_in_another_context_leaves_no_stale_current_log(
    provider: TracerProvider,
) -> None:
    import contextvars

    tracer = provider.get_tracer("anthropic")
    with capture_logs() as captured, flow("work") as work:
        span = tracer.start_span("chat", attributes=LLM_ATTRIBUTES)  # not made current
        assert flowtrace.current_log() is not work  # its log is current while it runs
        contextvars.copy_context().run(span.end)
        assert flowtrace.current_log() is work
    assert len(captured.by_kind("prompt")) == 1


def test_a_span_that_never_ends_does_not_hold_back_its_flows_past_the_exit(
    provider: TracerProvider,
) -> None:
    """A producer leaks a span: the flow that ended inside it still reaches the destination
    at shutdown, under an incomplete log of what the span said so far."""
    exporter = MemoryExporter()
    tracer = provider.get_tracer("anthropic")
    with fresh_pipeline(exporter) as pipe:
        with flow("request") as request:
            leaked = tracer.start_span("chat", attributes=LLM_ATTRIBUTES)
            with trace_api.use_span(leaked), flow("callback") as callback:
                pass
        assert flowtrace.current_log() is None  # the block took the span's hold with it
        assert flowtrace.flush(WAIT_S)
        assert callback.log_id not in exporter.logs  # it waits for the span's end
        pipe.shutdown(WAIT_S)
    span_log = exporter.logs[_log_id(leaked)]
    assert span_log["trace_status"] == "incomplete"
    assert span_log["path"] == "flow/chat"
    assert span_log["messages"] == [{"role": "user", "content": "hello"}]
    assert exporter.kinds[_log_id(leaked)] == "log"
    assert span_log["metadata"]["flowtrace"]["late_child_of"] == request.log_id
    assert exporter.logs[callback.log_id]["trace_parent_id"] == _log_id(leaked)
    assert exporter.status_of(callback.log_id) == "complete"


_NO_GLOBAL_SCRIPT = """
from opentelemetry import trace
before = trace.get_tracer_provider()
import flowtrace, flowtrace.otel
provider = flowtrace.otel.tracer_provider()
flowtrace.otel.span_processor()
with flowtrace.flow("work"), provider.get_tracer("t").start_as_current_span("s"):
    pass
assert trace.get_tracer_provider() is before, "the global provider changed"
assert trace._TRACER_PROVIDER is None, "a global provider was set"
print("untouched")
"""


def test_importing_and_using_flowtrace_otel_sets_no_global_provider() -> None:
    done = run_script(_NO_GLOBAL_SCRIPT, script_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untouched"


# --- install_global: in a fresh interpreter (the global provider can be set once) -------------

_INSTALL_SCRIPT = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
import flowtrace, flowtrace.otel
from flowtrace.testing import capture_logs

users = {users}
if users:
    mine = TracerProvider()
    trace.set_tracer_provider(mine)
before = trace.get_tracer_provider()
first = flowtrace.otel.install_global()
second = flowtrace.otel.install_global()
with capture_logs() as captured, flowtrace.flow("work"):
    tracer = trace.get_tracer("anthropic")
    with tracer.start_as_current_span("chat", attributes={{"gen_ai.operation.name": "chat"}}):
        pass
    with trace.get_tracer("opentelemetry.instrumentation.httpx").start_as_current_span("GET"):
        pass
processors = trace.get_tracer_provider()._active_span_processor._span_processors
print(json.dumps({{
    "same": trace.get_tracer_provider() is before,
    "returned": first is trace.get_tracer_provider() and second is first,
    "ours": sum(type(p).__name__ == "FlowtraceSpanProcessor" for p in processors),
    "kinds": sorted(r["path"] for r in captured.records),
}}))
"""


@pytest.mark.parametrize("users", [True, False])
def test_install_global_joins_or_sets_the_global_provider_once(users: bool) -> None:
    done = run_script(_INSTALL_SCRIPT.format(users=users), script_env())
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["same"] is users  # joined the user's provider, or set ours
    assert result["returned"] is True
    assert result["ours"] == 1  # installed once, however often asked
    assert result["kinds"] == ["prompt/chat", "work"]


def test_looks_like_llm_work_reads_scopes_and_attributes(provider: TracerProvider) -> None:
    seen: list[ReadableSpan] = []

    class Keep(flowtrace.otel.FlowtraceSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    recorder = TracerProvider()
    recorder.add_span_processor(Keep())
    for scope, attributes in [
        ("pydantic-ai", {}),
        ("app", {"openinference.span.kind": "LLM"}),
        ("app", {"traceloop.span.kind": "workflow"}),
        ("opentelemetry.instrumentation.requests", {"http.method": "GET"}),
        ("app", {}),
    ]:
        with recorder.get_tracer(scope).start_as_current_span("s", attributes=attributes):
            pass
    assert [flowtrace.otel.looks_like_llm_work(span) for span in seen] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_spans_under_an_unsampled_root_go_with_its_trace_and_a_failed_one_keeps_it(
    provider: TracerProvider,
) -> None:
    """A span's log inherits its trace's sampling decision: dropped with a dropped trace, kept
    (under its parent) with a kept one; a span that failed keeps the trace, as a failed flow
    does. For a plain function's root held as a record (`_held.HeldRoot`), and a block's."""
    tracer = provider.get_tracer("t")

    @flow(path="otel/held", sample_rate=0.0)
    def agent(question: str, how: str) -> str:
        with (
            contextlib.suppress(ValueError),
            tracer.start_as_current_span("chat", attributes=LLM_ATTRIBUTES),
        ):
            if how == "span fails":
                raise ValueError("the model call failed")  # recorded on the span
        if how == "root fails":
            raise RuntimeError("kept by the tail rule")
        return "answer"

    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        assert agent("q", "fine") == "answer"  # dropped, with its span's log
        with pytest.raises(RuntimeError, match="kept"):
            agent("q", "root fails")
        assert agent("q", "span fails") == "answer"  # kept: its span failed
        # a block's unsampled root, and its span: dropped whole
        with (
            flow("otel/block", sample_rate=0.0),
            tracer.start_as_current_span("chat", attributes=LLM_ATTRIBUTES),
        ):
            pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    roots = {log_id: body for log_id, body in exporter.logs.items() if body["path"] == "otel/held"}
    assert sorted(body["inputs"]["how"] for body in roots.values()) == ["root fails", "span fails"]
    spans = [body for body in exporter.logs.values() if body["path"] == "prompt/chat"]
    assert len(spans) == 2 and {body["trace_parent_id"] for body in spans} == set(roots)
    assert len(exporter.logs) == 4
    assert stats["kept_by_tail_error"] == 2 and stats["sampled_out_logs"] == 4


def test_a_span_directly_under_a_continued_trace_is_decided_as_a_local_root(
    provider: TracerProvider, tmp_path: Path
) -> None:
    """No flow between the caller's headers and the span: its log is the local root, decided
    as one (the caller's trusted decision, else this process's rate, from its span id)."""
    from tests.test_sampling import _caller_headers

    tracer = provider.get_tracer("t")

    def call_model(fail: bool) -> None:
        with (
            contextlib.suppress(ValueError),
            tracer.start_as_current_span("chat", attributes=LLM_ATTRIBUTES),
        ):
            if fail:
                raise ValueError("the model call failed")

    with fresh_pipeline(db_path=str(tmp_path / "s.db"), sample_rate=0.0), capture_logs() as got:
        for trusted in (True, False):
            for fail in (False, True):
                headers = _caller_headers(f"log_caller_{trusted}_{fail}", sampled=False)
                with flowtrace.continue_trace(headers, trusted=trusted):
                    call_model(fail)
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    # the two that failed, kept by the tail rule; the trusted one under its caller
    assert len(got.records) == 2
    by_parent = {record.get("trace_parent_id"): record for record in got.records}
    assert set(by_parent) == {"log_caller_True_True", None}  # untrusted: noted, not linked
    note = by_parent[None]["metadata"]["flowtrace"]["remote_parent"]
    assert note["log_id"] == "log_caller_False_True" and note["linked"] is False
    assert stats["kept_by_tail_error"] == 2 and stats["sampled_out"] == 2
