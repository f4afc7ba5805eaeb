"""The PostgreSQL schema: versioned, migrated forward once however many processes start at
once, and a database it cannot read refused rather than misread."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from flowtrace.store import Store, StoreSchemaError
from flowtrace.store._postgres_schema import MIGRATIONS, migrate

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
    context = multiprocessing.get_context("spawn")
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
