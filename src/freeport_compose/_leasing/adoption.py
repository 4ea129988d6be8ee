"""Adoption: a new ports/ inherits the process leases still held on the lock files of a deleted one.

Guarantee: when someone deletes the state dir (or only ports/) under live leases, the process that
makes the new ports/ first writes an `adopted` record for every flock a live process still holds on
a deleted lock file of that path, so those ports are not handed out again while their holders live.

May touch: /proc/locks and /proc/<pid>/fd (read), new lock files in the ports/ being made.
"""

from __future__ import annotations

import os
import random
import sys
import time

from .._error import StateDirError
from .process import Holder, hostname, process_start_time
from .records import LeaseRecord
from .statedir import open_file


def orphaned_leases(ports_path: str) -> dict[int, int]:
    """{port: pid} of flocks that live processes hold on lock files of a deleted ports_path.

    Linux only (/proc): flocks listed in /proc/locks, matched by device and inode with the holders'
    open files whose path reads `<ports_path>/<port>.lock (deleted)`. Elsewhere (macOS, the BSDs,
    a Linux without /proc) nothing can list another process's flocks: {} (no adoption), so a state
    dir deleted under live process leases lets their ports be leased again there.
    """
    if not sys.platform.startswith("linux"):
        return {}
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


def adopt_orphans(ports_fd: int, ports_path: str, mode: int) -> None:
    """Fill a new, still private ports/ with the leases live processes hold in a deleted one."""
    host = hostname()
    for port, pid in orphaned_leases(ports_path).items():
        holder = Holder(pid, process_start_time(pid), host)
        record = LeaseRecord(port, None, holder, time.time(), f"{random.getrandbits(64):016x}", "", adopted=True)
        fd = open_file(ports_fd, f"{port}.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            data = record.encode()
            if os.write(fd, data) != len(data):
                raise StateDirError(f"short write adopting port {port} (is the disk full?)")
        finally:
            os.close(fd)
