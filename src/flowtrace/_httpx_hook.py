"""`instrument_httpx(client)`: W3C trace context on every request an httpx client sends.

The request hook adds `flowtrace.propagation_headers()` of the flow that sends the request (an
event hook runs in the sender's context, so the current log is the caller's). A request that
already carries a `traceparent` (the user's own OpenTelemetry instrumentation, or headers set
by hand) is left as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from flowtrace import _guard
from flowtrace._remote import propagation_headers
from flowtrace._w3c import TRACEPARENT

if TYPE_CHECKING:  # imported when a client is instrumented: `import flowtrace` stays light
    import httpx

__all__ = ["instrument_httpx"]

_Client = TypeVar("_Client", "httpx.Client", "httpx.AsyncClient")


def _add_trace_headers(request: httpx.Request) -> None:
    try:
        if TRACEPARENT in request.headers:
            return
        headers = propagation_headers()
        if headers:
            request.headers.update(headers)
    except Exception as exc:
        _guard.internal_error("httpx-hook", exc)


async def _add_trace_headers_async(request: httpx.Request) -> None:
    _add_trace_headers(request)


def instrument_httpx(client: _Client) -> _Client:
    """Make `client` (an `httpx.Client` or `httpx.AsyncClient`) send the current flow's trace
    context with each request, so a service running `FlowtraceMiddleware` (or
    `continue_trace`) files its logs under the calling log. Idempotent; returns `client`."""
    import httpx

    hook = _add_trace_headers_async if isinstance(client, httpx.AsyncClient) else _add_trace_headers
    hooks = client.event_hooks
    request_hooks: list[Any] = list(hooks.get("request", ()))
    if hook not in request_hooks:
        client.event_hooks = {**hooks, "request": [*request_hooks, hook]}
    return client
