"""An LLM agent, traced: the OpenAI SDK calls a model, the model calls a tool, the answer streams.

    pip install -e '.[server,openai]'
    python examples/llm_agent.py
    flowtrace show last                  # the trace as a tree in the terminal
    flowtrace ui                         # or in the browser

Runs offline with no keys: the example starts a small fake OpenAI-compatible model on loopback
(a scripted model: it asks for the weather tool, then answers from the tool's result) and
points a real `openai.OpenAI` client at it. `flowtrace.instrument_openai(client)` is the only
line added for tracing the LLM calls: each becomes a prompt log (messages, tools, the output
with its tool calls, tokens, time to first token) under the flow that made it.

What ends up in the trace (with no endpoint configured: the embedded store,
.flowtrace/flowtrace.db in the working directory, or $FLOWTRACE_DB_PATH):

    agents/weather                          the agent's flow: the question in, the answer out
    +-- prompt/chat fake-gpt                the model asks for get_weather (a tool call)
    +-- agents/weather/tools/get_weather    the tool, run by the agent
    +-- prompt/chat fake-gpt                the model's answer, streamed
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

import flowtrace
from flowtrace import flow

MODEL = "fake-gpt"
WEATHER = {"Paris": "sunny, 21 °C", "Oslo": "snowing, -3 °C"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


# --- the agent: what you would write ----------------------------------------------------------


@flow(path="agents/weather/tools/get_weather")
def get_weather(city: str) -> str:
    return WEATHER.get(city, "unknown")


class WeatherAgent:
    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client

    @flow(path="agents/weather")  # `self` is left out of the log's inputs
    def answer(self, question: str) -> str:
        messages: list[Any] = [
            {"role": "system", "content": "Answer weather questions with the get_weather tool."},
            {"role": "user", "content": question},
        ]
        first = self.client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        reply = first.choices[0].message
        messages.append(reply)  # the SDK's own message object, as agents do
        for call in reply.tool_calls or ():
            arguments = json.loads(call.function.arguments)
            result = get_weather(**arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        stream = self.client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        return "".join(pieces)


def main() -> None:
    with fake_model() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="offline")
        flowtrace.instrument_openai(client)  # its calls become prompt logs
        print("[agent] What's the weather in Paris?")
        WeatherAgent(client).answer("What's the weather in Paris?")
    delivered = flowtrace.flush(timeout=10)
    print(f"trace {'recorded' if delivered else 'NOT delivered yet'}")
    print("  flowtrace show last     # the trace as a tree")
    print("  flowtrace ui            # browse every trace")


# --- the fake model: an OpenAI-compatible server on loopback, for running offline -------------


def _model_turn(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The scripted model: a tool call for a question, an answer once the tool has spoken."""
    last = messages[-1]
    if last["role"] == "tool":
        city = next(c for c in WEATHER if c in str(messages[1]["content"]))
        return {"role": "assistant", "content": f"In {city} it is {last['content']} right now."}
    city = next((c for c in WEATHER if c in str(last["content"])), "Paris")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _usage(messages: list[dict[str, Any]], message: dict[str, Any]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content") or "").split()) + 4 for m in messages)
    completion = len(str(message.get("content") or "").split()) + 10 * bool(
        message.get("tool_calls")
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunks(message: dict[str, Any], usage: dict[str, int]) -> Iterator[dict[str, Any]]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    for number, word in enumerate(str(message["content"]).split(" ")):
        delta = {"role": "assistant", "content": word if number == 0 else " " + word}
        yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield {**head, "choices": [], "usage": usage}


class _FakeModel(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        message = _model_turn(request["messages"])
        usage = _usage(request["messages"], message)
        self.send_response(200)
        if request.get("stream"):
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            for chunk in _chunks(message, usage):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True
            return
        reason = "tool_calls" if message.get("tool_calls") else "stop"
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                "usage": usage,
            }
        ).encode()
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class fake_model:  # a `with` block, named as one
    """The fake model served in a thread for the `with` block; its base URL as the value."""

    def __enter__(self) -> str:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeModel)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    main()
