"""StoreExporter: the embedded default. With no endpoint configured, logs go to a local SQLite
file through the same store code a server uses, so the trace rules are the same, and
`flowtrace serve --db <file>` shows them.

The store is opened lazily, on the worker, at the first batch (creating the directory).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from flowtrace.exporters import Operation, Outcome, not_delivered

# Imported with this module (which the pipeline imports under its fork-safe build lock), never
# later on the worker: a fork must not catch the store's modules half-imported.
from flowtrace.store import Store

__all__ = ["StoreExporter"]


class StoreExporter:
    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        self._store: Store | None = None

    def export(self, operations: Sequence[Operation]) -> list[Outcome]:
        if not operations:  # a warm-up: open the store now rather than at the first batch
            with contextlib.suppress(Exception):
                self._open()
            return []
        try:
            store = self._open()
            results = store.batch([op.to_batch_item() for op in operations])
        except Exception as exc:  # e.g. the disk is full or the file is locked: retried
            return not_delivered(
                f"store {self.db_path}: {type(exc).__name__}: {exc}", len(operations)
            )
        return [Outcome(result.status, result.body) for result in results]

    def _open(self) -> Store:
        if self._store is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._store = Store(self.db_path)
        return self._store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
