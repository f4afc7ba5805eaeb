"""How the PostgreSQL backend's transactions begin: a read's characteristics are said in its
BEGIN (one round trip less per read), and a write on the same pooled connection afterwards is
the server's default again (READ COMMITTED, read-write)."""

from __future__ import annotations

from flowtrace.store._postgres import PostgresDatabase


def test_reads_are_one_read_only_snapshot_and_writes_after_them_are_read_committed(
    postgres_url: str,
) -> None:
    database = PostgresDatabase(postgres_url, pool_size=1)  # one connection: reused by each
    show = (
        "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')"
    )
    try:
        for _ in range(2):
            with database.reading() as reader:
                assert tuple(reader.rows(show)[0]) == ("repeatable read", "on")
            with database.writing() as repo:
                assert tuple(repo.rows(show)[0]) == ("read committed", "off")
    finally:
        database.close()
