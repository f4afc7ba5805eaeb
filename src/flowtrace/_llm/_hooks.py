"""The patches that see a call through the SDK: both SDKs are generated from one template
(Stainless), so one set of hooks on their shared client and stream classes serves both.

These SDKs send through `httpx2`, not httpx, so a transport hook would see nothing; instead:
- the resource method (`chat.completions.create`, `messages.create`...) opens the call: a
  snapshot of its keyword arguments, the clock, the parent log; it marks the call active in a
  context variable while the SDK works, and ends it (or leaves it to the stream) on return;
- `_build_request` (once per attempt) counts the attempts: a retried 429 is one call;
- `_process_response` notes the status and request id and ties the response to the call;
- `_process_response_data` (every parsed body or stream event) hands the wire JSON over;
- `Stream.__stream__` / `close` end a streamed call: at its end, on an error mid-stream, or
  closed early (a `break` then the stream dropped, or `close()`), with what had arrived; the
  OpenAI helpers' streams (`chat.completions.stream()`, `responses.stream()`) close their
  HTTP response themselves, so their `close` is hooked too.

Every patch acts only for a call of an instrumented client: on any other it is a pass-through
(a context variable read or an empty dict's test). The request, the response objects and the
user's exceptions are never touched: the original method does the work, and what it raises is
re-raised as it is. A fault of ours goes to `internal_error`, never to the caller.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

import wrapt

from flowtrace._guard import internal_error, logger
from flowtrace._llm._call import Builder, LlmCall, snapshot_request

__all__ = ["SdkState", "calling", "patch"]

_active: Final[contextvars.ContextVar[LlmCall | None]] = contextvars.ContextVar(
    "flowtrace_llm_call", default=None
)
#: The call each response belongs to, until the response is collected.
_by_response: Final[weakref.WeakKeyDictionary[Any, LlmCall]] = weakref.WeakKeyDictionary()
#: Anthropic's `messages.stream()` returns a manager whose `__enter__` sends the request.
_by_manager: Final[weakref.WeakKeyDictionary[Any, LlmCall]] = weakref.WeakKeyDictionary()

#: The response header naming the request, for the provider's support (OpenAI's by default).
_REQUEST_ID_HEADERS: Final = {"anthropic": "request-id"}

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]


class SdkState:
    """Which clients of one SDK record their calls: every one, or those instrumented (and the
    copies `with_options()` makes of them)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.every_client = False
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.patched = False

    def records(self, resource: Any) -> bool:
        """Whether the client of `resource` (`client.chat.completions`...) records its calls
        (False on any fault of ours)."""
        try:
            client = getattr(resource, "_client", None)
            return self.every_client or (bool(self.clients) and client in self.clients)
        except Exception as exc:  # a client class that cannot be hashed
            internal_error("llm.start", exc)
            return False

    def open(
        self, operation: str, build: Builder, kwargs: dict[str, Any], stream: bool
    ) -> LlmCall | None:
        """A new call of a client that records (None on any fault of ours)."""
        try:
            streamed = stream or kwargs.get("stream") is True
            return LlmCall(self.provider, operation, build, snapshot_request(kwargs), streamed)
        except Exception as exc:
            internal_error("llm.start", exc)
            return None


def calling() -> bool:
    """Whether a directly instrumented LLM call is running in this context (the SDK is at
    work inside its method): another instrumentor's span of that call starts now."""
    return _active.get() is not None


def patch(target: Any, name: str, wrapper: Wrapper) -> bool:
    """Wrap `target.name` (a class attribute); False, with a warning, when the SDK lacks it."""
    try:
        wrapt.wrap_function_wrapper(target, name, wrapper)
    except (AttributeError, ImportError) as exc:
        logger.warning(
            "flowtrace: cannot instrument %s.%s (%s): that part of the SDK is not recorded",
            getattr(target, "__name__", target),
            name,
            exc,
        )
        return False
    return True


# --- the call's own method -------------------------------------------------------------------


def _returned(call: LlmCall) -> None:
    """The SDK method returned: a call not streamed ends now when its body is in hand (parsed,
    or read by a raw response); a stream ends with its stream. Either, if never read, ends when
    its response is collected."""
    try:
        if call.done:
            return
        response = call.response()
        if not call.streamed:
            if call.body is None and response is not None:
                call.raw_body = _read_body(response)
            if call.body is not None or call.raw_body is not None or response is None:
                call.end()
                return
        if response is not None:
            weakref.finalize(response, call.abandon)
    except Exception as exc:
        internal_error("llm.returned", exc)


def _read_body(response: Any) -> bytes | None:
    """The bytes of a response already read (a raw response), None when still unread."""
    if not getattr(response, "is_stream_consumed", False):
        return None
    try:
        content = response.content
    except Exception:  # not read by the SDK (`with_streaming_response`): its parse will tell
        return None
    return content if isinstance(content, bytes) else None


def _failed(call: LlmCall, exc: BaseException) -> None:
    try:
        call.fail(exc)
    except Exception as error:
        internal_error("llm.failed", error)


def _run(call: LlmCall, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The SDK's own method, with `call` active while it works."""
    token = _active.set(call)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _active.reset(token)
        _failed(call, exc)
        raise
    _active.reset(token)
    _returned(call)
    return result


#: What opens an async method's call when its coroutine is awaited: the SDK, the operation, the
#: builder (fixed per method, made once when the method is patched).
_Opening = tuple[SdkState, str, Builder]


async def _run_async(
    call: LlmCall | None,
    wrapped: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opening: _Opening | None = None,
) -> Any:
    """The SDK's own async method, with `call` active while it works; or the call `opening`
    opens now: an async method's call opens when its coroutine is awaited, as its request is
    sent (`chat.completions.stream()` makes the coroutine, its `async with` awaits it)."""
    if opening is not None:
        sdk, operation, build = opening
        call = sdk.open(operation, build, kwargs, False)
    if call is None:
        return await wrapped(*args, **kwargs)
    token = _active.set(call)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        _active.reset(token)
        _failed(call, exc)
        raise
    _active.reset(token)
    _returned(call)
    return result


def call_wrapper(sdk: SdkState, operation: str, build: Builder, *, asynchronous: bool) -> Wrapper:
    """The wrapper of one resource method (`create`), sync or async."""
    if asynchronous:
        opening: _Opening = (sdk, operation, build)

        def opened_async(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if not sdk.records(instance):
                return wrapped(*args, **kwargs)
            return _run_async(None, wrapped, args, kwargs, opening)

        return opened_async

    def opened(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = sdk.open(operation, build, kwargs, False) if sdk.records(instance) else None
        return wrapped(*args, **kwargs) if call is None else _run(call, wrapped, args, kwargs)

    return opened


def stream_manager_wrapper(sdk: SdkState, operation: str, build: Builder) -> Wrapper:
    """`messages.stream(...)`: the call is opened here and sent by the manager's `__enter__`."""

    def opened(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        manager = wrapped(*args, **kwargs)
        call = sdk.open(operation, build, kwargs, True) if sdk.records(instance) else None
        if call is not None:
            try:
                _by_manager[manager] = call
            except TypeError as exc:
                internal_error("llm.stream_manager", exc)
        return manager

    return opened


def manager_enter_wrapper(*, asynchronous: bool) -> Wrapper:
    """The manager's `__enter__` / `__aenter__`: the request of a call `stream()` opened."""
    run = _run_async if asynchronous else _run

    def entered(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _by_manager.pop(instance, None) if _by_manager else None
        if call is None:
            return wrapped(*args, **kwargs)
        call.restart()
        return run(call, wrapped, args, kwargs)

    return entered


# --- the client's inner steps ----------------------------------------------------------------


def on_build_request(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Once per attempt: the attempt's number is the retries taken so far."""
    call = _active.get()
    if call is not None:
        retries = kwargs.get("retries_taken", 0)
        call.retries = retries if isinstance(retries, int) else 0
    return wrapped(*args, **kwargs)


def on_process_response(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The final attempt's response (sync or async: the work here needs no await)."""
    call = _active.get()
    if call is not None:
        try:
            response = kwargs["response"]
            call.status_code = int(response.status_code)
            call.request_id = response.headers.get(
                _REQUEST_ID_HEADERS.get(call.provider, "x-request-id")
            )
            call.response = weakref.ref(response)
            _by_response[response] = call
        except Exception as exc:
            internal_error("llm.response", exc)
    return wrapped(*args, **kwargs)


def on_process_response_data(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A parsed body or stream event: its JSON, as the server sent it, goes to the call."""
    if _by_response:
        call = _by_response.get(kwargs.get("response"))
        if call is not None and not call.done:
            data = kwargs.get("data")
            if call.streamed:
                call.add_chunk(data)
            else:
                call.body = data
                if _active.get() is not call:  # parsed after the method returned
                    call.end()
    return wrapped(*args, **kwargs)


def _stream_call(stream: Any, response_attribute: str = "response") -> LlmCall | None:
    if not _by_response:
        return None
    call = _by_response.get(getattr(stream, response_attribute, None))
    return None if call is None or call.done else call


def _close_hook(response_attribute: str) -> Wrapper:
    """A stream's `close()` (sync or async) before its end: closed early, with what had
    arrived. The stream names its HTTP response `response_attribute`."""

    def closing(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _stream_call(instance, response_attribute)
        if call is not None:
            call.close_early()
        return wrapped(*args, **kwargs)

    return closing


#: The SDK's `Stream.close` / `AsyncStream.close`.
on_stream_close: Final = _close_hook("response")
#: A helper's stream (OpenAI's `chat.completions.stream()`, `responses.stream()`) closed by its
#: `with` or `close()`: it closes its HTTP response itself, not the SDK stream it reads, so a
#: call not read to its end is closed early here, not once the stream is collected.
on_helper_stream_close: Final = _close_hook("_response")


def _traced_stream(events: Iterator[Any], call: LlmCall) -> Iterator[Any]:
    try:
        yield from events
    except GeneratorExit:  # closed, or collected, before its end
        call.close_early()
        raise
    except BaseException as exc:
        _failed(call, exc)
        raise
    call.end()


async def _traced_async_stream(events: AsyncIterator[Any], call: LlmCall) -> AsyncIterator[Any]:
    try:
        async for event in events:
            yield event
    except GeneratorExit:
        call.close_early()
        await _aclose(events)
        raise
    except BaseException as exc:
        _failed(call, exc)
        raise
    call.end()


async def _aclose(events: AsyncIterator[Any]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


def _stream_hook(trace: Callable[[Any, LlmCall], Any]) -> Wrapper:
    """`Stream.__stream__` / `AsyncStream.__stream__`: the generator the user's iteration
    drives, traced when its response belongs to a call."""

    def hook(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        events = wrapped(*args, **kwargs)
        call = _stream_call(instance)
        return events if call is None else trace(events, call)

    return hook


on_stream: Final = _stream_hook(_traced_stream)
on_async_stream: Final = _stream_hook(_traced_async_stream)


def copy_wrapper(sdk: SdkState) -> Wrapper:
    """`client.with_options()` / `copy()`: a copy of an instrumented client is instrumented."""

    def copied(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        client = wrapped(*args, **kwargs)
        if sdk.clients and instance in sdk.clients:
            try:
                sdk.clients.add(client)
            except TypeError as exc:
                internal_error("llm.copy", exc)
        return client

    return copied
