"""MemoryExporter: keeps what would have been delivered, for tests and `flowtrace.testing`.

It applies the contract's trace rules that matter for delivery order (a child's parent must
exist and be open; a replay with the same body is idempotent; an update needs the log), so a
test sees the same refusals a server would give. It can be scripted to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from flowtrace._contract import BATCH_UPDATE, COMPLETE, DEFAULT_STATUS_FIELD, StatusField
from flowtrace.exporters import Operation, Outcome

__all__ = ["MemoryExporter", "Script"]

#: Decides the outcomes of one export call, or None to apply the operations normally.
Script = Callable[[Sequence[Operation]], "list[Outcome] | None"]


class MemoryExporter:
    def __init__(
        self, status_field: StatusField = DEFAULT_STATUS_FIELD, destination: str | None = None
    ) -> None:
        self.status_field = status_field
        self.destination = destination  # a name gives it a spool (see the Exporter protocol)
        self.calls: list[list[Operation]] = []  # every export call, as attempted
        self.logs: dict[str, dict[str, Any]] = {}  # log_id -> merged stored body
        self.creates: dict[str, dict[str, Any]] = {}  # log_id -> body as first created
        self.kinds: dict[str, str] = {}  # log_id -> its create's kind (log, prompt_log, tool_log)
        self._scripts: list[Script] = []
        self._lock = threading.Lock()

    # --- scripting -----------------------------------------------------------------------
    def script(self, script: Script) -> None:
        """Queue `script` for the next export call (scripts are used once each, in order)."""
        with self._lock:
            self._scripts.append(script)

    def fail_next(
        self, status: int, times: int = 1, retry_after_s: float | None = None, body: Any = None
    ) -> None:
        """The next `times` export calls answer `status` for every operation."""
        for _ in range(times):
            self.script(lambda ops: [Outcome(status, body, retry_after_s)] * len(ops))

    # --- the Exporter protocol -------------------------------------------------------------
    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        if not operations:  # the pipeline's warm-up
            return []
        with self._lock:
            self.calls.append(list(operations))
            script = self._scripts.pop(0) if self._scripts else None
            scripted = script(operations) if script is not None else None
            if scripted is not None:
                return scripted
            return [self._apply(op) for op in operations]

    def close(self) -> None:
        pass

    # --- the trace rules -------------------------------------------------------------------
    def _apply(self, op: Operation) -> Outcome:
        if op.kind != BATCH_UPDATE:
            return self._create(op)
        return self._update(op)

    def _create(self, op: Operation) -> Outcome:
        if op.log_id in self.creates:
            if self.creates[op.log_id] == op.body:
                return Outcome(200, {"id": op.log_id})
            return Outcome(409, {"detail": f"log {op.log_id} exists with a different body"})
        parent_id = op.body.get("trace_parent_id")
        if parent_id is not None:
            parent = self.logs.get(parent_id)
            if parent is None:
                return Outcome(404, {"detail": f"trace parent {parent_id} not found"})
            if parent.get(self.status_field) == COMPLETE:
                return Outcome(409, {"detail": f"trace parent {parent_id} is complete"})
        self.creates[op.log_id] = op.body
        self.kinds[op.log_id] = op.kind
        self.logs[op.log_id] = dict(op.body)
        return Outcome(200, {"id": op.log_id})

    def _update(self, op: Operation) -> Outcome:
        stored = self.logs.get(op.log_id)
        if stored is None:
            return Outcome(404, {"detail": f"log {op.log_id} not found"})
        stored.update(op.body)
        return Outcome(200, dict(stored))

    # --- reading back ----------------------------------------------------------------------
    def operations(self) -> list[Operation]:
        """Every operation attempted, in order (retries appear again)."""
        with self._lock:
            return [op for call in self.calls for op in call]

    def status_of(self, log_id: str) -> str | None:
        with self._lock:
            stored = self.logs.get(log_id)
            return None if stored is None else stored.get(self.status_field)
