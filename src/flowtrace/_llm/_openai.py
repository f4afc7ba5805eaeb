"""`flowtrace.instrument_openai()`: the OpenAI SDK's chat completions and responses as logs."""

from __future__ import annotations

from typing import Final, TypeVar

from flowtrace._llm import _hooks
from flowtrace._llm._hooks import SdkState
from flowtrace._llm._openai_wire import chat_attributes, responses_attributes
from flowtrace._llm._sdk import Method, instrument

__all__ = ["instrument_openai"]

_C = TypeVar("_C")

OPENAI: Final = SdkState("openai")

_CHAT: Final = "openai.resources.chat.completions.completions"
_RESPONSES: Final = "openai.resources.responses.responses"
#: The methods that send a request. The helpers `parse()` (structured outputs) post their
#: request themselves, so they are patched too; `chat.completions.stream()` and
#: `responses.stream()` send theirs through `create(stream=True)`, so they are not (that
#: would make two logs of one call).
_METHODS: Final = tuple(
    Method(module, f"{prefix}{resource}.{name}", "chat", build, asynchronous=prefix == "Async")
    for module, resource, build in (
        (_CHAT, "Completions", chat_attributes),
        (_RESPONSES, "Responses", responses_attributes),
    )
    for name in ("create", "parse")
    for prefix in ("", "Async")
)
#: The helpers' streams close their HTTP response, not the SDK stream they read.
_HELPER_STREAMS: Final = tuple(
    (module, f"{prefix}{stream}.close", _hooks.on_helper_stream_close)
    for module, stream in (
        ("openai.lib.streaming.chat._completions", "ChatCompletionStream"),
        ("openai.lib.streaming.responses._responses", "ResponseStream"),
    )
    for prefix in ("", "Async")
)


def instrument_openai(client: _C | None = None) -> _C | None:
    """Record every call of `client` (an `openai.OpenAI` or `AsyncOpenAI`; every client when
    None) to `chat.completions.create` / `parse` / `stream` and `responses.create` / `parse` /
    `stream` as a prompt log under the current flow: messages, tools, output, tokens, timings,
    errors. Returns `client`.

    Streams, raw and streaming responses and `with_options()` copies are covered; the request,
    the responses and the SDK's exceptions are left as they are. Without the `openai` package
    installed, a warning and nothing else."""
    return instrument(
        "openai", OPENAI, _METHODS, ("OpenAI", "AsyncOpenAI"), client, _HELPER_STREAMS
    )
