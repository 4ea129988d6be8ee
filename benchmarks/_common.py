"""Helpers shared by the bench_*.py scripts: arguments, child processes timed with their CPU time,
port scans, statistics, and the report each script prints for run_all.py.

A bench script prints one JSON document on stdout (progress goes to stderr): its sections (a title
and Markdown, one table per benchmark), its targets (goal, figure, met or not) and its raw samples.
run_all.py writes docs/benchmarks.md from the sections and targets, and the raw samples to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

# The wildcards freeport's probe binds (TCP bind+listen and UDP bind on each, IPv6 v6-only).
WILDCARDS: tuple[tuple[socket.AddressFamily, str], ...] = (
    (socket.AF_INET, "0.0.0.0"),
    (socket.AF_INET6, "::"),
)

# Ports the benches must never take: the kernel's usual ephemeral range.
EPHEMERAL_RANGE = (32768, 60999)
# Where the commands' leases go when the default range would reach into EPHEMERAL_RANGE.
FALLBACK_RANGE = "20000-29999"
# Environment that would change what the measured commands do.
CLEARED_ENV = (
    "FREEPORT_RANGE",
    "FREEPORT_SHARED",
    "FREEPORT_COMPOSE",
    "PORTSERVER_ADDRESS",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
)


def parse_args(description: str) -> argparse.Namespace:
    """`--quick`: fewer repetitions, for a smoke run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    return parser.parse_args()


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(f"[{os.path.basename(sys.argv[0])}] {message}", file=sys.stderr, flush=True)


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that every `finally` (stacks down, leases freed) still runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """SIGINT and SIGTERM ignored meanwhile, so that a clean-up (stacks down, leases freed) runs to its
    end although a Ctrl-C or run_all.py's SIGTERM arrives during it."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kernel_ephemeral() -> tuple[int, int]:
    """The kernel's ephemeral port range (ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()[:2]
            return int(lo), int(hi)
    except (OSError, ValueError):
        return EPHEMERAL_RANGE


def bench_env(state_dir: str) -> dict[str, str]:
    """The environment of the measured commands: a private state dir, nothing that changes their
    behaviour, and a port range outside 32768-60999 (freeport's default range leaves out the kernel's
    ephemeral range; where that does not cover 32768-60999, FALLBACK_RANGE is set)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["FREEPORT_STATE_DIR"] = state_dir
    lo, hi = kernel_ephemeral()
    if not (lo <= EPHEMERAL_RANGE[0] and hi >= EPHEMERAL_RANGE[1]):
        env["FREEPORT_RANGE"] = FALLBACK_RANGE
    return env


def prepare_environ(state_dir: str) -> None:
    """os.environ made bench_env(state_dir), for code that runs in this process and its children."""
    env = bench_env(state_dir)
    for name in [k for k in os.environ if k not in env]:
        del os.environ[name]
    os.environ.update(env)


# -- child processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """A finished child process: wall seconds from spawn to reaped, CPU seconds (user + system of the
    child and of every descendant it waited for, from wait4), exit code."""

    wall: float
    cpu: float
    code: int


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout


_STDERR: Any = None  # one temporary file for every child's stderr, read only when the child fails


def run_child(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
    timeout: float = 300.0,
    cwd: str | None = None,
) -> Usage:
    """Run cmd (stdout discarded) and return its Usage. The CPU time is the child's own rusage from
    os.wait4, so nothing else this process or the machine does is counted in it. A child still
    running after `timeout` seconds is killed and the call raises, as does a failure with `check`
    (with the end of the child's stderr)."""
    global _STDERR
    if _STDERR is None:
        _STDERR = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the whole run)
    _STDERR.seek(0)
    _STDERR.truncate()
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), env=None if env is None else dict(env), cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=_STDERR,
    )  # fmt: skip
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{' '.join(cmd)}: still running after {timeout:g} s, killed") from None
    finally:
        signal.signal(signal.SIGALRM, previous)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        _STDERR.seek(0)
        err = _STDERR.read().decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {err}")
    return Usage(wall, usage.ru_utime + usage.ru_stime, proc.returncode)


def quiet(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0) -> int:
    """Run cmd for its effect (clean-up), output discarded, failures ignored; its exit code."""
    try:
        done = subprocess.run(
            list(cmd), env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return -1
    return done.returncode


def output(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300.0) -> str:
    """stdout of cmd, which must succeed (its stderr is shown on failure)."""
    done = subprocess.run(list(cmd), env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


# -- ports --------------------------------------------------------------------------------------------


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
    """First port of `size` consecutive free ports within lo..hi (inclusive), outside the `avoid` ranges
    and outside 32768-60999."""
    avoid = [*avoid, EPHEMERAL_RANGE]
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


# -- statistics and cells -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """Median over rounds of value/base, each pair measured in the same round."""
    return median([v / b for v, b in zip(values, bases, strict=True)])


def us(seconds: float) -> str:
    """Seconds as microseconds for a table cell."""
    value = seconds * 1e6
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell."""
    value = seconds * 1e3
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ratio_text(value: float) -> str:
    return f"{value:.2f}x"


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table; `right` marks the columns to right-align (numbers)."""
    align = right if right is not None else [False] * len(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def load1() -> float:
    return os.getloadavg()[0]


# -- the report ---------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a bench script prints: sections (title + Markdown), targets, raw samples."""

    name: str
    started: float = field(default_factory=time.perf_counter)
    load_start: float = field(default_factory=load1)
    sections: list[dict[str, str]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def target(self, benchmark: str, goal: str, measured: str, met: bool) -> str:
        """Record a target of `benchmark` (a section title); the verdict cell."""
        self.targets.append({"benchmark": benchmark, "goal": goal, "measured": measured, "met": met})
        return verdict(met)

    def section(self, title: str, *parts: str) -> None:
        """A section: its title and Markdown paragraphs (a table among them), each load figure its own."""
        self.sections.append({"title": title, "text": "\n\n".join(p.strip() for p in parts if p.strip())})

    def emit(self) -> None:
        doc = {
            "name": self.name,
            "seconds": time.perf_counter() - self.started,
            "load": [self.load_start, load1()],
            "sections": self.sections,
            "targets": self.targets,
            "raw": self.raw,
        }
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
