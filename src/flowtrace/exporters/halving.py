"""HalvingExporter: a batch the destination finds too large (413 for every operation) is sent
again in halves, down to single operations, so one oversized batch never blocks delivery."""

from __future__ import annotations

from collections.abc import Sequence

from flowtrace._retry import is_retryable
from flowtrace.exporters import Exporter, Operation, Outcome, not_delivered

__all__ = ["HalvingExporter"]

TOO_LARGE = 413


class HalvingExporter:
    def __init__(self, inner: Exporter) -> None:
        self.inner = inner
        self.destination: str | None = getattr(inner, "destination", None)

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        outcomes = self.inner.export(operations, timeout_s)
        if len(operations) < 2 or any(o.status != TOO_LARGE for o in outcomes):
            return outcomes
        half = len(operations) // 2
        first = self.export(operations[:half], timeout_s)
        if any(is_retryable(o.status) for o in first):
            # What follows may depend on what failed: it is not attempted now.
            return first + not_delivered("not attempted", len(operations) - half)
        return first + self.export(operations[half:], timeout_s)

    def interrupt(self) -> None:
        interrupt = getattr(self.inner, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def close(self) -> None:
        self.inner.close()
