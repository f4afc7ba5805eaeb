"""A fake OpenAI / Anthropic HTTP server on loopback, for the real SDKs to call offline.

    with FakeLLM() as fake:
        fake.reply(json_reply(chat_body("hi")))
        OpenAI(base_url=fake.openai_url, api_key="k").chat.completions.create(...)

Replies are served in the order queued (a path with none queued gets a plain answer of its
API); each is JSON or server-sent events, with a status and headers of its choosing. Every
request is kept (`fake.requests`: path, headers, JSON body) so a test can check what was sent.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeLLM",
    "Reply",
    "anthropic_body",
    "anthropic_events",
    "chat_body",
    "chat_chunks",
    "json_reply",
    "responses_body",
    "responses_events",
    "sse_reply",
    "tool_call",
]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON
    events: list[tuple[str | None, Any]] | None = None  # SSE: (event name, JSON data or text)
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(body: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status=status, body=body, headers={"x-request-id": "req_fake", **headers})


def sse_reply(events: list[tuple[str | None, Any]], **headers: str) -> Reply:
    return Reply(events=events, headers={"x-request-id": "req_fake", **headers})


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


class FakeLLM:
    """The server, started on entering and stopped on leaving."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # each reply at once, not after a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                request = Request(self.path, dict(self.headers.items()), json.loads(raw or b"{}"))
                with fake._lock:
                    fake.requests.append(request)
                    reply = fake._replies.popleft() if fake._replies else fake._default(request)
                try:
                    if reply.events is None:
                        self._send_json(reply)
                    else:
                        self._send_events(reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client left early: as it may

            def _send_json(self, reply: Reply) -> None:
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _send_events(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                for event, data in reply.events or ():
                    text = data if isinstance(data, str) else json.dumps(data)
                    prefix = f"event: {event}\n" if event else ""
                    self.wfile.write(f"{prefix}data: {text}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def _default(self, request: Request) -> Reply:
        """A plain answer of the API called: JSON, or events when the request streams."""
        streams = isinstance(request.body, dict) and request.body.get("stream") is True
        if request.path.endswith("/messages"):
            if streams:
                return sse_reply(anthropic_events(["o", "k"]))
            return json_reply(anthropic_body("ok"))
        if request.path.endswith("/responses"):
            return (
                sse_reply(responses_events(["o", "k"]))
                if streams
                else json_reply(responses_body("ok"))
            )
        return sse_reply(chat_chunks(["o", "k"])) if streams else json_reply(chat_body("ok"))

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the fake as a process of its own)."""
        print(self.openai_url, flush=True)
        self._server.serve_forever()

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- OpenAI Chat Completions -------------------------------------------------------------------


def chat_body(
    *texts: str,
    tool_calls: list[dict[str, Any]] | None = None,
    model: str = "gpt-4o-mini-2024-07-18",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chat completion: one choice per text (tool calls on the first)."""
    choices = []
    for index, text in enumerate(texts or ("",)):
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if index == 0 and tool_calls:
            message["tool_calls"] = tool_calls
        reason = "tool_calls" if index == 0 and tool_calls else "stop"
        choices.append({"index": index, "message": message, "finish_reason": reason})
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": choices,
        "usage": usage
        or {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "total_tokens": 17,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def chat_chunks(
    pieces: list[str],
    *,
    choices: int = 1,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: bool = True,
    done: bool = True,
    model: str = "gpt-4o-mini-2024-07-18",
) -> list[tuple[str | None, Any]]:
    """SSE chunks: each piece as a content delta of every choice; tool calls as argument
    deltas in two halves; a usage-only last chunk with empty `choices`; `[DONE]`."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> tuple[None, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": reason}
        return (None, {**base, "choices": [choice]})

    events: list[tuple[str | None, Any]] = []
    for index in range(choices):
        events.append(chunk(index, {"role": "assistant", "content": ""}))
    for piece in pieces:
        for index in range(choices):
            events.append(chunk(index, {"content": piece}))
    for number, call in enumerate(tool_calls or ()):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {"index": number, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": arguments[:half]}
        events.append(chunk(0, {"tool_calls": [head]}))
        tail = {"index": number, "function": {"arguments": arguments[half:]}}
        events.append(chunk(0, {"tool_calls": [tail]}))
    for index in range(choices):
        reason = "tool_calls" if index == 0 and tool_calls else "stop"
        events.append(chunk(index, {}, reason))
    if usage:
        counts = {
            "prompt_tokens": 9,
            "completion_tokens": 3 * choices,
            "total_tokens": 9 + 3 * choices,
        }
        events.append((None, {**base, "choices": [], "usage": counts}))
    if done:
        events.append((None, "[DONE]"))
    return events


# --- OpenAI Responses --------------------------------------------------------------------------


def responses_body(
    text: str,
    function_call: dict[str, Any] | None = None,
    *,
    model: str = "gpt-4.1-2025-04-14",
    status: str = "completed",
) -> dict[str, Any]:
    """A response: a message with one text part, then a function call when given
    (`{"call_id", "name", "arguments"}`)."""
    output: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    if function_call is not None:
        output.append(
            {"type": "function_call", "id": "fc_1", "status": "completed", **function_call}
        )
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1700000000,
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 30,
            "output_tokens": 8,
            "total_tokens": 38,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens_details": {"reasoning_tokens": 3},
        },
    }


def responses_events(
    pieces: list[str], function_call: dict[str, Any] | None = None, *, end: bool = True
) -> list[tuple[str | None, Any]]:
    """The Responses API's stream, as the SDK's `responses.stream()` accumulates it: created,
    the message item and its text part in deltas, the function call's arguments in two
    halves, each item done, then `response.completed` with the whole response."""
    whole = responses_body("".join(pieces), function_call)
    started = {**whole, "status": "in_progress", "output": [], "usage": None}
    message, *calls = whole["output"]
    part = message["content"][0]
    raw: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
    raw.append(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        }
    )
    at = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    raw.append({"type": "response.content_part.added", **at, "part": {**part, "text": ""}})
    for piece in pieces:
        raw.append({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []})
    raw.append({"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []})
    raw.append({"type": "response.content_part.done", **at, "part": part})
    raw.append({"type": "response.output_item.done", "output_index": 0, "item": message})
    for call in calls:
        raw.append(
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {**call, "status": "in_progress", "arguments": ""},
            }
        )
        arguments = call["arguments"]
        for half in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            raw.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": call["id"],
                    "output_index": 1,
                    "delta": half,
                }
            )
        raw.append({"type": "response.output_item.done", "output_index": 1, "item": call})
    if end:
        raw.append({"type": "response.completed", "response": whole})
    return [(event["type"], {**event, "sequence_number": n}) for n, event in enumerate(raw)]


# --- Anthropic Messages ------------------------------------------------------------------------


def anthropic_body(
    text: str, tool_use: dict[str, Any] | None = None, model: str = "claude-sonnet-4-5"
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if tool_use is not None:
        content.append({"type": "tool_use", **tool_use})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if tool_use else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 3,
        },
    }


def anthropic_events(
    pieces: list[str], tool_use: dict[str, Any] | None = None, *, end: bool = True
) -> list[tuple[str | None, Any]]:
    """`message_start`, a text block in deltas, a tool_use block as JSON deltas, the end."""
    start = anthropic_body("", model="claude-sonnet-4-5")
    start["content"], start["stop_reason"] = [], None
    start["usage"] = {"input_tokens": 20, "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    events.append(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    events.append(("ping", {"type": "ping"}))
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool_use is not None:
        block = {"type": "tool_use", "id": tool_use["id"], "name": tool_use["name"], "input": {}}
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": block},
            )
        )
        arguments = json.dumps(tool_use["input"])
        for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            delta = {"type": "input_json_delta", "partial_json": part}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    if end:
        reason = "tool_use" if tool_use else "end_turn"
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": None},
                    "usage": {"output_tokens": 11},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
    return events


if __name__ == "__main__":  # python -m tests.fake_llm: prints its base URL, serves until killed
    FakeLLM().serve_forever()
