"""Which stack a command means, and the ports it holds: the read-only questions of `ports`, `port`,
`down` and the pass-through verbs, kept apart from the lifecycle so that answering them loads
neither the template reader (YAML) nor the Compose driver.

Guarantees: a project is found as Compose finds it (-p, $COMPOSE_PROJECT_NAME, else the one stack of
these files or this directory, else Compose's own name for them) or named as unknown, with where it
is if another engine has it.
`stack_ports` (and `ports_of`, `hosts_of`) lists the ports the stack holds: its leases, and a port
whose lease was lost (its record corrupt or gone) only on the engine's word that it still publishes
it for the stack, never on a guess; every such port is said in a warning (returned, for the CLI to
print), and leased to the stack again where no one else holds it, under the project's lock taken
without waiting.

May touch: the State (read; a lost lease of a stack written again), the engine (read, only when a
lease of the stack is lost).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from .._error import FreeportError, NoFreePortError, ProjectBusyError, UnknownOwnerError
from .names import placeholder_key, sort_key
from .records import check_project
from .state import State, elsewhere

if TYPE_CHECKING:
    from .records import StackRecord


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


def compose_name(files: Sequence[str], given_directory: str | None, env_files: Sequence[str]) -> str | None:
    """The project name Compose gives the files a command means (found as Compose finds them), or
    None where there is no Compose file. Reads the files' `name:` (YAML): asked only when no stack
    of ours answers, so `ports`, `port` and `down` of a known stack do not pay for it."""
    from .._error import NoComposeFileError
    from .discovery import compose_files
    from .naming import compose_project_name, project_directory
    from .templateset import read_set

    try:
        found = compose_files(files, os.environ, given_directory or os.getcwd())
    except NoComposeFileError:
        return None
    declared = read_set(found).project_name
    return compose_project_name(None, declared, project_directory(given_directory, found), env_files, os.environ)


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


class StackPorts(NamedTuple):
    """A stack's ports as `ports` shows them, and what had to be recovered or left out to say so."""

    ports: dict[str, int]  # placeholder name: port, in name order
    hosts: dict[str, str]  # placeholder name: the address to reach it on (where it is published, else 127.0.0.1)
    warnings: tuple[str, ...] = ()  # one line each, for the user: a lost lease recovered or left out, and why


def stack_ports(state: State, project: str, *, repair: bool = True) -> StackPorts:
    """The ports a stack holds; UnknownOwnerError for an unknown project, or one that holds none of
    its ports (a stack that publishes nothing has none: {}).

    A port of the record that the project no longer holds a lease on (its lease record corrupt,
    or released by hand) is shown only if the engine still publishes it for the stack and no one
    else leased it since; with `repair`, it is leased to the stack again (so no allocation hands it
    out while the container publishes it). Each is said in `warnings`. The engine is asked only
    then: with every lease in place, this reads two small files and asks nothing.
    """
    record = state.stacks.load(check_project(project))
    if record is None:
        raise UnknownOwnerError(
            f"no stack named {project!r} holds ports (see `freeport-compose leases`){elsewhere(state, project)}"
        )
    held = {r.port for r in state.leases.owner_ports(project) or []}
    ports = {name: port for name, port in record.ports.items() if port in held}
    warnings: list[str] = []
    lost = {name: port for name, port in record.ports.items() if port not in held}
    if lost:
        recovered, warnings = _recover(state, record, lost, repair)
        ports.update(recovered)
    if record.ports and not ports:
        why = f": {'; '.join(warnings)}" if warnings else ""
        raise UnknownOwnerError(
            f"no stack named {project!r} holds ports (see `freeport-compose leases`){elsewhere(state, project)}{why}"
        )
    ordered = dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))
    hosts = {name: record.hosts.get(name, "127.0.0.1") for name in ordered}
    return StackPorts(ordered, hosts, tuple(warnings))


def ports_of(state: State, project: str) -> dict[str, int]:
    """The port of each placeholder of a stack (see `stack_ports`, whose warnings this drops);
    UnknownOwnerError for an unknown project."""
    return stack_ports(state, project).ports


def hosts_of(state: State, project: str) -> dict[str, str]:
    """The address to reach each port of a stack on: the one it is published on, else 127.0.0.1."""
    return stack_ports(state, project).hosts


def _recover(state: State, record: StackRecord, lost: dict[str, int], repair: bool) -> tuple[dict[str, int], list[str]]:
    """The lost ports the engine vouches for (and that no one else leased), and a warning for every
    lost port, recovered or not."""
    project = record.project
    try:
        published = _published_for(state, record)
    except FreeportError as e:
        listed = ", ".join(f"{port} ({name})" for name, port in sorted(lost.items(), key=lambda kv: sort_key(kv[0])))
        return {}, [
            f"port(s) {listed} of {project} lost their lease (its record unreadable or gone), and the engine could "
            f"not be asked whether it still publishes them ({e}): left out"
        ]
    found: dict[str, int] = {}
    warnings: list[str] = []
    for name, port in sorted(lost.items(), key=lambda kv: sort_key(kv[0])):
        what = f"port {port} ({name}) of {project}"
        holder = _other_holder(state, port)
        if holder:
            warnings.append(f"{what} is leased by {holder} now: left out")
        elif port not in published:
            warnings.append(
                f"{what} lost its lease (its record unreadable or gone), and the engine does not publish it for "
                "the stack: left out"
            )
        else:
            found[name] = port
    failed = _lease_again(state, project, found) if repair and found else {}
    for name, port in sorted(found.items(), key=lambda kv: sort_key(kv[0])):
        what = f"port {port} ({name}) of {project} lost its lease, and the engine still publishes it for the stack"
        taken, why = failed.get(name, (False, ""))
        if taken:
            del found[name]
            warnings.append(f"{what}, but {why}: left out")
        elif why or not repair:
            warnings.append(f"{what}: shown, not leased again ({why or 'not asked to'})")
        else:
            warnings.append(f"{what}: leased to it again")
    return found, warnings


def _published_for(state: State, record: StackRecord) -> frozenset[int]:
    """The host ports the engine publishes for the stack: its running containers' (one query), or
    for a Swarm stack with a service left, every service's (Swarm tasks carry no Compose label)."""
    from .engine import project_ports, published_ports, swarm_stacks

    if record.swarm:
        return published_ports(state.engine) if swarm_stacks(state.engine).get(record.project, 0) else frozenset()
    return project_ports(state.engine, record.project)


def _other_holder(state: State, port: int) -> str:
    """Who else holds a live lease on `port` ("owner 'x'", "pid 12"), or "" if no one does."""
    record = state.leases.read(port)
    if record is None or not state.leases.is_held(record):
        return ""
    return f"owner {record.owner!r}" if record.owner is not None else f"pid {record.holder.pid}"


def _vouched(port: int) -> bool:
    return True


def _lease_again(state: State, project: str, found: Mapping[str, int]) -> dict[str, tuple[bool, str]]:
    """Lease each found port to the project again, under its lock taken without waiting; for each
    one that was not: (whether someone else has it now, why)."""
    from .._leasing.allocator import FreePort

    failed: dict[str, tuple[bool, str]] = {}
    try:
        # Under the project's lock: a `down` that freed the stack's leases and removed its record
        # between our reading and our lease would otherwise leave this lease behind, no one's.
        with state.stacks.locked(project, wait=False):
            current = state.stacks.load(project)
            for name, port in found.items():
                if current is None or current.ports.get(name) != port:
                    failed[name] = (False, "the stack changed meanwhile")
                    continue
                try:
                    # The engine vouched for it; the bind probe would call it busy (the stack's own
                    # container binds it). No other lease is taken over: the port's flock decides.
                    FreePort(port, port, owner=project, label=name, timeout=0, state_dir=state.leases, probe=_vouched)
                except NoFreePortError:
                    failed[name] = (True, "someone else leased it meanwhile")
                except FreeportError as e:
                    failed[name] = (False, str(e))
    except ProjectBusyError:
        return {name: (False, "the project is busy (an up, down or gc of it)") for name in found}
    except FreeportError as e:
        return {name: (False, str(e)) for name in found}
    return failed
