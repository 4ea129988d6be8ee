"""Swarm stacks on their engine: the `docker stack` driver, and taking a stack of ours down.

Guarantees: argv built as lists, children pointed at the stack's engine; a stack's ports go only
once nothing of it is left on the engine (no service, task container or network: Docker's `docker
stack rm` returns while the tasks still stop), or, if that cannot be seen, once the Swarm lists no
service of it; until then it is kept `stopping` for `rm` or gc to finish.

May touch: runs `docker stack`; the State's leases and stack records; the engine (read).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import suppress

from .._error import ComposeError, FreeportError
from .compose import Result, run
from .leases import release
from .reclaim import ask_swarm, settle_failed
from .records import StackRecord, StackStatus
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


RM_WAIT = 60.0  # seconds, in all, that removing a stack waits for its tasks (their stop grace period: 10 s by default)


def remove_stack(engine: Engine, project: str) -> tuple[Result, int, str]:
    """`docker stack rm`, then wait (RM_WAIT s in all) until no task container or network of the
    stack is left. Docker's `docker stack rm` returns while the tasks still stop: a port they publish
    in mode host stays bound until they have, and a network one of them still holds fails to go
    ("is in use by task"), which a second `docker stack rm` removes once they are gone.

    Returns the last `docker stack rm`'s result and what is left: how many services (it could not
    remove them: nothing was waited for), else task containers and networks, and which of the two
    ("service", "task container or network"); 0 left: the stack is gone. Raises the engine's error
    (EngineUnreachableError) when it cannot be asked."""
    swarm = Swarm(engine)
    deadline = time.monotonic() + RM_WAIT
    result = swarm.rm(project)
    if not result.ok:
        services = ask_swarm(engine).get(project, 0)
        if services:
            return result, services, "service"
    containers, networks = _wait(engine, project, deadline, networks=False)
    if containers == 0 and (networks or not result.ok):
        result = swarm.rm(project)  # the network a stopping task held
        containers, networks = _wait(engine, project, deadline, networks=True)
    return result, containers + networks, "task container or network"


def _wait(engine: Engine, project: str, deadline: float, *, networks: bool) -> tuple[int, int]:
    """Poll until no task container (and, with `networks`, no network) of the stack is left or the
    deadline passes; the last count of (containers, networks)."""
    from .engine import stack_leftovers

    while True:
        left = stack_leftovers(engine, project)
        if left[0] + (left[1] if networks else 0) == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)  # not faster: each poll is a new engine client, over ssh a process


def remove_locked(state: State, record: StackRecord) -> None:
    """remove() of a stack whose project lock the caller holds (see remove_stack): its ports are
    freed once nothing of it is left. Else they stay leased and the stack is kept `stopping` for
    `rm` or gc to finish (a ComposeError says what is left), unless the engine cannot be asked and
    the Swarm lists no service of it. Signals are held only while the state changes: a Ctrl-C while
    the tasks stop leaves the stack `stopping`."""
    project = record.project
    with deferred_signals():
        record.status = StackStatus.STOPPING  # whatever interrupts what follows: `rm` or gc finishes it
        state.stacks.save(record)
    left: int | None = None
    thing = "service"
    try:
        result, left, thing = remove_stack(state.engine, project)
        if left and not result.ok:
            raise ComposeError(f"docker stack rm failed: {result.last_line()}", result.returncode)
        if left:
            # `docker stack rm` itself succeeded (returncode 0: the CLI exits with COMPOSE_FAILED)
            raise ComposeError(f"docker stack rm: {project} was not gone after {RM_WAIT:.0f} s", 0)
    except FreeportError as e:
        if left is None:  # the engine could not be asked: the Swarm's word, if it has one
            with suppress(FreeportError):
                left = ask_swarm(state.engine).get(project, 0)
        with deferred_signals():
            settle_failed(state.leases, state.stacks, record, e, left, "rm", thing)
        raise
    with deferred_signals():
        release(state.leases, project)
        state.stacks.forget(project)
