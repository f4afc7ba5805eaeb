"""StoreExporter: the embedded default. With no endpoint configured, logs go to a local SQLite
file through the same store code a server uses, so the trace rules are the same, and
`flowtrace serve --db <file>` shows them.

It takes the fast path (`Store.ingest`): the operations' bodies go to the store's rules as they
are, without being encoded, parsed or validated as a request from the network would be, and
without the wire models (pydantic), which are imported only for the few operations that are
validated (a span's prompt or tool log, chat messages in an update). The store is opened on
the sender at its warm-up (creating the directory), not at the first batch.

Failures: the disk (locked past the busy timeout, full, read-only) fails the whole export, as
no delivery (retried, or spooled); an operation the store cannot take fails alone (500).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from flowtrace import _lifecycle
from flowtrace.exporters import Operation, Outcome, not_delivered

# Imported with this module (which the pipeline imports under its fork-safe build lock), never
# later on the worker: a fork must not catch the store's modules half-imported.
from flowtrace.store import Store, StoreBusy, StoreSchemaError
from flowtrace.store._ingest import needs_models

__all__ = ["StoreExporter"]


class StoreExporter:
    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        self.destination = f"store:{os.path.abspath(self.db_path)}"
        self._store: Store | None = None

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        if not operations:  # a warm-up: open the store now rather than at the first batch
            with contextlib.suppress(Exception):
                self._open()
            return []
        try:
            store = self._open()
            if needs_models(operations):  # a span's or a chat log: the wire models, imported
                _lifecycle.import_fork_safely("flowtrace.models")  # on the sender, fork-safely
            results = store.ingest(operations, timeout_s=timeout_s)  # each is an IngestItem
        except (OSError, sqlite3.Error, StoreBusy, StoreSchemaError) as exc:
            # e.g. the file is locked, the disk is full, a newer flowtrace's file: not now
            return not_delivered(
                f"store {self.db_path}: {type(exc).__name__}: {exc}", len(operations)
            )
        return [Outcome(status, body) for status, body in results]

    def _open(self) -> Store:
        if self._store is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._store = Store(self.db_path, in_program=True)
        return self._store

    def interrupt(self) -> None:
        """From another thread: end a write in progress (at exit)."""
        store = self._store
        if store is not None:
            store.interrupt()

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
