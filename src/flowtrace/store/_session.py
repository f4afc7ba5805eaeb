"""One write transaction: operations that fail alone, and counters applied once.

A batch runs many operations in one transaction (one commit for all). Each operation makes
every check that can refuse it before it writes anything ("check, then write"), so a refused
operation has nothing to undo. That replaces a SAVEPOINT per operation, which measured at
half the ingest rate on SQLite (it copies every page an operation touches into a
sub-journal). `operation()` enforces the discipline with the repository's count of writes
(any backend): a refusal after a write aborts the whole transaction.

Per-flow counters are summed in memory and written once per transaction, in ref order (one
UPDATE per flow, not per log; and two transactions never lock two flows in opposite orders).
"""

from __future__ import annotations

from collections import defaultdict
from types import TracebackType
from typing import TYPE_CHECKING

from flowtrace.store._errors import StoreError
from flowtrace.store._repository import FlowDelta, Repository

if TYPE_CHECKING:
    from flowtrace.store._logs import Target  # (_logs builds on this module)

__all__ = ["Session"]


class Session:
    def __init__(self, repo: Repository, now_us: int) -> None:
        self.repo = repo
        self.now_us = now_us
        # flow_ref -> [logs, roots, errors]; version_ref -> logs; only operations that succeeded
        self._flow_deltas: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._version_deltas: defaultdict[int, int] = defaultdict(int)
        self._used_flows: set[int] = set()
        self._touched_flows: set[int] = set()
        self._op_deltas: list[tuple[int, int, int, int, int]] = []
        self._op_touched: set[int] = set()
        # Where the creates of this transaction went, by what routed them (`_logs`): the logs
        # of one function all find the same flow and version.
        # (the kernel that routed them kept with its target: the key holds its id)
        self.targets: dict[tuple[object, ...], tuple[object, Target]] = {}

    def next_seq(self) -> int:
        return self.repo.next_seq()

    def count(self, flow_ref: int, version_ref: int, logs: int, roots: int, errors: int) -> None:
        self._op_deltas.append((flow_ref, version_ref, logs, roots, errors))

    def touch(self, flow_ref: int) -> None:
        """The flow changed (a version added or named): its `updated_us` becomes now."""
        self._op_touched.add(flow_ref)

    def operation(self) -> _Operation:
        """Run one operation (`with session.operation():`): refused (StoreError) before
        writing, it leaves no trace; any other failure, or a refusal after a write, fails the
        whole transaction."""
        return _Operation(self, self.repo.writes)

    def drop_operation(self, refusal: StoreError, writes_before: int) -> None:
        """A refused operation leaves no trace; refused after it wrote, the transaction fails."""
        if self.repo.writes != writes_before:
            raise RuntimeError(f"store rule refused after writing: {refusal}") from refusal
        self._op_deltas.clear()
        self._op_touched.clear()

    def keep_operation(self) -> None:
        deltas = self._op_deltas
        for flow_ref, version_ref, logs, roots, errors in deltas:
            totals = self._flow_deltas[flow_ref]
            totals[0] += logs
            totals[1] += roots
            totals[2] += errors
            self._version_deltas[version_ref] += logs
            if logs > 0:
                self._used_flows.add(flow_ref)
        deltas.clear()
        if self._op_touched:  # rare: a version was added or named
            self._touched_flows |= self._op_touched
            self._op_touched.clear()

    def flush(self) -> None:
        """Write the counters summed so far (then zeroed: flushing twice counts once)."""
        refs = sorted(
            {ref for ref, d in self._flow_deltas.items() if any(d)}
            | self._used_flows
            | self._touched_flows
        )
        flows = []
        for ref in refs:
            logs, roots, errors = self._flow_deltas.get(ref, (0, 0, 0))
            used = self.now_us if ref in self._used_flows else 0
            touched = self.now_us if ref in self._touched_flows else 0
            flows.append(FlowDelta(ref, logs, roots, errors, used, touched))
        versions = sorted((ref, n) for ref, n in self._version_deltas.items() if n)
        self.repo.apply_counters(flows, versions)
        self._flow_deltas.clear()
        self._version_deltas.clear()
        self._used_flows.clear()
        self._touched_flows.clear()


class _Operation:
    """`Session.operation()`'s context: a class rather than a generator, as it wraps every
    log a batch writes (a generator's context manager costs several times as much)."""

    __slots__ = ("_session", "writes")

    def __init__(self, session: Session, writes: int) -> None:
        self._session = session
        self.writes = writes  # the repository's count of writes when the operation began

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self._session.keep_operation()
        elif isinstance(error, StoreError):
            self._session.drop_operation(error, self.writes)
