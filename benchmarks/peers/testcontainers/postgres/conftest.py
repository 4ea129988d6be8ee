"""testcontainers-python: a `PostgresContainer` started by a session fixture, so once per pytest
process (once per xdist worker), and removed at its end. Without a reaper (Ryuk) here: its image
cannot be pulled on this machine, so the run sets TESTCONTAINERS_RYUK_DISABLED=true."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from testcontainers.community.postgres import PostgresContainer

PASSWORD = "app"  # noqa: S105 (a throwaway server)
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "freeport-test-postgres:15")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresContainer]:
    container = PostgresContainer(POSTGRES_IMAGE, username="app", password=PASSWORD, dbname="app", driver=None)
    with container.with_tmpfs_mount("/var/lib/postgresql/data") as pg:
        yield pg
