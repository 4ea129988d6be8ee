"""A stack's leases: one port per placeholder name, held under the project's name.

Guarantees: leasing is all or nothing; `up` again on a project keeps the ports it holds; a port
that something outside our leases grabbed is replaced by a new lease before the old one is freed;
releasing can spare the leases a stack had before a failed attempt.

May touch: the lease store it is handed (named leases whose owner is the project).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from .._error import InvalidRangeError, UnknownOwnerError
from .._leasing.allocator import FreePorts
from .._leasing.store import LeaseStore
from .names import sort_key

if TYPE_CHECKING:  # the template reader imports YAML: a reclaim (from `get`, say) must not pay for it
    from .templateset import TemplateSet


def held_ports(leases: LeaseStore, project: str) -> dict[str, int]:
    """{placeholder name: port} of the leases the project holds now."""
    return {r.label: r.port for r in leases.owner_ports(project) or []}


def lease(
    leases: LeaseStore, templates: TemplateSet, project: str, *, reuse: bool, timeout: float | None
) -> dict[str, int]:
    """One port per placeholder name, leased under the project's name (kept across `up` when reuse)."""
    held = held_ports(leases, project) if reuse else {}
    ports = {name: held[name] for name in templates.names if name in held}
    missing = [name for name in templates.names if name not in ports]
    if missing:
        ports.update(_lease_names(leases, templates.hosts, project, missing, timeout))
    return dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))


def _lease_names(
    leases: LeaseStore,
    hosts_of: Callable[[str], Sequence[str]],
    project: str,
    names: Sequence[str],
    timeout: float | None,
    exclude: Sequence[int] = (),
) -> dict[str, int]:
    """Lease one port per name under the project, all or nothing, free on every host a name is bound to."""
    hosts = sorted({h for name in names for h in hosts_of(name)})
    fps = FreePorts(
        len(names), owner=project, labels=names, host=hosts, timeout=timeout, exclude=exclude, state_dir=leases
    )
    return dict(zip(names, fps.ports, strict=True))


def lease_groups(
    leases: LeaseStore,
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
        fps = FreePorts(len(singles), owner=project, labels=singles, host=addresses, timeout=timeout, state_dir=leases)
        ports.update(zip(singles, fps.ports, strict=True))
    for group in groups:
        if len(group) > 1 and group[0] not in ports:
            addresses = sorted({h for n in group for h in hosts.get(n, ())})
            try:
                fps = FreePorts(
                    len(group),
                    contiguous=True,
                    owner=project,
                    labels=list(group),
                    host=addresses,
                    timeout=timeout,
                    state_dir=leases,
                )
            except InvalidRangeError as e:  # a range of the file longer than any run of the lease range
                e.args = (f"{e}, for a published range ({', '.join(group)})",)
                raise
            ports.update(zip(group, fps.ports, strict=True))
    return ports


def relocate(
    leases: LeaseStore,
    hosts_of: Callable[[str], Sequence[str]],
    project: str,
    ports: dict[str, int],
    names: Collection[str],
    timeout: float | None,
) -> dict[str, int]:
    """New leases for `names` (avoiding their clashed ports), then the old ones released."""
    ordered = sorted(names, key=sort_key)
    fresh = _lease_names(leases, hosts_of, project, ordered, timeout, exclude=[ports[n] for n in ordered])
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
