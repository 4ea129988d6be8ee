"""Finding ports that nothing on the machine uses right now, for tests that need explicit ranges."""

from __future__ import annotations

import random
import socket


def _really_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def find_free_block(n: int) -> int:
    """First port of n consecutive ports in 20000-32767 (below the kernel's ephemeral range) that
    nothing on the machine uses right now.

    Scanned from a random point as a sliding window: a busy port (say one in TIME_WAIT after an
    earlier test's HTTP request) only moves the window past it, so large blocks are still found.
    """
    lo, hi = 20000, 32767
    for _ in range(20):
        first = p = random.randrange(lo, hi - n + 2)
        while p <= hi:
            if not _really_free(p):
                first = p + 1
            elif p - first + 1 == n:
                return first
            p += 1
    raise RuntimeError(f"no block of {n} free ports found in 20000-32767")


def find_roomy_range(size: int, need: int) -> int:
    """First port of `size` consecutive ports in 20000-32767 of which at least `need` are free now
    (for load tests whose allocator skips the few busy ones itself)."""
    for _ in range(50):
        first = random.randrange(20000, 32767 - size + 2)
        if sum(_really_free(p) for p in range(first, first + size)) >= need:
            return first
    raise RuntimeError(f"no {size}-port range with {need} free ports found in 20000-32767")
