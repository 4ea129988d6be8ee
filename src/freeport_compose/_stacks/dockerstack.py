"""Swarm stacks on their engine: the `docker stack` driver, and taking a stack of ours down.

Guarantees: argv built as lists, children pointed at the stack's engine; a stack is taken down with
signals held, and its ports go only once `docker stack rm` ran, or once the Swarm lists no service of
it (else it is kept `stopping` for `rm` or gc to finish).

May touch: runs `docker stack`; the State's leases and stack records; the engine (read).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from .._error import ComposeError, FreeportError
from .compose import Result, run
from .leases import release
from .reclaim import ask_swarm, settle_failed
from .records import StackRecord
from .signals import deferred_signals
from .state import State
from .target import Engine


class Swarm:
    """`docker stack` for one engine: one method per verb, every argument built as a list."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.env = engine.child_env(os.environ)  # pinned: `docker stack` on this engine, whatever the shell names

    def deploy(self, name: str, file: str, extra: Sequence[str] = ()) -> Result:
        """`docker stack deploy --compose-file FILE NAME`: create or update the stack's services."""
        return run(["docker", "stack", "deploy", "--compose-file", file, *extra, name], self.env, quiet_stdout=True)

    def rm(self, name: str) -> Result:
        """`docker stack rm NAME`: remove the stack's services and networks."""
        return run(["docker", "stack", "rm", name], self.env, quiet_stdout=True)


def _services_gone(engine: Engine, project: str) -> bool:
    """Whether the Swarm lists no service of the stack (False when it cannot tell)."""
    try:
        return ask_swarm(engine).get(project, 0) == 0
    except FreeportError:
        return False


_LEFTOVERS_WAIT = 60.0  # seconds: a task gets its stop grace period (10 s by default), then is killed


def _gone(engine: Engine, project: str) -> bool:
    """Wait, up to _LEFTOVERS_WAIT, until no container or network of the stack is left on the
    engine; whether none is (False too when the engine cannot tell)."""
    from .engine import stack_leftovers

    deadline = time.monotonic() + _LEFTOVERS_WAIT
    while True:
        try:
            if stack_leftovers(engine, project) == 0:
                return True
        except FreeportError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def remove_locked(state: State, record: StackRecord) -> None:
    """remove() of a stack whose project lock the caller holds: it returns once no container or
    network of the stack is left. If `docker stack rm` fails, the ports are freed only when the
    Swarm lists no service of the stack; else it is kept `stopping`."""
    project = record.project
    with deferred_signals():
        try:
            swarm = Swarm(state.engine)
            result = swarm.rm(project)
            # `docker stack rm` of Docker before 26 returns before the tasks stopped: a port of mode
            # host stays bound until they have, so the ports go only once nothing of the stack is left.
            done = (result.ok or _services_gone(state.engine, project)) and _gone(state.engine, project)
            if not done and _services_gone(state.engine, project):
                result = swarm.rm(project)  # the network a stopping task held ("is in use by task")
                done = result.ok and _gone(state.engine, project)
            if not done:
                why = result.last_line() if not result.ok else f"the stack was not gone after {_LEFTOVERS_WAIT:.0f} s"
                raise ComposeError(f"docker stack rm failed: {why}", result.returncode or 1)
        except FreeportError as e:
            try:
                left: int | None = ask_swarm(state.engine).get(project, 0)
            except FreeportError:
                left = None
            settle_failed(state.leases, state.stacks, record, e, left, "rm", "service")
            raise
        release(state.leases, project)
        state.stacks.forget(project)
