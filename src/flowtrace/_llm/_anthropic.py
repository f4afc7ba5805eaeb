"""`flowtrace.instrument_anthropic()`: the Anthropic SDK's messages as logs."""

from __future__ import annotations

from typing import Final, TypeVar

from flowtrace._llm import _hooks
from flowtrace._llm._anthropic_wire import messages_attributes
from flowtrace._llm._hooks import SdkState
from flowtrace._llm._sdk import Method, instrument

__all__ = ["instrument_anthropic"]

_C = TypeVar("_C")

ANTHROPIC: Final = SdkState("anthropic")

_MESSAGES: Final = "anthropic.resources.messages.messages"
_STREAMING: Final = "anthropic.lib.streaming._messages"
_METHODS: Final = (
    Method(_MESSAGES, "Messages.create", "chat", messages_attributes, asynchronous=False),
    Method(_MESSAGES, "AsyncMessages.create", "chat", messages_attributes, asynchronous=True),
    Method(_MESSAGES, "Messages.stream", "chat", messages_attributes, False, stream_manager=True),
    Method(
        _MESSAGES, "AsyncMessages.stream", "chat", messages_attributes, True, stream_manager=True
    ),
)
_MANAGERS: Final = (
    (
        _STREAMING,
        "MessageStreamManager.__enter__",
        _hooks.manager_enter_wrapper(asynchronous=False),
    ),
    (
        _STREAMING,
        "AsyncMessageStreamManager.__aenter__",
        _hooks.manager_enter_wrapper(asynchronous=True),
    ),
)


def instrument_anthropic(client: _C | None = None) -> _C | None:
    """Record every call of `client` (an `anthropic.Anthropic` or `AsyncAnthropic`; every
    client when None) to `messages.create` and `messages.stream` as a prompt log under the
    current flow: system prompt, messages, tools, output, tokens, timings, errors. Returns
    `client`. Without the `anthropic` package installed, a warning and nothing else."""
    return instrument(
        "anthropic", ANTHROPIC, _METHODS, ("Anthropic", "AsyncAnthropic"), client, _MANAGERS
    )
