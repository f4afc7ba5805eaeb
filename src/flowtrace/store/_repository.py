"""The seam between the trace rules and a database: what the rules ask of one.

The rules (`_logs`, `_spans`, `_flows`, `_flow_cache`, `_session`) are written once against
`Repository`, one write transaction of a backend; they hold no SQL. The reads (`_reads`,
`_records`) query through `Reader` in portable SQL (`?` marks, standard functions) with the
few differences the dialect names (`search_condition`). Two backends implement them:
`_sqlite` (one writer at a time, so nothing needs locking) and `_postgres` (many writers at
READ COMMITTED, so rows are locked and values combined in SQL where SQLite could read, then
write). Where the two agree, the SQL lives here once.

The concurrency rules every backend keeps (SQLite keeps them for free):
- a parent is read for a child, and a log for an update, under a row lock (`_LOCK_SUFFIX`),
  so a child never commits under a parent another transaction completed meanwhile;
- widening combines each ancestor's times with the child's in the UPDATE itself (`widen`);
- row ids come from the database's own allocation (`next_seq`), never max+1 across
  transactions;
- counters are applied once per transaction, flows then versions, each in id order
  (`apply_counters`), so two transactions never take them in opposite orders;
- a flow, a version or a log another transaction created meanwhile is found, not created
  twice (`insert_flow`, `insert_version`; `insert_log` asks for the transaction to be run
  again, where the replay rule answers it).

`writes` counts the statements that changed something: `Session.operation` checks with it
that a refused operation wrote nothing ("check, then write").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

__all__ = [
    "Database",
    "FlowDelta",
    "FlowRow",
    "LogForUpdate",
    "NewLog",
    "Node",
    "ParentRow",
    "Reader",
    "ReplayRow",
    "Repository",
    "SpanRow",
    "VersionRow",
]

Row = tuple[Any, ...]

# A query's IN list is chunked to this many values (SQLite's bound is 32,766 variables).
_CHUNK = 500


class Node(NamedTuple):
    """A log's place in its tree and its times: what widening walks."""

    seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None


class ParentRow(NamedTuple):
    trace_seq: int
    node: Node
    complete: bool


class ReplayRow(NamedTuple):
    request_digest: bytes
    flow_id: str
    version_id: str
    placeholder: bool = False  # a parent a remote child named before it arrived


class LogForUpdate(NamedTuple):
    seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None
    complete: int
    has_error: int
    flow_ref: int
    version_ref: int
    inputs: str | None
    output: str | None
    data: str
    trace_seq: int
    file_id: str
    file_kind: str


class SpanRow(NamedTuple):
    seq: int
    trace_seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None
    flow_ref: int
    version_ref: int
    has_error: int
    placeholder: int
    request_digest: bytes
    data: str


class NewLog(NamedTuple):
    seq: int
    id: str
    flow_ref: int
    version_ref: int
    trace_seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None
    complete: bool
    has_error: bool
    request_digest: bytes
    inputs: str | None
    output: str | None
    data: str
    placeholder: bool = False


class FlowRow(NamedTuple):
    seq: int
    id: str
    path: str
    kind: str


class VersionRow(NamedTuple):
    seq: int
    id: str
    flow_ref: int
    attributes_digest: bytes


class FlowDelta(NamedTuple):
    """What one transaction changes of a flow's row: counter deltas, and the times it was
    used (a log added) and updated (a version added or named), 0 when not."""

    ref: int
    logs: int
    roots: int
    errors: int
    used_us: int
    updated_us: int


_FLOW_ROW = "SELECT seq, id, path, kind FROM flows WHERE "
_VERSION_ROW = "SELECT seq, id, flow_ref, attributes_digest FROM versions WHERE "
LOG_INSERT = (
    "INSERT INTO logs (seq, id, flow_ref, version_ref, trace_seq, parent_seq, start_us,"
    " end_us, complete, has_error, request_digest, inputs, output, data, placeholder)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def log_values(log: NewLog) -> tuple[Any, ...]:
    """The INSERT's values; flags as integers (PostgreSQL does not cast booleans to them)."""
    return (
        *log[:8],
        int(log.complete),
        int(log.has_error),
        *log[10:14],
        int(log.placeholder),
    )


#: What a create's replay rule reads of a stored log (`ReplayRow`, after the id), by log id.
REPLAY_SELECT = (
    "SELECT l.id, l.request_digest, f.id, v.id, l.placeholder FROM logs l"
    " JOIN flows f ON f.seq = l.flow_ref JOIN versions v ON v.seq = l.version_ref"
)


def replay_row(row: Row) -> ReplayRow:
    """A row of `REPLAY_SELECT` (its first column, the id, is the caller's key)."""
    return ReplayRow(bytes(row[1]), row[2], row[3], bool(row[4]))


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def marks(count: int) -> str:
    return ",".join("?" * count)


class Reader(ABC):
    """Read queries of one transaction (a snapshot) in portable SQL."""

    #: A search condition on inputs or output, taking the LIKE pattern twice.
    search_condition = "(l.inputs LIKE ? ESCAPE '\\' OR l.output LIKE ? ESCAPE '\\')"
    #: Files and versions this transaction found or made, for the cache once it commits
    #: (None: a read, whose finds are committed rows, cached at once). See `FlowCache`.
    pending: dict[tuple[str, Any], Any] | None = None

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    # --- files (flows, prompts, tools) and versions --------------------------------------
    def flow_by(self, column: str, value: Any) -> FlowRow | None:
        """The file whose `column` (seq, id or path) is `value`."""
        assert column in ("seq", "id", "path")
        row = self.row(_FLOW_ROW + f"{column} = ?", (value,))
        return FlowRow(*row) if row is not None else None

    def version_by_id(self, version_id: str) -> VersionRow | None:
        row = self.row(_VERSION_ROW + "id = ?", (version_id,))
        return VersionRow(*row) if row is not None else None

    def version_by_digest(self, flow_ref: int, key: bytes) -> VersionRow | None:
        row = self.row(_VERSION_ROW + "flow_ref = ? AND attributes_digest = ?", (flow_ref, key))
        return VersionRow(*row) if row is not None else None

    def deployed_version_id(self, flow_ref: int, environment: str) -> str | None:
        row = self.row(
            "SELECT v.id FROM environments e JOIN versions v ON v.seq = e.version_ref"
            " WHERE e.flow_ref = ? AND e.name = ?",
            (flow_ref, environment),
        )
        return str(row[0]) if row is not None else None


class Repository(Reader):
    """One write transaction: the reads the rules check with, and their writes."""

    #: Appended to a read of a row the transaction goes on to change (a parent, a log to
    #: update): a row lock where writers run at once, nothing where they run one at a time.
    _LOCK_SUFFIX = ""
    _LOCK_LOG_SUFFIX = ""  # the same for a query joining the log `l` to other tables

    def __init__(self) -> None:
        self.writes = 0
        self.pending = {}

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""

    @abstractmethod
    def _execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        changed = self._execute(sql, params)
        if changed:
            self.writes += 1
        return changed

    def write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._execute_many(sql, params)
            self.writes += 1

    # --- what the backends do their own way ----------------------------------------------
    @abstractmethod
    def next_seq(self) -> int:
        """A new log's row id, known before its insert (a root's trace_seq is its own)."""

    @abstractmethod
    def insert_log(self, log: NewLog) -> None:
        """Insert a log whose id the transaction found free. If another transaction took the
        id meanwhile, raise RetryTransaction: run again, the replay rule answers it."""

    @abstractmethod
    def widen(self, node: Node | None, start_us: int, end_us: int | None) -> None:
        """Stretch `node`'s [start, end] and its ancestors' over [start_us, end_us]. Every log
        already covers its descendants, so the first ancestor that needs no change ends it."""

    @abstractmethod
    def insert_flow(self, flow_id: str, path: str, name: str, now_us: int, kind: str) -> FlowRow:
        """Create the file at `path`; the one another transaction created meanwhile if so."""

    @abstractmethod
    def insert_version(
        self, version_id: str, flow_ref: int, key: bytes, attributes: str, now_us: int
    ) -> VersionRow:
        """Create the version of these attributes; another transaction's if it won."""

    # --- logs: reads before writes -------------------------------------------------------
    def expect_replays(self, log_ids: Sequence[str]) -> None:
        """The creates to come will look up these ids (`replay_of`): a backend where a query
        costs a round trip may look them all up at once. Nothing to do in-process."""

    def replay_of(self, log_id: str) -> ReplayRow | None:
        row = self.row(f"{REPLAY_SELECT} WHERE l.id = ?", (log_id,))
        if row is None:
            return None
        return replay_row(row)

    def parent(self, log_id: str) -> ParentRow | None:
        """A log a child goes under, locked: its trace, its node, whether it is complete."""
        row = self.row(
            "SELECT seq, parent_seq, start_us, end_us, trace_seq, complete FROM logs WHERE id = ?"
            + self._LOCK_SUFFIX,
            (log_id,),
        )
        if row is None:
            return None
        return ParentRow(row[4], Node(row[0], row[1], row[2], row[3]), bool(row[5]))

    def node(self, seq: int) -> Node:
        row = self.row("SELECT seq, parent_seq, start_us, end_us FROM logs WHERE seq = ?", (seq,))
        assert row is not None, "a log's parent always exists"
        return Node(*row)

    def log_for_update(self, log_id: str) -> LogForUpdate | None:
        row = self.row(
            "SELECT l.seq, l.parent_seq, l.start_us, l.end_us, l.complete, l.has_error,"
            " l.flow_ref, l.version_ref, l.inputs, l.output, l.data, l.trace_seq, f.id, f.kind"
            " FROM logs l JOIN flows f ON f.seq = l.flow_ref WHERE l.id = ?"
            + self._LOCK_LOG_SUFFIX,
            (log_id,),
        )
        return LogForUpdate(*row) if row is not None else None

    def span_log(self, log_id: str) -> SpanRow | None:
        row = self.row(
            "SELECT seq, trace_seq, parent_seq, start_us, end_us, flow_ref, version_ref,"
            " has_error, placeholder, request_digest, data FROM logs WHERE id = ?"
            + self._LOCK_SUFFIX,
            (log_id,),
        )
        if row is None:
            return None
        values = list(row)
        values[9] = bytes(values[9])
        return SpanRow(*values)

    # --- logs: writes --------------------------------------------------------------------
    def set_log_state(
        self, seq: int, data: str, complete: bool, has_error: bool, end_us: int | None
    ) -> None:
        self.write(
            "UPDATE logs SET data = ?, complete = ?, has_error = ?, end_us = ? WHERE seq = ?",
            (data, int(complete), int(has_error), end_us, seq),
        )

    def set_log_start(self, seq: int, start_us: int) -> None:
        # apart from the rest: start_us is indexed, and setting it costs (see the SQLite widen)
        self.write("UPDATE logs SET start_us = ? WHERE seq = ?", (start_us, seq))

    def set_log_payloads(self, seq: int, inputs: str | None, output: str | None) -> None:
        self.write("UPDATE logs SET inputs = ?, output = ? WHERE seq = ?", (inputs, output, seq))

    def fill_placeholder(self, seq: int, log: NewLog) -> None:
        """The placeholder `seq` takes `log`'s file, version, times, fields and digest."""
        self.write(
            "UPDATE logs SET flow_ref = ?, version_ref = ?, start_us = ?, end_us = ?,"
            " complete = ?, has_error = ?, request_digest = ?, inputs = ?, output = ?, data = ?,"
            " placeholder = 0 WHERE seq = ?",
            (
                log.flow_ref,
                log.version_ref,
                log.start_us,
                log.end_us,
                int(log.complete),
                int(log.has_error),
                log.request_digest,
                log.inputs,
                log.output,
                log.data,
                seq,
            ),
        )

    def move_subtree(self, seq: int, parent_seq: int, trace_seq: int) -> None:
        """The root `seq` and its trace go under `parent_seq`, into `trace_seq`. Moved until
        nothing is left: where writers run at once, a child committed under a log of the
        trace while the first statement ran is not in its snapshot, but in the next one's."""
        self.write("UPDATE logs SET parent_seq = ? WHERE seq = ?", (parent_seq, seq))
        while self.write("UPDATE logs SET trace_seq = ? WHERE trace_seq = ?", (trace_seq, seq)):
            pass

    # --- deleting ------------------------------------------------------------------------
    def seqs_of(self, log_ids: Sequence[str]) -> list[tuple[int, int]]:
        """(seq, trace_seq) of the logs that exist among `log_ids`."""
        found: list[tuple[int, int]] = []
        for chunk in chunks(log_ids):
            found.extend(
                (int(row[0]), int(row[1]))
                for row in self.rows(
                    f"SELECT seq, trace_seq FROM logs WHERE id IN ({marks(len(chunk))})", chunk
                )
            )
        return found

    def trace_edges(self, trace_seq: int) -> list[tuple[int, int | None]]:
        """(seq, parent_seq) of every log of the trace."""
        return [
            (int(row[0]), row[1])
            for row in self.rows(
                "SELECT seq, parent_seq FROM logs WHERE trace_seq = ?" + self._LOCK_SUFFIX,
                (trace_seq,),
            )
        ]

    def children_of(self, seqs: Sequence[int]) -> list[tuple[int, int]]:
        """(seq, trace_seq) of logs whose parent is among `seqs`: after a delete, the children
        another transaction committed under them meanwhile (none where writers take turns)."""
        found: list[tuple[int, int]] = []
        for chunk in chunks(seqs):
            found.extend(
                (int(row[0]), int(row[1]))
                for row in self.rows(
                    f"SELECT seq, trace_seq FROM logs WHERE parent_seq IN ({marks(len(chunk))})",
                    chunk,
                )
            )
        return found

    def delete(self, seqs: Sequence[int]) -> list[tuple[int, int, int | None, int]]:
        """Delete the logs; (flow_ref, version_ref, parent_seq, has_error) of each."""
        gone: list[tuple[int, int, int | None, int]] = []
        for chunk in chunks(seqs):
            where = f"seq IN ({marks(len(chunk))})"
            gone.extend(
                (int(row[0]), int(row[1]), row[2], int(row[3]))
                for row in self.rows(
                    f"SELECT flow_ref, version_ref, parent_seq, has_error FROM logs WHERE {where}",
                    chunk,
                )
            )
            self.write(f"DELETE FROM logs WHERE {where}", chunk)
        return gone

    # --- files and versions --------------------------------------------------------------
    def name_version(self, ref: int, name: str | None, description: str | None) -> None:
        self.write(
            "UPDATE versions SET name = coalesce(?, name), description = coalesce(?, description)"
            " WHERE seq = ?",
            (name, description, ref),
        )

    def deploy(self, flow_ref: int, environment: str, version_ref: int, now_us: int) -> None:
        self.write(
            "INSERT INTO environments (flow_ref, name, version_ref, deployed_us)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (flow_ref, name) DO UPDATE"
            " SET version_ref = excluded.version_ref, deployed_us = excluded.deployed_us",
            (flow_ref, environment, version_ref, now_us),
        )

    def apply_counters(
        self, flows: Sequence[FlowDelta], versions: Sequence[tuple[int, int]]
    ) -> None:
        """Each flow's deltas and times in one statement, then each version's count; both in
        ref order (callers sort), so transactions take these rows' locks in one order."""
        self.write_many(
            "UPDATE flows SET log_count = log_count + ?, root_count = root_count + ?,"
            " error_count = error_count + ?,"
            " last_used_us = CASE WHEN coalesce(last_used_us, 0) < ? THEN ? ELSE last_used_us END,"
            " updated_us = CASE WHEN updated_us < ? THEN ? ELSE updated_us END WHERE seq = ?",
            [
                (d.logs, d.roots, d.errors, d.used_us, d.used_us, d.updated_us, d.updated_us, d.ref)
                for d in flows
            ],
        )
        self.write_many(
            "UPDATE versions SET log_count = log_count + ? WHERE seq = ?",
            [(count, ref) for ref, count in versions],
        )


class Database(Protocol):
    """A backend: where the logs are, and its transactions."""

    #: The driver's errors: the database failed (a full disk, a lost connection), not one
    #: operation; such an error fails the whole call.
    errors: tuple[type[Exception], ...]

    @property
    def location(self) -> str:
        """The file's path, or the database's URL without its password: for messages."""

    def writing(self, timeout_s: float | None = None) -> AbstractContextManager[Repository]:
        """One write transaction: committed when the block ends, rolled back if it raises
        (RetryTransaction when it met another one: run it again). StoreBusy when it cannot
        start within `timeout_s` (default: the backend's own bound)."""

    def reading(self) -> AbstractContextManager[Reader]:
        """One read transaction: every query in it sees one snapshot."""

    def interrupt(self) -> None:
        """From another thread: end the write in progress and refuse later ones (at exit)."""

    def close(self) -> None: ...
