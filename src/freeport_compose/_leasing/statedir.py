"""The state directory: where it is, why it can be trusted, and safe file operations inside it.

Guarantees: the directory and its subdirectories (ports/, owners/, stacks/) are ours (or shared on
purpose, sticky), never reached through a symlink, and not writable by others; every file below them
is opened relative to a verified descriptor with O_NOFOLLOW; `write_atomic` never leaves a
half-written file. A new ports/ is filled in under a private name before anyone can see it.

May touch: the state directory and what is below it; nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from .._error import StateDirError

if TYPE_CHECKING:
    import re

STATE_ENV = "FREEPORT_STATE_DIR"
SHARED_ENV = "FREEPORT_SHARED"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_state_path() -> str:
    """$FREEPORT_STATE_DIR, else $XDG_RUNTIME_DIR/freeport-compose, else the user's cache dir."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return explicit if explicit[0] == "/" else os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "freeport-compose")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "freeport-compose")


def shared_opt_in() -> bool:
    """Whether $FREEPORT_SHARED asks for a state dir shared with other users on purpose."""
    return os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes")


def _verify(st: os.stat_result, path: str, shared: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StateDirError(f"state dir {path} is world-writable without the sticky bit: anyone could swap its files")
    if shared:
        return
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StateDirError(
            f"state dir {path} belongs to uid {st.st_uid}, not to you (uid {uid}); "
            f"set {STATE_ENV} to a directory of yours, or {SHARED_ENV}=1 to share one on purpose"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(f"state dir {path} is writable by others (mode {mode:o}); chmod 700 it")


def _is_symlink(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_dir(name: str, shown: str, shared: bool, dir_fd: int | None = None, create: bool = True) -> int:
    """Open (creating if missing) a directory without following a symlink in its last component."""
    mode = 0o1777 if shared else 0o700
    for attempt in (1, 2):
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            if attempt == 2 or not create:
                raise
            try:
                if dir_fd is None:
                    os.makedirs(os.path.dirname(name) or ".", mode=0o700, exist_ok=True)
                os.mkdir(name, mode, dir_fd=dir_fd)
                if shared:  # mkdir's mode went through the umask
                    os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError as e:
                raise StateDirError(f"cannot create state dir {shown}: {e.strerror}") from None
            continue
        except OSError as e:
            if e.errno == errno.ENOTDIR and _is_symlink(name, dir_fd):  # Linux: O_DIRECTORY wins over O_NOFOLLOW
                e.errno = errno.ELOOP
            if e.errno == errno.ELOOP:
                raise StateDirError(f"state dir {shown} is a symlink; refusing to follow it") from None
            if e.errno == errno.ENOTDIR:
                raise StateDirError(f"state dir {shown} is not a directory") from None
            raise StateDirError(f"cannot open state dir {shown}: {e.strerror}") from None
        try:
            _verify(os.fstat(fd), shown, shared)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise AssertionError("unreachable")


# Fills a new ports/ (its descriptor, its shown path, the file mode) before it is renamed into place.
FillPorts = Callable[[int, str, int], None]


class StateDir:
    """An opened, verified state directory.

    Every file below it is reached through directory descriptors with O_NOFOLLOW, so a path or
    symlink swapped in after the check can never redirect a read or a write.
    """

    def __init__(self, path: str, *, shared: bool = False, fill_new_ports: FillPorts | None = None) -> None:
        self.path = path
        self._fill_new_ports = fill_new_ports
        self.shared = shared
        self.file_mode = 0o666 if shared else 0o600
        self.fd = _open_dir(path, path, shared)
        try:
            self.ports_fd = self._open_ports()
        except BaseException:
            os.close(self.fd)
            raise
        # owners/ and stacks/, opened (verified, created if missing) when first used: only named
        # leases and stacks need them, and each costs a process's first FreePort() an open, an
        # fstat and a mkdir if missing. Never closed, like fd and ports_fd (threads may use them).
        self._subdirs: dict[str, int] = {}
        self._checked = time.monotonic()

    @property
    def owners_fd(self) -> int:
        """owners/ (see OwnerIndex), verified as the state dir is."""
        return self._subdir("owners")

    @property
    def stacks_fd(self) -> int:
        """stacks/ (the stacks half's records), verified as the state dir is."""
        return self._subdir("stacks")

    def _subdir(self, name: str) -> int:
        fd = self._subdirs.get(name)
        if fd is None:
            opened = _open_dir(name, f"{self.path}/{name}", self.shared, self.fd)
            # setdefault is atomic: of two threads opening it at once, both use the first one
            # stored, and the other closes its own (no one else has seen that number).
            fd = self._subdirs.setdefault(name, opened)
            if fd != opened:
                os.close(opened)
        return fd

    def _open_ports(self) -> int:
        """ports/, made complete before anyone can see it.

        A new ports/ (first use, or after someone deleted the state dir) is filled in under a
        private name by `fill_new_ports` (the lease store adopts there the leases that processes
        still hold on lock files of a deleted ports/ at this path), and only then renamed into
        place, under an flock on the state dir so two creators do not race.
        """
        shown = f"{self.path}/ports"
        try:
            return _open_dir("ports", shown, self.shared, self.fd, create=False)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            try:
                return _open_dir("ports", shown, self.shared, self.fd, create=False)
            except FileNotFoundError:
                pass
            tmp = f".ports.{os.getpid()}.{os.urandom(4).hex()}"
            fd = _open_dir(tmp, shown, self.shared, self.fd)
            try:
                if self._fill_new_ports is not None:
                    self._fill_new_ports(fd, shown, self.file_mode)
                os.rename(tmp, "ports", src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def is_deleted(self) -> bool:
        """True when the directory we hold, or one of its subdirectories, was removed.

        Asked at most every 0.1 s: it is a syscall on every allocation otherwise.
        """
        now = time.monotonic()
        if now - self._checked < 0.1:
            return False
        self._checked = now
        # list(): another thread may open a subdirectory meanwhile (a dict must not grow while iterated).
        return any(os.fstat(fd).st_nlink == 0 for fd in (self.fd, self.ports_fd, *list(self._subdirs.values())))

    def sweep_temporaries(self) -> list[str]:
        """Remove the temporary files (and private ports/ directories) that writers killed at the
        wrong instant left behind: those whose writer, named in the file's name, is gone. Returns
        the paths removed."""
        removed = []
        places = [
            (self.fd, self.path),
            (self.ports_fd, os.path.join(self.path, "ports")),
            (self.owners_fd, os.path.join(self.path, "owners")),
            (self.stacks_fd, os.path.join(self.path, "stacks")),
        ]
        with suppress(OSError):
            for name in os.listdir(self.stacks_fd):
                if not name.endswith((".json", ".lock")) and _is_dir(name, self.stacks_fd):
                    fd = _open_dir(name, os.path.join(self.path, "stacks", name), self.shared, self.stacks_fd, False)
                    places.append((fd, os.path.join(self.path, "stacks", name)))
        temporary = _temporary()  # once, not once for each of the thousands of lock files in ports/
        try:
            for dir_fd, shown in places:
                with suppress(OSError):
                    for name in os.listdir(dir_fd):
                        m = temporary.fullmatch(name)
                        if m is None or _alive(int(m.group("p1") or m.group("p2") or m.group("p3"))):
                            continue
                        with suppress(OSError):
                            if m.group("dir"):
                                remove_tree(name, dir_fd)
                            else:
                                os.unlink(name, dir_fd=dir_fd)
                            removed.append(os.path.join(shown, name))
        finally:
            for dir_fd, _ in places[4:]:
                os.close(dir_fd)
        return removed

    def subdir(self, parent_fd: int, name: str, shown: str) -> int:
        """Open (creating if missing) a directory below `parent_fd`; the caller closes it."""
        return _open_dir(name, shown, self.shared, parent_fd)


def _temporary() -> re.Pattern[str]:
    """What our writers name their temporaries: write_atomic's `.NAME.PID.HEX.tmp`, a new ports/
    being filled (`.ports.PID.HEX`), a slots file being written whole (`.slots.PID.HEX`). Compiled
    when first needed (by gc and ls): `re` costs every start ~2 ms."""
    import re

    return re.compile(
        r"\.(?:(?P<dir>ports)\.(?P<p1>[0-9]{1,10})\.[0-9a-f]{8}"
        r"|slots\.(?P<p2>[0-9]{1,10})\.[0-9a-f]{8}"
        r"|.+\.(?P<p3>[0-9]{1,10})\.[0-9a-f]{8}\.tmp)"
    )  # re caches compiled patterns


def is_dead_temporary(name: str) -> bool:
    """Whether `name` is one of our writers' temporaries, left by a writer that is gone."""
    m = _temporary().fullmatch(name)
    return m is not None and not _alive(int(m.group("p1") or m.group("p2") or m.group("p3")))


def _alive(pid: int) -> bool:
    """Whether the writer of a temporary may still be writing it: its pid exists. Not /proc/PID: on
    a system without /proc every writer read as dead, and a live writer's temporary was swept from
    under it. A reused pid keeps a dead writer's temporary until the next sweep after that process
    ends: harmless."""
    from .process import pid_alive  # process imports nothing of ours: no cycle

    return pid_alive(pid)


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove a directory of plain files below dir_fd, never following a symlink."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            with suppress(OSError):
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def open_file(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """os.open below dir_fd, never following a symlink and never leaking into exec'd children."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def read_small(dir_fd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    """A regular file's bytes (at most `limit`), or None if it is missing or not a regular file."""
    try:
        fd = open_file(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None  # a planted symlink is not a record of ours
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def write_atomic(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `name` below dir_fd with `data` all at once: readers, and a writer killed half-way,
    see the old or the new file, never half of one. (No fsync: a lease means nothing across a
    power loss, which ends every holder too.)"""
    # os.urandom, as unguessable as secrets.token_hex (whose import, hmac and hashlib, cost ~4 ms).
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = open_file(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


@contextmanager
def state_errors(what: str) -> Iterator[None]:
    """Turn an OSError from the state dir into one StateDirError line saying what we were doing."""
    try:
        yield
    except StateDirError:
        raise
    except OSError as e:
        raise StateDirError(f"{what}: {e.strerror or e}") from None
