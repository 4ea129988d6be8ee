"""pytest fixtures: ports and Compose stacks leased for one test, safe under pytest-xdist and
parallel CI jobs.

- `free_port`: one port, leased until the test ends.
- `free_port_factory(n=1, **FreePorts options)`: more ports, all released when the test ends.
- `compose_stack(*files, **options)`: `freeport-compose up --wait` a stack for this test; it is
  brought down (volumes included) and its ports freed when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ._error import ComposeError
from ._leasing.allocator import FreePort, FreePorts


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


@dataclass(frozen=True)
class RunningStack:
    """A stack started for a test: its Compose project name and the port of each placeholder."""

    project: str
    ports: dict[str, int]

    def port(self, name: str) -> int:
        """The port of `name`: "FREEPORT_db" or just "db"."""
        from ._stacks.names import placeholder_key

        return self.ports[placeholder_key(name)]


@pytest.fixture
def compose_stack() -> Iterator[Callable[..., RunningStack]]:
    """Call with template files (and Options fields: project, profiles, env_files, ...) to start a
    stack with `up --wait`; every stack started is brought down when the test ends."""
    from ._stacks.lifecycle import Options, down, up
    from ._stacks.state import State

    state = State.open()
    started: list[str] = []

    def start(*files: str, wait: bool = True, **options: Any) -> RunningStack:
        try:
            record = up(state, Options(files=list(files), **options), wait=wait)
        except ComposeError as e:
            if not e.details:
                raise
            # The failed services' states and logs, which are gone once the stack is rolled back.
            raise ComposeError("\n".join((str(e), *e.details)), e.returncode, e.details) from None
        started.append(record.project)
        return RunningStack(record.project, dict(record.ports))

    yield start
    errors = []
    for project in started:  # every stack, even if bringing one down fails
        try:
            down(state, project, volumes=True)
        except Exception as e:
            errors.append(f"{project}: {e}")
    if errors:
        raise RuntimeError("compose_stack could not bring down: " + "; ".join(errors))
