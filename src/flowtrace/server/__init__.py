"""The flowtrace log service (extra `flowtrace[server]`): the contract's routes over a store.

`create_app` builds the FastAPI app; `run_server` runs it with uvicorn; `add_serve_command`
registers `flowtrace serve`. Imports are lazy so the CLI can load without fastapi installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import create_app
    from ._command import add_serve_command, run_server

__all__ = ["add_serve_command", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ._app import create_app

        return create_app
    if name in ("add_serve_command", "run_server"):
        from . import _command

        return getattr(_command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
