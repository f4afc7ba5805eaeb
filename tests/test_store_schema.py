"""Schema version and forward migrations of the store's SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flowtrace.models import PromptKernel, PromptLogRequest
from flowtrace.store import SCHEMA_VERSION, ListQuery, Store, StoreSchemaError, _schema
from tests.store_helpers import req


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_fresh_file_gets_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "logs.db"
    with Store(path) as store:
        store.log(req(path="f"))
    assert _user_version(path) == SCHEMA_VERSION == 3
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"flows", "versions", "environments", "logs", "logs_trace", "logs_flow"} <= names


def test_reopening_keeps_data_and_migrates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Store(path) as store:
        store.log(req(path="f", log_id="kept"))
    with sqlite3.connect(path) as conn:
        schema_before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    with Store(path) as store:
        assert store.get_log("kept").id == "kept"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == (
            schema_before
        )


def test_a_new_migration_runs_once_on_an_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "logs.db"
    with Store(path) as store:
        store.log(req(path="f", log_id="old"))
    runs: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        runs.append(1)
        conn.execute("ALTER TABLE flows ADD COLUMN note TEXT")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, add_column])
    for _ in range(2):
        with Store(path) as store:
            assert store.get_log("old").id == "old"
    assert runs == [1]
    assert _user_version(path) == SCHEMA_VERSION + 1


def test_a_failing_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "logs.db"
    Store(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE flows ADD COLUMN note TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(path)
    assert _user_version(path) == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(flows)")]
    assert "note" not in columns


def test_a_file_from_a_newer_flowtrace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreSchemaError, match=r"schema version 99.*newer flowtrace"):
        Store(path)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreSchemaError, match="not a flowtrace database"):
        Store(path)


def _plan(path: Path, sql: str) -> str:
    with sqlite3.connect(path) as conn:
        return " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def _downgrade(path: Path, version: int) -> None:
    """Make a file written now look as flowtrace with schema `version` wrote it."""
    with sqlite3.connect(path) as conn:
        if version < 3:
            conn.execute("DROP INDEX logs_placeholders")
            conn.execute("ALTER TABLE logs DROP COLUMN placeholder")
            conn.execute("ALTER TABLE flows DROP COLUMN kind")
        if version < 2:
            for name in (
                "logs_flow_errors",
                "logs_errors",
                "logs_flow_incomplete",
                "logs_incomplete",
            ):
                conn.execute(f"DROP INDEX {name}")
        conn.execute(f"PRAGMA user_version = {version}")


def test_a_version_2_file_gets_file_kinds_and_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Store(path) as store:
        store.log(req(path="f", log_id="old", trace_status="complete"))
    _downgrade(path, 2)
    with Store(path) as store:
        old = store.get_log("old")
        assert (old.flow.type, old.placeholder) == ("flow", None)
        created = store.log_file(PromptLogRequest(path="p", prompt=PromptKernel(model="m")))
        assert store.get_log(created["id"]).flow.type == "prompt"
    assert _user_version(path) == SCHEMA_VERSION == 3


def test_a_version_1_file_gets_the_filter_indexes(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Store(path) as store:
        store.log(req(path="f", log_id="fine", trace_status="complete"))
        store.log(req(path="f", log_id="failed", error="boom", trace_status="complete"))
        store.log(req(path="f", log_id="running"))
    _downgrade(path, 1)  # a file as flowtrace with schema 1 wrote it
    assert _user_version(path) == 1
    with Store(path) as store:
        flow_id = store.list_flows()[0].id
        assert [r.id for r in store.list_logs(ListQuery(errors_only=True)).records] == ["failed"]
        assert [r.id for r in store.list_logs(ListQuery(status="incomplete")).records] == [
            "running"
        ]
        assert [
            r.id for r in store.list_logs(ListQuery(file_id=flow_id, errors_only=True)).records
        ] == ["failed"]
    assert _user_version(path) == SCHEMA_VERSION == 3
    newest = "ORDER BY start_us DESC, seq DESC LIMIT 50"
    assert "logs_flow_errors" in _plan(
        path, f"SELECT * FROM logs WHERE flow_ref = 1 AND has_error = 1 {newest}"
    )
    assert "logs_errors" in _plan(path, f"SELECT * FROM logs WHERE has_error = 1 {newest}")
    assert "logs_incomplete" in _plan(path, f"SELECT * FROM logs WHERE complete = 0 {newest}")
    assert "logs_flow_incomplete" in _plan(
        path, f"SELECT * FROM logs WHERE flow_ref = 1 AND complete = 0 {newest}"
    )
