"""Eight tests, each talking to the three containers: PostgreSQL, Redis and a web server."""

from __future__ import annotations

import socket
import urllib.request

import pg8000.native
import pytest
from testcontainers.community.postgres import PostgresContainer
from testcontainers.community.redis import RedisContainer
from testcontainers.core.container import DockerContainer


def ping(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


@pytest.mark.parametrize("n", range(8))
def test_services(postgres: PostgresContainer, redis: RedisContainer, web: DockerContainer, n: int) -> None:
    conn = pg8000.native.Connection(
        postgres.username,
        password=postgres.password,
        host=postgres.get_container_host_ip(),
        port=postgres.get_exposed_port(5432),
        database=postgres.dbname,
    )
    try:
        assert conn.run("SELECT :n + 1", n=n) == [[n + 1]]
    finally:
        conn.close()
    assert ping(redis.get_container_host_ip(), redis.get_exposed_port(6379)) == b"+PONG\r\n"
    url = f"http://{web.get_container_host_ip()}:{web.get_exposed_port(8080)}/"
    with urllib.request.urlopen(url, timeout=5) as page:
        assert page.read() == b"web: hello\n"
