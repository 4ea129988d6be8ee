"""Eight tests, each with a connection of its own to the PostgreSQL container."""

from __future__ import annotations

import pg8000.native
import pytest
from testcontainers.community.postgres import PostgresContainer


@pytest.mark.parametrize("n", range(8))
def test_query(postgres: PostgresContainer, n: int) -> None:
    conn = pg8000.native.Connection(
        postgres.username,
        password=postgres.password,
        host=postgres.get_container_host_ip(),
        port=postgres.get_exposed_port(5432),
        database=postgres.dbname,
    )
    try:
        conn.run("CREATE TEMPORARY TABLE t (n int)")
        conn.run("INSERT INTO t VALUES (:n)", n=n)
        assert conn.run("SELECT n + 1 FROM t") == [[n + 1]]
    finally:
        conn.close()
