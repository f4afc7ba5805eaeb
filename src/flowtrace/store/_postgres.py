"""The PostgreSQL backend (extra `postgres`: psycopg 3 and psycopg_pool): a connection pool per
process, its transactions, and its repository.

Many writers run at once, at READ COMMITTED, in as many processes as serve the database. What
SQLite's single writer gave for free is kept here explicitly (each point was reproduced on
PostgreSQL 15 before it was written so):
- a row the transaction goes on to change is read `FOR NO KEY UPDATE` (a parent, a log to
  update): a child cannot commit under a parent another transaction is completing, and two
  siblings queue on their parent instead of both taking a shared lock, then deadlocking when
  they widen it (`FOR KEY SHARE` or a plain read would let the first, `FOR SHARE` the second);
- widening combines times in the UPDATE (`GREATEST` / `LEAST`): a read-then-write widening
  loses the other transaction's stretch;
- log row ids come from a sequence, not max + 1;
- counters are written in ref order, flows then versions (`Session.flush`), so two batches
  touching the same flows never lock them in opposite orders;
- flows and versions are inserted `ON CONFLICT DO NOTHING`, then read: the other transaction's
  row; a log id in flight twice waits for the other insert, and the transaction is run again
  (RetryTransaction), where the replay rule answers it.
A deadlock or serialization failure that remains is run again by `Store._write` (bounded, then
503 with Retry-After). A database that cannot be reached is StoreBusy (503): nothing written.

Reads run REPEATABLE READ READ ONLY (said in their BEGIN): every query of one answer sees
one snapshot.
Connections are not shared across fork: a forked child opens its own pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flowtrace.store._errors import RetryTransaction, StoreBusy, StoreUnavailable
from flowtrace.store._postgres_schema import migrate
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

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as missing:  # pragma: no cover - the extra is installed wherever tested
    raise ImportError(
        "a postgresql:// database needs the postgres extra: pip install 'flowtrace[postgres]'"
    ) from missing

__all__ = ["PostgresDatabase"]

# Connections per process: the server's threads queue on the pool beyond this.
POOL_SIZE = 8
# How long a write waits for a pooled connection (or the database) before StoreBusy.
CONNECT_TIMEOUT_S = 30.0
# libpq's bound on reaching the server (the URL's own connect_timeout wins): never a hang.
_CONNECT_TIMEOUT_S = 10
# Collisions that leave the transaction unusable but would go through if run again.
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.UniqueViolation)


@lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    """The portable SQL (`?` marks) in psycopg's placeholders (`%s`; a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redacted(url: str) -> str:
    """The URL without its password (in the authority or the query), for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        netloc = f"{credentials.split(':', 1)[0]}@{host}"
    hidden = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    query = urlencode(hidden, safe="/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class PostgresDatabase:
    #: The driver's errors: the database failed, not an operation (see `Database.errors`).
    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self._url = url
        self._pool_size = pool_size
        self._location = redacted(url)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._interrupted = False
        self._writing: set[psycopg.Connection[Any]] = set()
        try:
            with psycopg.connect(url, autocommit=True, **self._connect_options()) as conn:
                migrate(conn, self._location)
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"cannot open {self._location}: {error}") from error
        self._pool = self._open_pool()

    def _connect_options(self) -> dict[str, Any]:
        given = psycopg.conninfo.conninfo_to_dict(self._url)
        return {} if "connect_timeout" in given else {"connect_timeout": _CONNECT_TIMEOUT_S}

    def _open_pool(self) -> ConnectionPool[Any]:
        return ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, **self._connect_options()},
            timeout=CONNECT_TIMEOUT_S,
            name="flowtrace",
            open=True,
        )

    @property
    def location(self) -> str:
        return self._location

    def _check(self) -> ConnectionPool[Any]:
        if self._closed:
            raise RuntimeError(f"store {self._location} is closed")
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    # the parent's connections and pool threads are not ours: dropped unclosed
                    # (closing would end the parent's sessions on the shared sockets)
                    self._pid = os.getpid()
                    self._writing = set()
                    self._pool = self._open_pool()
        return self._pool

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if os.getpid() == self._pid:
            self._pool.close()

    def interrupt(self) -> None:
        """From another thread: cancel the writes in progress and refuse later ones."""
        self._interrupted = True
        with self._lock:
            writing = list(self._writing)
        for conn in writing:
            conn.cancel_safe()

    @contextmanager
    def _connection(self, timeout_s: float | None) -> Iterator[psycopg.Connection[Any]]:
        pool = self._check()
        try:
            with pool.connection(timeout=timeout_s) as conn:
                yield conn
        except PoolTimeout as error:
            raise StoreBusy(
                f"no connection to {self._location} within the wait: {error}"
            ) from error
        except pg_errors.QueryCanceled:
            raise
        except psycopg.OperationalError as error:
            if isinstance(error, _RETRYABLE):
                raise
            raise StoreBusy(f"the database {self._location} failed: {error}") from error

    @contextmanager
    def writing(self, timeout_s: float | None = None) -> Iterator[PostgresRepository]:
        """One write transaction (READ COMMITTED): committed when the block ends, rolled back
        if it raises; RetryTransaction on a deadlock, a serialization failure or a row another
        transaction inserted meanwhile. A commit that returned is durable."""
        if self._interrupted:
            raise psycopg.OperationalError("interrupted")
        with self._connection(timeout_s) as conn:
            _begin_as(conn, *_WRITE)
            with self._lock:
                self._writing.add(conn)
            try:
                with conn.transaction():
                    repo = PostgresRepository(conn)
                    yield repo
                    repo.send_pending()
            except _RETRYABLE as collision:
                raise RetryTransaction(str(collision).strip()) from collision
            finally:
                with self._lock:
                    self._writing.discard(conn)

    @contextmanager
    def reading(self) -> Iterator[PostgresReader]:
        """A read transaction: every query in the block sees one snapshot."""
        with self._connection(None) as conn:
            _begin_as(conn, *_READ)
            with conn.transaction():
                yield PostgresReader(conn)


# How a transaction begins: (isolation level, read only); None is the server's default. Set
# on the connection, they go in the BEGIN itself: a read's snapshot costs no round trip of
# its own (a SET TRANSACTION after the BEGIN was 1 of list_flows' 5).
_WRITE: tuple[psycopg.IsolationLevel | None, bool | None] = (None, None)
_READ = (psycopg.IsolationLevel.REPEATABLE_READ, True)


def _begin_as(
    conn: psycopg.Connection[Any], isolation: psycopg.IsolationLevel | None, read_only: bool | None
) -> None:
    """On a pooled (idle) connection: reads and writes share the pool, so each sets both."""
    if (conn.isolation_level, conn.read_only) != (isolation, read_only):
        conn.isolation_level = isolation
        conn.read_only = read_only


class PostgresReader(Reader):
    search_condition = "(l.inputs ILIKE ? ESCAPE '\\' OR l.output ILIKE ? ESCAPE '\\')"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(_dialect(sql), params).fetchall()

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        found: Row | None = self.conn.execute(_dialect(sql), params).fetchone()
        return found


_WIDEN = _dialect(
    "UPDATE logs SET start_us = LEAST(start_us, ?),"
    " end_us = CASE WHEN ?::bigint IS NULL THEN end_us ELSE GREATEST(end_us, ?) END"
    " WHERE seq = ? AND (start_us > ? OR (?::bigint IS NOT NULL AND"
    " (end_us IS NULL OR end_us < ?))) RETURNING parent_seq"
)
_NEXT_SEQS = "SELECT nextval('logs_seq_seq') FROM generate_series(1, %s) ORDER BY 1"
_MAX_SEQ_BLOCK = 256
_LOG_COLUMNS = LOG_INSERT[LOG_INSERT.index("(") : LOG_INSERT.index(")") + 1]
_INSERT_CHUNK = 500
_REPLAYS = f"{REPLAY_SELECT} WHERE l.id = ANY(?)"


@lru_cache(maxsize=64)
def _multi_insert(count: int) -> str:
    row = "(" + ", ".join(["%s"] * 15) + ")"
    return (
        f"INSERT INTO logs {_LOG_COLUMNS} VALUES {', '.join([row] * count)}"
        " ON CONFLICT (id) DO NOTHING RETURNING seq"
    )


def _node(values: list[Any]) -> Node:
    return Node(values[0], values[5], values[6], values[7])


_INSERT_FLOW = _dialect(
    "INSERT INTO flows (id, path, name, created_us, updated_us, kind) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (path) DO NOTHING RETURNING seq"
)
_INSERT_VERSION = _dialect(
    "INSERT INTO versions (id, flow_ref, attributes_digest, attributes, created_us)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (flow_ref, attributes_digest) DO NOTHING RETURNING seq"
)


class PostgresRepository(PostgresReader, Repository):
    _LOCK_SUFFIX = " FOR NO KEY UPDATE"
    _LOCK_LOG_SUFFIX = " FOR NO KEY UPDATE OF l"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        PostgresReader.__init__(self, conn)
        Repository.__init__(self)
        self._seqs: list[int] = []
        self._block = 1
        # Logs this transaction inserted, not sent yet: id -> the INSERT's values (mutable:
        # widening stretches them in place), and the same lists by seq.
        self._pending: dict[str, list[Any]] = {}
        self._pending_by_seq: dict[int, list[Any]] = {}
        self._holding = False
        # what `expect_replays` found: committed logs among the ids a batch will create
        self._expected: set[str] = set()
        self._replays: dict[str, ReplayRow] = {}

    # --- write-behind: a log's INSERT waits until a statement could see it --------------
    # A row this transaction inserted is invisible to every other transaction until commit,
    # so its state is exactly what is kept here: a child's parent among them is read, and
    # widened, in memory. Any other statement first sends them (one multi-row INSERT per
    # 500), and so does the commit. A batch of new traces then costs a few round trips, not
    # several per log (on a busy machine each round trip waits for the scheduler).
    def send_pending(self) -> None:
        if not self._pending:
            return
        rows = list(self._pending.values())
        self._pending.clear()
        self._pending_by_seq.clear()
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            sql = _multi_insert(len(chunk))
            params = [value for row in chunk for value in row]
            inserted = self.conn.execute(sql, params).fetchall()
            if len(inserted) != len(chunk):
                # another transaction committed one of these ids meanwhile: run again (a
                # replay then)
                raise RetryTransaction("a log id was inserted by another transaction")

    @contextmanager
    def _holding_pending(self) -> Iterator[None]:
        """Statements that cannot see this transaction's pending logs: sent as they are."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if not self._holding:
            self.send_pending()
        return super().rows(sql, params)

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        if not self._holding:
            self.send_pending()
        return super().row(sql, params)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.send_pending()
        return self.conn.execute(_dialect(sql), params).rowcount

    def _execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.send_pending()
        with self.conn.cursor() as cursor:
            cursor.executemany(_dialect(sql), params)

    def expect_replays(self, log_ids: Sequence[str]) -> None:
        """One query for the batch's ids. An id absent now but committed by another
        transaction before ours inserts it is caught by the INSERT (RetryTransaction)."""
        self._replays = {}
        for chunk in chunks(sorted(set(log_ids))):
            with self._holding_pending():
                for row in self.rows(_REPLAYS, (list(chunk),)):
                    self._replays[row[0]] = replay_row(row)
        self._expected = set(log_ids)

    def replay_of(self, log_id: str) -> ReplayRow | None:
        if log_id in self._pending:
            self.send_pending()  # the same id twice in one transaction: rare
        elif log_id in self._expected:
            return self._replays.get(log_id)
        with self._holding_pending():  # a committed row, or none
            return super().replay_of(log_id)

    def parent(self, log_id: str) -> ParentRow | None:
        values = self._pending.get(log_id)
        if values is not None:
            return ParentRow(values[4], _node(values), bool(values[8]))
        with self._holding_pending():  # a committed row, locked
            return super().parent(log_id)

    def node(self, seq: int) -> Node:
        values = self._pending_by_seq.get(seq)
        if values is not None:
            return _node(values)
        with self._holding_pending():
            return super().node(seq)

    def next_seq(self) -> int:
        """From the sequence, in blocks doubling within the transaction (1, 2, 4, ... 256):
        a batch of 512 logs takes 10 round trips, not 512; the values a transaction leaves
        unused are gaps, which no rule minds (seq orders, it does not count)."""
        if not self._seqs:
            rows = self.conn.execute(_NEXT_SEQS, (self._block,)).fetchall()
            self._seqs = [int(row[0]) for row in reversed(rows)]  # popped in ascending order
            self._block = min(self._block * 2, _MAX_SEQ_BLOCK)
        return self._seqs.pop()

    def insert_log(self, log: NewLog) -> None:
        """Kept until a statement could see it (`send_pending`); an id another transaction
        committed meanwhile is found then (RetryTransaction)."""
        values = list(log_values(log))
        self._expected.discard(log.id)  # looked up again, it is this transaction's own
        self._pending[log.id] = values
        self._pending_by_seq[log.seq] = values
        self.writes += 1

    def widen(self, node: Node | None, start_us: int, end_us: int | None) -> None:
        """Pending logs in memory; committed ones in SQL, from the values the row holds when
        the UPDATE itself locks it: two children widening one parent at once both count."""
        seq = node.seq if node is not None else None
        while seq is not None and (values := self._pending_by_seq.get(seq)) is not None:
            new_start = min(values[6], start_us)
            new_end = values[7]
            if end_us is not None and (new_end is None or end_us > new_end):
                new_end = end_us
            if (new_start, new_end) == (values[6], values[7]):
                return
            values[6], values[7] = new_start, new_end
            seq = values[5]
        # a committed log's ancestors are committed: no pending row above this one
        while seq is not None:
            row = self.conn.execute(
                _WIDEN, (start_us, end_us, end_us, seq, start_us, end_us, end_us)
            ).fetchone()
            if row is None:
                return  # this one covers the child already, so do its ancestors
            self.writes += 1
            seq = row[0]

    def insert_flow(self, flow_id: str, path: str, name: str, now_us: int, kind: str) -> FlowRow:
        row = self.conn.execute(
            _INSERT_FLOW, (flow_id, path, name, now_us, now_us, kind)
        ).fetchone()
        if row is not None:
            self.writes += 1
            return FlowRow(int(row[0]), flow_id, path, kind)
        found = self.flow_by("path", path)  # another transaction's, committed meanwhile
        assert found is not None, "a conflicting flow is committed"
        return found

    def insert_version(
        self, version_id: str, flow_ref: int, key: bytes, attributes: str, now_us: int
    ) -> VersionRow:
        row = self.conn.execute(
            _INSERT_VERSION, (version_id, flow_ref, key, attributes, now_us)
        ).fetchone()
        if row is not None:
            self.writes += 1
            return VersionRow(int(row[0]), version_id, flow_ref, key)
        found = self.version_by_digest(flow_ref, key)
        assert found is not None, "a conflicting version is committed"
        return found
