"""The lock files: one per port in ports/, holding a kernel lock and a record of who has the port.

A port is leased when either
- its lock file is flock()ed by a live process (a process lease: the kernel drops the lock, and so
  the lease, the moment that process dies, even by SIGKILL), or
- its lock file records an owner name (a named lease: it outlives the process that took it, until
  it is released by name).

Guarantees: every change to a record happens while holding the file's flock, so two claimers of one
port are serialised by the kernel whatever mix of threads and processes they are. flock locks
belong to the open file description, so two threads of one process that open the file separately
exclude each other too (fcntl/lockf locks would not: they belong to the process). Nothing is ever
written through a lock file that is not a plain, singly linked file.

May touch: ports/ (lock files), the slots file (wherever slots.py keeps it), owners/ (through OwnerIndex).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .._error import StateDirError, UnknownOwnerError
from . import process
from .adoption import adopt_orphans
from .flock import try_lock, unlock
from .owners import OwnerIndex
from .process import PerProcess
from .records import RECORD_LIMIT, LeaseRecord, check_owner, is_process_record, read_record, write_record
from .slots import FREE, NAMED, PROCESS, Slots
from .statedir import StateDir, default_state_path, open_file, shared_opt_in, state_errors


class Claim:
    """A lease taken by this process: for a process lease, the open lock file whose flock *is* the lease."""

    __slots__ = ("_record", "created", "fd", "label", "owner", "pid", "port", "token")

    def __init__(
        self, port: int, fd: int | None, owner: str | None, created: float, label: str, token: str = ""
    ) -> None:
        self.port, self.owner, self.created, self.label, self.token = port, owner, created, label, token
        self.fd = fd  # the locked lock file (process lease); None for a named lease
        self.pid = process.pid()  # a forked child must never release its parent's lock
        self._record: LeaseRecord | None = None

    @property
    def record(self) -> LeaseRecord:
        """The lease's record, built when first asked for.

        Not at claim time: its holder names this process by its start time, and reading that
        (/proc/self/stat) costs a fresh process's first FreePort() ~45 µs, while a process lease
        described by its slot never needs it. (Taken later it is the same: the holder is this
        very process, which is alive while it asks.)
        """
        if self._record is None:
            self._record = LeaseRecord(self.port, self.owner, process.holder_of(self.pid), self.created, self.token,
                                       self.label)  # fmt: skip
        return self._record


class Taken(NamedTuple):
    """Why a port could not be claimed, so an exhausted range can say who holds it (counted by kind)."""

    by: str  # "leased by owner 'x'", "leased by pid 12", "in use by another program", ...

    def __str__(self) -> str:
        return self.by


LEASED = Taken("leased")  # when no one asked who
FOREIGN = Taken("in use by another program")
MISSING = Taken("no lock file yet")  # not taken at all: try_claim(create=False) did not try it


class PortLocks:
    """The lock files of one state directory; every method is safe against any mix of threads and processes."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd
        self.owners = OwnerIndex(sd)
        # Not in a directory shared with other users: any of them could write false descriptions
        # of our leases into it.
        self.slots = None if sd.shared else Slots.open(sd.ports_fd, f"{sd.path}/ports", sd.file_mode)

    def likely_leased(self, port: int) -> bool:
        """A hint, free of syscalls: True if the port was leased when last seen."""
        return self.slots is not None and self.slots.likely_leased(port)

    def _mark(self, port: int, state: int, pid: int = 0, created: float = 0.0, label: str = "") -> None:
        if self.slots is not None:
            self.slots.mark(port, state, pid, created, label)

    def _slot_record(self, port: int) -> LeaseRecord | None:
        return None if self.slots is None else self.slots.record(port)

    # -- one port --------------------------------------------------------------------------------

    def _open_lock(self, port: int, check: bool = True, create: bool = True) -> int:
        # O_NONBLOCK: a FIFO planted under the name would otherwise block the open forever.
        flags = os.O_RDWR | os.O_NONBLOCK | (os.O_CREAT if create else 0)
        fd = open_file(self.sd.ports_fd, f"{port}.lock", flags, self.sd.file_mode)
        if check:
            try:
                self._check_lock(fd, port)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _check_lock(self, fd: int, port: int) -> int:
        """Refuse anything but a plain file before a record is written through it (the caller closes fd).

        Returns the file's size: an empty lock file holds no record, and needs no read.
        """
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            # a device, FIFO or hard link to a file elsewhere: never write through it
            raise StateDirError(f"{self.sd.path}/ports/{port}.lock is not a plain lock file; remove it")
        if self.sd.shared and (st.st_mode & 0o666) != 0o666 and st.st_uid == os.geteuid():
            # O_CREAT's mode went through the umask: every user sharing the dir must open it read-write
            os.fchmod(fd, self.sd.file_mode)
        return st.st_size

    def try_claim(
        self,
        port: int,
        owner: str | None,
        label: str,
        is_free: Callable[[int], bool],
        explain: bool = False,
        create: bool = True,
    ) -> Claim | Taken:
        """Lease `port` if no one holds it and `is_free(port)`; else say who has it (when `explain`).

        With `create` False, a port without a lock file is not tried: MISSING says so.
        This is the allocation hot path: every syscall and allocation here is on purpose.
        """
        in_flight = process.in_flight()
        try:
            with process.fd_lock():
                fd = self._open_lock(port, check=False, create=create)
                in_flight.add(fd)
        except OSError as e:
            if not create and e.errno == errno.ENOENT:
                return MISSING
            if self.sd.shared:  # another user's lock file (private, or a symlink): that port is theirs
                return Taken(f"lock file not usable ({e.strerror})") if explain else LEASED
            raise StateDirError(f"cannot open the lock file of port {port} in {self.sd.path}: {e.strerror}") from None
        got: Claim | Taken = LEASED
        try:
            if not try_lock(fd):
                if self.slots is not None and self.slots.state(port) == FREE:
                    # Someone holds it: let the next claimers skip it cheaply.
                    self.slots.set_state(port, PROCESS)
                return self._describe(self._held_record(fd, port)) if explain else got
            try:
                got = self._claim_locked(fd, port, owner, label, is_free, explain)
            finally:
                if not isinstance(got, Claim) or got.fd is None:
                    unlock(fd)
            return got
        finally:
            if isinstance(got, Claim) and got.fd is not None:
                in_flight.discard(fd)  # tracked by the claim now
            else:
                with process.fd_lock():
                    in_flight.discard(fd)
                    os.close(fd)

    def _claim_locked(
        self, fd: int, port: int, owner: str | None, label: str, is_free: Callable[[int], bool], explain: bool
    ) -> Claim | Taken:
        """try_claim's part under the port's flock; a process lease's Claim takes over fd."""
        try:
            size = self._check_lock(fd, port)
        except StateDirError:
            if not self.sd.shared:
                raise  # in a private state dir only we can plant things: say so
            return Taken("lock file not a plain file") if explain else LEASED  # another user's doing
        data = os.pread(fd, RECORD_LIMIT, 0) if size else b""
        # Only a named record still counts once we hold the flock: a process lease's is stale.
        if data and not is_process_record(data, port):
            old = LeaseRecord.decode(data, port)
            if old is not None and old.holds():
                if self.slots is not None:
                    self.slots.set_state(port, NAMED if old.owner is not None else PROCESS)
                return self._describe(old) if explain else LEASED
        if not is_free(port):
            return FOREIGN
        now = time.time()
        # A process lease is the flock itself; its description goes to the slot if it can, else
        # (no slots, or a slot that cannot be written) to the lock file like a named one.
        if owner is None and self.slots is not None and self.slots.mark(port, PROCESS, process.pid(), now, label):
            if data:
                os.ftruncate(fd, 0)  # a stale (or hostile) record must not speak for us
            claim = Claim(port, fd, None, now, label)  # its record is built if someone asks for it
        else:
            claim = Claim(port, fd if owner is None else None, owner, now, label, f"{random.getrandbits(64):016x}")
            try:
                if owner is not None:
                    self.owners.add(owner, port)
                write_record(fd, claim.record, len(data))
            except StateDirError:
                raise  # says what is wrong (owners/ a symlink, say) better than its strerror would
            except OSError as e:
                raise StateDirError(f"cannot record the lease of port {port} in {self.sd.path}: {e.strerror}") from None
            self._mark(port, PROCESS if owner is None else NAMED, process.pid(), now, label)
        if claim.fd is not None:
            process.track(claim)
        return claim

    def _held_record(self, fd: int, port: int) -> LeaseRecord | None:
        """Who holds a port whose flock we could not get: its named record, else its slot."""
        record = read_record(fd, port)
        if record is not None and record.holds():
            return record
        return self._slot_record(port) or record

    @staticmethod
    def _describe(record: LeaseRecord | None) -> Taken:
        if record is None:
            return Taken("leased by a process")
        if record.owner is not None:
            return Taken(f"leased by owner {record.owner!r}")
        if record.adopted:
            return Taken(f"leased by pid {record.holder.pid} (in a state dir deleted since)")
        return Taken(f"leased by pid {record.holder.pid}")

    def release(self, claim: Claim) -> None:
        """Free a lease taken by this process; a no-op for one inherited across fork or already freed."""
        if claim.fd is not None:
            if claim.pid == process.pid():
                self._mark(claim.port, FREE)  # before the lock goes: a claimer right after us marks it again
            # Closing the last descriptor of the open file description drops its flock: the lease
            # ends. (A forked child closed its copies at fork, so ours is the last.) The record
            # stays: with its flock free it reads as stale, and the next claimer overwrites it.
            with process.fd_lock():
                fd, claim.fd = claim.fd, None
                if fd is None:
                    return  # another thread released it meanwhile
                process.untrack(claim)
                os.close(fd)
        elif claim.owner is not None and claim.pid == process.pid():
            self.release_named(claim.port, claim.owner, claim.token)

    def release_named(self, port: int, owner: str, token: str | None) -> bool | None:
        """Clear `port`'s record if it is `owner`'s (and this lease's, given `token`).

        True: released; False: not this owner's lease; None: it is, but its lock stayed busy (try again).
        """

        def mine(record: LeaseRecord | None) -> bool:
            return record is not None and record.owner == owner and token in (None, record.token)

        with state_errors(f"cannot release port {port} in {self.sd.path}"):
            if not mine(self.read(port)):
                return False  # records change only under the flock: no need to wait for it
            fd = self._open_lock(port)
            in_flight = process.in_flight()
            in_flight.add(fd)
            try:
                # A claimer holds the flock for microseconds; wait a little longer than that.
                deadline = time.monotonic() + 1.0
                while not (locked := try_lock(fd)) and time.monotonic() < deadline:
                    time.sleep(0.001)
                if not locked:
                    return None
                try:
                    if not mine(read_record(fd, port)):
                        return False
                    os.ftruncate(fd, 0)
                    self._mark(port, FREE)
                    return True
                finally:
                    unlock(fd)
            finally:
                in_flight.discard(fd)
                os.close(fd)

    # -- owners ------------------------------------------------------------------------------------

    def owner_ports(self, owner: str) -> list[LeaseRecord] | None:
        """The live records of `owner`'s leases, sorted by port; None if the owner holds nothing."""
        check_owner(owner)
        with state_errors(f"cannot read the leases of {owner!r} in {self.sd.path}"):
            ports = self.owners.ports(owner) or []
            records = [r for r in map(self.read, ports) if r is not None and r.owner == owner]
        return records or None

    def release_owner(self, owner: str) -> list[int]:
        """Free every lease held under `owner`; UnknownOwnerError if it holds none."""
        check_owner(owner)
        with (
            state_errors(f"cannot release the leases of {owner!r} in {self.sd.path}"),
            self.owners.releasing(owner) as listed,
        ):
            outcome = {p: self.release_named(p, owner, None) for p in listed.ports()}
            released = [p for p, done in outcome.items() if done]
            # Still this owner's, their lock busy: kept listed for the next release.
            listed.keep_only([p for p, done in outcome.items() if done is None])
        if not released:
            raise UnknownOwnerError(f"owner {owner!r} holds no lease (in {self.sd.path})")
        return released

    # -- inspection --------------------------------------------------------------------------------

    def read(self, port: int) -> LeaseRecord | None:
        """The lease record of a port, read without locking (a snapshot for display): the named or
        file record in its lock file, else the process lease its slot describes."""
        try:
            fd = open_file(self.sd.ports_fd, f"{port}.lock", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            record = read_record(fd, port)
            if record is not None and (record.owner is not None or record.adopted):
                return record
            return self._slot_record(port) or record
        finally:
            os.close(fd)

    def records(self) -> Iterator[LeaseRecord]:
        """Every record, live or stale, in port order."""
        with state_errors(f"cannot list {self.sd.path}/ports"):
            names = os.listdir(self.sd.ports_fd)
        ports = sorted(int(n[:-5]) for n in names if n.endswith(".lock") and n[:-5].isdecimal())
        for port in ports:
            if not 0 < port < 65536:
                continue  # not a lock file of ours
            record = self.read(port)
            if record is not None:
                yield record

    def _flock_held(self, port: int) -> bool:
        try:
            fd = self._open_lock(port)
        except (OSError, StateDirError):
            return False
        try:
            if try_lock(fd):
                unlock(fd)  # we got it, so no one holds it: a few microseconds of overlap at most
                return False
            return True
        finally:
            os.close(fd)

    def is_held(self, record: LeaseRecord) -> bool:
        """Named leases are held until released; a process lease while its lock file is locked.

        Either way only while the port still carries this very lease (same owner, token, holder and
        creation time): a lease released since, or replaced by a later one, is not held.
        """
        current = self.read(record.port)
        if current is None or (current.owner, current.token, current.holder.pid, current.created) != (
            record.owner,
            record.token,
            record.holder.pid,
            record.created,
        ):
            return False
        if record.owner is not None or record.adopted:
            return record.holds()
        return self._flock_held(record.port)

    def collect_dead(self) -> list[LeaseRecord]:
        """Clear the records of process leases whose holder is gone (their ports are already free)."""
        collected = []
        for record in self.records():
            if record.owner is not None:
                continue
            try:
                fd = self._open_lock(record.port)
            except (OSError, StateDirError):
                continue  # a lock file that is not one (reported when a claim meets it)
            with state_errors(f"cannot collect port {record.port} in {self.sd.path}"):
                try:
                    if not try_lock(fd):
                        continue  # its holder is alive
                    try:
                        current = self._held_record(fd, record.port)
                        if current is not None and current.owner is None and not current.holds():
                            os.ftruncate(fd, 0)
                            self._mark(record.port, FREE)
                            collected.append(current)
                    finally:
                        unlock(fd)
                finally:
                    os.close(fd)
        return collected


# One PortLocks per state dir, kept across fork: opening one verifies the directory and opens the
# slots, which every FreePort() would otherwise pay for. Its lock is the process's own.
_OPEN: dict[tuple[str, bool], PortLocks] = {}
_OPEN_LOCK: PerProcess[threading.Lock] = PerProcess(threading.Lock)


def open_locks(path: str | None = None) -> PortLocks:
    """The lock files of the state dir at `path` (default: default_state_path()), verified safe.

    Opened once per process; opened afresh when the directory we hold (or one of its
    subdirectories) was deleted meanwhile, so new leases go to the directory that is there now.
    """
    path = path if path and path[0] == "/" else os.path.abspath(path) if path else default_state_path()
    key = (path, shared_opt_in())
    # Looked up without the lock first (a dict lookup is atomic): this is every FreePort()'s way in.
    found = _OPEN.get(key)
    if found is not None and not found.sd.is_deleted():
        return found
    with _OPEN_LOCK.get():
        # Not found.sd.is_deleted() again: it is asked at most every 0.1 s, and would say False now.
        current = _OPEN.get(key)
        if current is not None and current is not found:
            return current  # another thread opened it meanwhile
        # A deleted one is not closed: other threads may still be using its descriptors, and a
        # closed number could be reused for another file. New leases go to the new directory.
        locks = _OPEN[key] = PortLocks(StateDir(path, shared=key[1], fill_new_ports=adopt_orphans))
        return locks
