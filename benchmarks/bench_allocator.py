"""Benchmark: freeport's allocator against portpicker, ephemeral-port-reserve, bind(0), a lock-file recipe.

Scenarios, all measured in one run:
  a) uncontended, one process: per-port cost of allocate+release, against the bare syscalls freeport
     cannot avoid (lock file open + flock + the probe's four binds + close);
  b) contended: 16 processes x 6 ports in a 96-port range, all holding until everyone is done;
     per-port cost measured inside each process, and ports handed to two processes at once;
  c) flat as leases grow: FreePort(range)+release with 10 vs 10,000 named leases held in the range;
  d) fresh processes: the first FreePort() after import against ephemeral-port-reserve's first
     reserve(); b) again with processes spawned for every round; whole commands' time and max RSS.

Prints a Markdown section on stdout (progress goes to stderr). Everything freeport writes goes to a
private FREEPORT_STATE_DIR that is removed at the end. Only loopback and wildcard binds are made.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import itertools
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from threading import BrokenBarrierError
from typing import Any

import ephemeral_port_reserve
import portpicker
from filelock import FileLock, Timeout

import freeport_compose
from _common import (
    WILDCARDS,
    count_free,
    find_free_block,
    machine_line,
    median,
    parse_args,
    percentile,
    progress,
    table,
    time_wait_sockets,
    us,
)
from freeport_compose import FreePort, FreePorts
from freeport_compose._leasing.locks import PortLocks

PROCS, PER_PROC = 16, 6  # scenario b: 16 processes x 6 ports in a 96-port range
CONTENDED_RANGE = PROCS * PER_PROC
UNCONTENDED_RANGE = 256  # scenario a: the range freeport, the bare baseline and the recipe draw from
HELD_OWNER = "bench-held"
HELD_MANY = 10_000
HELD_FEW = 10
CONTROL_RANGE = 500  # scenario c: a sub-range no lease is put in, to tell store size from range fill
FLAT_LIMIT = 1.25  # "near 1" for the 10k/10 ratio
UNCONTENDED_LIMIT = 1.5
RECIPE_MAX_TRIES = 50_000
WAIT = 180.0  # seconds before a stuck worker or barrier fails the run instead of hanging it

_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Config:
    quick: bool
    reps: int  # a, c: repetitions (the median is reported)
    per_rep: int  # a: allocations per repetition
    # a: fewer for ephemeral-port-reserve: each port it reserves sits in TIME_WAIT for 60 s, in the lower half
    # of the kernel's ephemeral range, and thousands of them slow down (and skew) every later bind(0).
    ephemeral_per_rep: int
    rounds: int  # b
    lease_per_rep: int  # c: allocations per repetition

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick, reps=3, per_rep=500, ephemeral_per_rep=100, rounds=5, lease_per_rep=300)
        return cls(quick, reps=11, per_rep=2000, ephemeral_per_rep=200, rounds=20, lease_per_rep=1000)


# -- the tools ----------------------------------------------------------------------------------------

Handle = tuple[int, Callable[[], None] | None]  # a port, and how to give it back (None: nothing is held)


def bind_zero() -> int:
    """The naive way: let the kernel pick, read the port, close (nothing is held afterwards)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def tcp_bind_ok(port: int) -> bool:
    """The lock-file recipe's check: can a TCP socket bind the port on the IPv4 wildcard?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


class LockFileRecipe:
    """The classic recipe: random port in the range, a non-blocking FileLock on its lock file, a bind check.

    The lock is kept while the port is held and released to give the port back.
    """

    def __init__(self, lock_dir: str, lo: int, hi: int) -> None:
        self.lock_dir, self.lo, self.hi = lock_dir, lo, hi

    def acquire(self) -> tuple[int, FileLock]:
        for _ in range(RECIPE_MAX_TRIES):
            port = random.randint(self.lo, self.hi)
            lock = FileLock(os.path.join(self.lock_dir, f"port_{port}_lock"))
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue
            if tcp_bind_ok(port):
                return port, lock
            lock.release()
        raise RuntimeError(f"lock-file recipe: no free port in {self.lo}-{self.hi}, {RECIPE_MAX_TRIES} tries")


def bare_claim(dir_fd: int, port: int) -> None:
    """The kernel work the allocator cannot avoid for a port: lock file open + flock + probe binds + close."""
    fd = os.open(f"{port}.lock", _LOCK_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            for family, address in WILDCARDS:
                with socket.socket(family, kind) as s:
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((address, port))
                    if kind == socket.SOCK_STREAM:
                        s.listen(1)
    finally:
        os.close(fd)


def bare_claim_c(dir_fd: int, port: int) -> None:
    """bare_claim with the probe's sockets made through _socket, as freeport's probe makes them: the
    same syscalls without socket.py's wrapper class (~1 µs a socket)."""
    fd = os.open(f"{port}.lock", _LOCK_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for kind in (_socket.SOCK_STREAM, _socket.SOCK_DGRAM):
            for family, address in WILDCARDS:
                s = _socket.socket(family, kind)
                try:
                    if family == _socket.AF_INET6:
                        s.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
                    s.bind((address, port))
                    if kind == _socket.SOCK_STREAM:
                        s.listen(1)
                finally:
                    s.close()
    finally:
        os.close(fd)


def take_freeport(lo: int, hi: int, lock_dir: str) -> Handle:
    fp = FreePort(lo, hi)
    return fp.port, fp.release


def take_recipe(lo: int, hi: int, lock_dir: str) -> Handle:
    port, lock = LockFileRecipe(lock_dir, lo, hi).acquire()
    return port, lock.release


def take_portpicker(lo: int, hi: int, lock_dir: str) -> Handle:
    port = portpicker.pick_unused_port()
    return port, lambda: portpicker.return_port(port)


def take_ephemeral(lo: int, hi: int, lock_dir: str) -> Handle:
    return ephemeral_port_reserve.reserve(), None


def take_bind_zero(lo: int, hi: int, lock_dir: str) -> Handle:
    return bind_zero(), None


FREEPORT = "freeport `FreePort(start, stop)`"
RECIPE = "lock-file recipe (random + `FileLock` + bind)"
PORTPICKER = "portpicker `pick_unused_port()`"
EPHEMERAL = "ephemeral-port-reserve `reserve()`"
BIND_ZERO = "naive `bind(0)`"
BARE = "bare syscalls (open + flock + 4 probe binds + close)"
BARE_C = "bare syscalls, sockets through `_socket` (as freeport's probe)"

TAKERS: dict[str, Callable[[int, int, str], Handle]] = {
    FREEPORT: take_freeport,
    RECIPE: take_recipe,
    PORTPICKER: take_portpicker,
    EPHEMERAL: take_ephemeral,
    BIND_ZERO: take_bind_zero,
}
HOLDS = {
    FREEPORT: "yes (flock)",
    RECIPE: "yes (FileLock)",
    PORTPICKER: "no",
    EPHEMERAL: "no",
    BIND_ZERO: "no",
}
TAKES_RANGE = {FREEPORT, RECIPE}


# -- a) uncontended -----------------------------------------------------------------------------------


@dataclass
class Uncontended:
    lo: int
    hi: int
    time_wait: int | None  # TIME_WAIT sockets on the machine at the start
    per_port: dict[str, list[float]] = field(default_factory=dict)  # seconds per port, one per repetition

    def paired_ratio(self, tool: str, base: str) -> float:
        """Median over repetitions of tool/base (the two ran back to back in each repetition)."""
        return median([t / b for t, b in zip(self.per_port[tool], self.per_port[base], strict=True)])


def time_cycles(cycle: Callable[[], None], n: int) -> float:
    """Seconds per call of `cycle` (one allocate+release), over n calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        cycle()
    return (time.perf_counter() - t0) / n


def scenario_uncontended(cfg: Config, lock_root: str) -> Uncontended:
    lo = find_free_block(UNCONTENDED_RANGE, 10000, 19999)
    hi = lo + UNCONTENDED_RANGE - 1
    result = Uncontended(lo, hi, time_wait_sockets())
    progress(f"a) uncontended: range {lo}-{hi}, {cfg.reps} x {cfg.per_rep} allocations per tool")

    bare_dir = tempfile.mkdtemp(prefix="bare-", dir=lock_root)
    bare_fd = os.open(bare_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ports = itertools.cycle(range(lo, hi + 1))
    recipe = LockFileRecipe(tempfile.mkdtemp(prefix="recipe-a-", dir=lock_root), lo, hi)

    def freeport_cycle() -> None:
        FreePort(lo, hi).release()

    def bare_cycle() -> None:
        bare_claim(bare_fd, next(ports))

    def bare_c_cycle() -> None:
        bare_claim_c(bare_fd, next(ports))

    def recipe_cycle() -> None:
        recipe.acquire()[1].release()

    def portpicker_cycle() -> None:
        portpicker.return_port(portpicker.pick_unused_port())

    def ephemeral_cycle() -> None:
        ephemeral_port_reserve.reserve()

    def bind_zero_cycle() -> None:
        bind_zero()

    # ephemeral-port-reserve last in each repetition: the TIME_WAIT sockets it leaves sit in the kernel's
    # ephemeral range, where bind(0) and portpicker pick.
    cycles: list[tuple[str, Callable[[], None], int]] = [
        (FREEPORT, freeport_cycle, cfg.per_rep),
        (BARE, bare_cycle, cfg.per_rep),
        (BARE_C, bare_c_cycle, cfg.per_rep),
        (RECIPE, recipe_cycle, cfg.per_rep),
        (PORTPICKER, portpicker_cycle, cfg.per_rep),
        (BIND_ZERO, bind_zero_cycle, cfg.per_rep),
        (EPHEMERAL, ephemeral_cycle, cfg.ephemeral_per_rep),
    ]
    try:
        for _, cycle, n in cycles:  # warm-up: every lock file of the range created, caches filled
            time_cycles(cycle, min(n, 4 * UNCONTENDED_RANGE))
        for _ in range(cfg.reps):  # interleaved, so drift hits every tool alike
            for name, cycle, n in cycles:
                result.per_port.setdefault(name, []).append(time_cycles(cycle, n))
    finally:
        os.close(bare_fd)
    return result


# -- b) contended -------------------------------------------------------------------------------------

Task = tuple[str, int, int, str, int]  # tool, range lo, range hi, lock dir, ports to take
Report = tuple[list[int], list[float], list[float], list[str]]  # ports, wall and CPU s per allocation, errors


def worker(conn: Connection, barrier: Barrier) -> None:
    """One contending process: for each task, start with the others, take ports one by one, hold them
    until every process has taken its own, report, give them back."""
    conn.send("ready")
    while True:
        task: Task | None = conn.recv()
        if task is None:
            return
        tool, lo, hi, lock_dir, count = task
        take = TAKERS[tool]
        held: list[Handle] = []
        times: list[float] = []
        cpu: list[float] = []
        errors: list[str] = []
        try:
            barrier.wait(WAIT)  # everyone starts together
            for _ in range(count):
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    handle = take(lo, hi, lock_dir)
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                t1, c1 = time.perf_counter(), time.process_time()
                times.append(t1 - t0)
                cpu.append(c1 - c0)
                held.append(handle)
            barrier.wait(WAIT)  # hold until everyone has taken theirs
        except BrokenBarrierError:
            errors.append("barrier broken")
        finally:
            for _, release in held:
                if release is not None:
                    release()
        conn.send(([port for port, _ in held], times, cpu, errors))


class Pool:
    """PROCS spawned worker processes sharing a barrier; started once, reused for every round."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(n)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, self.barrier), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if self._recv(conn) != "ready":
                raise RuntimeError("a worker did not start")

    @staticmethod
    def _recv(conn: Connection) -> Any:
        if not conn.poll(WAIT):
            raise RuntimeError(f"a worker gave no answer in {WAIT:g} s")
        return conn.recv()

    def run(self, task: Task) -> list[Report]:
        for conn in self.conns:
            conn.send(task)
        reports: list[Report] = [self._recv(conn) for conn in self.conns]
        if any("barrier broken" in errors for *_, errors in reports):
            raise RuntimeError(f"{task[0]}: a worker failed to reach a barrier: {reports}")
        return reports

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


@dataclass
class Contended:
    lo: int
    hi: int
    rounds: int
    time_wait: int | None  # TIME_WAIT sockets on the machine at the start
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    duplicates: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # across processes
    repeats: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # within one process
    out_of_range: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, tool: str, reports: Sequence[Report]) -> None:
        """One round's reports of `tool`'s processes: their times, duplicates, errors, strays."""
        across, within = count_duplicates(reports)
        self.duplicates[tool] += across
        self.repeats[tool] += within
        for ports, times, cpu, errors in reports:
            self.times[tool].extend(times)
            self.cpu[tool].extend(cpu)
            self.errors[tool].extend(errors)
            if tool in TAKES_RANGE:
                self.out_of_range[tool] += sum(not self.lo <= p <= self.hi for p in ports)


def count_duplicates(reports: Sequence[Report]) -> tuple[int, int]:
    """(ports also handed to another process, ports handed twice to the same process) in one round."""
    holders: dict[int, set[int]] = defaultdict(set)
    for index, (ports, *_) in enumerate(reports):
        for port in ports:
            holders[port].add(index)
    across = sum(len(who) - 1 for who in holders.values())
    within = sum(len(ports) - len(set(ports)) for ports, *_ in reports)
    return across, within


def scenario_contended(cfg: Config, lock_root: str, avoid: tuple[int, int]) -> Contended:
    lo = find_free_block(CONTENDED_RANGE, 10000, 19999, avoid=[avoid])
    hi = lo + CONTENDED_RANGE - 1
    result = Contended(lo, hi, cfg.rounds, time_wait_sockets())
    progress(f"a) done; b) contended: {PROCS} processes x {PER_PROC} ports in {lo}-{hi}, {cfg.rounds} rounds")
    pool = Pool(PROCS)
    try:
        for round_no in range(cfg.rounds + 1):  # round 0 warms every process up and is not counted
            for tool in TAKERS:
                lock_dir = os.path.join(lock_root, "recipe-b")
                os.makedirs(lock_dir, mode=0o700, exist_ok=True)
                reports = pool.run((tool, lo, hi, lock_dir, PER_PROC))
                if round_no:  # round 0 is not counted
                    result.add(tool, reports)
    finally:
        pool.close()
    return result


# -- c) flat as leases grow ---------------------------------------------------------------------------


RANGE, CONTROL, REFERENCE = "range", "control", "reference"  # the rows of scenario c


@dataclass
class LeaseRow:
    held: int
    kind: str  # RANGE: the leases' range; CONTROL: a sub-range with no lease in it; REFERENCE: bare syscalls
    text: str
    free: int  # free candidates in the allocation range while the leases are held
    candidates: float | None  # lock files tried per allocation (counted in a separate, untimed pass)
    per_port: list[float]  # seconds per port, one per repetition


@dataclass
class Leases:
    lo: int
    hi: int
    free_at_start: int
    rows: list[LeaseRow] = field(default_factory=list)
    touch_seconds: float = 0.0
    hold_seconds: float = 0.0
    release_seconds: float = 0.0
    released: int = 0

    def row(self, held: int, kind: str) -> LeaseRow:
        return next(r for r in self.rows if r.held == held and r.kind == kind)

    def ratio(self, kind: str) -> float:
        """Per-port cost with many leases held over that with few (medians)."""
        return median(self.row(HELD_MANY, kind).per_port) / median(self.row(HELD_FEW, kind).per_port)


def kernel_ephemeral_lo() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def choose_lease_range() -> tuple[int, int, int]:
    """A range below the kernel's ephemeral range with >= 10,000 + 1,000 + the control block free."""
    hi = min(32767, kernel_ephemeral_lo() - 1)
    need = HELD_MANY + 1000 + CONTROL_RANGE
    for lo in (20000, 16000, 12000, 10000, 5000):
        if hi - lo + 1 < need:
            continue
        free = count_free(lo, hi)
        if free >= need:
            return lo, hi, free
    raise RuntimeError(f"no range below {hi + 1} has {need} free ports")


def count_candidates(lo: int, hi: int, n: int) -> float:
    """Lock files tried per FreePort(lo, hi) allocation, counted by wrapping PortLocks.try_claim."""
    original = PortLocks.try_claim
    calls = 0

    def counting(self: PortLocks, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    PortLocks.try_claim = counting  # type: ignore[method-assign]
    try:
        for _ in range(n):
            FreePort(lo, hi).release()
    finally:
        PortLocks.try_claim = original  # type: ignore[method-assign]
    return calls / n


def scenario_leases(cfg: Config, lock_root: str) -> Leases:
    lo, hi, free = choose_lease_range()
    ctl_lo = find_free_block(CONTROL_RANGE, lo, hi)
    ctl_hi = ctl_lo + CONTROL_RANGE - 1
    control = range(ctl_lo, ctl_hi + 1)
    result = Leases(lo, hi, free)
    progress(f"b) done; c) leases: range {lo}-{hi} ({free} free), control {ctl_lo}-{ctl_hi}")
    bare_fd = os.open(tempfile.mkdtemp(prefix="bare-c-", dir=lock_root), os.O_RDONLY | os.O_DIRECTORY)
    bare_ports = itertools.cycle(control)

    def in_range() -> None:
        FreePort(lo, hi).release()

    def in_control() -> None:
        FreePort(ctl_lo, ctl_hi).release()

    def bare() -> None:  # does not depend on the leases: shows how the machine's load moved meanwhile
        bare_claim(bare_fd, next(bare_ports))

    def measure(held: int) -> None:
        cycles = {RANGE: in_range, CONTROL: in_control, REFERENCE: bare}
        per_port: dict[str, list[float]] = {kind: [] for kind in cycles}
        for cycle in cycles.values():
            time_cycles(cycle, 2 * CONTROL_RANGE)
        for _ in range(cfg.reps):
            for kind, cycle in cycles.items():
                per_port[kind].append(time_cycles(cycle, cfg.lease_per_rep))
        n = min(cfg.lease_per_rep, 500)
        result.rows += [
            LeaseRow(held, RANGE, f"{lo}-{hi} (the leases' range)", free - held, count_candidates(lo, hi, n),
                     per_port[RANGE]),
            LeaseRow(held, CONTROL, f"{ctl_lo}-{ctl_hi} (control: no lease in it)", CONTROL_RANGE,
                     count_candidates(ctl_lo, ctl_hi, n), per_port[CONTROL]),
            LeaseRow(held, REFERENCE, f"{ctl_lo}-{ctl_hi}: bare syscalls (load reference)", CONTROL_RANGE, None,
                     per_port[REFERENCE]),
        ]  # fmt: skip

    # A state dir in use has a lock file for every port it ever tried; create them all first, or the
    # 10-lease pass would pay for creating files that the 10,000-lease pass finds in place.
    t0 = time.perf_counter()
    try:
        # As named leases: a process lease holds two descriptors (its flock and its kernel name),
        # and 12,000 at once would pass this machine's open-file limit.
        FreePorts(max(1, free - 500), lo, hi, timeout=10, owner="bench-touch").release()
    except freeport_compose.NoFreePortError as e:
        progress(f"c) could not pre-create the lock files ({e}); going on")
    result.touch_seconds = time.perf_counter() - t0
    try:
        FreePorts(HELD_FEW, lo, hi, exclude=control, owner=HELD_OWNER)
        measure(HELD_FEW)
        progress(f"c) {HELD_FEW} leases measured; taking {HELD_MANY - HELD_FEW} more")
        t0 = time.perf_counter()
        FreePorts(HELD_MANY - HELD_FEW, lo, hi, exclude=control, owner=HELD_OWNER, timeout=120)
        result.hold_seconds = time.perf_counter() - t0
        measure(HELD_MANY)
    finally:
        os.close(bare_fd)
        t0 = time.perf_counter()
        with contextlib.suppress(freeport_compose.UnknownOwnerError):  # nothing was taken
            result.released = len(freeport_compose.release_owner(HELD_OWNER))
        result.release_seconds = time.perf_counter() - t0
    return result


# -- d) fresh processes, and start-up -----------------------------------------------------------------

FPC = os.path.join(os.path.dirname(sys.executable), "freeport-compose")
FIRST_CODE = {
    FREEPORT: "from freeport_compose import FreePort as take",
    EPHEMERAL: "from ephemeral_port_reserve import reserve as take",
}
# Times the first and the second call in a process that has just imported the tool.
FIRST_TIMER = (
    "import sys, time\n{imp}\n"
    "t0 = time.perf_counter(); a = take(); t1 = time.perf_counter(); b = take(); t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1)"
)


@dataclass
class Fresh:
    first: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # seconds, first call
    second: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    contended: Contended | None = None  # 16 fresh processes x 6 ports, first call included
    whole: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # whole-process seconds
    rss: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # max RSS, KiB
    # Ports of the default range with a lock file in the bench's state dir (most made by c)), and all of them.
    with_lock_file: int = 0
    default_range: int = 0


GNU_TIME = "/usr/bin/time"


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, max RSS in KiB, stdout) of a child process.

    The RSS is GNU time's (%M): a child's ru_maxrss counts the memory of the process it was forked
    from, and ours is this bench, far bigger than the commands measured; time's own is ~2 MiB.
    """
    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        done = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, check=True)  # fmt: skip
        seconds = time.perf_counter() - t0
        rss = int(rss_file.read().split()[-1])
    return seconds, rss, done.stdout.decode()


def scenario_fresh(cfg: Config, lock_root: str, contended_range: tuple[int, int]) -> Fresh:
    result = Fresh()
    n = 6 if cfg.quick else 20
    progress(f"d) fresh processes: first call x {n} per tool; start-up of whole commands x {n}")
    default = freeport_compose.PortRange.default()
    names = set(os.listdir(os.path.join(os.environ["FREEPORT_STATE_DIR"], "ports")))
    result.default_range = len(default)
    result.with_lock_file = sum(f"{lo + k}.lock" in names for lo, hi in default.intervals for k in range(hi - lo + 1))
    for _ in range(n):  # interleaved, so drift hits every tool alike
        for tool, imp in FIRST_CODE.items():
            _, _, out = run_measured([sys.executable, "-c", FIRST_TIMER.format(imp=imp)])
            first, second = map(float, out.split())
            result.first[tool].append(first)
            result.second[tool].append(second)
        commands = {
            "`python -c pass`": [sys.executable, "-c", "pass"],
            "`python -c 'import freeport_compose'`": [sys.executable, "-c", "import freeport_compose"],
            "`freeport-compose get --owner X`": [FPC, "get", "--owner", "bench-startup"],
            "`freeport-compose release --owner X`": [FPC, "release", "--owner", "bench-startup"],
        }
        for label, cmd in commands.items():
            seconds, rss, _ = run_measured(cmd)
            result.whole[label].append(seconds)
            result.rss[label].append(rss)
    lo, hi = contended_range
    rounds = 2 if cfg.quick else 8
    contended = Contended(lo, hi, rounds, time_wait_sockets())
    progress(f"d) {PROCS} fresh processes x {PER_PROC} ports in {lo}-{hi}, {rounds} rounds")
    for _ in range(rounds):
        for tool in (FREEPORT, EPHEMERAL):
            pool = Pool(PROCS)  # spawned now: every process's first allocation is in the round
            try:
                reports = pool.run((tool, lo, hi, lock_root, PER_PROC))
            finally:
                pool.close()
            contended.add(tool, reports)
    result.contended = contended
    return result


# -- report -------------------------------------------------------------------------------------------


def tw(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def verdict(ok: bool, miss: str = "") -> str:
    return "met" if ok else f"**NOT met**{' (' + miss + ')' if miss else ''}"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def render_targets(a: Uncontended, b: Contended, c: Leases, d: Fresh) -> list[str]:
    ratio_a = a.paired_ratio(FREEPORT, BARE)
    wall_fp, wall_eph = mean(b.times[FREEPORT]), mean(b.times[EPHEMERAL])
    cpu_fp, cpu_eph = mean(b.cpu[FREEPORT]), mean(b.cpu[EPHEMERAL])
    dups = b.duplicates[FREEPORT] + b.repeats[FREEPORT]
    fails = len(b.errors[FREEPORT]) + b.out_of_range[FREEPORT]
    ratio_c, ratio_ctl, drift = c.ratio(RANGE), c.ratio(CONTROL), c.ratio(REFERENCE)
    rows = [
        [
            "b) zero duplicates for freeport",
            f"{dups} duplicates, {fails} failed allocations in {b.rounds} rounds",
            verdict(dups == 0 and fails == 0),
        ],
        [
            "b) contended per-port cost <= ephemeral-port-reserve's (mean wall time)",
            f"freeport {us(wall_fp)} µs vs {us(wall_eph)} µs (CPU time: {us(cpu_fp)} vs {us(cpu_eph)} µs)",
            verdict(wall_fp <= wall_eph, f"{(wall_fp / wall_eph - 1) * 100:.0f}% slower"),
        ],
        [
            f"a) uncontended within {UNCONTENDED_LIMIT:g}x bare syscalls",
            f"{ratio_a:.2f}x ({us(median(a.per_port[FREEPORT]))} vs {us(median(a.per_port[BARE]))} µs)",
            verdict(ratio_a <= UNCONTENDED_LIMIT, f"{(ratio_a / UNCONTENDED_LIMIT - 1) * 100:.1f}% over"),
        ],
        [
            f"c) flat as leases grow: 10k/10 ratio near 1 (taken as <= {FLAT_LIMIT:g})",
            f"{ratio_c:.2f}x in the leases' range ({ratio_c / drift:.2f}x net of the load drift: bare syscalls "
            f"{drift:.2f}x); {ratio_ctl:.2f}x in the control range",
            verdict(ratio_c <= FLAT_LIMIT, f"{ratio_c:.2f}x > {FLAT_LIMIT:g}x"),
        ],
    ]
    first_fp, first_eph = median(d.first[FREEPORT]), median(d.first[EPHEMERAL])
    rows.append(
        [
            "d) a fresh process's first `FreePort()` <= ephemeral-port-reserve's first `reserve()` (medians)",
            f"{us(first_fp)} vs {us(first_eph)} µs ({first_fp / first_eph:.2f}x)",
            verdict(first_fp <= first_eph, f"{first_fp / first_eph:.2f}x"),
        ]
    )
    assert d.contended is not None
    fresh = d.contended
    fresh_fp, fresh_eph = mean(fresh.times[FREEPORT]), mean(fresh.times[EPHEMERAL])
    fresh_dups = fresh.duplicates[FREEPORT] + fresh.repeats[FREEPORT]
    fresh_fails = len(fresh.errors[FREEPORT]) + fresh.out_of_range[FREEPORT]
    rows += [
        [
            "d) fresh processes: contended per-port cost <= ephemeral-port-reserve's (mean wall time)",
            f"freeport {us(fresh_fp)} µs vs {us(fresh_eph)} µs ({fresh_fp / fresh_eph:.2f}x)",
            verdict(fresh_fp <= fresh_eph, f"{fresh_fp / fresh_eph:.2f}x"),
        ],
        [
            "d) fresh processes: zero duplicates for freeport",
            f"{fresh_dups} duplicates, {fresh_fails} failed allocations in {fresh.rounds} rounds",
            verdict(fresh_dups == 0 and fresh_fails == 0),
        ],
    ]
    return ["### Targets", "", table(["target", "measured", "verdict"], rows), ""]


def render_uncontended(cfg: Config, a: Uncontended) -> list[str]:
    bare = median(a.per_port[BARE])
    rows = []
    for name in (FREEPORT, BARE, BARE_C, RECIPE, PORTPICKER, EPHEMERAL, BIND_ZERO):
        runs = a.per_port[name]
        spread = f"{us(min(runs))}-{us(max(runs))}"
        rows.append([name, us(median(runs)), spread, f"{median(runs) / bare:.2f}x"])
    headers = ["tool", "µs/port (median)", "min-max over reps", "vs bare"]
    return [
        f"### a) Uncontended, 1 process (range {a.lo}-{a.hi} where a tool takes one)",
        "",
        f"Per-port cost of allocate + release, median of {cfg.reps} interleaved repetitions of "
        f"{cfg.per_rep} ({cfg.ephemeral_per_rep} for ephemeral-port-reserve, each of whose ports sits in "
        f"TIME_WAIT for a minute; {tw(a.time_wait)} TIME_WAIT sockets on the machine at the start). freeport "
        "is `FreePort(start, stop)` + `.release()`; portpicker's release is `return_port()`; the recipe's is "
        "`FileLock.release()`.",
        "",
        table(headers, rows, [False, True, True, True]),
        "",
        f"freeport / bare = **{a.paired_ratio(FREEPORT, BARE):.2f}x** (median of the per-repetition ratios; "
        f"target <= {UNCONTENDED_LIMIT:g}x); against the bare syscalls through `_socket`, "
        f"{a.paired_ratio(FREEPORT, BARE_C):.2f}x.",
        "",
    ]


def render_contended(b: Contended) -> list[str]:
    rows = []
    for name in TAKERS:
        times = b.times[name]
        failed = str(len(b.errors[name]))
        if b.out_of_range[name]:
            failed += f" (+{b.out_of_range[name]} out of range)"
        rows.append(
            [
                name,
                HOLDS[name],
                us(mean(times)),
                us(percentile(times, 0.5)) if times else "-",
                us(percentile(times, 0.99)) if times else "-",
                us(mean(b.cpu[name])),
                str(b.duplicates[name]),
                str(b.repeats[name]),
                failed,
            ]
        )
    headers = [
        "tool",
        "holds",
        "µs/port mean",
        "p50",
        "p99",
        "CPU µs/port mean",
        "duplicates",
        "repeats in one process",
        "failed",
    ]
    out = [
        f"### b) Contended: {PROCS} processes x {PER_PROC} ports, {CONTENDED_RANGE}-port range {b.lo}-{b.hi}",
        "",
        f"{b.rounds} rounds (plus one warm-up round, not counted), tools interleaved round by round. In each "
        "round all processes start at a barrier, take their ports one by one and hold them until every "
        "process is done (second barrier). Per-port cost: each allocation's wall time, measured inside its "
        "process (CPU time: that process's CPU time for it). Duplicates: ports handed to two processes at "
        f"once, summed over rounds. {tw(b.time_wait)} TIME_WAIT sockets on the machine at the start (those "
        "of ephemeral-port-reserve crowd the kernel's ephemeral range, where bind(0) and portpicker pick). "
        "Only freeport and the recipe use the range; the others pick where they "
        "pick and hold nothing, so nothing stops them from handing a port out twice.",
        "",
        table(headers, rows, [False, False, True, True, True, True, True, True, True]),
        "",
    ]
    failures = sorted({e for errors in b.errors.values() for e in errors})
    if failures:
        out += ["Failures: " + "; ".join(failures[:5]), ""]
    return out


def render_leases(cfg: Config, c: Leases) -> list[str]:
    rows = []
    for row in c.rows:
        base = c.row(HELD_FEW, row.kind)
        rows.append(
            [
                f"{row.held:,}",
                row.text,
                f"{row.free:,}",
                "-" if row.candidates is None else f"{row.candidates:.2f}",
                us(median(row.per_port)),
                f"{median(row.per_port) / median(base.per_port):.2f}x",
            ]
        )
    headers = [
        "leases held",
        "allocating from",
        "free in it",
        "lock files tried",
        "µs/port (median)",
        "vs 10 held",
    ]
    return [
        f"### c) Flat as leases grow (range {c.lo}-{c.hi}, {c.free_at_start:,} ports free at the start)",
        "",
        f"`FreePort(start, stop)` + `.release()` with named leases (`owner={HELD_OWNER!r}`) held in the "
        f"range; median of {cfg.reps} repetitions of {cfg.lease_per_rep}. Every port's lock file was created "
        f"beforehand ({c.touch_seconds:.1f} s), as in a state dir in use. The control range lies inside the "
        "leases' range but no lease is put in it: it shows the cost of the store's size alone, while the "
        "leases' range also fills up. Lock files tried per allocation were counted in a separate, untimed "
        "pass. The bare-syscalls rows do not depend on the leases: they show how the machine's load moved "
        "between the two measurements.",
        "",
        table(headers, rows, [True, False, True, True, True, True]),
        "",
        f"Taking the other {HELD_MANY - HELD_FEW:,} named leases (one `FreePorts` call) took "
        f"{c.hold_seconds:.1f} s; `release_owner({HELD_OWNER!r})` freed {c.released:,} in "
        f"{c.release_seconds:.1f} s.",
        "",
    ]


def render_fresh(d: Fresh) -> list[str]:
    assert d.contended is not None
    first_rows = [
        [name, us(median(d.first[name])), us(min(d.first[name])), us(max(d.first[name])), us(median(d.second[name]))]
        for name in FIRST_CODE
    ]
    whole_rows = [
        [label, f"{median(times) * 1e3:.1f}", f"{median(times) / median(d.whole['`python -c pass`']):.2f}x",
         f"{max(d.rss[label]) / 1024:.1f}"]
        for label, times in d.whole.items()
    ]  # fmt: skip
    fresh = d.contended
    contended_rows = []
    for name in (FREEPORT, EPHEMERAL):
        times = fresh.times[name]
        contended_rows.append(
            [
                name,
                us(mean(times)),
                us(percentile(times, 0.5)),
                us(percentile(times, 0.99)),
                us(mean(fresh.cpu[name])),
                str(fresh.duplicates[name]),
                str(len(fresh.errors[name])),
            ]
        )
    runs = len(d.first[FREEPORT])
    return [
        "### d) Fresh processes",
        "",
        f"First call after import, each in a new interpreter ({runs} each, interleaved); the second call "
        "for comparison. freeport's uses the default range and the bench's state dir, where "
        f"{d.with_lock_file:,} of the range's {d.default_range:,} ports have a lock file (most made by c)); "
        "a sweep passes over up to 3 candidates without one before it creates one (~25-50 µs on ext4).",
        "",
        table(["tool", "first call µs (median)", "min", "max", "second call µs (median)"], first_rows,
              [False, True, True, True, True]),
        "",
        f"Whole processes ({runs} each, interleaved; wall time from spawn to exit, through GNU time, which "
        "gives the max RSS):",
        "",
        table(["command", "ms (median)", "vs python -c pass", "max RSS MiB"], whole_rows,
              [False, True, True, True]),
        "",
        f"{PROCS} processes x {PER_PROC} ports in {fresh.lo}-{fresh.hi}, {fresh.rounds} rounds, the "
        "processes spawned anew for every round and tool: each one's first allocation is its first call "
        "after import. Measured as in b).",
        "",
        table(["tool", "µs/port mean", "p50", "p99", "CPU µs/port mean", "duplicates", "failed"], contended_rows,
              [False, True, True, True, True, True, True]),
        "",
    ]  # fmt: skip


def render(
    cfg: Config, a: Uncontended, b: Contended, c: Leases, d: Fresh, seconds: float, load: tuple[float, float]
) -> str:
    mode = "quick run (`--quick`)" if cfg.quick else "full run"
    out = [
        "## Allocator",
        "",
        f"{machine_line()} {mode}, {seconds:.0f} s; 1-minute load average {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end (anything else running skews these timings). A private FREEPORT_STATE_DIR "
        "(removed afterwards); portpicker without a portserver; only loopback and wildcard binds.",
        "",
    ]
    out += render_targets(a, b, c, d)
    out += render_uncontended(cfg, a)
    out += render_contended(b)
    out += render_leases(cfg, c)
    out += render_fresh(d)
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------


def wait_for_time_wait_to_drain(limit: int = 2000, patience: float = 65.0) -> None:
    """Give the TIME_WAIT sockets of an earlier run (ephemeral-port-reserve's) time to expire."""
    deadline = time.monotonic() + patience
    count = time_wait_sockets()
    if count is not None and count > limit:
        progress(f"{count} TIME_WAIT sockets on the machine; waiting up to {patience:g} s for them to expire")
    while count is not None and count > limit and time.monotonic() < deadline:
        time.sleep(2)
        count = time_wait_sockets()


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    cfg = Config.make(args.quick)
    for var in ("FREEPORT_RANGE", "FREEPORT_SHARED", "PORTSERVER_ADDRESS"):
        os.environ.pop(var, None)
    state = tempfile.mkdtemp(prefix="freeport-bench-state-")  # mode 0700
    locks = tempfile.mkdtemp(prefix="freeport-bench-locks-")
    os.environ["FREEPORT_STATE_DIR"] = state  # inherited by the spawned workers
    if not cfg.quick:
        wait_for_time_wait_to_drain()
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        a = scenario_uncontended(cfg, locks)
        b = scenario_contended(cfg, locks, avoid=(a.lo, a.hi))
        c = scenario_leases(cfg, locks)
        d = scenario_fresh(cfg, os.path.join(locks, "recipe-b"), (b.lo, b.hi))
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(locks, ignore_errors=True)
    seconds = time.perf_counter() - t0
    progress(f"c) done in {seconds:.0f} s total")
    print(render(cfg, a, b, c, d, seconds, (load_start, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
