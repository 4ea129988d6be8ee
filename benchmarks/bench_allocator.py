"""Benchmark: freeport's allocator against portpicker, ephemeral-port-reserve, bind(0), a lock-file recipe.

Scenarios, all measured in one run:
  a) uncontended, one process: per-port cost of allocate+release, against the bare syscalls freeport
     cannot avoid (lock file open + flock + the probe's four binds + close);
  b) contended: 16 processes x 6 ports in a 96-port range, all holding until everyone is done;
     per-port cost measured inside each process, and ports handed to two processes at once;
  c) flat as leases grow: FreePort(range)+release with 10 vs 10,000 named leases held in the range;
  d) fresh processes: the first FreePort() after import against ephemeral-port-reserve's first
     reserve(); b) again with processes spawned for every round.

Prints its report (see _common.py) on stdout; progress goes to stderr. Everything freeport writes goes
to a private FREEPORT_STATE_DIR that is removed at the end. Only loopback and wildcard binds are made;
freeport's ranges lie outside 32768-60999 (portpicker, ephemeral-port-reserve and bind(0) pick where
they pick: the kernel's ephemeral range).
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
    Report,
    count_free,
    exit_on_sigterm,
    find_free_block,
    kernel_ephemeral,
    median,
    paired_ratio,
    parse_args,
    percentile,
    prepare_environ,
    progress,
    ratio_text,
    shielded,
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
WorkerReport = tuple[list[int], list[float], list[float], list[str]]  # ports, wall and CPU s per allocation, errors


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

    def run(self, task: Task) -> list[WorkerReport]:
        for conn in self.conns:
            conn.send(task)
        reports: list[WorkerReport] = [self._recv(conn) for conn in self.conns]
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

    def add(self, tool: str, reports: Sequence[WorkerReport]) -> None:
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


def count_duplicates(reports: Sequence[WorkerReport]) -> tuple[int, int]:
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

    def net(self, row: LeaseRow) -> float:
        """The row's per-port cost over the bare syscalls' in the same pass (the median of the
        repetitions' own ratios: the two ran back to back in each), which takes the load out."""
        return paired_ratio(row.per_port, self.row(row.held, REFERENCE).per_port)


def choose_lease_range() -> tuple[int, int, int]:
    """A range below the kernel's ephemeral range with >= 10,000 + 1,000 + the control block free."""
    hi = min(32767, kernel_ephemeral()[0] - 1)
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


# -- d) fresh processes -------------------------------------------------------------------------------

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
    # Ports of the default range with a lock file in the bench's state dir (most made by c)), and all of them.
    with_lock_file: int = 0
    default_range: int = 0


def scenario_fresh(cfg: Config, lock_root: str, contended_range: tuple[int, int]) -> Fresh:
    result = Fresh()
    n = 6 if cfg.quick else 40
    progress(f"c) done; d) fresh processes: first call x {n} per tool")
    default = freeport_compose.PortRange.default()
    names = set(os.listdir(os.path.join(os.environ["FREEPORT_STATE_DIR"], "ports")))
    result.default_range = len(default)
    result.with_lock_file = sum(f"{lo + k}.lock" in names for lo, hi in default.intervals for k in range(hi - lo + 1))
    for _ in range(n):  # interleaved, so drift hits every tool alike
        for tool, imp in FIRST_CODE.items():
            out = subprocess.run([sys.executable, "-c", FIRST_TIMER.format(imp=imp)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, check=True, timeout=WAIT).stdout  # fmt: skip
            first, second = map(float, out.split())
            result.first[tool].append(first)
            result.second[tool].append(second)
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

TITLE_A = "Allocator a): uncontended, one process"
TITLE_B = f"Allocator b): contended, {PROCS} processes x {PER_PROC} ports in a {CONTENDED_RANGE}-port range"
TITLE_C = "Allocator c): flat as leases grow"
TITLE_D1 = "Allocator d): a fresh process's first call"
TITLE_D2 = f"Allocator d): contended, {PROCS} fresh processes x {PER_PROC} ports"
NO_GOAL = ["-", "-"]


def tw(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report_uncontended(out: Report, cfg: Config, a: Uncontended) -> None:
    rows = []
    for name in (FREEPORT, BARE, BARE_C, RECIPE, PORTPICKER, EPHEMERAL, BIND_ZERO):
        runs = a.per_port[name]
        ratio = a.paired_ratio(name, BARE)
        goal = NO_GOAL
        if name == FREEPORT:
            limit = f"<= {UNCONTENDED_LIMIT:.2f}x"
            goal = [limit, out.target(TITLE_A, f"`FreePort(start, stop)` + release: {limit} the bare syscalls",
                                      ratio_text(ratio), ratio <= UNCONTENDED_LIMIT)]  # fmt: skip
        rows.append([name, us(median(runs)), f"{us(min(runs))}-{us(max(runs))}", ratio_text(ratio), *goal])
    out.section(
        TITLE_A,
        f"Per-port cost of allocate + release in one process (range {a.lo}-{a.hi} for the tools that take "
        f"one): {cfg.reps} repetitions of {cfg.per_rep} ({cfg.ephemeral_per_rep} for ephemeral-port-reserve, "
        "each of whose ports sits in TIME_WAIT for a minute), the tools interleaved within each repetition; "
        "medians over the repetitions. *vs bare* is the median of each repetition's own ratio to the bare "
        "syscalls freeport cannot avoid. Releases: freeport's `.release()`, portpicker's `return_port()`, "
        f"the recipe's `FileLock.release()`. {tw(a.time_wait)} TIME_WAIT sockets on the machine at the start.",
        table(["tool", "µs/port", "min-max", "vs bare", "goal", "verdict"], rows,
              [False, True, True, True, False, False]),
    )  # fmt: skip


def contended_rows(out: Report, title: str, b: Contended, tools: Sequence[str]) -> list[list[str]]:
    """One row per tool; freeport's carries the goals (no duplicate, no failure; mean wall time per port
    at most ephemeral-port-reserve's)."""
    base = mean(b.times[EPHEMERAL])
    rows = []
    for name in tools:
        samples = b.times[name]
        dups = str(b.duplicates[name]) + (f" (+{b.repeats[name]} in one process)" if b.repeats[name] else "")
        failed = len(b.errors[name]) + b.out_of_range[name]
        goal = NO_GOAL
        if name == FREEPORT:
            ratio = mean(samples) / base
            exact = b.duplicates[name] + b.repeats[name] == 0 and failed == 0
            goal = [
                "0 duplicates, 0 failed; <= 1.00x",
                out.target(title, "freeport: no port handed out twice, no allocation failed",
                           f"{b.duplicates[name] + b.repeats[name]} duplicates, {failed} failed", exact)
                + " / "
                + out.target(title, "freeport: mean µs/port <= ephemeral-port-reserve's", ratio_text(ratio),
                             ratio <= 1.0),
            ]  # fmt: skip
        rows.append([name, HOLDS[name], us(mean(samples)), us(percentile(samples, 0.5)) if samples else "-",
                     us(percentile(samples, 0.99)) if samples else "-", us(mean(b.cpu[name])),
                     ratio_text(mean(samples) / base), dups, str(failed), *goal])  # fmt: skip
    return rows


CONTENDED_HEADERS = ["tool", "holds", "µs/port mean", "p50", "p99", "CPU µs/port mean", "vs ephemeral-port-reserve",
                     "duplicates", "failed", "goal", "verdict"]  # fmt: skip
CONTENDED_RIGHT = [False, False, True, True, True, True, True, True, True, False, False]


def report_contended(out: Report, b: Contended) -> None:
    out.section(
        TITLE_B,
        f"Range {b.lo}-{b.hi}; {b.rounds} rounds (after one warm-up round), the tools interleaved round by "
        "round, the processes started once and reused. In each round all processes start at a barrier, "
        "take their ports one by one and hold them until every process is done. Per-port cost: each "
        "allocation's wall time inside its process (CPU time: that process's CPU time for it), over every "
        "allocation of the rounds; *vs ephemeral-port-reserve* compares the means. Duplicates: ports handed "
        "to two processes at once, summed over the rounds. Only freeport and the recipe take the range; the "
        f"others hold nothing, so nothing stops them from handing a port out twice. {tw(b.time_wait)} "
        "TIME_WAIT sockets on the machine at the start.",
        table(CONTENDED_HEADERS, contended_rows(out, TITLE_B, b, list(TAKERS)), CONTENDED_RIGHT),
        "; ".join(sorted({e for errors in b.errors.values() for e in errors})[:5]),
    )


def report_leases(out: Report, cfg: Config, c: Leases) -> None:
    rows = []
    for row in c.rows:
        few = c.row(HELD_FEW, row.kind)
        raw = median(row.per_port) / median(few.per_port)
        net = c.net(row) / c.net(few)
        goal = NO_GOAL
        if row.held == HELD_MANY and row.kind == RANGE:
            limit = f"<= {FLAT_LIMIT:.2f}x"
            goal = [limit, out.target(TITLE_C, f"10,000 leases held: {limit} the cost with 10 (net of the load)",
                                      ratio_text(net), net <= FLAT_LIMIT)]  # fmt: skip
        rows.append([f"{row.held:,}", row.text, f"{row.free:,}",
                     "-" if row.candidates is None else f"{row.candidates:.2f}", us(median(row.per_port)),
                     ratio_text(c.net(row)), ratio_text(raw), "-" if row.kind == REFERENCE else ratio_text(net),
                     *goal])  # fmt: skip
    out.section(
        TITLE_C,
        f"`FreePort(start, stop)` + `.release()` in {c.lo}-{c.hi} ({c.free_at_start:,} ports free at the "
        f"start) with {HELD_FEW} and then {HELD_MANY:,} named leases held in that range: two passes, each "
        f"{cfg.reps} repetitions of {cfg.lease_per_rep} allocations from the range, from the control range (a "
        "part of the range that holds no lease: the store's size alone) and of the bare syscalls (which do "
        "not depend on the leases), interleaved; medians. The two passes cannot be interleaved, so the "
        "verdict takes the load out: *vs bare* is the median of each repetition's own ratio to the bare "
        "syscalls, and *vs 10 held, net* compares those. Every port's lock file exists beforehand, as in a "
        "state dir in use. Lock files tried per allocation: counted in a separate, untimed pass. Taking "
        f"the other {HELD_MANY - HELD_FEW:,} leases (one `FreePorts` call) took {c.hold_seconds:.1f} s; "
        f"`release_owner()` freed {c.released:,} in {c.release_seconds:.1f} s.",
        table(["leases held", "allocating from", "free in it", "lock files tried", "µs/port", "vs bare",
               "vs 10 held", "vs 10 held, net", "goal", "verdict"], rows,
              [True, False, True, True, True, True, True, True, False, False]),
    )  # fmt: skip


def report_fresh(out: Report, d: Fresh) -> None:
    assert d.contended is not None
    rows = []
    for name in FIRST_CODE:
        first = d.first[name]
        ratio = paired_ratio(first, d.first[EPHEMERAL])
        goal = NO_GOAL
        if name == FREEPORT:
            goal = ["<= 1.00x", out.target(TITLE_D1, "a fresh process's first `FreePort()` <= the first `reserve()`",
                                           ratio_text(ratio), ratio <= 1.0)]  # fmt: skip
        rows.append([name, us(median(first)), f"{us(min(first))}-{us(max(first))}", us(median(d.second[name])),
                     ratio_text(ratio), *goal])  # fmt: skip
    runs = len(d.first[FREEPORT])
    out.section(
        TITLE_D1,
        f"The first call after import, each in a new interpreter ({runs} of each, interleaved), and the "
        "second call beside it; medians. *vs ephemeral-port-reserve* is the median of each pair's own ratio. "
        "freeport's call takes the default range with the bench's state dir, where "
        f"{d.with_lock_file:,} of the range's {d.default_range:,} ports have a lock file (left by c)).",
        table(["tool", "first call µs", "min-max", "second call µs", "vs ephemeral-port-reserve", "goal",
               "verdict"], rows, [False, True, True, True, True, False, False]),
    )  # fmt: skip
    fresh = d.contended
    out.section(
        TITLE_D2,
        f"As b), range {fresh.lo}-{fresh.hi}, {fresh.rounds} rounds, but with the processes spawned anew for "
        "every round and tool: each one's first allocation is its first call after import.",
        table(CONTENDED_HEADERS, contended_rows(out, TITLE_D2, fresh, list(FIRST_CODE)), CONTENDED_RIGHT),
    )


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
    exit_on_sigterm()
    cfg = Config.make(args.quick)
    state = tempfile.mkdtemp(prefix="freeport-bench-state-")  # mode 0700
    locks = tempfile.mkdtemp(prefix="freeport-bench-locks-")
    prepare_environ(state)  # FREEPORT_STATE_DIR, inherited by the spawned workers
    if not cfg.quick:
        wait_for_time_wait_to_drain()
    out = Report("allocator")
    try:
        a = scenario_uncontended(cfg, locks)
        b = scenario_contended(cfg, locks, avoid=(a.lo, a.hi))
        c = scenario_leases(cfg, locks)
        d = scenario_fresh(cfg, os.path.join(locks, "recipe-b"), (b.lo, b.hi))
    finally:
        with shielded():
            with contextlib.suppress(freeport_compose.FreeportError):
                freeport_compose.release_owner(HELD_OWNER)
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(locks, ignore_errors=True)
    progress("d) done")
    report_uncontended(out, cfg, a)
    report_contended(out, b)
    report_leases(out, cfg, c)
    report_fresh(out, d)
    out.raw = {
        "a_per_port": a.per_port,
        "b_times": b.times,
        "b_cpu": b.cpu,
        "c": [{"held": r.held, "kind": r.kind, "per_port": r.per_port} for r in c.rows],
        "d_first": d.first,
        "d_second": d.second,
        "d_times": d.contended.times if d.contended else {},
    }
    out.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
