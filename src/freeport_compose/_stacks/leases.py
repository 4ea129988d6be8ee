"""A stack's leases: one port per placeholder name, held under the project's name.

Guarantees: leasing is all or nothing; `up` again on a project keeps the ports it holds; a port
that something outside our leases grabbed is replaced by a new lease before the old one is freed;
releasing can spare the leases a stack had before a failed attempt.

May touch: the lease store it is handed (named leases whose owner is the project).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from .._error import UnknownOwnerError
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
        ports.update(_lease_names(leases, templates, project, missing, timeout))
    return dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))


def _lease_names(
    leases: LeaseStore,
    templates: TemplateSet,
    project: str,
    names: Sequence[str],
    timeout: float | None,
    exclude: Sequence[int] = (),
) -> dict[str, int]:
    """Lease one port per name under the project, all or nothing, free on every host a name is bound to."""
    hosts = sorted({h for name in names for h in templates.hosts(name)})
    fps = FreePorts(
        len(names), owner=project, labels=names, host=hosts, timeout=timeout, exclude=exclude, state_dir=leases
    )
    return dict(zip(names, fps.ports, strict=True))


def relocate(
    leases: LeaseStore,
    templates: TemplateSet,
    project: str,
    ports: dict[str, int],
    names: Collection[str],
    timeout: float | None,
) -> dict[str, int]:
    """New leases for `names` (avoiding their clashed ports), then the old ones released."""
    ordered = sorted(names, key=sort_key)
    fresh = _lease_names(leases, templates, project, ordered, timeout, exclude=[ports[n] for n in ordered])
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
