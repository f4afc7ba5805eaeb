"""The database schema: a version number (PRAGMA user_version) and forward migrations.

`MIGRATIONS[i]` takes a database from version i to i+1; a fresh file runs them all. A file
stamped with a version newer than this code knows is refused rather than misread. Migrations run
inside one IMMEDIATE transaction, so processes opening a new file at once cannot race.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from flowtrace.store._errors import StoreSchemaError

__all__ = ["MIGRATIONS", "migrate", "schema_version"]

Migration = Callable[[sqlite3.Connection], None]

# Refs between tables are integer row ids (flow_ref, version_ref, trace_seq, parent_seq):
# a fraction of the size of text ids in every index, so 1M-log indexes stay in cache.
# Times are integer microseconds since the epoch (exact, cheap to compare).
_V1_TABLES = [
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE flows (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        last_used_us INTEGER,
        -- counters maintained by every write, so the viewer's flow list never counts logs
        log_count INTEGER NOT NULL DEFAULT 0,
        root_count INTEGER NOT NULL DEFAULT 0,
        error_count INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE versions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        flow_ref INTEGER NOT NULL,
        attributes_digest BLOB NOT NULL,
        attributes TEXT NOT NULL,
        name TEXT,
        description TEXT,
        created_us INTEGER NOT NULL,
        log_count INTEGER NOT NULL DEFAULT 0,
        UNIQUE (flow_ref, attributes_digest)
    )""",
    """CREATE TABLE environments (
        flow_ref INTEGER NOT NULL,
        name TEXT NOT NULL,
        version_ref INTEGER NOT NULL,
        deployed_us INTEGER NOT NULL,
        PRIMARY KEY (flow_ref, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE logs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        flow_ref INTEGER NOT NULL,
        version_ref INTEGER NOT NULL,
        trace_seq INTEGER NOT NULL,
        parent_seq INTEGER,
        start_us INTEGER NOT NULL,
        end_us INTEGER,
        complete INTEGER NOT NULL,
        has_error INTEGER NOT NULL,
        request_digest BLOB NOT NULL,
        inputs TEXT,
        output TEXT,
        data TEXT NOT NULL
    )""",
]

# Each index serves one read; every one of them costs every insert (measured: 6 indexes halve
# the insert rate), so there is no other. A version_id filter rides on logs_flow (its flow is
# known). Search has no index: a trigram FTS5 index measured at 5x slower ingest; see _reads.
_V1_INDEXES = [
    # one trace, in start order (get_log, trace_children, delete of a subtree)
    "CREATE INDEX logs_trace ON logs (trace_seq, start_us)",
    # a flow's logs, newest first (list_logs file_id=...)
    "CREATE INDEX logs_flow ON logs (flow_ref, start_us)",
    # every log, newest first (list_logs without a flow)
    "CREATE INDEX logs_start ON logs (start_us)",
    # a flow's traces only (roots_only, the viewer's default list); without a flow, roots are
    # found along logs_start (a page needs a few hundred entries, not another index)
    "CREATE INDEX logs_flow_roots ON logs (flow_ref, start_us) WHERE parent_seq IS NULL",
    "CREATE INDEX environments_version ON environments (version_ref)",
]


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1_TABLES + _V1_INDEXES:
        conn.execute(statement)
    # How search is answered, recorded so a later migration can add an index and say so.
    conn.execute("INSERT INTO meta (key, value) VALUES ('search', 'like')")


# Version 2: the viewer's error and status filters seek instead of scanning. Partial indexes
# hold only the rows they match (errors, logs still running: few), so ingest barely pays.
# Their conditions are written as the reads write them (`has_error = 1`, `complete = 0`):
# SQLite uses a partial index only for a query whose WHERE implies the index's.
_V2_INDEXES = [
    "CREATE INDEX logs_flow_errors ON logs (flow_ref, start_us) WHERE has_error = 1",
    "CREATE INDEX logs_errors ON logs (start_us) WHERE has_error = 1",
    "CREATE INDEX logs_flow_incomplete ON logs (flow_ref, start_us) WHERE complete = 0",
    "CREATE INDEX logs_incomplete ON logs (start_us) WHERE complete = 0",
]


def _add_filter_indexes(conn: sqlite3.Connection) -> None:
    for statement in _V2_INDEXES:
        conn.execute(statement)


# Version 3: prompt and tool files beside flows, and placeholder logs. A file's kind is a
# column of its row (paths stay unique across kinds, as in the original API); a log's kind is
# its file's. A placeholder is a parent span not yet received (see _spans): few, and found by a
# partial index when the viewer lists pending traces.
_V3_STATEMENTS = [
    "ALTER TABLE flows ADD COLUMN kind TEXT NOT NULL DEFAULT 'flow'",
    "ALTER TABLE logs ADD COLUMN placeholder INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX logs_placeholders ON logs (start_us) WHERE placeholder = 1",
]


def _add_kinds_and_placeholders(conn: sqlite3.Connection) -> None:
    for statement in _V3_STATEMENTS:
        conn.execute(statement)


MIGRATIONS: list[Migration] = [_create_v1, _add_filter_indexes, _add_kinds_and_placeholders]


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(version: int, known: int, path: str) -> None:
    if version > known:
        raise StoreSchemaError(
            f"{path}: schema version {version} was written by a newer flowtrace; "
            f"this one knows up to version {known}. Upgrade flowtrace to open it."
        )


def _refuse_foreign(conn: sqlite3.Connection, path: str) -> None:
    tables = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchone()[0]
    if tables:
        raise StoreSchemaError(f"{path}: not a flowtrace database (it has foreign tables)")


def migrate(conn: sqlite3.Connection, path: str, begin: Callable[[], None]) -> None:
    """Bring the file to the latest schema. `begin` opens an IMMEDIATE transaction (retrying
    while another process holds the lock); opening an up-to-date file writes nothing."""
    migrations = list(MIGRATIONS)
    known = len(migrations)
    version = schema_version(conn)
    _refuse_newer(version, known, path)
    if version == known:
        return
    begin()
    try:
        version = schema_version(conn)  # another process may have migrated meanwhile
        _refuse_newer(version, known, path)
        if version == 0:
            _refuse_foreign(conn, path)
        for step in migrations[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {known}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
