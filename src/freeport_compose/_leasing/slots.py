"""ports/slots: a file shared by every process, one 32-byte slot per port.

A slot says whether its port is probably leased (so claimers try likely-free ports first: one
1-byte pread instead of an open, an flock and a close) and, for a process lease, which pid took
it, when, and for what (so a process lease needs no write to its lock file).

Guarantees: slots are only ever hints and descriptions. The flock and the named records alone
decide who has a port, so a stale, wrong, truncated or overwritten slots file costs a retry or a
vague description, never a wrong answer and never a crash. It is read and written with pread and
pwrite, not mapped: a mapped file that someone truncates kills every process touching the lost
pages with SIGBUS.

May touch: ports/slots and a temporary `.slots.*` file beside it, below the ports/ descriptor.
"""

from __future__ import annotations

import os
import random
import stat
import struct
from contextlib import suppress

from .process import Holder, current_holder, process_start_time
from .records import LeaseRecord
from .statedir import open_file

_SLOT = struct.Struct("<B3xId16s")  # state, pid, created, label
SIZE = 65536 * _SLOT.size
FREE, PROCESS, NAMED = 0, 1, 2  # slot states


class Slots:
    """The slots file of one ports/ directory, through one descriptor kept open."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, ports_fd: int, file_mode: int) -> Slots | None:
        """ports/slots; None when it cannot be had (then process leases are described in their lock files)."""
        try:
            try:
                fd = open_file(ports_fd, "slots", os.O_RDWR | os.O_NONBLOCK)
            except FileNotFoundError:
                # Written whole, then linked into place: a sparse file could fail a later write once
                # the filesystem is full, and a rename could replace the file a concurrent creator
                # already uses (link fails if the name exists).
                tmp = f".slots.{os.getpid()}.{random.getrandbits(32):08x}"
                tfd = open_file(ports_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
                try:
                    try:
                        view = memoryview(bytes(SIZE))
                        while view:
                            view = view[os.write(tfd, view) :]
                    finally:
                        os.close(tfd)
                    with suppress(FileExistsError):
                        os.link(tmp, "slots", src_dir_fd=ports_fd, dst_dir_fd=ports_fd, follow_symlinks=False)
                finally:
                    os.unlink(tmp, dir_fd=ports_fd)
                fd = open_file(ports_fd, "slots", os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != SIZE:
            os.close(fd)  # a FIFO planted under the name, a file not ours: do without hints
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
        return self._write(port * _SLOT.size, _SLOT.pack(state, pid, created, label.encode()[:16]))

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
