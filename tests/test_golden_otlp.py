"""Golden OTLP payloads captured from real producers (tests/golden/generate.py, run by hand),
ingested by a real server and asserted as trees: paths, parentage, messages, tokens, errors.

The producers are not needed here: the payloads are the protobuf bytes they exported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.otlputil import parse_protobuf, tree
from tests.serverutil import InProcessServer, serve_in_thread

GOLDEN = Path(__file__).with_name("golden")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    path = tmp_path_factory.mktemp("golden") / "golden.db"
    server: InProcessServer
    with (
        serve_in_thread(path) as server,
        httpx.Client(base_url=server.root_url, headers=server.headers, timeout=30) as http,
    ):
        yield http


def ingest(client: httpx.Client, name: str) -> dict[str, Any]:
    """Post the payload; return the stored trace of its root span."""
    body = (GOLDEN / f"{name}.otlp.pb").read_bytes()
    answer = client.post(
        "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert answer.status_code == 200
    assert answer.content == b""  # no partial_success: every span was stored
    spans = [
        s for r in parse_protobuf(body).resource_spans for ss in r.scope_spans for s in ss.spans
    ]
    (root,) = [span for span in spans if not span.parent_span_id]
    record = client.get(f"/v5/logs/span_{root.trace_id.hex()}_{root.span_id.hex()}")
    assert record.status_code == 200
    result: dict[str, Any] = record.json()
    return result


def test_an_otel_sdk_program_with_genai_attributes(client: httpx.Client) -> None:
    root = ingest(client, "otel_genai")
    assert tree(root) == (
        "flow/travel",
        "flow",
        False,
        (("prompt/chat gpt-4o", "prompt", False, ()), ("tool/weather", "tool", False, ())),
    )
    chat, weather = root["trace_children"]
    assert chat["prompt"]["model"] == "gpt-4o-2024-08-06"  # the response's model
    assert (chat["prompt_tokens"], chat["output_tokens"], chat["cache_read_tokens"]) == (
        812,
        41,
        512,
    )
    assert chat["messages"][0] == {"role": "system", "content": "You plan trips."}
    assert chat["output_message"]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city": "Lisbon", "month": 5}',
    }
    assert chat["prompt_cost"] > 0
    assert weather["error"] == "ConnectionError: weather service down"
    assert "ConnectionError" in weather["metadata"]["flowtrace"]["traceback"]
    assert weather["inputs"] == {"city": "Lisbon", "month": 5}
    assert root["metadata"]["session_id"] == "conv-7"


def test_pydantic_ai_with_its_test_model(client: httpx.Client) -> None:
    root = ingest(client, "pydantic_ai")
    assert tree(root) == (
        "flow/forecaster",
        "flow",
        False,
        (
            ("prompt/chat test", "prompt", False, ()),
            ("tool/forecast", "tool", False, ()),
            ("prompt/chat test", "prompt", False, ()),
        ),
    )
    first, tool, second = root["trace_children"]
    assert first["output_message"]["tool_calls"][0]["function"]["name"] == "forecast"
    assert tool["inputs"] == {"city": "a"} and tool["output"] == "sunny in a"
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][3]["tool_call_id"] == first["output_message"]["tool_calls"][0]["id"]
    assert second["output_message"]["content"] == '{"forecast":"sunny in a"}'
    assert (first["prompt_tokens"] + second["prompt_tokens"]) == 115
    # the agent's aggregated usage stays in its metadata: the trace counts each call once
    assert "prompt_tokens" not in root
    assert root["metadata"]["gen_ai.aggregated_usage.input_tokens"] == 115
    assert root["output"] == '{"forecast":"sunny in a"}'


def test_the_anthropic_sdks_own_spans(client: httpx.Client) -> None:
    root = ingest(client, "anthropic")
    assert tree(root) == ("prompt/anthropic.messages.create", "prompt", False, ())
    assert root["prompt"]["model"] == "claude-sonnet-4-5-20250929"
    assert root["prompt"]["provider"] == "anthropic"
    assert root["prompt"]["max_tokens"] == 128
    assert root["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Rain in London tomorrow?"},
    ]
    assert root["output_message"] == {"role": "assistant", "content": "Bring an umbrella."}
    assert (root["prompt_tokens"], root["output_tokens"]) == (25, 6)
    assert root["finish_reason"] == "end_turn"


def test_an_openinference_langchain_run(client: httpx.Client) -> None:
    root = ingest(client, "langchain_openinference")
    assert tree(root) == (
        "flow/RunnableSequence",
        "flow",
        False,
        (
            ("flow/ChatPromptTemplate", "flow", False, ()),
            ("prompt/FakeListChatModel", "prompt", False, ()),
            ("flow/StrOutputParser", "flow", False, ()),
        ),
    )
    assert (root["inputs"], root["output"]) == ({"input": "Hello world"}, "Bonjour le monde")
    llm = root["trace_children"][1]
    assert llm["messages"] == [
        {"role": "system", "content": "You translate to French."},
        {"role": "user", "content": "Hello world"},
    ]
    assert llm["output_message"] == {"role": "assistant", "content": "Bonjour le monde"}
    assert llm["prompt"]["provider"] == "fakelistchatmodel"
