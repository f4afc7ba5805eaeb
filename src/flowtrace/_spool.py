"""The disk spool: wire operations that could not be delivered yet, kept in a file until they
are, by this process or the next one that delivers to the same destination.

One SQLite file per destination (`spool_path`), which several processes may share. Each
process registers as an *owner*; an entry belongs to the process that spooled it (its origin),
and only its holder sends it: the origin while it lives. A process whose owner row names a dead
process (same host, pid gone or reused; or silent for `STALE_S`) left a backlog: the first
process to `claim_dead()` it becomes its holder, in one write transaction (one update of the
owners, whatever the size of the backlog), so one process drains it, never two, and in the
order it was spooled.
An entry is deleted (`ack`) once delivered: a crash in between delivers it again, which the
destination recognises as a replay of the same `log_id` (docs/contract.md).

Bounded: beyond `max_bytes` of used pages an append is refused (`SpoolFull`: the caller counts
those logs dropped), and entries older than `max_age_s` are dropped when a drain starts
(`expire`). A file that is not a readable spool is set aside (renamed `*.corrupt-<time>`) and a
fresh one started. When the spool cannot be written at all (read-only directory, full disk)
every call raises `SpoolUnavailable`. Files are created with mode 0600: they hold payloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pydantic_core import from_json, to_json

from flowtrace._contract import BATCH_UPDATE

__all__ = [
    "SPOOL_SUFFIX",
    "Spool",
    "SpoolEntry",
    "SpoolFull",
    "SpoolItem",
    "SpoolUnavailable",
    "default_spool_dir",
    "spool_path",
]

#: Version of the file's layout (`PRAGMA user_version`); another version is set aside.
SPOOL_FORMAT = 1
SPOOL_SUFFIX = ".spool"
#: An owner not heard of for this long is taken for dead, whatever its pid says (pid reuse, or
#: another host sharing the directory).
STALE_S = 600.0
#: How often a live owner with entries says it is alive.
HEARTBEAT_S = 30.0
#: What an entry costs besides its operation's JSON (columns, index), for the size bound.
_ROW_OVERHEAD = 120

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    # A process that spools; `held_by`: the live process that took its entries over (it is
    # gone), none while it holds them itself. Taking over is one update of this table, whatever
    # the size of the backlog.
    """CREATE TABLE IF NOT EXISTS owners (
        owner TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        process_start TEXT NOT NULL,
        seen_us INTEGER NOT NULL,
        held_by TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY,
        origin TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        log_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        final INTEGER NOT NULL,
        parent_id TEXT,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        query TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS entries_origin ON entries (origin, id)",
]

WallClockUs = Callable[[], int]


def _wall_us() -> int:
    return time.time_ns() // 1000


class SpoolUnavailable(Exception):
    """The spool cannot be used now (read-only directory, full disk, ...)."""


class SpoolFull(Exception):
    """The spool holds `max_bytes` already: nothing more is taken."""


class SpoolItem(NamedTuple):
    """One operation to spool: a create (`kind` "log", "prompt_log" or "tool_log") or an update
    of `log_id`. (A tuple: cheap to make, one per operation when the spool takes a backlog.)"""

    log_id: str
    kind: str
    final: bool
    body: dict[str, Any]
    query: dict[str, str]
    seq: int = 0  # the spooling pipeline's sequence number (its flush markers wait on it)

    @property
    def parent_id(self) -> str | None:
        parent = self.body.get("trace_parent_id") if self.kind != BATCH_UPDATE else None
        return parent if isinstance(parent, str) else None


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """An operation read back from the spool."""

    id: int
    origin: str  # the process that spooled it
    created_us: int
    item: SpoolItem


# --- where spools live -------------------------------------------------------------------------


def default_spool_dir() -> Path:
    """The per-user directory for spools of HTTP destinations: `$XDG_STATE_HOME/flowtrace/spool`
    (default `~/.local/state/flowtrace/spool`)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "flowtrace" / "spool"


def spool_path(destination: str, spool_dir: str | None, db_path: str | None = None) -> Path:
    """The spool of `destination`: in `spool_dir` when set, named by the destination's digest;
    else next to the embedded store's file (`<db_path>.spool`), or in `default_spool_dir()`."""
    name = "spool-" + hashlib.sha256(destination.encode()).hexdigest()[:16] + SPOOL_SUFFIX
    if spool_dir:
        return Path(spool_dir) / name
    if db_path is not None:
        db = Path(db_path)
        return db.with_name(db.name + SPOOL_SUFFIX)
    return default_spool_dir() / name


# --- owners ------------------------------------------------------------------------------------


def _process_start(pid: int) -> str:
    """Something that tells two processes with the same pid apart (Linux: start time in clock
    ticks since boot); empty where it cannot be known."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return ""
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


def _is_corrupt(error: sqlite3.Error) -> bool:
    """The file is not a spool (garbage, another format); not a disk that fails (locked, full,
    read-only: those are `OperationalError`s)."""
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.OperationalError
    )


class Spool:
    """A spool file, used by one process (thread-safe; reopened after a fork by its user)."""

    def __init__(
        self,
        path: Path,
        destination: str,
        *,
        max_bytes: int,
        max_age_s: float,
        wall_us: WallClockUs = _wall_us,
        busy_timeout_s: float = 5.0,
        set_aside: Callable[[Path], None] = lambda path: None,
    ) -> None:
        """`set_aside(path)` is told of a file that was not a spool, renamed to `path`."""
        self.path = path
        self.destination = destination
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._wall_us = wall_us
        self.busy_timeout_s = busy_timeout_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._registered = False
        # Whether this process ever wrote its owner row: rows naming it (its entries, the
        # owners it holds) exist only if it did.
        self._ever_registered = False
        self._last_heartbeat_us = 0
        self._on_set_aside = set_aside
        self.set_aside: list[Path] = []  # files that were not spools, renamed

    # --- opening -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self._create_file()
            conn = self._open()
        except SpoolUnavailable:
            raise
        except sqlite3.DatabaseError as error:
            if not _is_corrupt(error):
                raise SpoolUnavailable(f"cannot open the spool {self.path}: {error}") from error
            self._set_aside()  # not a spool (of this format): kept aside, never misread
            try:
                self._create_file()
                conn = self._open()
            except (OSError, sqlite3.Error) as again:
                raise SpoolUnavailable(f"cannot open the spool {self.path}: {again}") from again
        self._conn = conn
        return conn

    def _create_file(self) -> None:
        """Make the directory (0700 when we create it) and the file (0600) before SQLite opens
        it: SQLite gives its WAL and shared-memory files the database file's mode."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as error:
            raise SpoolUnavailable(f"cannot create the spool {self.path}: {error}") from error

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # A committed append survives the process (kill -9); only power loss can take it.
            conn.execute("PRAGMA synchronous = NORMAL")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SPOOL_FORMAT):
                raise sqlite3.DatabaseError(f"not a spool of format {SPOOL_FORMAT}: {version}")
            if version == 0:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('destination', ?)",
                    (self.destination,),
                )
                conn.execute(f"PRAGMA user_version = {SPOOL_FORMAT}")
                conn.execute("COMMIT")
            else:
                conn.execute("SELECT count(*) FROM entries WHERE id < 0").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                with contextlib.suppress(OSError):
                    source.replace(Path(str(target) + suffix))
        self.set_aside.append(target)
        self._on_set_aside(target)

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a corrupt file is set aside (and the operation
        fails: the caller retries with a fresh file or gives up), a disk problem is
        `SpoolUnavailable`."""
        with self._lock:
            try:
                conn = self._connect()
                yield conn
            except sqlite3.Error as error:
                if self._conn is not None and self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if _is_corrupt(error):  # the next use starts a fresh file
                    self._close_connection()
                    self._set_aside()
                raise SpoolUnavailable(f"spool {self.path}: {error}") from error

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._registered = False
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # --- ownership ---------------------------------------------------------------------------
    def _register(self, conn: sqlite3.Connection, now_us: int) -> None:
        if self._registered and now_us - self._last_heartbeat_us < HEARTBEAT_S * 1e6:
            return
        conn.execute(
            "INSERT OR REPLACE INTO owners (owner, pid, host, process_start, seen_us)"
            " VALUES (?, ?, ?, ?, ?)",
            (self.owner, os.getpid(), self._host, _process_start(os.getpid()), now_us),
        )
        self._registered = self._ever_registered = True
        self._last_heartbeat_us = now_us

    def _dead(self, pid: int, host: str, process_start: str, seen_us: int, now_us: int) -> bool:
        if now_us - seen_us > STALE_S * 1e6:
            return True
        if host != self._host:
            return False
        if not _pid_alive(pid):
            return True
        return bool(process_start) and _process_start(pid) != process_start

    def claim_dead(self) -> tuple[int, int]:
        """Take over the entries of owners that are gone (in one transaction: one claimer
        each). Returns what this owner now holds of other processes: entries, and logs (their
        closing entries)."""
        now = self._wall_us()
        with self._using() as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._register(conn, now)
            rows = conn.execute(
                "SELECT owner, pid, host, process_start, seen_us, held_by FROM owners"
                " WHERE owner != ?",
                (self.owner,),
            ).fetchall()
            alive = {
                owner: not self._dead(pid, host, started, seen, now)
                for owner, pid, host, started, seen, _ in rows
            }
            alive[self.owner] = True
            for owner, *_, held_by in rows:
                holder = held_by or owner
                if not alive.get(holder, False):  # its holder is gone: this one holds it now
                    conn.execute(
                        "UPDATE owners SET held_by = ? WHERE owner = ?", (self.owner, owner)
                    )
            # Entries whose owner row is missing (an owner that left them and forgot itself).
            conn.execute(
                "INSERT INTO owners (owner, pid, host, process_start, seen_us, held_by)"
                " SELECT DISTINCT origin, 0, '', '', 0, ? FROM entries"
                " WHERE origin NOT IN (SELECT owner FROM owners)",
                (self.owner,),
            )
            count, logs = conn.execute(
                "SELECT count(*), coalesce(sum(final), 0) FROM entries"
                " WHERE origin IN (SELECT owner FROM owners WHERE held_by = ?)",
                (self.owner,),
            ).fetchone()
            conn.execute("COMMIT")
        return int(count), int(logs)

    # --- writing -----------------------------------------------------------------------------
    def append(self, items: Sequence[SpoolItem]) -> list[int]:
        """Spool `items` in order, owned by this process; the entry ids of those it took: all
        of them, or the first ones, as many as fit in `max_bytes` (none: `SpoolFull`)."""
        if not items:
            return []
        now = self._wall_us()
        owner = self.owner
        rows = [
            (
                owner,
                now,
                item.log_id,
                item.kind,
                int(item.final),
                item.parent_id,
                item.seq,
                to_json(item.body),
                to_json(item.query).decode() if item.query else None,
            )
            for item in items
        ]
        with self._using() as conn:
            room = self.max_bytes - self._used_bytes(conn)
            taken = 0
            for row in rows:
                room -= len(row[7]) + _ROW_OVERHEAD
                if room < 0:
                    break
                taken += 1
            if not taken:
                raise SpoolFull(f"spool {self.path} holds {self.max_bytes} bytes")
            conn.execute("BEGIN IMMEDIATE")
            self._register(conn, now)
            first = (conn.execute("SELECT max(id) FROM entries").fetchone()[0] or 0) + 1
            ids = list(range(first, first + taken))
            conn.executemany(
                "INSERT INTO entries (id, origin, created_us, log_id, kind, final, parent_id,"
                " seq, body, query) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(entry_id, *row) for entry_id, row in zip(ids, rows, strict=False)],
            )
            conn.execute("COMMIT")
        return ids

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    def ack(self, ids: Sequence[int]) -> None:
        """These entries were delivered (or given up): forget them."""
        if not ids:
            return
        with self._using() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])
            self._register(conn, self._wall_us())
            conn.execute("COMMIT")

    def expire(self) -> list[SpoolEntry]:
        """Drop the entries this owner holds that are older than `max_age_s`; returns them."""
        cutoff = self._wall_us() - int(self.max_age_s * 1e6)
        with self._using() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE origin IN ({_HELD}) AND"
                " created_us < ? ORDER BY id",
                (self.owner, self.owner, cutoff),
            ).fetchall()
            if not rows:
                return []
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM entries WHERE id = ?", [(row[0],) for row in rows])
            conn.execute("COMMIT")
        return [_entry(row) for row in rows]

    # --- reading -----------------------------------------------------------------------------
    def head(self, limit: int, *, backlog: bool = False) -> list[SpoolEntry]:
        """The oldest entries this owner holds, in the order they were spooled: its own, or
        (`backlog`) those of one process it took over (traces never span processes: only the
        order within each matters); a drained one is forgotten."""
        with self._using() as conn:
            if not backlog:
                return _entries(conn, self.owner, limit)
            while True:
                row = conn.execute(
                    "SELECT owner FROM owners WHERE held_by = ? ORDER BY owner LIMIT 1",
                    (self.owner,),
                ).fetchone()
                if row is None:
                    return []
                entries = _entries(conn, row[0], limit)
                if entries:
                    return entries
                conn.execute("DELETE FROM owners WHERE owner = ?", (row[0],))

    def counts(self) -> dict[str, int]:
        """What the file holds: entries and logs (by their closing entry), this owner's and in
        all, and the bytes used."""
        with self._using() as conn:
            total, logs = conn.execute(
                "SELECT count(*), coalesce(sum(final), 0) FROM entries"
            ).fetchone()
            mine, my_logs = conn.execute(
                "SELECT count(*), coalesce(sum(final), 0) FROM entries WHERE origin = ?",
                (self.owner,),
            ).fetchone()
            used = self._used_bytes(conn)
        return {
            "entries": int(total),
            "logs": int(logs),
            "own_entries": int(mine),
            "own_logs": int(my_logs),
            "bytes": used,
        }

    def owners(self) -> list[dict[str, Any]]:
        """Every process with entries, and whether it (or its holder) is alive (for
        `flowtrace spool status`)."""
        now = self._wall_us()
        with self._using() as conn:
            rows = conn.execute(
                "SELECT e.origin, count(*), sum(e.final), min(e.created_us), h.pid, h.host,"
                " h.process_start, h.seen_us, h.owner FROM entries e"
                " LEFT JOIN owners o ON o.owner = e.origin"
                " LEFT JOIN owners h ON h.owner = coalesce(o.held_by, o.owner)"
                " GROUP BY e.origin ORDER BY min(e.id)"
            ).fetchall()
        owners = []
        for origin, entries, logs, oldest, pid, host, started, seen, holder in rows:
            alive = holder == self.owner or (
                pid is not None and not self._dead(pid, host, started, seen, now)
            )
            owners.append(
                {
                    "owner": origin,
                    "entries": int(entries),
                    "logs": int(logs or 0),
                    "oldest_us": int(oldest),
                    "alive": alive,
                }
            )
        return owners

    def purge(self, *, include_live: bool = False) -> int:
        """Delete the entries of dead owners (every entry with `include_live`); how many logs."""
        if not include_live:
            self.claim_dead()
        with self._using() as conn:
            conn.execute("BEGIN IMMEDIATE")
            if include_live:
                logs = conn.execute("SELECT coalesce(sum(final), 0) FROM entries").fetchone()[0]
                conn.execute("DELETE FROM entries")
            else:
                logs = conn.execute(
                    f"SELECT coalesce(sum(final), 0) FROM entries WHERE origin IN ({_HELD})",
                    (self.owner, self.owner),
                ).fetchone()[0]
                conn.execute(
                    f"DELETE FROM entries WHERE origin IN ({_HELD})", (self.owner, self.owner)
                )
                conn.execute("DELETE FROM owners WHERE held_by = ?", (self.owner,))
            conn.execute("COMMIT")
        return int(logs)

    def release(self) -> None:
        """This process is done with the spool: its owner row goes if it owns nothing (what it
        still holds stays, for the next process to claim once this one is gone). A process that
        never used the spool leaves it as it is (not even opened: most exits)."""
        if not self._ever_registered:
            return
        with contextlib.suppress(SpoolUnavailable), self._using() as conn:
            conn.execute(
                "DELETE FROM owners WHERE owner = ? AND NOT EXISTS"
                " (SELECT 1 FROM entries WHERE origin = ?)"
                " AND NOT EXISTS (SELECT 1 FROM owners WHERE held_by = ?)",
                (self.owner, self.owner, self.owner),
            )

    def leave(self) -> None:
        """This owner will send nothing more (its user stopped for good, the process goes
        on): its owner row goes, so the next `claim_dead()`, by any process, takes what it
        spooled or held at once rather than after this process ends."""
        if not self._ever_registered:
            return
        with contextlib.suppress(SpoolUnavailable), self._using() as conn:
            conn.execute("DELETE FROM owners WHERE owner = ?", (self.owner,))
        self._registered = False

    def close(self) -> None:
        with self._lock:
            self._close_connection()


_ENTRY_COLUMNS = "id, origin, created_us, log_id, kind, final, seq, body, query"
#: The origins an owner holds: its own, and those it took over.
_HELD = "SELECT ? UNION SELECT owner FROM owners WHERE held_by = ?"


def _entries(conn: sqlite3.Connection, origin: str, limit: int) -> list[SpoolEntry]:
    rows = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE origin = ? ORDER BY id LIMIT ?",
        (origin, limit),
    ).fetchall()
    return [_entry(row) for row in rows]


def _entry(row: Any) -> SpoolEntry:
    entry_id, origin, created_us, log_id, kind, final, seq, body, query = row
    item = SpoolItem(
        log_id, kind, bool(final), from_json(body), from_json(query) if query else {}, seq
    )
    return SpoolEntry(entry_id, origin, created_us, item)
