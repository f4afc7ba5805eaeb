"""The PostgreSQL schema: versioned, migrated forward once however many processes start at
once, and a database it cannot read refused rather than misread."""

from __future__ import annotations

from typing import Any

import pytest

from flowtrace.store import Store, StoreSchemaError
from flowtrace.store._postgres_schema import MIGRATIONS, migrate
from tests.processutil import clean_context

psycopg = pytest.importorskip("psycopg")  # the postgres extra (CI installs it: dev)


def _open_and_close(url: str, barrier: Any) -> None:
    barrier.wait()  # imports done: all open at once
    Store(url).close()


def _version(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row is not None
    return int(row[0])


def test_processes_opening_a_new_database_at_once_migrate_it_once(postgres_url: str) -> None:
    context = clean_context()
    barrier = context.Barrier(6)
    openers = [
        context.Process(target=_open_and_close, args=(postgres_url, barrier)) for _ in range(6)
    ]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=60)
    assert [opener.exitcode for opener in openers] == [0] * 6
    assert _version(postgres_url) == len(MIGRATIONS)


def test_a_database_of_a_newer_flowtrace_is_refused(postgres_url: str) -> None:
    Store(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreSchemaError, match=r"schema version 99 .* newer flowtrace"):
        Store(postgres_url)


def test_a_schema_with_foreign_tables_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id integer)")
    with pytest.raises(StoreSchemaError, match="not a flowtrace database"):
        Store(postgres_url)


def test_a_migration_runs_forward_from_the_stored_version_only(postgres_url: str) -> None:
    Store(postgres_url).close()
    later = [*MIGRATIONS, ["CREATE INDEX logs_output_later ON logs (output)"]]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, "test", later)  # version 1 -> 2: only the new step (v1 again would fail)
        migrate(conn, "test", later)  # up to date: nothing
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'logs_output_later'"
            " AND schemaname = current_schema()"
        ).fetchone()
    assert indexes is not None and indexes[0] == 1
    assert _version(postgres_url) == len(later)


def _plan(conn: Any, sql: str) -> str:
    return "\n".join(line for (line,) in conn.execute("EXPLAIN " + sql))


def test_list_flows_finds_each_flows_latest_version_by_index(postgres_url: str) -> None:
    """300 flows of 30 versions: schema version 1 had PostgreSQL walk the versions' primary
    key backwards, filtering by flow, for each flow's latest (2.2 s); version 2's index on
    (flow_ref, seq) answers each in one step. The migration adds it to a version 1 database."""
    from flowtrace.store._records import flow_stats_sql

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, "test", MIGRATIONS[:1])  # a database of schema version 1
        conn.execute(
            "INSERT INTO flows (id, path, name, created_us, updated_us)"
            " SELECT 'fl_' || n, 'f/' || n, 'f' || n, 0, 0 FROM generate_series(1, 300) n"
        )
        conn.execute(
            "INSERT INTO versions (id, flow_ref, attributes_digest, attributes, created_us)"
            " SELECT 'v_' || f.seq || '_' || n, f.seq, decode(md5(f.seq || '.' || n), 'hex'),"
            " '{}', 0 FROM flows f, generate_series(1, 30) n"
        )
    Store(postgres_url).close()  # migrates to the latest version
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        plan = _plan(conn, flow_stats_sql())
    assert _version(postgres_url) == len(MIGRATIONS)
    assert "Backward using versions_pkey" not in plan
    assert "Index Only Scan Backward using versions_flow_seq" in plan
