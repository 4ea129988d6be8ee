"""Helpers shared by the bench_*.py scripts: argument parsing, port scans, statistics, Markdown."""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
from collections.abc import Sequence

# The wildcards freeport's probe binds (TCP bind+listen and UDP bind on each, IPv6 v6-only).
WILDCARDS: tuple[tuple[socket.AddressFamily, str], ...] = (
    (socket.AF_INET, "0.0.0.0"),
    (socket.AF_INET6, "::"),
)


def parse_args(description: str) -> argparse.Namespace:
    """`--quick`: fewer repetitions, for a smoke run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    return parser.parse_args()


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the Markdown section)."""
    print(f"[{os.path.basename(sys.argv[0])}] {message}", file=sys.stderr, flush=True)


def port_is_free(port: int) -> bool:
    """Whether nothing holds `port` right now, asked with the binds freeport's probe makes."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        for family, address in WILDCARDS:
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((address, port))
                except OSError:
                    return False
    return True


def find_free_block(size: int, lo: int, hi: int, avoid: Sequence[tuple[int, int]] = ()) -> int:
    """First port of `size` consecutive free ports within lo..hi (inclusive), outside the `avoid` ranges."""
    first = lo
    while first + size - 1 <= hi:
        clash = next((b for a, b in avoid if a <= first + size - 1 and first <= b), None)
        if clash is not None:
            first = clash + 1
            continue
        busy = next((p for p in range(first, first + size) if not port_is_free(p)), None)
        if busy is None:
            return first
        first = busy + 1
    raise RuntimeError(f"no block of {size} free ports in {lo}-{hi}")


def count_free(lo: int, hi: int) -> int:
    """How many ports of lo..hi (inclusive) are free right now."""
    return sum(port_is_free(p) for p in range(lo, hi + 1))


def time_wait_sockets() -> int | None:
    """TCP sockets in TIME_WAIT on the machine (from /proc/net/sockstat), or None if unknown."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def us(seconds: float) -> str:
    """Seconds as microseconds for a table cell."""
    value = seconds * 1e6
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table; `right` marks the columns to right-align (numbers)."""
    align = right if right is not None else [False] * len(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def machine_line() -> str:
    """nproc, CPU, kernel and Python, as one Markdown line."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return f"Machine: nproc {nproc}, {cpu}, {platform.system()} {platform.release()}, Python {py}."
