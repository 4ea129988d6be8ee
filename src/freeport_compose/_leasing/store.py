"""The lease store as its users see it: who holds what, and releasing by owner, label or record.

Guarantee: a small typed view over one state directory's leases. It reads and releases; it cannot
claim (that is FreePorts' job), and it hands out no descriptors, tokens to forge or callbacks.

May touch: what PortLocks touches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from .locks import PortLocks, open_locks
from .ranges import PortRange
from .records import LeaseRecord


class Reclaimed(NamedTuple):
    """What a reclaimer freed for an exhausted allocation, and why it could not do more."""

    owners: tuple[str, ...] = ()  # the owners whose leases it freed
    note: str = ""  # e.g. that the engine could not be asked, for the allocation's error


Reclaim = Callable[[PortRange], Reclaimed]
"""Frees leases whose owners are gone (stacks with no container left), in a range an allocation
found exhausted. Given by whoever knows what owners are (the stacks half), never by the leasing half."""


class LeaseStore:
    """The leases recorded in one state directory (see `store()`)."""

    def __init__(self, locks: PortLocks, reclaim: Reclaim | None = None) -> None:
        self._locks = locks
        self._reclaim = reclaim

    def reclaim(self, ports: PortRange) -> Reclaimed:
        """Ask the reclaimer (if this store has one) to free gone owners' leases in `ports`."""
        return self._reclaim(ports) if self._reclaim is not None else Reclaimed()

    @property
    def path(self) -> str:
        """The state directory."""
        return self._locks.sd.path

    def records(self) -> Iterator[LeaseRecord]:
        """Every record, live or stale, in port order."""
        return self._locks.records()

    def held(self) -> list[LeaseRecord]:
        """The leases held now, in port order."""
        return [r for r in self._locks.records() if self._locks.is_held(r)]

    def read(self, port: int) -> LeaseRecord | None:
        """The record of one port (a snapshot, live or stale), or None."""
        return self._locks.read(port)

    def is_held(self, record: LeaseRecord) -> bool:
        """Whether this very lease (not a later one on the same port) is still held."""
        return self._locks.is_held(record)

    def owner_ports(self, owner: str) -> list[LeaseRecord] | None:
        """The live records of `owner`'s named leases, sorted by port; None if it holds nothing."""
        return self._locks.owner_ports(owner)

    def release_owner(self, owner: str) -> list[int]:
        """Free every lease held under `owner`, from any process; UnknownOwnerError if it holds none."""
        return self._locks.release_owner(owner)

    def release(self, record: LeaseRecord) -> bool:
        """Free this named lease if it is still the one on its port; False if it is not (or not named)."""
        if record.owner is None:
            return False
        return bool(self._locks.release_named(record.port, record.owner, record.token))

    def collect_dead(self) -> list[LeaseRecord]:
        """Clear the records of process leases whose holder is gone (their ports are already free)."""
        return self._locks.collect_dead()


def store(path: str | None = None) -> LeaseStore:
    """The lease store in `path` (default: $FREEPORT_STATE_DIR, else the user's private state dir), verified safe."""
    return LeaseStore(open_locks(path))
