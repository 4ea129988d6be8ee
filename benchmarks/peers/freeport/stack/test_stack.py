"""Eight tests, each talking to the three services of compose.yml: PostgreSQL, Redis and a web server.

`freeport_stack` (the ini option `freeport_compose_files`) is one stack for the whole run: under
`pytest -n 4` the first worker starts it (`up --wait`: until every healthcheck passes), the others
reuse it, the last one takes it down.
"""

from __future__ import annotations

import socket
import urllib.request

import pg8000.native
import pytest

from freeport_compose import Stack

USER = PASSWORD = DATABASE = "app"  # noqa: S105 (the throwaway server of compose.yml)


def ping(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


@pytest.mark.parametrize("n", range(8))
def test_services(freeport_stack: Stack, n: int) -> None:
    conn = pg8000.native.Connection(
        USER, password=PASSWORD, host=freeport_stack.host("db"), port=freeport_stack.port("db"), database=DATABASE
    )
    try:
        assert conn.run("SELECT :n + 1", n=n) == [[n + 1]]
    finally:
        conn.close()
    assert ping(freeport_stack.host("cache"), freeport_stack.port("cache")) == b"+PONG\r\n"
    with urllib.request.urlopen(freeport_stack.url("web"), timeout=5) as page:  # noqa: S310 (the stack's own URL)
        assert page.read() == b"web: hello\n"
