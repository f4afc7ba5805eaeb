"""A throwaway PostgreSQL cluster for the tests, and the store targets tests run over.

`postgres_cluster` (session): initdb into a temp dir and start `postgres` on a Unix socket
only (`listen_addresses=''`: no TCP listener); as root, both run as the `postgres` user (the
server refuses to run as root). A missing PostgreSQL skips the tests that need it, except
under CI (`CI=1`), where it fails them: CI installs Debian's `postgresql` (.ci/run).

`store_target` (parametrized sqlite / postgres): where a test's Store goes, a fresh SQLite
file or a fresh schema of the cluster's database (a schema is created in milliseconds; a
database would take a second). The same tests run on both: the same rules, proved twice.
Its schemas come migrated from a pool (`_MigratedSchemas`): a schema back from a test is
emptied to the state of a newly migrated one in ~20 ms, where a migration takes ~150 ms.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "PostgresCluster",
    "postgres_cluster",
    "postgres_url",
    "running_cluster",
    "store_target",
]

_DATABASE = "flowtrace_test"
_STARTUP_TIMEOUT_S = 60.0
_schemas = itertools.count(1)
# trust: only this machine's users reach the socket; --no-sync: a throwaway cluster
_INITDB_OPTIONS = [
    "-U",
    "postgres",
    "-A",
    "trust",
    "-E",
    "UTF8",
    "--locale",
    "C.UTF-8",
    "--no-sync",
]


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresCluster:
    socket_dir: Path
    process: subprocess.Popen[bytes]
    bin_dir: Path
    data_dir: Path

    def url(self, database: str = _DATABASE, schema: str | None = None) -> str:
        url = f"postgresql://postgres@/{database}?host={self.socket_dir}"
        if schema is not None:
            url += f"&options=-csearch_path%3D{schema}"
        return url

    def new_schema(self) -> str:
        """A fresh, empty schema of the test database: the URL of a store of its own."""
        import psycopg

        schema = f"t{os.getpid()}_{next(_schemas)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema=schema)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def _start(bin_dir: Path, root: Path, durable: bool = False) -> PostgresCluster:
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), *_INITDB_OPTIONS]),
        check=True,
        capture_output=True,
    )
    settings = {
        "listen_addresses": "",  # no TCP listener
        "unix_socket_directories": str(sockets),
        "max_connections": "300",
        "shared_buffers": "128MB",
    }
    if not durable:  # the tests kill flowtrace processes, never this cluster: speed first
        settings.update(fsync="off", full_page_writes="off")
    options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
    process = subprocess.Popen(
        _as_postgres([str(bin_dir / "postgres"), "-D", str(data), *options]),
        stdout=subprocess.DEVNULL,
        stderr=open(root / "postgres.log", "wb"),  # noqa: SIM115 - the server's, closed at exit
    )
    cluster = PostgresCluster(sockets, process, bin_dir, data)
    _wait_ready(cluster, root)
    return cluster


def _wait_ready(cluster: PostgresCluster, root: Path) -> None:
    import psycopg

    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while True:
        if cluster.process.poll() is not None:
            log = (root / "postgres.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited with {cluster.process.returncode}: {log}")
        try:
            with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {_DATABASE}")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling the socket: postgres announces readiness nowhere else


@contextmanager
def running_cluster(durable: bool = False) -> Iterator[PostgresCluster]:
    """A throwaway cluster for as long as the block runs (tests, benchmarks). `durable`:
    PostgreSQL's default fsync settings (benchmarks); else none. Raises LookupError when
    PostgreSQL or the postgres extra is missing."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as missing:
        raise LookupError(f"the postgres extra is not installed ({missing})") from missing
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise LookupError("no initdb (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="flowtrace-pg-"))
    try:
        cluster = _start(bin_dir, root, durable)
        try:
            yield cluster
        finally:
            # runuser does not pass signals on: pg_ctl signals the postmaster itself
            stop = [str(bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "stop", "-m", "fast"]
            subprocess.run(_as_postgres(stop), capture_output=True, timeout=60)
            cluster.process.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = running_cluster()
        started = cluster.__enter__()
    except LookupError as missing:
        _unavailable(str(missing))
        raise
    try:
        yield started
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh store of its own on the cluster (a new schema)."""
    return postgres_cluster.new_schema()


class _MigratedSchemas:
    """Schemas a Store has migrated, lent to one test at a time. A schema given back is
    emptied (TRUNCATE of every table but the schema's `meta`, sequences restarted): then it is
    as a newly migrated schema is, which the next test's Store opens without migrating. A
    schema that is not as migration leaves it (another set of relations, other `meta` rows)
    or cannot be emptied at once (a connection left open holds a lock) is not lent again."""

    def __init__(self, cluster: PostgresCluster, lock_timeout_ms: int = 5000) -> None:
        self._cluster = cluster
        self._lock_timeout_ms = lock_timeout_ms  # how long emptying waits for a test's locks
        self._free: list[str] = []
        self._migrated: tuple[Any, ...] | None = None  # a migrated schema's shape and meta

    def lend(self) -> str:
        if self._free:
            return self._free.pop()
        from flowtrace.store import Store

        url = self._cluster.new_schema()
        Store(url).close()  # migrates it
        if self._migrated is None:
            self._migrated = self._state(url)
        return url

    def give_back(self, url: str) -> None:
        import psycopg

        if self._state(url) != self._migrated:
            return
        schema = _schema_of(url)
        with psycopg.connect(self._cluster.url(), autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
            tables = _names(conn, schema, "r")
            data = ", ".join(f"{schema}.{table}" for table in tables if table != "meta")
            try:
                with conn.transaction():
                    conn.execute(f"TRUNCATE {data} RESTART IDENTITY")
                    for sequence in _names(conn, schema, "S"):
                        conn.execute(f"ALTER SEQUENCE {schema}.{sequence} RESTART")
            except psycopg.errors.LockNotAvailable:
                return
        self._free.append(url)

    def _state(self, url: str) -> tuple[Any, ...]:
        import psycopg

        schema = _schema_of(url)
        with psycopg.connect(self._cluster.url(), autocommit=True) as conn:
            relations = conn.execute(
                "SELECT relname, relkind FROM pg_class"
                " WHERE relnamespace = %s::regnamespace ORDER BY relname",
                (schema,),
            ).fetchall()
            meta = []
            if ("meta", "r") in relations:
                meta = conn.execute(f"SELECT * FROM {schema}.meta ORDER BY 1").fetchall()
        return tuple(relations), tuple(meta)


def _schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]


def _names(conn: Any, schema: str, relkind: str) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = %s",
        (schema, relkind),
    ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture(scope="session")
def migrated_schemas(postgres_cluster: PostgresCluster) -> _MigratedSchemas:
    return _MigratedSchemas(postgres_cluster)


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test's store goes: a new SQLite file, or a PostgreSQL schema of its own (as a
    newly migrated one is: see `_MigratedSchemas`)."""
    if request.param == "sqlite":
        yield str(tmp_path / "logs.db")
        return
    schemas: _MigratedSchemas = request.getfixturevalue("migrated_schemas")
    url = schemas.lend()
    yield url
    schemas.give_back(url)
