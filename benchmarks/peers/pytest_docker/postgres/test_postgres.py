"""Eight tests, each with a connection of its own to the PostgreSQL of compose.yml."""

from __future__ import annotations

import pg8000.native
import pytest

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


@pytest.mark.parametrize("n", range(8))
def test_query(postgres: tuple[str, int], n: int) -> None:
    host, port = postgres
    conn = pg8000.native.Connection(USER, password=PASSWORD, host=host, port=port, database=DATABASE)
    try:
        conn.run("CREATE TEMPORARY TABLE t (n int)")
        conn.run("INSERT INTO t VALUES (:n)", n=n)
        assert conn.run("SELECT n + 1 FROM t") == [[n + 1]]
    finally:
        conn.close()
