"""pytest-docker: `docker_services` runs `docker compose up --build --wait` on compose.yml once per
pytest process (so once per xdist worker) and `down -v` at its end."""

from __future__ import annotations

import os

import pg8000.native
import pytest
from pytest_docker.plugin import Services

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


@pytest.fixture(scope="session")
def docker_compose_file(pytestconfig: pytest.Config) -> str:
    return os.path.join(str(pytestconfig.rootdir), "compose.yml")


def is_responsive(host: str, port: int) -> bool:
    try:
        pg8000.native.Connection(USER, password=PASSWORD, host=host, port=port, database=DATABASE).close()
    except (OSError, pg8000.native.Error):
        return False
    return True


@pytest.fixture(scope="session")
def postgres(docker_ip: str, docker_services: Services) -> tuple[str, int]:
    """Where the PostgreSQL of compose.yml answers: (host, port)."""
    # `port_for` takes a container port and returns the corresponding host port
    port = docker_services.port_for("db", 5432)
    docker_services.wait_until_responsive(timeout=60.0, pause=0.1, check=lambda: is_responsive(docker_ip, port))
    return docker_ip, port
