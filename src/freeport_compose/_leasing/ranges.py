"""Port ranges: parsing, the kernel-aware default, and a visiting order that spreads parallel callers.

Guarantees: a PortRange holds only valid ports (1-65535) as sorted disjoint intervals, so a
60k-port range costs nothing; `shuffled` visits every candidate exactly once; the default range
keeps clear of the kernel's ephemeral and reserved ports, read live (at most once a second).

May touch: reads /proc/sys/net/ipv4/ip_local_port_range and ip_local_reserved_ports (Linux); the
net.inet.ip.portrange sysctls where there is no /proc (macOS, the BSDs).
"""

from __future__ import annotations

import bisect
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator

from .._error import EmptyRangeError, InvalidRangeError

MIN_PORT, MAX_PORT = 1, 65535
# Ports below this are where local services listen by default (3000, 5432, 8080, ...); the default
# range starts above them so a leased port does not block `postgres` started by hand tomorrow.
DEFAULT_FLOOR = 10000
RANGE_ENV = "FREEPORT_RANGE"
_PROC_EPHEMERAL = "/proc/sys/net/ipv4/ip_local_port_range"
_PROC_RESERVED = "/proc/sys/net/ipv4/ip_local_reserved_ports"

Interval = tuple[int, int]
_STRIDES = (65537, 65539, 65543, 65551, 65557, 65563, 65579, 65581, 65587, 65599, 65609, 65617, 65629, 65633)


def parse_port(value: object, what: str = "port") -> int:
    """An int in 1-65535 from an int or a decimal string, or InvalidRangeError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRangeError(f"{what} must be an integer, not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdecimal():
            raise InvalidRangeError(f"{what} must be an integer, not {value!r}")
        value = int(text)
    if not MIN_PORT <= value <= MAX_PORT:
        raise InvalidRangeError(f"{what} {value} is outside {MIN_PORT}-{MAX_PORT}")
    return value


def parse_range(text: str, what: str = "range") -> Interval:
    """`A-B` (inclusive) or a single `A`, validated; InvalidRangeError says what is wrong."""
    start, sep, stop = text.strip().partition("-")
    lo = parse_port(start, f"{what} start")
    hi = parse_port(stop, f"{what} stop") if sep else lo
    if lo > hi:
        raise InvalidRangeError(f"{what} {text.strip()!r}: start {lo} is above stop {hi}")
    return lo, hi


def _subtract(intervals: Iterable[Interval], holes: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    sorted_holes = sorted(holes)
    for lo, hi in intervals:
        for hlo, hhi in sorted_holes:
            if hhi < lo or hlo > hi:
                continue
            if hlo > lo:
                out.append((lo, hlo - 1))
            lo = hhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


class PortRange:
    """The candidate ports of a request as sorted disjoint intervals, so a 60k-port range costs nothing."""

    __slots__ = ("_len", "_starts", "intervals")

    def __init__(self, intervals: Iterable[Interval]) -> None:
        self.intervals: tuple[Interval, ...] = tuple(intervals)
        self._starts: list[int] = []
        total = 0
        for lo, hi in self.intervals:
            self._starts.append(total)
            total += hi - lo + 1
        self._len = total

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortRange) and other.intervals == self.intervals

    def __hash__(self) -> int:
        return hash(self.intervals)

    def __repr__(self) -> str:
        return f"PortRange({str(self)!r})"

    @classmethod
    def between(cls, start: object, stop: object) -> PortRange:
        """The inclusive range start..stop, validated."""
        key = (start, stop)
        if type(start) is int and type(stop) is int and (found := _BETWEEN.get(key)) is not None:
            return found
        lo, hi = parse_port(start, "start"), parse_port(stop, "stop")
        if lo > hi:
            raise InvalidRangeError(f"start {lo} is above stop {hi}")
        prange = cls(((lo, hi),))
        if type(start) is int and type(stop) is int and len(_BETWEEN) < 256:
            _BETWEEN[key] = prange
        return prange

    @classmethod
    def default(cls) -> PortRange:
        """$FREEPORT_RANGE if set, else DEFAULT_FLOOR-65535 less the kernel's ephemeral and reserved ports.

        The kernel settings are re-read at most once a second, so a change to them applies at once
        without two /proc reads on every allocation.
        """
        global _DEFAULT_CACHE
        env = os.environ.get(RANGE_ENV, "").strip()
        if env:
            return cls((parse_range(env, RANGE_ENV),))
        now = time.monotonic()
        if _DEFAULT_CACHE is not None and now - _DEFAULT_CACHE[0] < 1.0:
            return _DEFAULT_CACHE[1]
        holes = [kernel_ephemeral_range(), *kernel_reserved_ports()]
        intervals = _subtract([(DEFAULT_FLOOR, MAX_PORT)], holes)
        if not intervals:  # an ephemeral range reaching down to the floor: fall back to 1024
            intervals = _subtract([(1024, MAX_PORT)], holes)
        prange = cls(tuple(intervals))
        _DEFAULT_CACHE = (now, prange)
        return prange

    def without(self, ports: Iterable[int]) -> PortRange:
        """This range less `ports`; EmptyRangeError when nothing is left."""
        excluded = [(p, p) for p in {parse_port(p, "excluded port") for p in ports}]
        rest = PortRange(tuple(_subtract(self.intervals, excluded))) if excluded else self
        if len(rest) == 0:
            raise EmptyRangeError(f"no port left in {self} after excluding {len(excluded)} port(s)")
        return rest

    def __len__(self) -> int:
        return self._len

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.intervals)

    def __str__(self) -> str:
        return ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in self.intervals)

    def nth(self, index: int) -> int:
        """The index-th candidate port in ascending order."""
        k = bisect.bisect_right(self._starts, index) - 1
        return self.intervals[k][0] + index - self._starts[k]

    def shuffled(self) -> Iterator[int]:
        """Every candidate once, from a random point with a random stride.

        Parallel callers start apart instead of all fighting for the first port, and a stride
        (rather than +1) keeps taken ports from forming runs that every later caller walks through.
        """
        n = len(self)
        offset = int(random.random() * n)
        # A prime above 65535 is coprime to any range size, so the walk visits every candidate once.
        stride = _STRIDES[int(random.random() * len(_STRIDES))] % n if n > 1 else 1  # random.choice, ~3x cheaper
        if len(self.intervals) == 1:
            lo = self.intervals[0][0]
            for k in range(n):
                yield lo + (offset + k * stride) % n
        else:
            for k in range(n):
                yield self.nth((offset + k * stride) % n)

    def blocks(self, size: int) -> Iterator[int]:
        """First ports of every run of `size` consecutive candidates, in random order."""
        firsts = [p for lo, hi in self.intervals if hi - lo + 1 >= size for p in range(lo, hi - size + 2)]
        random.shuffle(firsts)
        return iter(firsts)


_DEFAULT_CACHE: tuple[float, PortRange] | None = None
_BETWEEN: dict[tuple[object, object], PortRange] = {}  # ranges are immutable: reuse the validated ones


def read_proc(path: str) -> bytes:
    """A small /proc file's bytes, with one open, one read and one close: open() in text mode costs
    a fresh process ~40 µs more (buffer, decoder), and the first FreePort() reads two of these."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def kernel_ephemeral_range() -> Interval:
    """The kernel's ephemeral range (Docker picks random host ports there too), read live: Linux's
    /proc/sys/net/ipv4/ip_local_port_range; on macOS and the BSDs `sysctl
    net.inet.ip.portrange.first/last`. Where neither can be read, the system's default: Linux's
    32768-60999, else IANA's 49152-65535 (macOS's default). Without the sysctl, a Mac's default
    range would be Linux's, and leases would land where macOS hands out ephemeral ports."""
    try:
        lo, hi = (int(x) for x in read_proc(_PROC_EPHEMERAL).split())
        return lo, hi
    except (OSError, ValueError):
        pass
    if sys.platform.startswith("linux"):
        return 32768, 60999  # Linux's default, for a Linux without /proc
    lo_, hi_ = _sysctl_int("net.inet.ip.portrange.first"), _sysctl_int("net.inet.ip.portrange.last")
    if lo_ is not None and hi_ is not None and 0 < lo_ <= hi_ < 65536:
        return lo_, hi_
    return 49152, 65535


def _sysctl_int(name: str) -> int | None:
    """An integer sysctl by name (sysctlbyname(3): macOS, the BSDs), None where there is none.
    ctypes imported here: only a system without /proc gets this far."""
    import ctypes
    import ctypes.util

    found = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(found)
        sysctlbyname = libc.sysctlbyname
    except (OSError, AttributeError):
        return None
    value = ctypes.c_int(0)
    size = ctypes.c_size_t(ctypes.sizeof(value))
    if sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    return value.value


def kernel_reserved_ports() -> list[Interval]:
    """Ports the administrator reserved in ip_local_reserved_ports, read live."""
    try:
        text = read_proc(_PROC_RESERVED).decode("ascii", "replace").strip()
    except OSError:
        return []
    out = []
    for part in filter(None, text.split(",")):
        try:
            out.append(parse_range(part))
        except InvalidRangeError:
            continue
    return out
