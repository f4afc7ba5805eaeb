"""`flowtrace.instrument_openai()`: the OpenAI SDK's chat completions and responses as logs."""

from __future__ import annotations

from typing import Final, TypeVar

from flowtrace._llm._hooks import SdkState
from flowtrace._llm._openai_wire import chat_attributes, responses_attributes
from flowtrace._llm._sdk import Method, instrument

__all__ = ["instrument_openai"]

_C = TypeVar("_C")

OPENAI: Final = SdkState("openai")

_CHAT: Final = "openai.resources.chat.completions.completions"
_RESPONSES: Final = "openai.resources.responses.responses"
_METHODS: Final = (
    Method(_CHAT, "Completions.create", "chat", chat_attributes, asynchronous=False),
    Method(_CHAT, "AsyncCompletions.create", "chat", chat_attributes, asynchronous=True),
    Method(_RESPONSES, "Responses.create", "chat", responses_attributes, asynchronous=False),
    Method(_RESPONSES, "AsyncResponses.create", "chat", responses_attributes, asynchronous=True),
)


def instrument_openai(client: _C | None = None) -> _C | None:
    """Record every call of `client` (an `openai.OpenAI` or `AsyncOpenAI`; every client when
    None) to `chat.completions.create` and `responses.create` as a prompt log under the
    current flow: messages, tools, output, tokens, timings, errors. Returns `client`.

    Streams, raw and streaming responses and `with_options()` copies are covered; the request,
    the responses and the SDK's exceptions are left as they are. Without the `openai` package
    installed, a warning and nothing else."""
    return instrument("openai", OPENAI, _METHODS, ("OpenAI", "AsyncOpenAI"), client)
