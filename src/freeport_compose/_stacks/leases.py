"""A stack's leases: one port per placeholder name, held under the project's name.

Guarantees: leasing is all or nothing; `up` again on a project keeps the ports it holds; a port
that something outside our leases grabbed is replaced by a new lease before the old one is freed;
releasing can spare the leases a stack had before a failed attempt.

Engine-aware: a port is free for a stack when no lease holds it, the target engine has not
published it (asked once per allocation: its containers' bindings and every Swarm service's
published ports, which no bind probe sees), and, for an engine on this machine, the bind probe
finds it free. For an engine elsewhere the bind probe is not the test: a port busy here may be free
there, and the reverse.

May touch: the lease store it is handed (named leases whose owner is the project); the engine's
API (read only, once per allocation).
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, NamedTuple

from .._error import EngineUnreachableError, InvalidRangeError, UnknownOwnerError
from .._leasing.store import LeaseStore
from .names import sort_key
from .target import Engine

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    # The allocator and the probe (sockets, threads) are imported where a lease is taken: `ports`,
    # `down` and the pass-through verbs read a stack's leases through this module and take none.
    from .._leasing.allocator import FreePorts
    from .templateset import TemplateSet  # it imports YAML: a reclaim (from `get`, say) must not pay for it


class PortCheck(NamedTuple):
    """How one allocation for a stack tells a free port: the target engine's published ports, asked
    once for the whole allocation (not once per candidate), and the bind probe where it means something."""

    published: frozenset[int] = frozenset()
    local: bool = True  # the engine publishes on this machine: the bind probe counts too

    def probe(self, hosts: Sequence[str]) -> Callable[[int], bool]:
        from .._leasing.probe import check_hosts, port_is_free

        checked = check_hosts(hosts)

        def free(port: int) -> bool:
            return port not in self.published and (not self.local or port_is_free(port, checked))

        return free

    def hosts(self, hosts: Sequence[str]) -> list[str]:
        """The addresses to probe: none for an engine elsewhere (its addresses are not ours to bind)."""
        return list(hosts) if self.local else []


def port_check(engine: Engine) -> PortCheck:
    """The engine's published ports, asked now. An engine on this machine that does not answer
    leaves the bind probe alone to judge (it sees what a running local engine binds); for one
    elsewhere nothing could judge: EngineUnreachableError."""
    from .engine import published_ports

    try:
        return PortCheck(published_ports(engine), engine.on_this_machine)
    except EngineUnreachableError as e:
        if engine.on_this_machine and not e.answered:
            return PortCheck()
        raise  # elsewhere nothing else could judge; an engine that answered with an error is said


def _free_ports(
    leases: LeaseStore,
    check: PortCheck,
    project: str,
    names: Sequence[str],
    hosts: Sequence[str],
    timeout: float | None,
    *,
    contiguous: bool = False,
    exclude: Sequence[int] = (),
) -> FreePorts:
    """FreePorts for `names` under the project, free by `check` on every one of `hosts`."""
    from .._leasing.allocator import FreePorts

    addresses = check.hosts(hosts)
    return FreePorts(
        len(names),
        contiguous=contiguous,
        owner=project,
        labels=list(names),
        host=addresses,
        timeout=timeout,
        exclude=exclude,
        state_dir=leases,
        probe=check.probe(addresses),
    )


def held_ports(leases: LeaseStore, project: str) -> dict[str, int]:
    """{placeholder name: port} of the leases the project holds now."""
    return {r.label: r.port for r in leases.owner_ports(project) or []}


def lease(
    leases: LeaseStore,
    check: PortCheck,
    templates: TemplateSet,
    project: str,
    *,
    reuse: bool,
    timeout: float | None,
) -> dict[str, int]:
    """One port per placeholder name, leased under the project's name (kept across `up` when reuse)."""
    held = held_ports(leases, project) if reuse else {}
    ports = {name: held[name] for name in templates.names if name in held}
    missing = [name for name in templates.names if name not in ports]
    if missing:
        ports.update(_lease_names(leases, check, templates.hosts, project, missing, timeout))
    return dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))


def _lease_names(
    leases: LeaseStore,
    check: PortCheck,
    hosts_of: Callable[[str], Sequence[str]],
    project: str,
    names: Sequence[str],
    timeout: float | None,
    exclude: Sequence[int] = (),
) -> dict[str, int]:
    """Lease one port per name under the project, all or nothing, free on every host a name is bound to."""
    hosts = sorted({h for name in names for h in hosts_of(name)})
    fps = _free_ports(leases, check, project, names, hosts, timeout, exclude=exclude)
    return dict(zip(names, fps.ports, strict=True))


def lease_groups(
    leases: LeaseStore,
    check: PortCheck,
    project: str,
    groups: Sequence[Sequence[str]],
    hosts: Mapping[str, Sequence[str]],
    held: Mapping[str, int],
    timeout: float | None,
) -> dict[str, int]:
    """One port per name, under the project's name: the names of a group of several as one block of
    consecutive ports, each other name alone; a group the project holds whole keeps its ports. All or
    nothing, as a whole: the caller's rollback frees what was leased before a failure."""
    ports = {n: held[n] for group in groups if all(n in held for n in group) for n in group}
    partly = [n for group in groups if any(n not in held for n in group) for n in group if n in held]
    if partly:  # a block that lost part of its ports (a clash): leased anew, whole
        for record in leases.owner_ports(project) or []:
            if record.label in partly:
                leases.release(record)
    singles = [g[0] for g in groups if len(g) == 1 and g[0] not in ports]
    if singles:
        addresses = sorted({h for n in singles for h in hosts.get(n, ())})
        fps = _free_ports(leases, check, project, singles, addresses, timeout)
        ports.update(zip(singles, fps.ports, strict=True))
    for group in groups:
        if len(group) > 1 and group[0] not in ports:
            addresses = sorted({h for n in group for h in hosts.get(n, ())})
            try:
                fps = _free_ports(leases, check, project, group, addresses, timeout, contiguous=True)
            except InvalidRangeError as e:  # a range of the file longer than any run of the lease range
                e.args = (f"{e}, for a published range ({', '.join(group)})",)
                raise
            ports.update(zip(group, fps.ports, strict=True))
    return ports


def relocate(
    leases: LeaseStore,
    check: PortCheck,
    hosts_of: Callable[[str], Sequence[str]],
    project: str,
    ports: dict[str, int],
    names: Collection[str],
    timeout: float | None,
) -> dict[str, int]:
    """New leases for `names` (avoiding their clashed ports), then the old ones released."""
    ordered = sorted(names, key=sort_key)
    fresh = _lease_names(leases, check, hosts_of, project, ordered, timeout, exclude=[ports[n] for n in ordered])
    for record in leases.owner_ports(project) or []:
        if record.label in names and record.port == ports[record.label]:
            leases.release(record)
    return {**ports, **fresh}


def release(leases: LeaseStore, project: str, keep: Collection[str] | None = None) -> None:
    """Free the project's leases (but those of the placeholders in `keep`)."""
    if keep is None:
        with suppress(UnknownOwnerError):
            leases.release_owner(project)
        return
    for record in leases.owner_ports(project) or []:
        if record.label not in keep:
            leases.release(record)
