"""Instrumenting one Stainless-generated SDK: its shared client and stream classes, and the
resource methods that open calls; then which clients record (`instrument`)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from flowtrace._guard import internal_error, logger
from flowtrace._llm import _hooks
from flowtrace._llm._call import Builder
from flowtrace._llm._hooks import SdkState

__all__ = ["Method", "instrument"]

_C = TypeVar("_C")


@dataclass(frozen=True)
class Method:
    """A resource method that opens a call: `module:Class.method`, its operation, its builder."""

    module: str
    name: str  # "Class.method"
    operation: str
    build: Builder
    asynchronous: bool
    stream_manager: bool = False  # returns a manager that sends on `__enter__`


def _patch_sdk(
    package: str, sdk: SdkState, methods: Sequence[Method], clients: Sequence[str]
) -> None:
    base = importlib.import_module(f"{package}._base_client")
    streaming = importlib.import_module(f"{package}._streaming")
    _hooks.patch(base, "BaseClient._build_request", _hooks.on_build_request)
    _hooks.patch(base, "BaseClient._process_response_data", _hooks.on_process_response_data)
    for client_class in ("SyncAPIClient", "AsyncAPIClient"):
        _hooks.patch(base, f"{client_class}._process_response", _hooks.on_process_response)
    _hooks.patch(streaming, "Stream.__stream__", _hooks.on_stream)
    _hooks.patch(streaming, "AsyncStream.__stream__", _hooks.on_async_stream)
    _hooks.patch(streaming, "Stream.close", _hooks.on_stream_close)
    _hooks.patch(streaming, "AsyncStream.close", _hooks.on_stream_close)
    client_module = importlib.import_module(f"{package}._client")
    for client_class in clients:
        for copy in ("copy", "with_options"):  # `with_options = copy`: two names, one function
            _hooks.patch(client_module, f"{client_class}.{copy}", _hooks.copy_wrapper(sdk))
    for method in methods:
        module = importlib.import_module(method.module)
        if method.stream_manager:
            wrapper = _hooks.stream_manager_wrapper(sdk, method.operation, method.build)
        else:
            wrapper = _hooks.call_wrapper(
                sdk, method.operation, method.build, asynchronous=method.asynchronous
            )
        _hooks.patch(module, method.name, wrapper)


def instrument(
    package: str,
    sdk: SdkState,
    methods: Sequence[Method],
    clients: Sequence[str],
    client: _C | None,
    extra: Sequence[tuple[str, str, _hooks.Wrapper]] = (),
) -> _C | None:
    """Record the calls of `client` (every client of `package` when None); never raises."""
    try:
        sdk_module = importlib.import_module(package)
    except ImportError:
        logger.warning(
            "flowtrace: the %s package is not installed: nothing to instrument "
            "(pip install 'flowtrace[%s]')",
            package,
            package,
        )
        return client
    try:
        if not sdk.patched:
            sdk.patched = True
            _patch_sdk(package, sdk, methods, clients)
            for module, name, wrapper in extra:
                _hooks.patch(importlib.import_module(module), name, wrapper)
        if client is None:
            sdk.every_client = True
            return client
        classes = tuple(getattr(sdk_module, name) for name in clients)
        if not isinstance(client, classes):
            logger.warning(
                "flowtrace: instrument_%s(client=...) wants one of %s, not %s: not instrumented",
                package,
                ", ".join(f"{package}.{name}" for name in clients),
                type(client).__name__,
            )
            return client
        sdk.clients.add(client)
    except Exception as exc:
        internal_error(f"llm.instrument.{package}", exc)
    return client
