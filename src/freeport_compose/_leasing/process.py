"""This process: who it is (so a lease can name its holder) and what a forked child must not inherit.

Guarantees:
- `Holder` names a process by pid *and* start time, so a reused pid is never taken for a dead holder.
- Start times come from /proc on Linux, and on macOS from the kernel's process table (`sysctl
  kern.proc.pid`) through psutil, installed with the package there. (Not on the BSDs: there psutil
  derives them from the boot time, which moves when the clock is set, and a live holder would be
  taken for dead.)
- Where start times cannot be read (the BSDs, a Linux container without /proc, psutil missing, a
  process the kernel will not describe), a holder is alive while its pid is (`kill(pid, 0)`: ESRCH
  is dead, EPERM is alive): never judged dead for want of a start time, at the price of a reused
  pid keeping a dead holder's lease until that process ends.
- After `fork()`, the child has its own pid here at once, and has closed (never unlocked) every lock
  descriptor whose flock is one of the parent's leases, including those another thread was opening
  or closing at that instant: the child can neither free the parent's ports nor keep them leased
  after the parent dies. This module holds the package's only fork handler.

May touch: /proc/<pid>/stat (read), the kernel's process table (read, on macOS), signal 0 to a
holder's pid, descriptors registered with `track`/`in_flight`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable


class LockHolder(Protocol):
    """Something whose open descriptor holds a lease's flock (a Claim); `fd` None once let go."""

    fd: int | None


T = TypeVar("T")


class Holder:
    """The process that took a lease: pid plus start time, so a reused pid is not taken for it.

    Immutable, compared and hashed by (pid, start_time, host).
    """

    __slots__ = ("host", "json", "pid", "start_time")
    pid: int
    start_time: int | None
    host: str
    json: str  # its JSON, built once: the holder of most records a process writes is itself

    def __init__(self, pid: int, start_time: int | None, host: str) -> None:
        start = start_time
        for name, value in (("pid", pid), ("start_time", start), ("host", host)):
            object.__setattr__(self, name, value)
        text = json.dumps({"pid": pid, "start_time": start, "host": host}, separators=(",", ":"))
        object.__setattr__(self, "json", text)

    def _key(self) -> tuple[object, ...]:
        return (self.pid, self.start_time, self.host)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Holder:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Holder is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Holder is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Holder], tuple[int, int | None, str]]:
        return (Holder, (self.pid, self.start_time, self.host))  # pickle and copy: through __init__

    def __repr__(self) -> str:
        return f"Holder(pid={self.pid!r}, start_time={self.start_time!r}, host={self.host!r})"


_LINUX = sys.platform.startswith("linux")
_MACOS = sys.platform == "darwin"


def process_start_time(pid: int) -> int | None:
    """The process's start time (on Linux in clock ticks since boot, on macOS in microseconds since
    the epoch: only ever compared with another read on the same machine), or None if there is no
    such process, or only its corpse: a zombie (state Z, or X while it goes) has exited and holds no
    lock any more, though the kernel lists it until its parent waits for it, and where no one does
    (a container whose PID 1 reaps nothing) it would pass for alive forever. None too where it cannot
    be read (see the module's docstring)."""
    if not _LINUX:
        try:
            return _kernel_start_time(pid)
        except _Unreadable:
            return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # not open(): ~20 µs less
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X", b"x"):
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


class _Unreadable(Exception):
    """No start time for this process here (the BSDs, psutil missing, a process the kernel will not
    describe): its pid alone must say whether it lives."""


def _kernel_start_time(pid: int) -> int | None:
    """process_start_time() on macOS: `sysctl kern.proc.pid` read by psutil, which knows the layout
    of the kernel's `kinfo_proc` on each release; _Unreadable elsewhere, without psutil, and where
    the kernel will not describe the process."""
    if not _MACOS:
        raise _Unreadable("start times are read from psutil on macOS only")
    try:
        import psutil
    except ImportError:
        raise _Unreadable("no psutil") from None
    if pid <= 0:
        return None  # psutil.Process() raises ValueError, not psutil.Error, for these
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        # create_time() is the kernel's timeval as a float: the same kernel value always gives the
        # same float, so the rounded microseconds are stable across reads.
        return round(process.create_time() * 1_000_000)
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    except psutil.Error as e:  # AccessDenied: not seen on macOS, whose process table anyone may read
        raise _Unreadable(f"process {pid}: {e}") from None


_PID = os.getpid()  # os.getpid() is a syscall on the allocation path; refreshed in forked children
_SELF: Holder | None = None


def pid() -> int:
    """This process's pid (right in a forked child too)."""
    return _PID


def hostname() -> str:
    """This machine's name, as socket.gethostname() says it (glibc's is this very uname field)."""
    return os.uname().nodename


def current_holder() -> Holder:
    """This process as a Holder (recomputed after fork, since the pid changes)."""
    global _SELF
    if _SELF is None or _SELF.pid != _PID:
        _SELF = Holder(_PID, process_start_time(_PID), hostname())
    return _SELF


def holder_of(pid: int) -> Holder:
    """The Holder of a lease taken by process `pid`: this process, or (for a lease a forked child
    inherited) its parent as the parent knew itself, if it had asked before the fork."""
    if pid == _PID:
        return current_holder()
    if _SELF is not None and _SELF.pid == pid:
        return _SELF
    return Holder(pid, process_start_time(pid), hostname())


def start_times_readable() -> bool:
    """Whether this system shows processes' start times (Linux's /proc; macOS's process table, by
    psutil). Asked each time: a test, or a container, may mount /proc after this module was
    imported."""
    if not _LINUX:
        try:
            return _kernel_start_time(_PID) is not None
        except _Unreadable:
            return False
    return os.path.exists("/proc/self/stat")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists, by signal 0: ESRCH is none; EPERM is one we may not
    signal, so one that exists (another user's)."""
    if pid <= 0:
        return False  # kill(0) and kill(-1) name process groups, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False  # EINVAL and the like: no process it could name
    return True


def holder_alive(holder: Holder) -> bool | None:
    """Whether the holder process still runs; None when it ran on another host and we cannot tell.

    By pid and start time where start times can be read; else by the pid alone (see the module's
    docstring). Without that fallback every holder read as dead on a system without /proc, and
    `gc` killed a live `run`'s stack and freed the leases of live processes.
    """
    if holder.host != current_holder().host:
        return None
    if _LINUX:
        started = process_start_time(holder.pid)
        if started is None and not start_times_readable():
            return pid_alive(holder.pid)
    else:
        try:
            started = _kernel_start_time(holder.pid)
        except _Unreadable:  # this process's start time unknown: its pid alone
            return pid_alive(holder.pid)
    return started is not None and (holder.start_time is None or started == holder.start_time)


class PerProcess(Generic[T]):
    """A value this process owns alone: a forked child gets a fresh one, never the parent's.

    For locks (another thread may hold the parent's at fork time, and no thread of the child would
    ever release it) and for registries of the parent's own leases (the child must not release them).
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._pid = _PID
        self._value = factory()

    def get(self) -> T:
        if self._pid != _PID:
            self._value, self._pid = self._factory(), _PID
        return self._value


# Leases this process holds by an open descriptor, so a forked child can close its copies.
_HELD: set[LockHolder] = set()
_HELD_LOCK = threading.Lock()
# Lock files open in a claim or release under way in some thread (set.add/discard are atomic).
_IN_FLIGHT: set[int] = set()
# Held from each open of a lock file until it is tracked, and from untracking to its close: fork()
# waits for it, so a child never inherits a lock descriptor it does not know about.
_FD_LOCK = threading.Lock()


def fd_lock() -> threading.Lock:
    """The lock to hold while a lock descriptor is opened or closed (fork waits for it)."""
    return _FD_LOCK


def track(holder: LockHolder) -> None:
    """Register a held lease's descriptor: a forked child closes its copy."""
    with _HELD_LOCK:
        _HELD.add(holder)


def untrack(holder: LockHolder) -> None:
    with _HELD_LOCK:
        _HELD.discard(holder)


def in_flight() -> set[int]:
    """Descriptors of lock files being claimed or released right now, in any thread."""
    return _IN_FLIGHT


def _after_fork_in_child() -> None:
    """Close (never unlock) the parent's lock descriptors, and start this process's own state.

    flock belongs to the open file description the child shares with the parent: unlocking here
    would free the parent's port, and keeping the copy open would keep it leased after the parent dies.
    """
    global _HELD_LOCK, _FD_LOCK, _PID
    _HELD_LOCK = threading.Lock()  # another thread may have held it at fork time
    _FD_LOCK = threading.Lock()
    _PID = os.getpid()
    inherited = set(_IN_FLIGHT)  # a claim another thread was making when fork() came
    for holder in _HELD:
        if holder.fd is not None:
            inherited.add(holder.fd)
            holder.fd = None
    for fd in inherited:
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()
    _IN_FLIGHT.clear()


os.register_at_fork(
    before=lambda: _FD_LOCK.acquire(),
    after_in_parent=lambda: _FD_LOCK.release(),
    after_in_child=_after_fork_in_child,
)
