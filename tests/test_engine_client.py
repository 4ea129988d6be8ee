"""The small engine client over the unix socket: an answer cut short is never read as a whole one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from freeport_compose import EngineUnreachableError
from freeport_compose._stacks import engine as api
from freeport_compose._stacks.target import Engine


class RawEngine:
    """A unix-socket server that sends `answer` verbatim to every request, then closes."""

    def __init__(self, path: str) -> None:
        self.answer = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                    request += chunk
                conn.sendall(self.answer)


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[tuple[RawEngine, Engine]]:
    path = str(tmp_path / "engine.sock")
    server = RawEngine(path)
    yield server, Engine(f"unix://{path}")
    server.sock.close()


def test_an_answer_shorter_than_its_content_length_is_refused(raw: tuple[RawEngine, Engine]) -> None:
    server, engine = raw
    body = b'[{"Labels": {"com.docker.compose.project": "shop"}, "State": "running"}]'
    server.answer = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert api.project_containers(engine)["shop"].running == 1  # whole: read
    cut = b"[]"  # valid JSON, but not what the engine sent: the connection dropped
    server.answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\ncontent-length: 250\r\n\r\n" + cut
    with pytest.raises(EngineUnreachableError, match=r"cut short \(2 of 250 bytes\)"):
        api.project_containers(engine)


def test_an_answer_without_content_length_is_read_to_its_end(raw: tuple[RawEngine, Engine]) -> None:
    server, engine = raw
    server.answer = b"HTTP/1.0 200 OK\r\n\r\n[]"  # HTTP/1.0: the end of the connection ends the body
    assert api.project_containers(engine) == {}
