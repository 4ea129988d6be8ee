"""The allocator: FreePort, FreePorts and the one-call helpers built on them.

Guarantee: while leased, no other FreePorts in any thread or process using the same state directory
gets any of the ports, and each was free (as the probe tells) when it was leased; n ports come all
or nothing. A request waits while its range is exhausted, up to its timeout.

May touch: the state directory (through PortLocks), and the probe's sockets.
"""

from __future__ import annotations

# weakref.finalize imports atexit on its first use: imported with the module instead, so a process's
# first FreePort() does not stop for an import (~30 µs) in the middle of allocating.
import atexit  # noqa: F401
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType

from .._error import EmptyRangeError, InvalidRangeError, NoFreePortError, UnknownOwnerError
from .locks import MISSING, Claim, PortLocks, Taken, open_locks
from .probe import check_hosts, port_is_free
from .process import PerProcess
from .ranges import PortRange
from .records import LeaseRecord, check_label, check_owner
from .store import LeaseStore, Reclaimed, store

DEFAULT_TIMEOUT = 30.0
"""Seconds a request waits for a port while its range is exhausted: long enough to outlast a
neighbouring test's teardown, short enough that a leak fails a CI job instead of hanging it."""


# Candidates without a lock file a sweep passes over before it creates one (see _Sweep.run).
_PASS_OVER = 3


def _candidates(start: object, stop: object, exclude: Iterable[int]) -> PortRange:
    if start is None and stop is None:
        prange = PortRange.default()
    elif start is None or stop is None:
        raise InvalidRangeError("give both start and stop, or neither for the default range")
    else:
        prange = PortRange.between(start, stop)
    return prange if exclude == () else prange.without(exclude)  # () is the default: nothing to subtract


def _release_all(locks: PortLocks, claims: list[Claim], named_too: bool) -> None:
    for claim in claims:
        if claim.fd is not None or named_too:
            locks.release(claim)


class _Sweep:
    """One pass over a range, trying candidates until n are held; all claims are undone on failure."""

    def __init__(self, request: FreePorts, explain: bool) -> None:
        self.request, self.explain = request, explain
        self.claims: list[Claim] = []
        self.taken: Counter[Taken] | None = Counter() if explain else None

    def claim(self, port: int, create: bool = True) -> bool | None:
        """True: claimed; False: taken (counted when explaining); None: no lock file (create False)."""
        r = self.request
        got = r._locks.try_claim(port, r.owner, r._label_for(len(self.claims)), r._is_free, self.explain, create)
        if isinstance(got, Claim):
            self.claims.append(got)
            return True
        if got is MISSING:
            return None
        if self.taken is not None:
            self.taken[got] += 1
        return False

    def undo(self, upto: int = 0) -> None:
        while len(self.claims) > upto:
            self.request._locks.release(self.claims.pop())

    def run(self) -> list[Claim] | None:
        n = self.request.n
        try:
            if self.request.contiguous:
                for first in self.request.range.blocks(n):
                    if all(self.claim(p) for p in range(first, first + n)):
                        return self.claims
                    self.undo()
                return None
            likely_leased = self.request._locks.likely_leased
            later = []  # ports the slots say are leased: tried only if the others do not suffice
            # Ports with no lock file yet, passed over: creating a file costs ~25-50 µs on a disk
            # filesystem (ext4 journals the new inode), opening one that exists ~5 µs, and a state
            # dir in use has lock files for the ports it ever tried. Only the first few misses are
            # passed over, so a new state dir pays a few failed opens (~3 µs each) and no more; and
            # each sweep still tries every candidate (these last), so an exhausted range means one.
            missing: list[int] = []
            for port in self.request.range.shuffled():
                # A hint is one pread (~1 µs); a claim of a leased port an open, an flock, a read
                # and a close: asking first pays as soon as a range is a few percent leased.
                if likely_leased(port):
                    later.append(port)
                    continue
                got = self.claim(port, create=len(missing) >= _PASS_OVER)
                if got is None:
                    missing.append(port)
                elif got and len(self.claims) == n:
                    return self.claims
            for port in (*missing, *later):
                if self.claim(port) and len(self.claims) == n:
                    return self.claims
            return None
        finally:
            if len(self.claims) < n:
                self.undo()


class FreePorts:
    """n ports leased together, all or nothing, optionally as one block of consecutive numbers.

    While leased, no other FreePorts in any thread or process using the same state directory gets
    any of them, and each was free (TCP and UDP, IPv4 and IPv6 wildcards, and every `host`) when
    leased. A process lease ends on release(), on leaving `with`, when the object is collected, or
    when the process dies however it dies. A named lease (`owner=`) survives its process and ends
    on release() or release_owner(owner).

    `state_dir` is a path or a LeaseStore (default: $FREEPORT_STATE_DIR, else the user's private
    one). `probe(port)` replaces the kernel's bind test of whether a port is in use outside the
    leases (the default probes the wildcards and every `host`): for tests, and for engines whose
    ports a local bind cannot see.
    """

    def __init__(
        self,
        n: int,
        start: int | None = None,
        stop: int | None = None,
        *,
        contiguous: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        host: str | Sequence[str] | None = None,
        exclude: Iterable[int] = (),
        owner: str | None = None,
        labels: Sequence[str] = (),
        state_dir: str | LeaseStore | None = None,
        probe: Callable[[int], bool] | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRangeError(f"the number of ports must be a positive integer, not {n!r}")
        numeric = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if timeout is not None and not (numeric and timeout >= 0):
            raise InvalidRangeError(f"timeout must be None or >= 0, not {timeout!r}")
        self.n, self.contiguous, self.timeout = n, contiguous, timeout
        self.owner = check_owner(owner) if owner is not None else None
        self.range = _candidates(start, stop, exclude)
        if n > len(self.range):
            raise InvalidRangeError(f"cannot lease {n} ports from the {len(self.range)}-port range {self.range}")
        if contiguous and n > max(hi - lo + 1 for lo, hi in self.range.intervals):
            raise EmptyRangeError(f"no run of {n} consecutive ports in {self.range}")  # waiting cannot help
        hosts = [host] if isinstance(host, str) else list(host or ())
        self._hosts = check_hosts(hosts) if hosts else []
        self._labels = [check_label(label) for label in labels]
        self._probe = probe
        self._store = state_dir if isinstance(state_dir, LeaseStore) else LeaseStore(open_locks(state_dir))
        self._locks = self._store._locks
        self._claims = self._allocate()
        self._finalizer = weakref.finalize(self, _release_all, self._locks, self._claims, False)

    def _label_for(self, index: int) -> str:
        return self._labels[index] if index < len(self._labels) else ""

    def _is_free(self, port: int) -> bool:
        if self._probe is not None:
            return self._probe(port)
        return port_is_free(port, self._hosts)

    def _allocate(self) -> list[Claim]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = 0.005
        reclaimed: Reclaimed | None = None
        while True:
            final = deadline is not None and time.monotonic() >= deadline
            sweep = _Sweep(self, explain=final)
            claims = sweep.run()
            if claims is not None:
                return claims
            if reclaimed is None:
                # Exhausted: once per allocation, before waiting, owners that are gone (a stack whose
                # containers were removed behind our back) give their leases back.
                reclaimed = self._store.reclaim(self.range)
                if reclaimed.owners:
                    continue
            if final:
                raise NoFreePortError(self._exhausted(sweep.taken or Counter(), reclaimed.note))
            wait = pause * (0.5 + random.random())  # jitter: waiters must not retry in lockstep
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            time.sleep(wait)
            pause = min(pause * 2, 0.2)

    def _exhausted(self, taken: Counter[Taken], note: str) -> str:
        what = f"{self.n} {'consecutive ' if self.contiguous else ''}ports" if self.n > 1 else "port"
        busy = sum(taken.values())
        who = ", ".join(f"{count} {reason}" for reason, count in taken.most_common(5))
        if len(taken) > 5:
            who += ", ..."
        return (
            f"no free {what} in {self.range} after {self.timeout:g} s: "
            f"{busy} of {len(self.range)} taken ({who or 'none'})" + (f"; {note}" if note else "")
        )

    @property
    def ports(self) -> list[int]:
        """The leased port numbers, in the order taken (ascending for a contiguous block)."""
        return [c.port for c in self._claims]

    @property
    def records(self) -> list[LeaseRecord]:
        """The lease records as written to the state directory."""
        return [c.record for c in self._claims]

    def release(self) -> None:
        """End the leases now (named ones too); releasing twice is harmless."""
        if self._finalizer.detach() is not None:
            _release_all(self._locks, self._claims, True)

    def __enter__(self) -> FreePorts:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __iter__(self) -> Iterator[int]:
        return iter(self.ports)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return self.ports[index]

    def __repr__(self) -> str:
        owner = f", owner={self.owner!r}" if self.owner else ""
        return f"{type(self).__name__}({self.ports}{owner})"


class FreePort(FreePorts):
    """One leased port; see FreePorts for the guarantee.

    >>> with FreePort(4000, 6000) as fp:
    ...     serve(fp.port)
    """

    def __init__(
        self,
        start: int | None = None,
        stop: int | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        host: str | Sequence[str] | None = None,
        exclude: Iterable[int] = (),
        owner: str | None = None,
        label: str = "",
        state_dir: str | LeaseStore | None = None,
        probe: Callable[[int], bool] | None = None,
    ) -> None:
        super().__init__(
            1,
            start,
            stop,
            timeout=timeout,
            host=host,
            exclude=exclude,
            owner=owner,
            labels=[label] if label else (),
            state_dir=state_dir,
            probe=probe,
        )

    @property
    def port(self) -> int:
        """The leased port number."""
        return self._claims[0].port

    def __int__(self) -> int:
        return self.port

    def __enter__(self) -> FreePort:
        return self


# get_free_port() keeps its leases here until release_port() or exit; a forked child starts with
# none (the parent's leases are not the child's to release).
_BY_PORT: PerProcess[tuple[dict[int, FreePort], threading.Lock]] = PerProcess(lambda: ({}, threading.Lock()))


def get_free_port(start: int | None = None, stop: int | None = None, **kwargs: object) -> int:
    """A port leased to this process until release_port(port) or the process exits.

    Takes FreePort's keyword arguments (timeout, host, exclude, owner, label, state_dir).
    """
    fp = FreePort(start, stop, **kwargs)  # type: ignore[arg-type]
    by_port, lock = _BY_PORT.get()
    with lock:
        by_port[fp.port] = fp
    return fp.port


def release_port(port: int) -> None:
    """End a lease taken with get_free_port(); UnknownOwnerError if this process holds no such port."""
    by_port, lock = _BY_PORT.get()
    with lock:
        fp = by_port.pop(port, None)
    if fp is None:
        raise UnknownOwnerError(f"port {port} is not held by get_free_port() in this process")
    fp.release()


def release_owner(owner: str, *, state_dir: str | LeaseStore | None = None) -> list[int]:
    """End every named lease of `owner`, from any process; returns the ports freed."""
    lease_store = state_dir if isinstance(state_dir, LeaseStore) else store(state_dir)
    return lease_store.release_owner(owner)
