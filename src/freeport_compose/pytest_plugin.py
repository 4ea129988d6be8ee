"""pytest fixtures: ports leased for one test, safe under pytest-xdist and parallel CI jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._allocator import FreePort, FreePorts


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port no other test, worker or process gets until this test ends."""
    with FreePort() as fp:
        yield fp.port


@pytest.fixture
def free_port_factory() -> Iterator[Callable[..., FreePorts]]:
    """Call with (n=1, **FreePorts options) for more ports; all are released when the test ends."""
    taken: list[FreePorts] = []

    def take(n: int = 1, **kwargs: Any) -> FreePorts:
        fps = FreePorts(n, **kwargs)
        taken.append(fps)
        return fps

    yield take
    for fps in taken:
        fps.release()
