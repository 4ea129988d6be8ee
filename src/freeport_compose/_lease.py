"""The lease store: one lock file per port, holding a kernel lock and a record of who has the port.

A port is leased when either
- its lock file is flock()ed by a live process (a process lease: the kernel drops the lock, and so
  the lease, the moment that process dies, even by SIGKILL), or
- its lock file records an owner name (a named lease: it outlives the process that took it, until
  it is released by name).

Beside the lock files, ports/slots is a shared memory map with one 32-byte slot per port: whether
the port is probably leased (so claimers try likely-free ports first, without a syscall) and, for a
process lease, which pid took it, when, and for what. Slots are only ever hints and descriptions:
the flock and the named records alone decide who has a port.

Every change to a record happens while holding the file's flock, so two claimers of one port are
serialised by the kernel whatever mix of threads and processes they are. flock locks belong to
the open file description, so two threads of one process that open the file separately exclude
each other too (fcntl/lockf locks would not: they belong to the process).
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import random
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

from filelock import lock_descriptor, unlock_descriptor

from . import _state
from ._error import InvalidNameError, StateDirError, UnknownOwnerError
from ._state import StateDir, open_file, read_small, state_errors

RECORD_LIMIT = 4096  # a record is ~200 bytes; anything longer is not one of ours
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_owner(name: str) -> str:
    """An owner name that is safe as a file name: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 chars."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"owner name {name!r} is invalid: use letters, digits, '_', '.', '-' (up to 128), "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Holder:
    """The process that took a lease: pid plus start time, so a reused pid is not taken for it."""

    pid: int
    start_time: int | None
    host: str

    @property  # not cached_property: on Python < 3.12 its class-wide lock can be held across fork()
    def json(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "host": self.host}, separators=(",", ":"))


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_SELF: tuple[int, Holder] | None = None
_JSON: dict[Holder, str] = {}  # each holder's JSON, built once (the holder of most records is this process)


def current_holder() -> Holder:
    """This process as a Holder (recomputed after fork, since the pid changes)."""
    global _SELF
    pid = _PID
    if _SELF is None or _SELF[0] != pid:
        _SELF = (pid, Holder(pid, process_start_time(pid), socket.gethostname()))
    return _SELF[1]


def holder_alive(holder: Holder) -> bool | None:
    """Whether the holder process still runs; None when it ran on another host and we cannot tell."""
    if holder.host != current_holder().host:
        return None
    started = process_start_time(holder.pid)
    return started is not None and (holder.start_time is None or started == holder.start_time)


@dataclass(frozen=True)
class LeaseRecord:
    """What a port's lock file says about its lease, so `ls`, `gc` and errors can name who has it."""

    port: int
    owner: str | None  # a name: the lease outlives its process; None: it dies with the holder
    holder: Holder
    created: float
    token: str  # tells this lease from a later one on the same port, so a late release cannot free that
    label: str = ""  # what the port is for, e.g. "FREEPORT_db"
    # A process lease found on a lock file of a deleted state dir, written into the new one: it
    # holds while its holder process lives (the flock it holds is on a file no one can see now).
    adopted: bool = False

    def encode(self) -> bytes:
        # Hand-built JSON (fields in this order: try_claim recognises a process record by its prefix).
        h = self.holder
        owner = "null" if self.owner is None else json.dumps(self.owner)
        label = json.dumps(self.label) if self.label else '""'
        adopted = '"adopted":true,' if self.adopted else ""
        return (
            f'{{"port":{self.port},{adopted}"owner":{owner},"created":{self.created!r},"token":"{self.token}",'
            f'"label":{label},"holder":{_JSON.get(h) or _JSON.setdefault(h, h.json)}}}'
        ).encode()

    def holds(self) -> bool:
        """Whether this record alone keeps its port leased, whoever holds the flock."""
        return self.owner is not None or (self.adopted and holder_alive(self.holder) is not False)

    @classmethod
    def decode(cls, data: bytes, port: int) -> LeaseRecord | None:
        """The record in `data`, or None for an empty, corrupt or hostile one (which counts as free)."""
        if not data or len(data) >= RECORD_LIMIT:
            return None
        try:
            raw = json.loads(data)
            h = raw["holder"]
            owner, label, start = raw["owner"], raw.get("label", ""), h["start_time"]
            record = cls(
                port=raw["port"],
                owner=owner,
                holder=Holder(pid=h["pid"], start_time=start, host=h["host"]),
                created=float(raw["created"]),
                token=raw["token"],
                label=label,
                adopted=raw.get("adopted", False) is True,
            )
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):  # deep nesting, huge numbers
            return None
        ok = (
            type(record.port) is int
            and record.port == port
            and (owner is None or (isinstance(owner, str) and _NAME_RE.fullmatch(owner) is not None))
            and type(record.holder.pid) is int
            and (start is None or type(start) is int)
            and isinstance(record.holder.host, str)
            and isinstance(record.token, str)
            and isinstance(label, str)
        )
        return record if ok else None


_PID = os.getpid()  # os.getpid() is a syscall; refreshed in forked children


@dataclass(eq=False)
class Claim:
    """A lease taken by this process: for a process lease, the open lock file whose flock *is* the lease."""

    record: LeaseRecord
    fd: int | None  # the locked lock file (process lease); None for a named lease
    pid: int = field(default_factory=lambda: _PID)  # a forked child must never release its parent's lock

    @property
    def port(self) -> int:
        return self.record.port


# Process leases held by this process, so a forked child can drop its copies of their descriptors.
_HELD: set[Claim] = set()
_HELD_LOCK = threading.Lock()
# Lock files open in a claim or release under way in some thread (set.add/discard are atomic).
_IN_FLIGHT: set[int] = set()
# Held from each open of a lock file until it is tracked, and from untracking to its close: fork()
# waits for it, so a child never inherits a lock descriptor it does not know about.
_FD_LOCK = threading.Lock()


def _forget_inherited_leases() -> None:
    """In a forked child: close (never unlock) the parent's lock descriptors.

    flock belongs to the open file description the child shares with the parent: unlocking here
    would free the parent's port, and keeping the copy open would keep it leased after the parent dies.
    """
    global _HELD_LOCK, _PID, _FD_LOCK
    _HELD_LOCK = threading.Lock()  # another thread may have held it at fork time
    _FD_LOCK = threading.Lock()
    _PID = os.getpid()
    inherited = set(_IN_FLIGHT)  # a claim another thread was making when fork() came
    for claim in _HELD:
        if claim.fd is not None:
            inherited.add(claim.fd)
            claim.fd = None
    for fd in inherited:
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()
    _IN_FLIGHT.clear()


os.register_at_fork(
    before=lambda: _FD_LOCK.acquire(),
    after_in_parent=lambda: _FD_LOCK.release(),
    after_in_child=_forget_inherited_leases,
)


def _write_record(fd: int, record: LeaseRecord, old_size: int) -> None:
    data = record.encode()
    if os.pwrite(fd, data, 0) != len(data):
        raise StateDirError("short write of a lease record (is the state dir's filesystem full?)")
    if old_size > len(data):
        os.ftruncate(fd, len(data))


def _read_record(fd: int, port: int) -> LeaseRecord | None:
    return LeaseRecord.decode(os.pread(fd, RECORD_LIMIT, 0), port)


def _orphaned_leases(ports_path: str) -> dict[int, int]:
    """{port: pid} of flocks that live processes hold on lock files of a deleted ports_path.

    Linux only (/proc): flocks listed in /proc/locks, matched by device and inode with the holders'
    open files whose path reads `<ports_path>/<port>.lock (deleted)`.
    """
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    locked: set[tuple[int, int, int]] = set()
    pids: set[int] = set()
    for line in lines:
        parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4].isdecimal():
            major, minor, inode = parts[5].split(":")
            locked.add((int(major, 16), int(minor, 16), int(inode)))
            pids.add(int(parts[4]))
    # /proc shows resolved paths: resolve ours too (a symlink in $HOME, a doubled slash).
    prefix, suffix = os.path.realpath(ports_path) + "/", ".lock (deleted)"
    found: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                name = target[len(prefix) : -len(suffix)]
                if not (target.startswith(prefix) and target.endswith(suffix) and name.isdecimal()):
                    continue
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locked and 0 < int(name) < 65536:
                found[int(name)] = pid
    return found


def _adopt_orphans(ports_fd: int, ports_path: str, mode: int) -> None:
    """Fill a new ports/ with the leases live processes still hold in a deleted one (see _state)."""
    host = socket.gethostname()
    for port, pid in _orphaned_leases(ports_path).items():
        holder = Holder(pid, process_start_time(pid), host)
        record = LeaseRecord(port, None, holder, time.time(), f"{random.getrandbits(64):016x}", "", adopted=True)
        fd = open_file(ports_fd, f"{port}.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            data = record.encode()
            if os.write(fd, data) != len(data):
                raise StateDirError(f"short write adopting port {port} (is the disk full?)")
        finally:
            os.close(fd)


_state.ADOPT_HOOK = _adopt_orphans

_INDEX_LIMIT = 8 << 20  # an owner index holds at most 65535 lines of at most 6 bytes


def _parse_index(data: bytes) -> list[int]:
    """The ports listed in an owner index, sorted, without duplicates or junk."""
    return sorted({int(w) for w in data.split() if w.isdigit() and 0 < int(w) < 65536})


_SLOT = struct.Struct("<B3xId16s")  # state, pid, created, label
_SLOTS_SIZE = 65536 * _SLOT.size
FREE, PROCESS, NAMED = 0, 1, 2  # slot states


def _open_slots(sd: StateDir) -> mmap.mmap | None:
    """ports/slots, mapped shared by every process; None when it cannot be had (then records go to files)."""
    try:
        try:
            fd = open_file(sd.ports_fd, "slots", os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            # Written whole, then linked into place: a half-written map would SIGBUS its readers, a
            # sparse one could SIGBUS its writers once the filesystem is full, and a rename could
            # replace the map a concurrent creator already uses (link fails if the name exists).
            tmp = f".slots.{os.getpid()}.{random.getrandbits(32):08x}"
            tfd = open_file(sd.ports_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, sd.file_mode)
            try:
                try:
                    view = memoryview(bytes(_SLOTS_SIZE))
                    while view:
                        view = view[os.write(tfd, view) :]
                finally:
                    os.close(tfd)
                with suppress(FileExistsError):
                    os.link(tmp, "slots", src_dir_fd=sd.ports_fd, dst_dir_fd=sd.ports_fd, follow_symlinks=False)
            finally:
                os.unlink(tmp, dir_fd=sd.ports_fd)
            fd = open_file(sd.ports_fd, "slots", os.O_RDWR | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != _SLOTS_SIZE:
                return None
            return mmap.mmap(fd, _SLOTS_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


class LeaseStore:
    """Lease records in one state directory; every method is safe against any mix of threads and processes."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd
        # Not in a directory shared with other users: any of them could truncate the map under us,
        # and touching a truncated map kills the process (SIGBUS).
        self.slots = None if sd.shared else _open_slots(sd)

    def likely_leased(self, port: int) -> bool:
        """A hint, free of syscalls: True if the port was leased when last seen."""
        return self.slots is not None and self.slots[port * _SLOT.size] != FREE

    def _mark(self, port: int, state: int, pid: int = 0, created: float = 0.0, label: str = "") -> None:
        if self.slots is not None:
            _SLOT.pack_into(self.slots, port * _SLOT.size, state, pid, created, label.encode()[:16])

    def _slot_record(self, port: int) -> LeaseRecord | None:
        """The process lease a slot describes (not checked against the flock)."""
        if self.slots is None:
            return None
        state, pid, created, label = _SLOT.unpack_from(self.slots, port * _SLOT.size)
        if state != PROCESS or pid == 0:
            return None  # pid 0: only the hint a claimer set on a busy port, not a description
        holder = Holder(pid, process_start_time(pid) if pid else None, current_holder().host)
        return LeaseRecord(port, None, holder, created, "", label.rstrip(b"\0").decode(errors="replace"))

    # -- one port --------------------------------------------------------------------------------

    def _open_lock(self, port: int, check: bool = True) -> int:
        # O_NONBLOCK: a FIFO planted under the name would otherwise block the open forever.
        fd = open_file(self.sd.ports_fd, f"{port}.lock", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, self.sd.file_mode)
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
    ) -> Claim | str:
        """Lease `port` if no one holds it and `is_free(port)`; else say who has it (when `explain`).

        This is the allocation hot path: every syscall and allocation here is on purpose.
        """
        try:
            with _FD_LOCK:
                fd = self._open_lock(port, check=False)
                _IN_FLIGHT.add(fd)
        except OSError as e:
            raise StateDirError(f"cannot open the lock file of port {port} in {self.sd.path}: {e.strerror}") from None
        got: Claim | str = "leased"
        try:
            if not lock_descriptor(fd, blocking=False):
                if self.slots is not None and self.slots[port * _SLOT.size] == FREE:
                    # Someone holds it: let the next claimers skip it cheaply. The state byte only:
                    # the holder writes (or has written) the rest of the slot itself.
                    self.slots[port * _SLOT.size] = PROCESS
                return self._describe(self._held_record(fd, port)) if explain else got
            try:
                got = self._claim_locked(fd, port, owner, label, is_free, explain)
            finally:
                if not isinstance(got, Claim) or got.fd is None:
                    unlock_descriptor(fd)
            return got
        finally:
            if isinstance(got, Claim) and got.fd is not None:
                _IN_FLIGHT.discard(fd)  # tracked by the claim now
            else:
                with _FD_LOCK:
                    _IN_FLIGHT.discard(fd)
                    os.close(fd)

    def _claim_locked(
        self, fd: int, port: int, owner: str | None, label: str, is_free: Callable[[int], bool], explain: bool
    ) -> Claim | str:
        """try_claim's part under the port's flock; a process lease's Claim takes over fd."""
        size = self._check_lock(fd, port)
        data = os.pread(fd, RECORD_LIMIT, 0) if size else b""
        # Only a named record still counts once we hold the flock: a process lease's is stale.
        if data and not data.startswith(b'{"port":%d,"owner":null,' % port):
            old = LeaseRecord.decode(data, port)
            if old is not None and old.holds():
                if self.slots is not None:
                    self.slots[port * _SLOT.size] = NAMED if old.owner is not None else PROCESS
                return self._describe(old) if explain else "leased"
        if not is_free(port):
            return "in use by another program"
        now = time.time()
        if owner is None and self.slots is not None:
            # A process lease is the flock itself; its description goes to the slot, not the file.
            if data:
                os.ftruncate(fd, 0)  # a stale (or hostile) record must not speak for us
            record = LeaseRecord(port, None, current_holder(), now, "", label)
        else:
            record = LeaseRecord(port, owner, current_holder(), now, f"{random.getrandbits(64):016x}", label)
            try:
                if owner is not None:
                    self._index_add(owner, port)
                _write_record(fd, record, len(data))
            except OSError as e:
                raise StateDirError(f"cannot record the lease of port {port} in {self.sd.path}: {e.strerror}") from None
        self._mark(port, PROCESS if owner is None else NAMED, _PID, now, label)
        if owner is not None:
            return Claim(record, None)
        claim = Claim(record, fd)
        with _HELD_LOCK:
            _HELD.add(claim)
        return claim

    def _held_record(self, fd: int, port: int) -> LeaseRecord | None:
        """Who holds a port whose flock we could not get: its named record, else its slot."""
        record = _read_record(fd, port)
        if record is not None and record.holds():
            return record
        return self._slot_record(port) or record

    @staticmethod
    def _describe(record: LeaseRecord | None) -> str:
        if record is None:
            return "leased by a process"
        if record.owner is not None:
            return f"leased by owner {record.owner!r}"
        if record.adopted:
            return f"leased by pid {record.holder.pid} (in a state dir deleted since)"
        return f"leased by pid {record.holder.pid}"

    def release(self, claim: Claim) -> None:
        """Free a lease taken by this process; a no-op for one inherited across fork or already freed."""
        if claim.fd is not None:
            if claim.pid == _PID:
                self._mark(claim.port, FREE)  # before the lock goes: a claimer right after us marks it again
            # Closing the last descriptor of the open file description drops its flock: the lease
            # ends. (A forked child closed its copies at fork, so ours is the last.) The record
            # stays: with its flock free it reads as stale, and the next claimer overwrites it.
            with _FD_LOCK:
                fd, claim.fd = claim.fd, None
                if fd is None:
                    return  # another thread released it meanwhile
                with _HELD_LOCK:
                    _HELD.discard(claim)
                os.close(fd)
        elif claim.record.owner is not None and claim.pid == _PID:
            self.release_named(claim.port, claim.record.owner, claim.record.token)

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
            _IN_FLIGHT.add(fd)
            try:
                # A claimer holds the flock for microseconds; wait a little longer than that.
                deadline = time.monotonic() + 1.0
                while not (locked := lock_descriptor(fd, blocking=False)) and time.monotonic() < deadline:
                    time.sleep(0.001)
                if not locked:
                    return None
                try:
                    if not mine(_read_record(fd, port)):
                        return False
                    os.ftruncate(fd, 0)
                    self._mark(port, FREE)
                    return True
                finally:
                    unlock_descriptor(fd)
            finally:
                _IN_FLIGHT.discard(fd)
                os.close(fd)

    # -- owners ------------------------------------------------------------------------------------

    def _open_index(self, owner: str, flags: int) -> int:
        try:
            fd = open_file(self.sd.owners_fd, owner, flags | os.O_NONBLOCK, self.sd.file_mode)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateDirError(f"{self.sd.path}/owners/{owner} is a symlink; refusing to follow it") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateDirError(f"{self.sd.path}/owners/{owner} is not a plain file; remove it")
        return fd

    def _index_add(self, owner: str, port: int) -> None:
        """Append `port` to owners/<owner>, before its record is written: releasing by name needs no scan.

        Appends happen under a shared flock, a release under an exclusive one; an appender that finds
        its file unlinked by a release meanwhile starts over on a new one.
        """
        while True:
            fd = self._open_index(owner, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.fstat(fd).st_nlink == 0:
                    continue  # released and unlinked between our open and our lock
                entry = b"%d\n" % port
                if os.write(fd, entry) != len(entry):
                    raise StateDirError(f"short write to {self.sd.path}/owners/{owner} (is the disk full?)")
                return
            finally:
                os.close(fd)

    def _index_ports(self, owner: str) -> list[int] | None:
        data = read_small(self.sd.owners_fd, owner, limit=_INDEX_LIMIT)
        return None if data is None else _parse_index(data)

    def owner_ports(self, owner: str) -> list[LeaseRecord] | None:
        """The live records of `owner`'s leases, sorted by port; None if the owner holds nothing."""
        check_owner(owner)
        with state_errors(f"cannot read the leases of {owner!r} in {self.sd.path}"):
            ports = self._index_ports(owner) or []
            records = [r for r in map(self.read, ports) if r is not None and r.owner == owner]
        return records or None

    def release_owner(self, owner: str) -> list[int]:
        """Free every lease held under `owner`; UnknownOwnerError if it holds none."""
        check_owner(owner)
        with state_errors(f"cannot release the leases of {owner!r} in {self.sd.path}"):
            try:
                fd = self._open_index(owner, os.O_RDWR)
            except FileNotFoundError:
                raise UnknownOwnerError(f"owner {owner!r} holds no lease (in {self.sd.path})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # appenders hold it shared for microseconds
                outcome = {p: self.release_named(p, owner, None) for p in _parse_index(os.pread(fd, _INDEX_LIMIT, 0))}
                released = [p for p, done in outcome.items() if done]
                busy = [p for p, done in outcome.items() if done is None]
                if busy:  # still this owner's: keep them listed for the next release
                    entries = b"".join(b"%d\n" % p for p in busy)
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, entries, 0)
                else:
                    os.unlink(owner, dir_fd=self.sd.owners_fd)
            finally:
                os.close(fd)
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
            record = _read_record(fd, port)
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
            if lock_descriptor(fd, blocking=False):
                unlock_descriptor(fd)  # we got it, so no one holds it: a few microseconds of overlap at most
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
                    if not lock_descriptor(fd, blocking=False):
                        continue  # its holder is alive
                    try:
                        current = self._held_record(fd, record.port)
                        if current is not None and current.owner is None and not current.holds():
                            os.ftruncate(fd, 0)
                            self._mark(record.port, FREE)
                            collected.append(current)
                    finally:
                        unlock_descriptor(fd)
                finally:
                    os.close(fd)
        return collected
