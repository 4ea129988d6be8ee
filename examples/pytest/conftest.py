"""One PostgreSQL server for the whole run, one database on it for each pytest-xdist worker.

`db` is a session stack: under `pytest -n 4` the first worker starts it, the others reuse it, and
the last one to finish takes it down. Each worker then makes its own database on that server
(test_gw0, test_gw1, ...; test_master without xdist), so tests in different workers can create
the same tables without seeing each other's rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pg8000.native
import pytest

from freeport_compose import Stack
from freeport_compose.pytest_plugin import stack_fixture

USER = PASSWORD = ADMIN_DB = "app"  # noqa: S105 (the throwaway server of compose.yaml)

# `up --wait` already waits for the healthcheck; "tcp" also checks the published port from here.
db = stack_fixture("compose.yaml", wait_for={"db": "tcp"})


def connect(stack: Stack, database: str) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        USER, password=PASSWORD, host=stack.host("db"), port=stack.port("db"), database=database
    )


@pytest.fixture(scope="session")
def worker_db(db: Stack, worker_id: str) -> Iterator[str]:
    """The name of this worker's own database, created on the shared server and dropped at the end."""
    name = f"test_{worker_id}"
    admin = connect(db, ADMIN_DB)
    try:
        # IF EXISTS: a stack kept by `--freeport-keep` may still hold it from an interrupted run.
        admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
        yield name
        admin.run(f"DROP DATABASE {pg8000.native.identifier(name)} WITH (FORCE)")
    finally:
        admin.close()


@pytest.fixture
def conn(db: Stack, worker_db: str) -> Iterator[pg8000.native.Connection]:
    """A connection to this worker's database (autocommit: what a test writes stays for the worker)."""
    connection = connect(db, worker_db)
    yield connection
    connection.close()
