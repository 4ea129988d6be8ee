"""Every worker writes to the same table, each in its own database: nobody sees another's rows.

With `-n 4` these eight tests are spread over the workers; were the database shared, a test would
find rows that another worker wrote.
"""

from __future__ import annotations

import pg8000.native
import pytest


@pytest.mark.parametrize("n", range(8))
def test_rows_stay_in_their_database(conn: pg8000.native.Connection, worker_db: str, worker_id: str, n: int) -> None:
    assert conn.run("SELECT current_database()") == [[worker_db]]
    # The same table in every worker's database; each row is tagged with the worker that wrote it.
    conn.run("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, worker text NOT NULL, n int NOT NULL)")
    conn.run("INSERT INTO notes (worker, n) VALUES (:worker, :n)", worker=worker_id, n=n)
    assert conn.run("SELECT DISTINCT worker FROM notes") == [[worker_id]]
    assert [n] in conn.run("SELECT n FROM notes")
