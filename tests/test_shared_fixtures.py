"""The suite's shared parts keep each test as isolated as parts of its own would: a shared
in-process server serves each test its own store; a pooled PostgreSQL schema is lent again as
a newly migrated one is, or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrace.store import Store
from tests.pgutil import PostgresCluster, _MigratedSchemas
from tests.serverutil import SharedServers

psycopg = pytest.importorskip("psycopg")  # the postgres extra (CI installs it: dev)

LOGS = [{"op": "log", "body": {"path": f"p{n}", "log_id": f"l{n}"}} for n in range(3)]


def test_one_server_serves_each_test_its_own_store(tmp_path: Path) -> None:
    servers = SharedServers()
    try:
        with servers.serve(tmp_path / "first.db") as first, first.client() as client:
            assert client.post("/flows/log", json={"path": "a", "log_id": "1st"}).is_success
        with servers.serve(tmp_path / "second.db") as second, second.client() as client:
            assert second.root_url == first.root_url  # the same server...
            assert client.get("/logs/1st").status_code == 404  # ...serving another store
        with servers.serve(tmp_path / "small.db", max_body_bytes=100) as small:
            assert small.root_url != first.root_url  # other app options: another server
    finally:
        servers.stop()
    with Store(tmp_path / "first.db") as store:
        assert store.get_log("1st").id == "1st"


def test_a_request_between_tests_is_refused_as_a_server_fault(
    tmp_path: Path, fail_on_internal_errors: list[tuple[str, BaseException | None]]
) -> None:
    servers = SharedServers()
    try:
        with servers.serve(tmp_path / "served.db") as served:
            pass
        late = httpx.post(
            served.base_url + "/flows/log", json={"path": "late"}, headers=served.headers
        )
        assert late.status_code == 500  # never another test's store
        assert "while no test is served" in str(fail_on_internal_errors[0][1])
        fail_on_internal_errors.clear()  # provoked on purpose
    finally:
        servers.stop()


def _query(cluster: PostgresCluster, url: str, sql: str) -> list[tuple[Any, ...]]:
    schema = url.rsplit("search_path%3D", 1)[1]
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"SET search_path = {schema}")
        rows: list[tuple[Any, ...]] = conn.execute(sql).fetchall()
        return rows


def test_a_schema_given_back_is_lent_again_empty_with_its_sequences_restarted(
    postgres_cluster: PostgresCluster,
) -> None:
    schemas = _MigratedSchemas(postgres_cluster)
    url = schemas.lend()
    with Store(url) as store:
        store.batch(LOGS)
    first_seqs = _query(postgres_cluster, url, "SELECT seq FROM logs ORDER BY seq")
    schemas.give_back(url)
    assert schemas.lend() == url
    assert _query(postgres_cluster, url, "SELECT count(*) FROM logs") == [(0,)]
    assert _query(postgres_cluster, url, "SELECT count(*) FROM flows") == [(0,)]
    with Store(url) as store:
        store.batch(LOGS)
    assert _query(postgres_cluster, url, "SELECT seq FROM logs ORDER BY seq") == first_seqs


def test_a_schema_not_as_migration_left_it_is_not_lent_again(
    postgres_cluster: PostgresCluster,
) -> None:
    schemas = _MigratedSchemas(postgres_cluster)
    url = schemas.lend()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id integer)")
    schemas.give_back(url)
    assert schemas.lend() != url


def test_a_schema_a_test_still_holds_is_not_lent_again(postgres_cluster: PostgresCluster) -> None:
    schemas = _MigratedSchemas(postgres_cluster, lock_timeout_ms=50)
    url = schemas.lend()
    with psycopg.connect(url) as conn:  # a connection left open in a transaction on logs
        conn.execute("SELECT count(*) FROM logs")
        schemas.give_back(url)
    assert schemas.lend() != url
