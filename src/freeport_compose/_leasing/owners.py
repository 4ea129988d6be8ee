"""owners/<owner>: an append-only list of the ports each owner name has leased.

Guarantee: a port is listed before its named record is written, so releasing by name needs no scan
of ports/, and a listed port whose record is gone or someone else's is merely skipped. Appends
happen under a shared flock, a release under an exclusive one; an appender that finds its file
unlinked by a release meanwhile starts over on a new one. An entry is never glued to a torn last
line (part of an entry a writer killed mid-append, or refused by a full disk, left without its
newline): each append starts a line of its own, and a line an older writer glued all the same
still lists the port it ends with.

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

_LIMIT = 8 << 20  # far above 65535 entries of at most 7 bytes each (newline, 5 digits, newline)


def parse(data: bytes) -> list[int]:
    """The ports listed in an owner index, sorted, without duplicates or junk.

    A word of digits that is no port is a torn entry with the next one glued to it (`4000` +
    `28834`, as writers before each append started its own line left it): it lists every port its
    digits could end with, the glued entry among them. Listing too much is safe (a listed port
    whose record is not the owner's is skipped); without it, that port stayed leased and no
    release by name could find it.
    """
    ports: set[int] = set()
    for word in data.split():
        if not word.isdigit():
            continue  # not ours: a port is written in decimal, nothing else
        if len(word) <= 5 and 0 < int(word) < 65536:
            ports.add(int(word))
            continue
        # Never int() of the whole word: a long one (a corrupt file) is slow to convert, and past
        # 4300 digits Python refuses it (ValueError) where a corrupt index must read as junk.
        for size in range(1, 6):  # a port has at most 5 digits, and is written without a leading zero
            tail = word[-size:]
            if not tail.startswith(b"0") and 0 < int(tail) < 65536:
                ports.add(int(tail))
    return sorted(ports)


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
                # A line of its own, whatever the file ends with: a torn last line (part of an
                # entry a killed or refused writer left, no newline) would otherwise swallow this
                # entry into a number that is no port, and its lease could not be released by
                # name. Unconditional, not "if the file does not end with a newline": appenders
                # share the flock, so another's short write can land between that check and ours.
                # (Blank lines cost a byte each; readers split on any whitespace.)
                entry = b"\n%d\n" % port
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
