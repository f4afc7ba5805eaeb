"""The SQLite backend: connections and transactions for one database file, and its repository.

One writer connection behind a lock (SQLite runs one write transaction at a time anyway, and
one connection keeps its page cache warm) and one reader connection per thread (WAL lets
readers run beside the writer). Writes take the file's write lock up front (BEGIN IMMEDIATE)
so they never fail half-way on a lock; while another process holds it they wait with backoff
until the busy timeout (then StoreBusy). Connections are reopened after fork: SQLite handles
must not cross it.

One writer at a time is what makes the repository simple: a row read in a write transaction
cannot change before it commits, so nothing is locked, a read-then-write widening loses
nothing, and `max(seq) + 1` is this transaction's to use.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from flowtrace.store._errors import StoreBusy
from flowtrace.store._repository import (
    LOG_INSERT,
    REPLAY_SELECT,
    FlowRow,
    NewLog,
    Node,
    ParentRow,
    Reader,
    ReplayRow,
    Repository,
    Row,
    VersionRow,
    chunks,
    log_values,
    replay_row,
)
from flowtrace.store._schema import migrate

__all__ = ["SqliteDatabase", "SqliteReader", "SqliteRepository"]

_T = TypeVar("_T")

# A reading store (the server, the viewer, the CLI): a 64 MiB page cache per connection, where
# the hot parts of 1M-log indexes fit, and the file mapped into memory.
_CACHE_KIB = 65536
_MMAP_BYTES = 256 * 1024 * 1024
# A writing one (the embedded destination, inside the user's program): what inserts need (the
# index pages they touch), and no map, whose pages would count in the program's RSS as its
# file grows (a million logs took ~180 MiB).
_WRITER_CACHE_KIB = 8192
# How long a write waits for another process's write lock before it fails (retried by clients).
BUSY_TIMEOUT_S = 30.0
_FIRST_BACKOFF_S = 0.001
_MAX_BACKOFF_S = 0.1
# A bounded write waits for the lock in slices this long (interrupt() ends it within one).
_WAIT_SLICE_S = 0.05


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


class SqliteDatabase:
    #: The driver's errors: the database failed, not an operation (see `Database.errors`).
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, *, in_program: bool = False) -> None:
        """`in_program`: the store writes from inside the user's program (small cache, no
        map)."""
        self.path = path
        self._cache_kib = _WRITER_CACHE_KIB if in_program else _CACHE_KIB
        self._mmap_bytes = 0 if in_program else _MMAP_BYTES
        self._busy_timeout = BUSY_TIMEOUT_S
        self._write_lock = threading.Lock()
        self._registry_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._pid = os.getpid()
        self._closed = False
        self._interrupted = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._retry_busy(lambda: self._writer.execute("PRAGMA journal_mode=WAL"))
        migrate(self._writer, str(path), lambda: self._begin_immediate(self._writer))

    # --- connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,  # close() runs on another thread than the user
            timeout=self._busy_timeout,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        # In WAL mode NORMAL loses nothing committed on a process crash (only on power loss).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{self._cache_kib}")
        conn.execute(f"PRAGMA mmap_size = {self._mmap_bytes}")
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._registry_lock:
            self._connections.append(conn)
        return conn

    def _after_fork(self) -> None:
        """The child must not use the parent's handles; they are dropped, not closed, since
        closing could disturb the parent's locks on the file."""
        self._pid = os.getpid()
        self._write_lock = threading.Lock()
        self._registry_lock = threading.Lock()
        self._connections = []
        self._local = threading.local()
        self._writer = self._connect()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError(f"store {self.path} is closed")
        if os.getpid() != self._pid:
            self._after_fork()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._write_lock, self._registry_lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # --- transactions ----------------------------------------------------------------------
    def _retry_busy(self, action: Callable[[], _T]) -> _T:
        """Run `action`, retrying with jittered exponential backoff while the file is locked
        (SQLite's own busy handler does not cover every case, e.g. WAL recovery)."""
        deadline = time.monotonic() + self._busy_timeout
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                return action()
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or time.monotonic() + backoff > deadline:
                    raise
            time.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))

    def _begin_within(self, conn: sqlite3.Connection, timeout_s: float) -> None:
        """BEGIN IMMEDIATE, waiting for another process's lock at most `timeout_s`, in short
        slices so that `interrupt()` ends the wait within one."""
        deadline = time.monotonic() + timeout_s
        conn.execute(f"PRAGMA busy_timeout = {int(_WAIT_SLICE_S * 1000)}")
        try:
            while True:
                if self._interrupted:
                    raise sqlite3.OperationalError("interrupted")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    if not _is_busy(error) or time.monotonic() >= deadline:
                        raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def interrupt(self) -> None:
        """From another thread: end the write in progress, and any write bounded by a
        `timeout_s`, now (their transactions roll back). For good: used at exit."""
        self._interrupted = True
        with contextlib.suppress(sqlite3.Error):
            self._writer.interrupt()

    @property
    def location(self) -> str:
        return str(self.path)

    @contextmanager
    def writing(self, timeout_s: float | None = None) -> Iterator[SqliteRepository]:
        """One write transaction: committed when the block ends, rolled back if it raises.
        A commit that returned is durable; nothing is acknowledged before it. `timeout_s`:
        wait for another process's write lock at most this long (default: the busy timeout),
        interruptibly (`interrupt()`). StoreBusy when another process held the file's lock
        past the wait (nothing was written)."""
        self._check()
        with self._write_lock:
            conn = self._writer
            try:
                if timeout_s is None:
                    self._begin_immediate(conn)
                else:
                    self._begin_within(conn, min(timeout_s, self._busy_timeout))
            except sqlite3.OperationalError as error:
                raise self._busy(error) from error
            try:
                yield SqliteRepository(conn)
                self._retry_busy(lambda: conn.execute("COMMIT"))
            except sqlite3.OperationalError as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_busy(error):
                    raise self._busy(error) from error
                raise
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _busy(self, error: sqlite3.OperationalError) -> StoreBusy | sqlite3.OperationalError:
        if not _is_busy(error):
            return error
        return StoreBusy(f"the database {self.path} is locked by another process ({error})")

    @contextmanager
    def reading(self) -> Iterator[SqliteReader]:
        """A read transaction: every query in the block sees one snapshot of the file."""
        self._check()
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield SqliteReader(conn)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")


_WIDEN_END = "UPDATE logs SET end_us = ? WHERE seq = ?"
_WIDEN_BOTH = "UPDATE logs SET start_us = ?, end_us = ? WHERE seq = ?"


class SqliteReader(Reader):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        found: Row | None = self.conn.execute(sql, params).fetchone()
        return found


class SqliteRepository(SqliteReader, Repository):
    def __init__(self, conn: sqlite3.Connection) -> None:
        SqliteReader.__init__(self, conn)
        Repository.__init__(self)
        self._next_seq: int | None = None
        # what `expect_replays` found: the batch's ids not looked up yet, and those stored
        self._expected: set[str] = set()
        self._replays: dict[str, ReplayRow] = {}
        # Logs this transaction inserted, as they are now (widened by `widen`; any other write
        # forgets them all): a child's parent is mostly one of them, found without a query.
        self._inserted: dict[str, NewLog] = {}
        self._inserted_ids: dict[int, str] = {}  # their seqs

    def expect_replays(self, log_ids: Sequence[str]) -> None:
        """One query per 500 of a batch's ids instead of one per create (the write lock keeps
        the answer true until commit: no other writer)."""
        ids = sorted(set(log_ids))
        self._replays = {}
        for chunk in chunks(ids):
            marks = ", ".join("?" * len(chunk))
            for row in self.rows(f"{REPLAY_SELECT} WHERE l.id IN ({marks})", chunk):
                self._replays[row[0]] = replay_row(row)
        self._expected = set(ids)

    def replay_of(self, log_id: str) -> ReplayRow | None:
        expected = self._expected
        if log_id in expected:
            # Answered once from the batch's lookup: a second create of the same id in this
            # transaction asks the table, which has the first one by then.
            expected.discard(log_id)
            return self._replays.get(log_id)
        return super().replay_of(log_id)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def _execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, params)

    def next_seq(self) -> int:
        """Read once per transaction: the write lock makes max(seq) + 1 ours until commit."""
        if self._next_seq is None:
            row = self.conn.execute("SELECT max(seq) FROM logs").fetchone()
            self._next_seq = (row[0] or 0) + 1
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def insert_log(self, log: NewLog) -> None:
        self.conn.execute(LOG_INSERT, log_values(log))  # `write`, without its frames: every log
        self.writes += 1
        self._inserted[log.id] = log
        self._inserted_ids[log.seq] = log.id

    def parent(self, log_id: str) -> ParentRow | None:
        log = self._inserted.get(log_id)
        if log is None:
            return super().parent(log_id)
        return ParentRow(
            log.trace_seq, Node(log.seq, log.parent_seq, log.start_us, log.end_us), log.complete
        )

    def node(self, seq: int) -> Node:
        log_id = self._inserted_ids.get(seq)
        if log_id is None:
            return super().node(seq)
        log = self._inserted[log_id]
        return Node(log.seq, log.parent_seq, log.start_us, log.end_us)

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._inserted.clear()  # the row written may be one of them
        self._inserted_ids.clear()
        return super().write(sql, params)

    def write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._inserted.clear()
        self._inserted_ids.clear()
        super().write_many(sql, params)

    def _widen_row(self, seq: int, start_us: int, end_us: int | None, start_changed: bool) -> None:
        """Write a widened span; an inserted log it widens is kept, widened. SQLite rewrites
        the index entries of every column a statement sets, changed or not: start_us is in
        most indexes, end_us in none, so an end alone is cheap."""
        if start_changed:
            Repository.write(self, _WIDEN_BOTH, (start_us, end_us, seq))
        else:
            Repository.write(self, _WIDEN_END, (end_us, seq))
        # (`Repository.write`, not ours: ours forgets every inserted log)
        log_id = self._inserted_ids.get(seq)
        if log_id is not None:
            log = self._inserted[log_id]
            self._inserted[log_id] = log._replace(start_us=start_us, end_us=end_us)

    def widen(self, node: Node | None, start_us: int, end_us: int | None) -> None:
        """Read, then write: no other writer can change a row in between."""
        while node is not None:
            new_start = min(node.start_us, start_us)
            new_end = node.end_us
            if end_us is not None and (new_end is None or end_us > new_end):
                new_end = end_us
            if new_start == node.start_us and new_end == node.end_us:
                return
            self._widen_row(node.seq, new_start, new_end, new_start != node.start_us)
            if node.parent_seq is None:
                return
            node = self.node(node.parent_seq)

    def insert_flow(self, flow_id: str, path: str, name: str, now_us: int, kind: str) -> FlowRow:
        cursor = self.conn.execute(
            "INSERT INTO flows (id, path, name, created_us, updated_us, kind)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (flow_id, path, name, now_us, now_us, kind),
        )
        self.writes += 1
        assert cursor.lastrowid is not None
        return FlowRow(cursor.lastrowid, flow_id, path, kind)

    def insert_version(
        self, version_id: str, flow_ref: int, key: bytes, attributes: str, now_us: int
    ) -> VersionRow:
        cursor = self.conn.execute(
            "INSERT INTO versions (id, flow_ref, attributes_digest, attributes, created_us)"
            " VALUES (?, ?, ?, ?, ?)",
            (version_id, flow_ref, key, attributes, now_us),
        )
        self.writes += 1
        assert cursor.lastrowid is not None
        return VersionRow(cursor.lastrowid, version_id, flow_ref, key)
