"""The outbox: planned operations on their way from the worker to the sender, in order, in
memory or in the spool.

The worker `put`s each planned batch; the sender `take`s the next one, sends it and `settle`s
what became of each operation. A batch stays in memory while the destination keeps up. It
goes to the spool (disk) when the spool is asked for (`spool="always"`), when the worker holds
more than the queue bound (`spill`: the overflow moves from memory to disk), when a send fails
in a way a retry may fix (the failed operations, and everything behind them, are kept on disk
from then on, so a crash loses none of it), and at exit when the bound runs out.

Order: this process's operations on disk are always older than those in memory (once any are on
disk, new batches follow them there), and the sender takes the disk ones first; so each log's
operations, and a parent's before its children's, go out in the order they were planned. A dead
process's backlog (claimed from the spool) is drained beside this process's operations: traces
never span processes, so only the order within each backlog matters.

Not thread-safe by itself: every call is made under the pipeline's lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from flowtrace._planner import PlannedOp
from flowtrace._spool import Spool, SpoolEntry, SpoolFull, SpoolItem, SpoolUnavailable
from flowtrace.exporters import Operation

__all__ = ["Batch", "Outbox"]

#: After a spool could not be written (a full disk), how long before it is tried again.
UNWRITABLE_RETRY_S = 60.0


class Batch:
    """Operations the sender takes at once (all from memory, or all read from the spool)."""

    __slots__ = ("backlog", "ops")

    def __init__(self, ops: list[PlannedOp], backlog: bool = False) -> None:
        self.ops = ops
        self.backlog = backlog  # a dead process's operations (claimed from the spool)


#: Called with the operations that could not be spooled, and why (`spool_full`, or None when
#: the spool became unavailable: they stay in memory).
Refused = Callable[[list[PlannedOp], str], None]


class Outbox:
    def __init__(
        self,
        spool: Spool | None,
        *,
        always: bool,
        spooled: Callable[[PlannedOp], None],
        forget: Callable[[PlannedOp], None],
        refused: Refused,
        unavailable: Callable[[str], None],
        chunk: int,
    ) -> None:
        """`spooled(op)`: an operation of a log in memory went to disk; `forget(op)`: one is not
        sent at all (its log failed meanwhile); `refused(ops, reason)`:
        these could not be spooled (the spool is full); `unavailable(error)`: the spool cannot
        be used (from then on everything stays in memory)."""
        self.spool = spool
        self.always = always and spool is not None
        self._spooled = spooled
        self._forget = forget  # an operation not spooled because its log failed meanwhile
        self._refused = refused
        self._unavailable = unavailable
        self.chunk = chunk  # operations per batch read back from disk
        self.memory: deque[Batch] = deque()
        self.memory_ops = 0
        self.in_flight: Batch | None = None
        self.own_on_disk = 0  # this process's entries in the spool, not yet settled
        self.backlog_on_disk = 0  # entries claimed from dead processes, not yet settled
        self.backlog_logs = 0  # of which closing entries (logs)
        self._attempts: dict[int, int] = {}  # entry id -> sends so far (ops are read anew)
        self.backlog_settled = 0  # backlog entries settled so far (flush markers count on it)
        self._backlog_turn = False  # alternate backlog and own batches
        self.acked: list[int] = []  # settled entries to delete (at the end of the batch)
        # A spool that could not be written (a full disk) is still read (what it holds is
        # delivered, in order); it is tried for writing again after a while.
        self._unwritable_until = 0.0

    # --- the worker's side -------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """New operations can go to the spool."""
        if self.spool is None:
            return False
        return not (self._unwritable_until and time.monotonic() < self._unwritable_until)

    def put(self, ops: list[PlannedOp]) -> None:
        """A planned batch: to disk when asked for, or when older ones are there already."""
        if not ops:
            return
        if self.usable and (self.always or self.own_on_disk):
            kept = self._to_disk(ops)
            if kept:
                self._to_memory(kept)
            return
        self._to_memory(ops)

    def _to_memory(self, ops: list[PlannedOp]) -> None:
        self.memory.append(Batch(ops))
        self.memory_ops += len(ops)

    def spill(self) -> bool:
        """Move what waits in memory to disk, the batch in flight first (so that if it fails it
        is retried from disk, before what follows it). False if the spool cannot take it."""
        if not self.usable:
            return False
        waiting: list[PlannedOp] = []
        flight = self.in_flight
        if flight is not None and not flight.backlog:
            waiting.extend(op for op in flight.ops if op.spool_id is None)
        while self.memory:
            waiting.extend(self.memory.popleft().ops)
        self.memory_ops = 0
        kept = self._to_disk(waiting)
        if kept:  # the spool failed: they stay in memory, in order
            in_flight = set(map(id, flight.ops)) if flight is not None else set()
            rest = [op for op in kept if id(op) not in in_flight]
            if rest:
                self._to_memory(rest)
            return False
        return True

    def _to_disk(self, ops: list[PlannedOp]) -> list[PlannedOp]:
        """Append `ops` to the spool; what could not be (the spool is unavailable) is returned."""
        assert self.spool is not None
        keep: list[PlannedOp] = []
        for op in ops:
            if _failed(op):
                self._forget(op)
            else:
                keep.append(op)
        if not keep:
            return []
        items = [
            SpoolItem(
                operation.log_id, operation.kind, op.final, operation.body, operation.query, op.seq
            )
            for op in keep
            for operation in (op.operation,)
        ]
        try:
            ids = self.spool.append(items)
        except SpoolFull:
            self._refused(keep, "spool_full")
            return []
        except SpoolUnavailable as error:
            self._unwritable_until = time.monotonic() + UNWRITABLE_RETRY_S
            self._unavailable(str(error))
            return keep
        if len(ids) < len(keep):  # what did not fit in the spool's bound
            self._refused(keep[len(ids) :], "spool_full")
            keep = keep[: len(ids)]
        for op, entry_id in zip(keep, ids, strict=True):
            op.spool_id = entry_id
            if op.attempts:
                self._attempts[entry_id] = op.attempts
            if op.log is not None:
                self._spooled(op)
        self.own_on_disk += len(keep)
        return []

    def claim(self) -> tuple[int, int] | str | None:
        """Take over dead processes' entries in the spool (I/O: call without the pipeline's
        lock); pass the result (what was taken, or why nothing could be) to `claimed`."""
        spool = self.spool
        if spool is None:
            return None
        try:
            return spool.claim_dead()
        except SpoolUnavailable as error:
            return str(error)

    def claimed(self, claim: tuple[int, int] | str | None) -> int:
        """What `claim` took over is this outbox's backlog now; returns how many more logs."""
        if claim is None:
            return 0
        if isinstance(claim, str):
            self._unavailable(claim)
            return 0
        entries, logs = claim
        new_logs = max(0, logs - self.backlog_logs)
        self.backlog_on_disk = entries
        self.backlog_logs = logs
        if entries:
            self._backlog_turn = True
        return new_logs

    def expire(self) -> int:
        """Drop what waited on disk longer than the spool's age bound; how many logs."""
        if self.spool is None:
            return 0
        try:
            expired = self.spool.expire()
        except SpoolUnavailable:
            return 0
        logs = 0
        for entry in expired:
            if entry.origin == self.spool.owner:
                self.own_on_disk -= 1
            else:
                self.backlog_on_disk -= 1
                self.backlog_logs -= entry.item.final
                self.backlog_settled += 1
            logs += entry.item.final
        return logs

    # --- the sender's side -------------------------------------------------------------------
    def empty(self) -> bool:
        return not (self.memory or self.own_on_disk or self.backlog_on_disk)

    def take(self) -> Batch | None:
        """The next batch to send: backlog and own turns alternate; own operations on disk
        before those in memory."""
        batch: Batch | None = None
        if self.backlog_on_disk and (self._backlog_turn or not (self.own_on_disk or self.memory)):
            batch = self._read(backlog=True)
        self._backlog_turn = not self._backlog_turn
        if batch is None and self.own_on_disk:
            batch = self._read(backlog=False)
        if batch is None and self.memory:
            batch = self.memory.popleft()
            self.memory_ops -= len(batch.ops)
        self.in_flight = batch
        return batch

    def _read(self, *, backlog: bool) -> Batch | None:
        if self.spool is None:
            return None
        try:
            entries = self.spool.head(self.chunk, backlog=backlog)
        except SpoolUnavailable as error:
            self._lose_spool(str(error))
            return None
        if not entries:  # counted more than there are (another process purged them)
            if backlog:
                self.backlog_on_disk = 0
            else:
                self.own_on_disk = 0
            return None
        ops = [_op_of(entry, backlog) for entry in entries]
        for op in ops:
            assert op.spool_id is not None
            op.attempts = self._attempts.get(op.spool_id, 0)
        return Batch(ops, backlog=backlog)

    def attempted(self, ops: Sequence[PlannedOp]) -> None:
        """`ops` are being sent (again): remember it for the ones read from disk."""
        for op in ops:
            if op.spool_id is not None:
                self._attempts[op.spool_id] = op.attempts

    def settled(self, op: PlannedOp) -> None:
        """`op` is done with (delivered, or given up): its entry goes from disk."""
        if op.spool_id is not None:
            self.acked.append(op.spool_id)
            self._attempts.pop(op.spool_id, None)
            if op.own:
                self.own_on_disk -= 1
            else:
                self.backlog_on_disk -= 1
                self.backlog_logs -= op.final
                self.backlog_settled += 1

    def finish(self) -> None:
        """The batch in flight is done: delete its settled entries."""
        self.in_flight = None
        acked, self.acked = self.acked, []
        if acked and self.spool is not None:
            try:
                self.spool.ack(acked)
            except SpoolUnavailable as error:
                self._lose_spool(str(error))

    def _lose_spool(self, error: str) -> None:
        """The spool cannot be read any more: what it holds waits there for a later process;
        from now on this outbox works in memory only."""
        self.spool = None
        self.always = False
        self.own_on_disk = self.backlog_on_disk = self.backlog_logs = 0
        self._unavailable(error)

    def retry_first(self, batch: Batch) -> None:
        """No spool: `batch` failed and is retried from memory before anything else."""
        self.in_flight = None
        self.memory.appendleft(batch)
        self.memory_ops += len(batch.ops)

    def keep_on_disk(self, ops: Sequence[PlannedOp]) -> bool:
        """A send failed in a way a retry may fix: keep `ops` (and everything behind them) on
        disk from now on. False if there is no spool (they are retried from memory)."""
        if self.spool is None:
            return False
        flight = self.in_flight
        if flight is not None and not flight.backlog and any(op.spool_id is None for op in ops):
            return self.spill()
        return True  # read from disk: retried from there


def _failed(op: PlannedOp) -> bool:
    return op.log is not None and op.log.delivery.failed


def _op_of(entry: SpoolEntry, backlog: bool) -> PlannedOp:
    item = entry.item
    operation = Operation(item.kind, item.log_id, item.body, item.query)  # type: ignore[arg-type]
    return PlannedOp(
        operation,
        None,
        item.final,
        0 if backlog else item.seq,
        spool_id=entry.id,
        own=not backlog,
    )
