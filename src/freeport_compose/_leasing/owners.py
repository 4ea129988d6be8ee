"""owners/<owner>: an append-only list of the ports each owner name has leased.

Guarantee: a port is listed before its named record is written, so releasing by name needs no scan
of ports/, and a listed port whose record is gone or someone else's is merely skipped. Appends
happen under a shared flock, a release under an exclusive one; an appender that finds its file
unlinked by a release meanwhile starts over on a new one.

May touch: files below owners/, through its descriptor, never through a symlink.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from .._error import StateDirError, UnknownOwnerError
from .statedir import StateDir, open_file, read_small

_LIMIT = 8 << 20  # an owner index holds at most 65535 lines of at most 6 bytes


def parse(data: bytes) -> list[int]:
    """The ports listed in an owner index, sorted, without duplicates or junk."""
    return sorted({int(w) for w in data.split() if w.isdigit() and 0 < int(w) < 65536})


class OwnerIndex:
    """The owners/ directory of one state dir."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd

    @property
    def fd(self) -> int:
        """owners/, opened when first used (a process lease never needs it)."""
        return self.sd.owners_fd

    def _open(self, owner: str, flags: int) -> int:
        try:
            fd = open_file(self.fd, owner, flags | os.O_NONBLOCK, self.sd.file_mode)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateDirError(f"{self.sd.path}/owners/{owner} is a symlink; refusing to follow it") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateDirError(f"{self.sd.path}/owners/{owner} is not a plain file; remove it")
        return fd

    def add(self, owner: str, port: int) -> None:
        """Append `port` to owner's list (before its record is written)."""
        while True:
            fd = self._open(owner, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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

    def ports(self, owner: str) -> list[int] | None:
        """The ports listed for `owner` (some may be released since); None if there is no list."""
        data = read_small(self.fd, owner, limit=_LIMIT)
        return None if data is None else parse(data)

    @contextmanager
    def releasing(self, owner: str) -> Iterator[_Release]:
        """Exclusive use of owner's list while its leases are released; UnknownOwnerError without one."""
        try:
            fd = self._open(owner, os.O_RDWR)
        except FileNotFoundError:
            raise UnknownOwnerError(f"owner {owner!r} holds no lease (in {self.sd.path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # appenders hold it shared for microseconds
            yield _Release(self, owner, fd)
        finally:
            os.close(fd)


class _Release:
    """owner's list, locked for a release: what it lists, and how to keep what stays."""

    def __init__(self, index: OwnerIndex, owner: str, fd: int) -> None:
        self._index, self._owner, self._fd = index, owner, fd

    def ports(self) -> list[int]:
        return parse(os.pread(self._fd, _LIMIT, 0))

    def keep_only(self, ports: list[int]) -> None:
        """Leave `ports` listed (still the owner's: for the next release), or remove the list if none."""
        if ports:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, b"".join(b"%d\n" % p for p in ports), 0)
        else:
            os.unlink(self._owner, dir_fd=self._index.fd)
