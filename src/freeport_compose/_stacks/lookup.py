"""Which stack a command means, and the ports it holds: the read-only questions of `ports`, `port`,
`down` and the pass-through verbs, kept apart from the lifecycle so that answering them loads
neither the template reader (YAML) nor the Compose driver.

Guarantees: a project is found as Compose finds it (-p, $COMPOSE_PROJECT_NAME, else the one stack of
these files or this directory) or named as unknown, with where it is if another engine has it;
`ports_of` lists only ports the stack still holds.

May touch: the State (read).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._error import UnknownOwnerError
from .leases import held_ports
from .names import sort_key
from .records import check_project
from .state import State, elsewhere


def find_project(state: State, project: str | None, files: Sequence[str] = ()) -> str:
    """The project a command means: -p, $COMPOSE_PROJECT_NAME, or the one stack from these files/this dir."""
    name = project or os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return check_project(name)
    records = state.stacks.all()
    if files:
        wanted = [os.path.abspath(f) for f in files]
        records = [r for r in records if r.files == wanted]
    else:
        cwd = os.getcwd()
        records = [r for r in records if r.project_directory == cwd]
    if len(records) == 1:
        return records[0].project
    if not records:
        raise UnknownOwnerError("no stack of freeport-compose here: give -p PROJECT (see `freeport-compose ls`)")
    raise UnknownOwnerError(f"{len(records)} stacks match ({', '.join(r.project for r in records)}): give -p PROJECT")


def ports_of(state: State, project: str) -> dict[str, int]:
    """The leased port of each placeholder of a stack; UnknownOwnerError for an unknown project."""
    record = state.stacks.load(check_project(project))
    held = held_ports(state.leases, project)
    if record is None or not held:
        raise UnknownOwnerError(
            f"no stack named {project!r} holds ports (see `freeport-compose ls`){elsewhere(state, project)}"
        )
    return {
        name: port
        for name, port in sorted(record.ports.items(), key=lambda kv: sort_key(kv[0]))
        if held.get(name) == port
    }


def hosts_of(state: State, project: str) -> dict[str, str]:
    """The address to reach each port of a stack on: the one it is published on, else 127.0.0.1."""
    record = state.stacks.load(check_project(project))
    known = {} if record is None else record.hosts
    return {name: known.get(name, "127.0.0.1") for name in ports_of(state, project)}
