"""Which stack a command means, and the ports it holds: the read-only questions of `ports`, `port`,
`down` and the pass-through verbs, kept apart from the lifecycle so that answering them loads
neither the template reader (YAML) nor the Compose driver.

Guarantees: a project is found as Compose finds it (-p, $COMPOSE_PROJECT_NAME, else the one stack of
these files or this directory, else Compose's own name for them) or named as unknown, with where it
is if another engine has it;
`ports_of` lists only ports the stack still holds.

May touch: the State (read).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .._error import UnknownOwnerError
from .leases import held_ports
from .names import placeholder_key, sort_key
from .records import check_project
from .state import State, elsewhere


def find_project(
    state: State,
    project: str | None,
    files: Sequence[str] = (),
    *,
    project_directory: str | None = None,
    env_files: Sequence[str] = (),
) -> str | None:
    """The project a command means, as Compose finds it: -p, $COMPOSE_PROJECT_NAME, else the one
    stack of ours from these files (or made in this directory), else the name Compose itself gives
    these files (their `name:`, the env files', the directory's: naming.py). None where not even
    Compose could name one (no Compose file here): the caller says so, or leaves it to Compose."""
    name = project or os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return check_project(name)
    records = state.stacks.all()
    if files:
        wanted = [os.path.abspath(f) for f in files]
        records = [r for r in records if r.files == wanted]
    else:
        here = os.path.abspath(project_directory or os.getcwd())
        records = [r for r in records if r.project_directory == here]
    if len(records) == 1:
        return records[0].project
    if records:
        raise UnknownOwnerError(
            f"{len(records)} stacks match ({', '.join(r.project for r in records)}): give -p PROJECT"
        )
    return compose_name(files, project_directory, env_files)


def compose_name(files: Sequence[str], project_directory: str | None, env_files: Sequence[str]) -> str | None:
    """The project name Compose gives the files a command means (found as Compose finds them), or
    None where there is no Compose file. Reads the files' `name:` (YAML): asked only when no stack
    of ours answers, so `ports`, `port` and `down` of a known stack do not pay for it."""
    from .._error import NoComposeFileError
    from .discovery import compose_files
    from .naming import compose_project_name
    from .templateset import read_set

    try:
        found = compose_files(files, os.environ, project_directory or os.getcwd())
    except NoComposeFileError:
        return None
    declared = read_set(found).project_name
    directory = project_directory or os.path.dirname(os.path.abspath(found[0]))
    return compose_project_name(None, declared, directory, env_files, os.environ)


def port_name(ports: Mapping[str, int], name: str) -> str:
    """The key of `name` in `ports`: "FREEPORT_db", "db", or (an unmodified file) "db" for the one
    port of service db, "db_5432" for one of several; UnknownOwnerError naming what there is."""
    key = placeholder_key(name)
    if key in ports:
        return key
    matches = [k for k in ports if k.startswith(key + "_") and "_" not in k[len(key) + 1 :].removesuffix("_udp")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownOwnerError(f"{name!r} has several ports ({', '.join(matches)}): name one of them")
    raise UnknownOwnerError(f"no port named {name!r} (the stack has {', '.join(ports) or 'none'})")


def ports_of(state: State, project: str) -> dict[str, int]:
    """The leased port of each placeholder of a stack; UnknownOwnerError for an unknown project."""
    record = state.stacks.load(check_project(project))
    held = held_ports(state.leases, project)
    if record is None or (record.ports and not held):  # a stack that publishes nothing holds nothing
        raise UnknownOwnerError(
            f"no stack named {project!r} holds ports (see `freeport-compose leases`){elsewhere(state, project)}"
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
