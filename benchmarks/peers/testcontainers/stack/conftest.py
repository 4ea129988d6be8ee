"""testcontainers-python: PostgreSQL, Redis and a web server, each a container started by a session
fixture, so once per pytest process (once per xdist worker), and removed at its end. Without a
reaper (Ryuk) here: its image cannot be pulled on this machine, so the run sets
TESTCONTAINERS_RYUK_DISABLED=true."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from testcontainers.community.postgres import PostgresContainer
from testcontainers.community.redis import RedisContainer
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HttpWaitStrategy

PASSWORD = "app"  # noqa: S105 (a throwaway server)
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "freeport-test-postgres:15")
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "freeport-test-redis:7")
WEB_IMAGE = os.environ.get("WEB_IMAGE", "freeport-test-busybox:latest")
WEB_COMMAND = [
    "busybox", "sh", "-c",
    "busybox mkdir -p /www && echo 'web: hello' > /www/index.html && exec busybox httpd -f -p 8080 -h /www",
]  # fmt: skip


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresContainer]:
    container = PostgresContainer(POSTGRES_IMAGE, username="app", password=PASSWORD, dbname="app", driver=None)
    with container.with_tmpfs_mount("/var/lib/postgresql/data") as pg:
        yield pg


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisContainer]:
    with RedisContainer(REDIS_IMAGE) as container:  # waits until it answers PING
        yield container


@pytest.fixture(scope="session")
def web() -> Iterator[DockerContainer]:
    container = (
        DockerContainer(WEB_IMAGE)
        .with_command(WEB_COMMAND)
        .with_exposed_ports(8080)
        .waiting_for(HttpWaitStrategy(8080).for_status_code(200))
    )
    with container:
        yield container
