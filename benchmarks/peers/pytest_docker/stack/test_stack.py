"""Eight tests, each talking to the three services of compose.yml: PostgreSQL, Redis and a web server."""

from __future__ import annotations

import socket
import urllib.request

import pg8000.native
import pytest

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


def ping(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


@pytest.mark.parametrize("n", range(8))
def test_services(postgres: tuple[str, int], redis: tuple[str, int], web: str, n: int) -> None:
    host, port = postgres
    conn = pg8000.native.Connection(USER, password=PASSWORD, host=host, port=port, database=DATABASE)
    try:
        assert conn.run("SELECT :n + 1", n=n) == [[n + 1]]
    finally:
        conn.close()
    assert ping(*redis) == b"+PONG\r\n"
    with urllib.request.urlopen(web, timeout=5) as page:  # noqa: S310 (the stack's own URL)
        assert page.read() == b"web: hello\n"
