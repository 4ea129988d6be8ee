"""The small engine client over the unix socket: an answer cut short is never read as a whole one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _fake_engine import FakeEngine
from freeport_compose import EngineUnreachableError
from freeport_compose._stacks import engine as api
from freeport_compose._stacks.target import Engine


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[tuple[FakeEngine, Engine]]:
    path = str(tmp_path / "engine.sock")
    server = FakeEngine(path)
    yield server, Engine(f"unix://{path}")
    server.close()


def test_an_answer_shorter_than_its_content_length_is_refused(raw: tuple[FakeEngine, Engine]) -> None:
    server, engine = raw
    body = b'[{"Labels": {"com.docker.compose.project": "shop"}, "State": "running"}]'
    server.raw = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert api.project_containers(engine)["shop"].running == 1  # whole: read
    cut = b"[]"  # valid JSON, but not what the engine sent: the connection dropped
    server.raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\ncontent-length: 250\r\n\r\n" + cut
    with pytest.raises(EngineUnreachableError, match=r"cut short \(2 of 250 bytes\)"):
        api.project_containers(engine)


def test_an_answer_without_content_length_is_read_to_its_end(raw: tuple[FakeEngine, Engine]) -> None:
    server, engine = raw
    server.raw = b"HTTP/1.0 200 OK\r\n\r\n[]"  # HTTP/1.0: the end of the connection ends the body
    assert api.project_containers(engine) == {}
