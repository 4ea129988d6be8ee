"""The slots file: shared by every process of one ports/ directory, one 32-byte slot per port.

A slot says whether its port is probably leased (so claimers try likely-free ports first: one
1-byte pread instead of an open, an flock and a close) and, for a process lease, which pid took
it, when, and for what (so a process lease needs no write to its lock file).

Where it lives: a claim and its release write a slot each, and a write to a file on a disk
filesystem costs ~4 µs (ext4 journals the new timestamps) against ~1 µs on tmpfs. So when ports/
is on a block device, the file lives in RAM, in our own 0700 directory under /dev/shm, named after
ports/'s device and inode; when ports/ is not (tmpfs, like $XDG_RUNTIME_DIR), or when /dev/shm
cannot be used safely, it is ports/slots as before.

Guarantees: slots are only ever hints and descriptions. The flock and the named records alone
decide who has a port, so a stale, missing, wrong, truncated or overwritten slots file (one under
/dev/shm lost to a reboot or a cleanup, or inherited through a reused inode number) costs a retry
or a vague description, never a wrong answer and never a crash. It is read and written with pread
and pwrite, not mapped: a mapped file that someone truncates kills every process touching the lost
pages with SIGBUS.

May touch: ports/slots and `.slots.*` temporaries beside it, below the ports/ descriptor; or our own
directory under /dev/shm, its slots files and their temporaries (removing those whose ports/ is gone).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from contextlib import suppress

from .process import Holder, current_holder, process_start_time
from .records import LeaseRecord
from .statedir import is_dead_temporary, open_file

_SLOT = struct.Struct("<B3xId16s")  # state, pid, created, label
SIZE = 65536 * _SLOT.size
FREE, PROCESS, NAMED = 0, 1, 2  # slot states
_FREE_SLOT = _SLOT.pack(FREE, 0, 0.0, b"")  # every release writes it
SHM_DIR = "/dev/shm"  # where the slots of a ports/ on a disk live (tests point it elsewhere)
# Under SHM_DIR a file also says, past the slots, which ports/ it serves: the sweep that keeps RAM
# from filling up with the slots of deleted state dirs removes the files whose ports/ is gone.
_HEADER = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def shm_name(st: os.stat_result) -> str:
    """The name under our /dev/shm directory of the slots of the ports/ directory whose stat is `st`."""
    return f"{st.st_dev}-{st.st_ino}.slots"


def shm_dir() -> int | None:
    """Our own directory under SHM_DIR, created 0700 if missing; None when it cannot be trusted.

    /dev/shm is writable by every user: another one may have made a directory (or a symlink) under
    our name first. O_NOFOLLOW and the owner and mode check after opening keep us from writing our
    descriptions where they could read or forge them; we then do without, in ports/.
    """
    path = f"{SHM_DIR}/freeport-compose-{os.geteuid()}"
    try:
        try:
            fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            with suppress(FileExistsError):
                os.mkdir(path, 0o700)
            fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None  # no /dev/shm, read-only, or a symlink or file planted under our name
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


class Slots:
    """The slots file of one ports/ directory, through one descriptor kept open."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, ports_fd: int, ports_path: str, file_mode: int) -> Slots | None:
        """The slots of this ports/; None when they cannot be had (then process leases are described
        in their lock files)."""
        st = os.fstat(ports_fd)
        # Device major 0: not a block device (tmpfs, also btrfs, NFS, overlayfs). Telling tmpfs from
        # the others needs /proc/self/mountinfo (~75 µs, more than it saves on a short-lived
        # process): they keep ports/slots.
        if os.major(st.st_dev) != 0 and (shm := shm_dir()) is not None:
            try:
                return cls._open(shm, shm_name(st), SIZE + _HEADER, 0o600, os.fsencode(ports_path))
            except OSError:
                pass  # /dev/shm full or read-only: ports/ then
            finally:
                os.close(shm)
        try:
            return cls._open(ports_fd, "slots", SIZE, file_mode, None)
        except OSError:
            return None

    @classmethod
    def _open(cls, dir_fd: int, name: str, size: int, mode: int, serves: bytes | None) -> Slots | None:
        """The slots file `name` below dir_fd, made if missing; None if what is there is not one
        (OSError if it can neither be opened nor made)."""
        try:
            fd = open_file(dir_fd, name, os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            if serves is None:
                _create_whole(dir_fd, name, mode)
            else:
                _sweep(dir_fd)
                _create_sparse(dir_fd, name, serves)
            fd = open_file(dir_fd, name, os.O_RDWR | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            # A FIFO planted under the name, a file not ours: do without hints (not elsewhere: two
            # places for the slots of one ports/ would split the processes' hints between them).
            os.close(fd)
            return None
        return cls(fd)

    def state(self, port: int) -> int:
        """The slot's state byte; FREE past the end of the file, or when it cannot be read."""
        try:
            got = os.pread(self._fd, 1, port * _SLOT.size)
        except OSError:
            return FREE
        return got[0] if got else FREE

    def likely_leased(self, port: int) -> bool:
        """A hint, one pread: True if the port was leased when last seen."""
        return self.state(port) != FREE

    def set_state(self, port: int, state: int) -> None:
        """Only the state byte: for a busy port whose holder writes (or has written) the rest itself."""
        self._write(port * _SLOT.size, bytes([state]))

    def mark(self, port: int, state: int, pid: int = 0, created: float = 0.0, label: str = "") -> bool:
        """Describe a port's lease (or its end); False if the slot could not be written."""
        data = _FREE_SLOT if state == FREE else _SLOT.pack(state, pid, created, label.encode()[:16])
        return self._write(port * _SLOT.size, data)

    def _write(self, offset: int, data: bytes) -> bool:
        try:
            return os.pwrite(self._fd, data, offset) == len(data)
        except OSError:
            return False  # a full disk under a truncated file, say: hints are optional, the flock decides

    def record(self, port: int) -> LeaseRecord | None:
        """The process lease a slot describes (not checked against the flock)."""
        try:
            data = os.pread(self._fd, _SLOT.size, port * _SLOT.size)
        except OSError:
            return None
        if len(data) != _SLOT.size:
            return None
        state, pid, created, label = _SLOT.unpack(data)
        if state != PROCESS or pid == 0:
            return None  # pid 0: only the hint a claimer set on a busy port, not a description
        if not 0.0 <= created < 1e11:  # NaN, infinite or absurd: an overwritten file, not a time
            created = 0.0
        holder = Holder(pid, process_start_time(pid), current_holder().host)
        return LeaseRecord(port, None, holder, created, "", label.rstrip(b"\0").decode(errors="replace"))


def _linked(dir_fd: int, name: str, write: Callable[[int], None], mode: int) -> None:
    """Make `name` below dir_fd by writing a private temporary and linking it into place.

    Link, not rename: a rename would replace the file a concurrent creator already uses (link
    fails if the name exists, and then theirs is the one).
    """
    tmp = f".slots.{os.getpid()}.{os.urandom(4).hex()}"
    tfd = open_file(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write(tfd)
        finally:
            os.close(tfd)
        with suppress(FileExistsError):
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.unlink(tmp, dir_fd=dir_fd)


def _create_whole(dir_fd: int, name: str, mode: int) -> None:
    """ports/slots, every byte written: a sparse file on the state dir's filesystem could fail a
    later write once that fills up (with a full /dev/shm a failed write only costs a hint)."""

    def write(fd: int) -> None:
        view = memoryview(bytes(SIZE))
        while view:
            view = view[os.write(fd, view) :]

    _linked(dir_fd, name, write, mode)


def _create_sparse(dir_fd: int, name: str, serves: bytes) -> None:
    """A slots file under /dev/shm: sparse (RAM is spent only on the pages of ports used), followed
    by the path of the ports/ it serves, for the sweep. A path too long for the header is left out:
    the next sweep then removes the file, which costs only hints."""

    def write(fd: int) -> None:
        os.ftruncate(fd, SIZE + _HEADER)
        if len(serves) < _HEADER:
            os.pwrite(fd, serves, SIZE)

    _linked(dir_fd, name, write, 0o600)


def _sweep(dir_fd: int) -> None:
    """Remove the slots files under /dev/shm whose ports/ is gone, and the temporaries of dead writers.

    Run by whoever creates a new one, so the files kept stay as many as the state dirs in use, and
    RAM does not fill up with those of deleted ones (every test of a suite makes a state dir).
    """
    for entry in os.listdir(dir_fd):
        with suppress(OSError):
            if entry.endswith(".slots") and not entry.startswith("."):
                if not _serves_live_ports(dir_fd, entry):
                    os.unlink(entry, dir_fd=dir_fd)
            elif is_dead_temporary(entry):
                os.unlink(entry, dir_fd=dir_fd)


def _serves_live_ports(dir_fd: int, name: str) -> bool:
    fd = open_file(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    try:
        path = os.pread(fd, _HEADER, SIZE).split(b"\0", 1)[0]
    finally:
        os.close(fd)
    try:
        st = os.stat(path) if path else None
    except OSError:
        return False
    return st is not None and shm_name(st) == name
