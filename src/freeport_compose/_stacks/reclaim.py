"""Ports follow the containers: a stack that is gone gives its leases back, with no command of ours.

Guarantees:
- A stack is judged on the engine's word (one query for every stack judged at once), never on a
  guess: an engine that does not answer frees nothing, and says so with the address it tried.
- A stack whose project is locked (an up, render, down or gc of it in flight, or the Compose child
  of an `up` whose CLI was killed) is never judged.
- What frees a stack's leases (`verdict`): an `up` stack with no container left (a plain `docker
  compose down`, `docker rm -f`, an engine reset, a reboot); a stack whose `render`, `up` or `run`
  was killed, once none of its containers is left; a rendered stack whose leases were released, or
  whose `--ttl` ran out with no container of it left; a `down` that could not finish, once no
  container is left; a deployed Swarm stack whose services are gone (`docker stack rm`, a Swarm
  left). A stopped stack (`docker compose stop`: containers exist) keeps its ports, and
  so does a rendered stack within its lifetime.

May touch: the State's leases and stack records; the engine's API (read only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

from .._error import FreeportError, NotSwarmManagerError, ProjectBusyError
from .._leasing.process import holder_alive
from .._leasing.ranges import PortRange
from .._leasing.store import LeaseStore, Reclaimed
from .engine import Containers
from .leases import release
from .records import StackRecord, StackRecords, StackStatus
from .target import Engine


def left_of(record: StackRecord, live: Mapping[str, Containers] | None, swarm: Mapping[str, int] | None) -> int | None:
    """What is left of a stack on its engine: its containers (Compose), or its services (a Swarm
    stack: its tasks' containers carry no Compose label); None when the engine could not tell."""
    if record.swarm:
        return None if swarm is None else swarm.get(record.project, 0)
    return None if live is None else live.get(record.project, Containers()).total


def verdict(
    record: StackRecord,
    live: Mapping[str, Containers] | None,
    leases: LeaseStore,
    now: float,
    swarm: Mapping[str, int] | None = None,
) -> str | None:
    """Why this stack's leases can be freed now (the reason, as `gc` says it), or None to keep them.

    `live`: the engine's containers per project, None when the engine could not be asked; `swarm`:
    its services per Swarm stack, None when not asked or not told.
    """
    status = record.status
    if status.driven:
        if holder_alive(record.driver) is not False:
            return None
        verb = {StackStatus.STARTING: "deploy" if record.swarm else "up", StackStatus.RENDERING: "render"}
        return f"its `{verb.get(status, 'run')}` was killed"
    if status is StackStatus.RENDERED and leases.owner_ports(record.project) is None:
        return "its leases were released"
    left = left_of(record, live, swarm)
    if left is None or left:
        return None
    if status is StackStatus.UP:
        return "no container left"
    if status is StackStatus.DEPLOYED:
        return "its Swarm stack is gone"
    if status is StackStatus.STOPPING:
        return (
            "its `rm` did not finish, and no service is left"
            if record.swarm
            else ("its `down` did not finish, and no container is left")
        )
    if status is StackStatus.RENDERED and record.expires is not None and now >= record.expires:
        return "its --ttl ran out, and no container of it is left"
    return None


def may_go(record: StackRecord, now: float) -> bool:
    """Whether the engine's word could free this stack (so it is worth asking about)."""
    if record.status in (StackStatus.UP, StackStatus.STOPPING, StackStatus.DEPLOYED) or record.status.driven:
        return True
    return record.status is StackStatus.RENDERED and (record.expires is None or now >= record.expires)


@contextmanager
def unchanged(stacks: StackRecords, record: StackRecord) -> Iterator[StackRecord | None]:
    """The project's record under its lock, taken without waiting (ProjectBusyError if busy): the
    current one if it is still the one that was judged (same creation and status), else None."""
    with stacks.locked(record.project, wait=False):
        current = stacks.load(record.project)
        same = current is not None and (current.created, current.status) == (record.created, record.status)
        yield current if same else None


def forget_if_unchanged(stacks: StackRecords, leases: LeaseStore, record: StackRecord) -> bool:
    """Release the stack's leases and remove its record, unless its project is busy or its record
    changed since it was judged; True if it was freed."""
    try:
        with unchanged(stacks, record) as current:
            if current is None:
                return False  # an up, render or down of this project ran meanwhile: not ours to judge
            release(leases, record.project)
            stacks.forget(record.project)
            return True
    except ProjectBusyError:
        return False


def ask_swarm(engine: Engine) -> dict[str, int]:
    """The engine's services per Swarm stack; {} on an engine in no Swarm (any more): a Swarm left
    takes its stacks with it."""
    from .engine import swarm_stacks

    try:
        return swarm_stacks(engine)
    except NotSwarmManagerError as e:
        if e.inactive:
            return {}
        raise  # a worker or a locked manager: its stacks may exist, it cannot say


class Asked(NamedTuple):
    """What the engine said of its stacks, asked once for all of them: the judges' one input."""

    live: dict[str, Containers] | None  # containers per Compose project; None: the engine did not answer
    swarm: dict[str, int] | None  # services per Swarm stack; None: not asked, or not told
    error: str = ""  # why the engine (when `live` is None) or the Swarm (else) could not tell


def ask(engine: Engine, *, swarm: bool) -> Asked:
    """The engine's containers per project and, when `swarm`, its services per Swarm stack: one
    query, two with the Swarm. A failure is returned as `error`, never raised."""
    from .engine import project_containers

    try:
        live = project_containers(engine)
    except FreeportError as e:
        return Asked(None, None, str(e))
    if not swarm:
        return Asked(live, None)
    try:
        return Asked(live, ask_swarm(engine))
    except FreeportError as e:
        return Asked(live, None, str(e))


def reclaim_gone(stacks: StackRecords, leases: LeaseStore, engine: Engine, ports: PortRange) -> Reclaimed:
    """Free the stacks holding leases in `ports` that are gone, asking the engine once (twice with
    Swarm stacks among them).

    Called by an allocation that found its range exhausted, before it waits or fails.
    """
    now = time.time()
    records = [r for r in stacks.all() if may_go(r, now) and any(p in ports for p in r.ports.values())]
    if not records:
        return Reclaimed()
    live, swarm, error = ask(engine, swarm=any(r.swarm for r in records))
    note = ""
    if error:
        who, names = "engine" if live is None else "Swarm", ", ".join(r.project for r in records)
        note = f"the {who} could not be asked whether stack(s) {names} still exist: {error}"
    freed = []
    for record in records:
        if verdict(record, live, leases, now, swarm) is None:
            continue
        if record.status.driven and left_of(record, live, swarm) != 0:
            continue  # a killed `up` or `deploy` whose stack may still be there: `gc` takes it down first
        if forget_if_unchanged(stacks, leases, record):
            freed.append(record.project)
    return Reclaimed(tuple(freed), note)


def settle_failed(
    leases: LeaseStore,
    stacks: StackRecords,
    record: StackRecord,
    e: FreeportError,
    left: int | None,
    verb: str,
    thing: str,
) -> None:
    """After a take-down (`down`, `rm`) that failed: the ports go if the engine says nothing of the
    stack is left (`left` == 0), else they stay and the stack is kept `stopping` for `verb` or gc to
    finish; the error `e` says which."""
    project = record.project
    if left == 0:
        release(leases, project)
        stacks.forget(project)
        e.args = (f"{e} (no {thing} of it is left: its ports are freed)",)
        return
    record.status = StackStatus.STOPPING
    stacks.save(record)
    things = " or ".join(f"{word}s" for word in thing.split(" or "))  # "task containers or networks"
    what = f"its {things} may still exist" if left is None else f"{left} of its {things} are left"
    e.args = (
        f"{e} ({what}: its ports stay leased until `freeport-compose {verb} -p {project}` "
        "or `freeport-compose gc` can finish)",
    )
