"""PLACEHOLDER: the delivery pipeline (queue, worker, batching, retries) lands with issue 4."""

from __future__ import annotations

from typing import Any

__all__ = ["flush", "shutdown", "stats"]


def flush(timeout: float | None = None) -> bool:
    """Wait until every log recorded so far is delivered; False if `timeout` ran out."""
    return True


def shutdown(timeout: float | None = None) -> None:
    """Flush, then stop the worker; later logs are not delivered."""


def stats() -> dict[str, Any]:
    """Delivery counters."""
    return {}
