"""OTLP/HTTP ingest through a real server: every encoding gives the same tree, children before
parents and replays are handled by the store's placeholder rules, bad input is bounded."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from flowtrace.store import Store
from tests.otlputil import gzipped, otlp_json, proto3_json, protobuf, record_spans, tree
from tests.serverutil import InProcessServer, serve_in_thread

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    """OTLP ingest over each backend: the span rules (placeholders, kinds) are store rules."""
    path = tmp_path_factory.mktemp("otlp") / "otlp.db"
    target = str(path)
    if request.param == "postgres":
        target = request.getfixturevalue("postgres_cluster").new_schema()
    with serve_in_thread(path, store=Store(target)) as running:
        yield running


@pytest.fixture
def client(server: InProcessServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, headers=server.headers, timeout=30) as http:
        yield http


def agent_program(tracer: Tracer) -> None:
    """An agent as the GenAI conventions describe it: a chat that calls a tool, the tool, and
    a tool that fails."""
    with tracer.start_as_current_span(
        "invoke_agent support",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
            "gen_ai.usage.input_tokens": 120,
            "user.id": "alice",
        },
    ):
        with tracer.start_as_current_span(
            "chat gpt-4o",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.request.temperature": 0.2,
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30,
                "gen_ai.usage.cache_read.input_tokens": 100,
                "gen_ai.response.finish_reasons": ["tool_calls"],
                "gen_ai.system_instructions": json.dumps(
                    [{"type": "text", "content": "You forecast weather."}]
                ),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Paris?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "id": "call_1",
                                    "name": "get_weather",
                                    "arguments": {"city": "Paris"},
                                }
                            ],
                            "finish_reason": "tool_calls",
                        }
                    ]
                ),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool get_weather",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                "gen_ai.tool.call.result": "sunny",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool broken",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "broken"},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                raise ValueError("no such city")
            except ValueError as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, "no such city"))


EXPECTED_TREE = (
    "flow/support",
    "flow",
    False,
    (
        ("prompt/chat gpt-4o", "prompt", False, ()),
        ("tool/get_weather", "tool", False, ()),
        ("tool/broken", "tool", False, ()),
    ),
)


def root_id(spans: list[ReadableSpan]) -> str:
    root = next(span for span in spans if span.parent is None)
    return f"span_{root.context.trace_id:032x}_{root.context.span_id:016x}"


def read(client: httpx.Client, log_id: str) -> dict[str, Any]:
    answer = client.get(f"/v5/logs/{log_id}")
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()
    return record


ENCODINGS = {"protobuf": protobuf, "otlp-json": otlp_json, "proto3-json": proto3_json}


@pytest.mark.parametrize("zipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("typed", [True, False], ids=["typed", "untyped"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_encoding_gives_the_same_tree(
    client: httpx.Client, encoding: str, zipped: bool, typed: bool
) -> None:
    base = 100 + list(ENCODINGS).index(encoding) * 4 + zipped * 2 + typed
    spans = record_spans(agent_program, base=base)
    body: bytes | str = ENCODINGS[encoding](spans)
    headers = {}
    if typed:
        headers["Content-Type"] = (PROTOBUF if encoding == "protobuf" else JSON) + "; charset=utf-8"
    if zipped:
        body = gzipped(body)
        headers["Content-Encoding"] = "gzip"
    answer = client.post("/v1/traces", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    if encoding == "protobuf" and typed:
        parsed = ExportTraceServiceResponse()
        parsed.ParseFromString(answer.content)
        assert parsed.partial_success.rejected_spans == 0
    else:
        assert answer.json() == {}
    record = read(client, root_id(spans))
    assert tree(record) == EXPECTED_TREE
    assert record["user"] == "alice"
    assert "prompt_tokens" not in record  # an agent's totals are not counted again
    chat, tool, broken = record["trace_children"]
    assert chat["prompt"]["model"] == "gpt-4o"
    assert chat["prompt"]["provider"] == "openai"
    assert chat["prompt"]["temperature"] == 0.2
    assert (chat["prompt_tokens"], chat["output_tokens"], chat["cache_read_tokens"]) == (
        120,
        30,
        100,
    )
    assert chat["finish_reason"] == "tool_calls"
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    assert chat["output_message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert chat["prompt_cost"] > 0  # genai-prices knows gpt-4o
    assert tool["inputs"] == {"city": "Paris"} and tool["output"] == "sunny"
    assert tool["tool"]["function"]["name"] == "get_weather"
    assert broken["error"] == "ValueError: no such city"
    assert "raise ValueError" in broken["metadata"]["flowtrace"]["traceback"]
    assert record["trace_status"] == "complete"
    assert record["metadata"]["otel"]["service"] == "tests"


def chain_program(length: int) -> Any:
    """`length` spans: a chain of steps, each with a leaf (and the next step) under it."""

    def program(tracer: Tracer) -> None:
        def level(depth: int) -> None:
            with tracer.start_as_current_span(f"step {depth}"):
                with tracer.start_as_current_span(f"leaf {depth}"):
                    pass
                if depth < length // 2 - 1:
                    level(depth + 1)

        level(0)

    return program


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_shuffled_trace_is_assembled_in_order(server: InProcessServer, seed: int) -> None:
    spans = record_spans(chain_program(50), base=10_000 + seed % 1_000_000)
    rng = random.Random(seed)
    rng.shuffle(spans)
    requests = [protobuf(spans[index::10]) for index in range(10)]
    in_order = sorted(spans, key=lambda span: span.start_time or 0)
    headers = {**server.headers, "Content-Type": PROTOBUF}
    with httpx.Client(base_url=server.root_url, headers=headers, timeout=30) as client:
        for body in requests:
            assert client.post("/v1/traces", content=body).status_code == 200
        record = read(client, root_id(spans))
        assert len(spans) == 50
        flat = _flatten(record)
        assert not any(log.get("placeholder") for log in flat)
        assert [log["id"] for log in flat] == _preorder_ids(in_order)
        expected = record
        for body in rng.sample(requests, 3):  # replaying any request changes nothing
            assert client.post("/v1/traces", content=body).status_code == 200
        assert read(client, root_id(spans)) == expected


def _flatten(record: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = [record]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node["trace_children"]))
    return out


def _preorder_ids(spans: list[ReadableSpan]) -> list[str]:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    out: list[str] = []
    stack = list(reversed(children[None]))
    while stack:
        span = stack.pop()
        out.append(f"span_{span.context.trace_id:032x}_{span.context.span_id:016x}")
        stack.extend(reversed(children.get(span.context.span_id, [])))
    return out


def test_a_parent_that_never_arrives_stays_a_pending_root(client: httpx.Client) -> None:
    spans = record_spans(agent_program, base=900)
    children = [span for span in spans if span.parent is not None]
    assert (
        client.post(
            "/v1/traces", content=protobuf(children), headers={"Content-Type": PROTOBUF}
        ).status_code
        == 200
    )
    pending = read(client, root_id(spans))
    assert pending["placeholder"] is True
    assert pending["trace_status"] == "incomplete"
    assert pending["flow"]["path"] == "flowtrace/pending"
    assert len(pending["trace_children"]) == 3
    # the parent arrives: the placeholder is filled, its children kept
    root = [span for span in spans if span.parent is None]
    assert (
        client.post(
            "/v1/traces", content=protobuf(root), headers={"Content-Type": PROTOBUF}
        ).status_code
        == 200
    )
    assert tree(read(client, root_id(spans))) == EXPECTED_TREE


def test_the_humanloop_route_answers_the_records(client: httpx.Client) -> None:
    spans = record_spans(agent_program, base=950)
    answer = client.post("/v5/import/otel/v1/traces", content=proto3_json(spans))
    assert answer.status_code == 200
    records = answer.json()["records"]
    assert len(records) == 4 and root_id(spans) in records


def test_bearer_auth_and_missing_keys(server: InProcessServer) -> None:
    body = protobuf(record_spans(agent_program, base=960))
    headers = {"Content-Type": PROTOBUF}
    with httpx.Client(base_url=server.root_url, timeout=30) as bare:
        assert bare.post("/v1/traces", content=body, headers=headers).status_code == 401
        bearer = {**headers, "Authorization": f"Bearer {server.api_key}"}
        assert bare.post("/v1/traces", content=body, headers=bearer).status_code == 200
        wrong = {**headers, "Authorization": "Bearer nope"}
        assert bare.post("/v1/traces", content=body, headers=wrong).status_code == 401


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/logs"])
def test_other_signals_are_accepted_and_dropped(client: httpx.Client, path: str) -> None:
    assert (
        client.post(path, content=b"\x0a\x00", headers={"Content-Type": PROTOBUF}).status_code
        == 200
    )
    assert client.post(path, json={"resourceMetrics": []}).json() == {}


# --- negative ------------------------------------------------------------------------------------


def test_a_truncated_protobuf_is_a_400(client: httpx.Client) -> None:
    body = protobuf(record_spans(agent_program, base=970))
    answer = client.post(
        "/v1/traces", content=body[: len(body) // 2], headers={"Content-Type": PROTOBUF}
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROTOBUF
    assert b"not an OTLP" in answer.content


def test_a_zip_bomb_is_a_413(client: httpx.Client) -> None:
    bomb = gzip.compress(b"\x00" * (64 * 2**20), compresslevel=9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 2**20
    answer = client.post(
        "/v1/traces", content=bomb, headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert answer.status_code == 413


def test_a_logs_payload_posted_to_traces_is_a_400(client: httpx.Client) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    logs = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                time_unix_nano=1,
                                severity_text="INFO",
                                body=AnyValue(string_value="hello"),
                                trace_id=b"\x01" * 16,
                                span_id=b"\x02" * 8,
                            )
                        ]
                    )
                ]
            )
        ]
    )
    answer = client.post(
        "/v1/traces", content=logs.SerializeToString(), headers={"Content-Type": PROTOBUF}
    )
    assert answer.status_code == 400
    as_json = client.post("/v1/traces", json={"resourceLogs": []})
    assert as_json.status_code == 400


def _proto_span(**fields: Any) -> ProtoSpan:
    return ProtoSpan(**fields)


def test_absurd_spans_are_bounded_never_a_5xx(client: httpx.Client) -> None:
    huge = "x" * (3 * 2**20)
    spans = [
        _proto_span(trace_id=b"\x00" * 16, span_id=b"\x01" * 8, name="zero trace"),
        _proto_span(trace_id=b"\x01" * 5, span_id=b"\x01" * 8, name="short id"),
        _proto_span(
            trace_id=b"\xff" * 16,
            span_id=b"\xff" * 8,
            name="far future",
            start_time_unix_nano=2**64 - 1,
            end_time_unix_nano=5,
        ),
        _proto_span(
            trace_id=b"\xfe" * 16,
            span_id=b"\xfe" * 8,
            name=huge,
            attributes=[
                KeyValue(key=f"k{i}", value=AnyValue(string_value=huge[:100]))
                for i in range(10_000)
            ],
        ),
        _proto_span(
            trace_id=b"\xfc" * 16,
            span_id=b"\xfc" * 8,
            parent_span_id=b"\xfc" * 8,
            name="own parent",
        ),
        _proto_span(
            trace_id=b"\xfd" * 16,
            span_id=b"\xfd" * 8,
            name="big value",
            attributes=[KeyValue(key="input.value", value=AnyValue(string_value=huge))],
        ),
    ]
    body = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    ).SerializeToString()
    answer = client.post("/v1/traces", content=body, headers={"Content-Type": PROTOBUF})
    assert answer.status_code == 200
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(answer.content)
    # the two spans without usable ids, and the one that is its own parent
    assert parsed.partial_success.rejected_spans == 3
    assert "cannot be its own parent" in parsed.partial_success.error_message
    future = read(client, "span_" + "ff" * 16 + "_" + "ff" * 8)
    assert future["start_time"].startswith("2554-07-21")  # 2**64 - 1 ns
    assert future["end_time"] == future["start_time"]
    wide = read(client, "span_" + "fe" * 16 + "_" + "fe" * 8)
    assert len(wide["flow"]["path"]) < 200
    assert len(wide["metadata"]) <= 258
    assert wide["metadata"]["otel"]["attributes_dropped"] > 0
    big = read(client, "span_" + "fd" * 16 + "_" + "fd" * 8)
    assert len(big["inputs"]["input"]) < 70_000
    assert big["inputs"]["input"].endswith("chars]")


def test_malformed_json_and_unknown_encoding_are_refused(client: httpx.Client) -> None:
    assert (
        client.post("/v1/traces", content=b"{not json", headers={"Content-Type": JSON}).status_code
        == 400
    )
    assert (
        client.post("/v1/traces", content=b"{}", headers={"Content-Encoding": "br"}).status_code
        == 415
    )
    assert (
        client.post(
            "/v1/traces", content=b"\x1f\x8b\x08\x00trunc", headers={"Content-Encoding": "gzip"}
        ).status_code
        == 400
    )
