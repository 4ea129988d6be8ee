"""What `ls` shows: for each engine, the leases held now, and each stack with what the engine has of it.

Guarantee: one engine query for all stacks of an engine (two with Swarm stacks among them); a
stack's state is the engine's word (up, run, partial,
stopped, gone) for a stack that was started, else its record's status: never "up" with no container.
An engine that does not answer is said, not guessed around.

May touch: the State (read), the engine's API (read).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .._leasing.records import LeaseRecord
from .engine import Containers
from .reclaim import Asked, ask
from .records import StackRecord, StackStatus
from .state import State
from .target import Engine


@dataclass(frozen=True)
class StackView:
    """A stack as `ls` shows it: its record, and what the engine has of it."""

    record: StackRecord
    containers: Containers | None  # None: the engine could not be asked
    services: int | None = None  # a Swarm stack's services, None: not asked (or not a Swarm stack)

    @property
    def state(self) -> str:
        """up (or run) / partial / stopped / gone by the engine's containers, for a stack that was
        started (by `up`, `run`, or the user's own `docker compose up` of a rendered one); else the
        record's status. Never "up" with no container running."""
        status, c = self.record.status, self.containers
        if self.record.swarm and status is StackStatus.DEPLOYED:
            return status.value if self.services is None or self.services else "gone"
        started = status in (StackStatus.UP, StackStatus.RUN) or (status is StackStatus.RENDERED and c and c.total)
        if c is None or not started:
            return status.value
        if c.total == 0:
            return "gone"
        if c.running == c.total:
            return "run" if status is StackStatus.RUN else "up"  # "run": up while its `run` lives
        return "partial" if c.running else "stopped"

    def describe(self) -> str:
        """The state as one phrase: "partial (1 of 2 running)", "rendered (expires in 5 min)"..."""
        state, c = self.state, self.containers
        if state == "deployed" and self.services:
            return f"deployed ({self.services} service{'s' if self.services != 1 else ''})"
        if state == "partial" and c is not None:
            return f"partial ({c.running} of {c.total} running)"
        if state == "rendered" and self.record.expires is not None:
            left = self.record.expires - time.time()
            return f"rendered (expires in {_duration(left)})" if left > 0 else "rendered (expired)"
        return state


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Overview:
    """Everything `ls` shows, gathered in one place so the CLI only formats it."""

    state_dir: str
    engine: Engine
    leases: list[LeaseRecord]
    stacks: list[StackView]
    engine_error: str | None  # why container counts are unknown


def overview(state: State) -> Overview:
    """The leases held now, and every stack with what the engine has of it (one engine query, two
    with Swarm stacks)."""
    leases = state.leases.held()
    records = state.stacks.all()
    containers, swarm, error = ask(state.engine, swarm=any(r.swarm for r in records)) if records else Asked(None, None)
    engine_error = None
    if error:
        engine_error = error if containers is None else f"Swarm stacks: {error}"
    views = [
        StackView(
            r,
            None if containers is None else containers.get(r.project, Containers()),
            None if swarm is None or not r.swarm else swarm.get(r.project, 0),
        )
        for r in records
    ]
    return Overview(state.path, state.engine, leases, views, engine_error)
