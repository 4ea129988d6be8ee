"""Shared test fixtures: every test gets its own private state directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _children import Child, Spawn
from _docker import FPC, require_docker
from _ports import find_free_block

PY = sys.executable


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FREEPORT_STATE_DIR per test (inherited by the processes a test starts)."""
    d = tmp_path / "state"
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(d))
    for var in ("FREEPORT_RANGE", "FREEPORT_SHARED", "COMPOSE_PROJECT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return d


@pytest.fixture(scope="module")
def docker_engine() -> None:
    """For a module whose every test runs the CLI against Docker (`pytest.mark.usefixtures("docker_engine")`):
    skip it, saying why, without an engine, Compose v2, the test image or the installed CLI."""
    require_docker()
    if not os.access(FPC, os.X_OK):
        pytest.skip(f"{FPC} is not installed: run `bash scripts/setup.sh`")


@pytest.fixture
def free_block() -> Callable[[int], int]:
    """find_free_block as a fixture: `first = free_block(10)` gives ports first..first+9."""
    return find_free_block


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start Child processes (tests/_children.py); every one is killed (and waited for) when the test ends,
    whatever happened."""
    children: list[Child] = []

    def start(code: str, *args: object) -> Child:
        child = Child(code, *args)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.kill()
