"""pytest-docker: `docker_services` runs `docker compose up --build --wait` on compose.yml once per
pytest process (so once per xdist worker) and `down -v` at its end."""

from __future__ import annotations

import os
import socket
import urllib.request

import pg8000.native
import pytest
from pytest_docker.plugin import Services

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


@pytest.fixture(scope="session")
def docker_compose_file(pytestconfig: pytest.Config) -> str:
    return os.path.join(str(pytestconfig.rootdir), "compose.yml")


def postgres_answers(host: str, port: int) -> bool:
    try:
        pg8000.native.Connection(USER, password=PASSWORD, host=host, port=port, database=DATABASE).close()
    except (OSError, pg8000.native.Error):
        return False
    return True


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64) == b"+PONG\r\n"
    except OSError:
        return False


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as page:  # noqa: S310 (the stack's own URL)
            return bool(page.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres(docker_ip: str, docker_services: Services) -> tuple[str, int]:
    """Where the PostgreSQL of compose.yml answers: (host, port)."""
    port = docker_services.port_for("db", 5432)
    docker_services.wait_until_responsive(timeout=60.0, pause=0.1, check=lambda: postgres_answers(docker_ip, port))
    return docker_ip, port


@pytest.fixture(scope="session")
def redis(docker_ip: str, docker_services: Services) -> tuple[str, int]:
    """Where the Redis of compose.yml answers: (host, port)."""
    port = docker_services.port_for("cache", 6379)
    docker_services.wait_until_responsive(timeout=60.0, pause=0.1, check=lambda: redis_answers(docker_ip, port))
    return docker_ip, port


@pytest.fixture(scope="session")
def web(docker_ip: str, docker_services: Services) -> str:
    """The URL of the web service of compose.yml."""
    url = f"http://{docker_ip}:{docker_services.port_for('web', 8080)}/"
    docker_services.wait_until_responsive(timeout=60.0, pause=0.1, check=lambda: http_answers(url))
    return url
