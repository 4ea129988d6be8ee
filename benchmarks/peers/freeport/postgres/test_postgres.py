"""Eight tests, each with a connection of its own to the PostgreSQL of compose.yml.

`freeport_stack` (the ini option `freeport_compose_files`) is one stack for the whole run: under
`pytest -n 4` the first worker starts it, the others reuse it, the last one takes it down.
"""

from __future__ import annotations

import pg8000.native
import pytest

from freeport_compose import Stack

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


@pytest.mark.parametrize("n", range(8))
def test_query(freeport_stack: Stack, n: int) -> None:
    conn = pg8000.native.Connection(
        USER, password=PASSWORD, host=freeport_stack.host("db"), port=freeport_stack.port("db"), database=DATABASE
    )
    try:
        conn.run("CREATE TEMPORARY TABLE t (n int)")
        conn.run("INSERT INTO t VALUES (:n)", n=n)
        assert conn.run("SELECT n + 1 FROM t") == [[n + 1]]
    finally:
        conn.close()
