"""The state both halves share, as one object passed down explicitly from the CLI and the API.

Guarantee: every stack operation works on the state dir it is handed (its lease store and its stack
records), never on one found through a global or an environment variable written on the way.

May touch: nothing by itself; opening it verifies (and creates) the state directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._leasing.locks import open_locks
from .._leasing.ranges import PortRange
from .._leasing.store import LeaseStore, Reclaimed
from .reclaim import reclaim_gone
from .records import StackRecords


@dataclass(frozen=True)
class State:
    """A state directory's leases and stack records, opened once and handed to every verb."""

    leases: LeaseStore
    stacks: StackRecords

    @property
    def path(self) -> str:
        return self.leases.path

    @classmethod
    def open(cls, path: str | None = None) -> State:
        """The state dir at `path` (default: $FREEPORT_STATE_DIR, else the user's private one), verified.

        Its lease store reclaims: an allocation that finds its range exhausted first frees the
        leases of stacks that are gone (see reclaim.py).
        """
        locks = open_locks(path)
        stacks = StackRecords(locks.sd)

        def reclaim(ports: PortRange) -> Reclaimed:
            return reclaim_gone(stacks, leases, ports)

        leases = LeaseStore(locks, reclaim)
        return cls(leases, stacks)
