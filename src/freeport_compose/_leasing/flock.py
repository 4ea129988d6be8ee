"""The kernel lock every lease and every project lock is: flock(2) on an open file description.

Guarantees: `try_lock` never waits; it says False when another open file description holds the
lock (whatever errno the filesystem reports contention with), and raises on anything else. A lock
belongs to the open file description: it ends when the last descriptor of it is closed, and so with
its holder, however that dies.

(filelock's `lock_descriptor` is this very call on Unix; importing filelock cost every command ~25 ms
for it, and nothing of ours runs where fcntl does not exist: /proc, O_NOFOLLOW and dir_fd are Unix too.)
"""

from __future__ import annotations

import errno
import fcntl

# Some filesystems (NFS, some FUSE) report contention as EACCES rather than EWOULDBLOCK.
_CONTENTION = frozenset({errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK})


def try_lock(fd: int) -> bool:
    """Take the exclusive flock of fd's open file description if no other holds it; never wait."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _CONTENTION:
            return False
        raise
    return True


def unlock(fd: int) -> None:
    """Release it (the descriptor stays open)."""
    fcntl.flock(fd, fcntl.LOCK_UN)
