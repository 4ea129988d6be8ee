"""ports/slots: a memory map shared by every process, one 32-byte slot per port.

A slot says whether its port is probably leased (so claimers try likely-free ports first, without a
syscall) and, for a process lease, which pid took it, when, and for what (so a process lease needs
no file write). Guarantee: slots are only ever hints and descriptions. The flock and the named
records alone decide who has a port, so a stale or wrong slot costs a retry, never a wrong answer.

May touch: ports/slots and a temporary `.slots.*` file beside it, below the ports/ descriptor.
"""

from __future__ import annotations

import mmap
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
    """The shared map of one ports/ directory."""

    def __init__(self, mapped: mmap.mmap) -> None:
        self._map = mapped

    @classmethod
    def open(cls, ports_fd: int, file_mode: int) -> Slots | None:
        """ports/slots, mapped shared by every process; None when it cannot be had (then records go to files)."""
        try:
            try:
                fd = open_file(ports_fd, "slots", os.O_RDWR | os.O_NONBLOCK)
            except FileNotFoundError:
                # Written whole, then linked into place: a half-written map would SIGBUS its readers, a
                # sparse one could SIGBUS its writers once the filesystem is full, and a rename could
                # replace the map a concurrent creator already uses (link fails if the name exists).
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
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size != SIZE:
                    return None
                return cls(mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return None

    def likely_leased(self, port: int) -> bool:
        """A hint, free of syscalls: True if the port was leased when last seen."""
        return self._map[port * _SLOT.size] != FREE

    def state(self, port: int) -> int:
        return self._map[port * _SLOT.size]

    def set_state(self, port: int, state: int) -> None:
        """Only the state byte: for a busy port whose holder writes (or has written) the rest itself."""
        self._map[port * _SLOT.size] = state

    def mark(self, port: int, state: int, pid: int = 0, created: float = 0.0, label: str = "") -> None:
        _SLOT.pack_into(self._map, port * _SLOT.size, state, pid, created, label.encode()[:16])

    def record(self, port: int) -> LeaseRecord | None:
        """The process lease a slot describes (not checked against the flock)."""
        state, pid, created, label = _SLOT.unpack_from(self._map, port * _SLOT.size)
        if state != PROCESS or pid == 0:
            return None  # pid 0: only the hint a claimer set on a busy port, not a description
        holder = Holder(pid, process_start_time(pid), current_holder().host)
        return LeaseRecord(port, None, holder, created, "", label.rstrip(b"\0").decode(errors="replace"))
