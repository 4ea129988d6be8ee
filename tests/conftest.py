"""Shared test fixtures: every test gets its own private state directory."""

from __future__ import annotations

import random
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _children import Child, Spawn

PY = sys.executable


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FREEPORT_STATE_DIR per test (inherited by the processes a test starts)."""
    d = tmp_path / "state"
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(d))
    for var in ("FREEPORT_RANGE", "FREEPORT_SHARED", "COMPOSE_PROJECT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return d


def _really_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def find_free_block(n: int) -> int:
    """First port of n consecutive ports in 20000-32767 (below the kernel's ephemeral range) that
    nothing on the machine uses right now.

    Scanned from a random point as a sliding window: a busy port (say one in TIME_WAIT after an
    earlier test's HTTP request) only moves the window past it, so large blocks are still found.
    """
    lo, hi = 20000, 32767
    for _ in range(20):
        first = p = random.randrange(lo, hi - n + 2)
        while p <= hi:
            if not _really_free(p):
                first = p + 1
            elif p - first + 1 == n:
                return first
            p += 1
    raise RuntimeError(f"no block of {n} free ports found in 20000-32767")


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
