"""The port allocator (FreePort, FreePorts, get_free_port, the lease store) in threads, processes, forks."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _children import Child, Spawn, assert_nothing_held, held_records
from freeport_compose import (
    EmptyRangeError,
    ExitCode,
    FreePort,
    FreePorts,
    InvalidNameError,
    InvalidRangeError,
    NoFreePortError,
    UnknownOwnerError,
    get_free_port,
    release_owner,
    release_port,
    store,
)
from freeport_compose._leasing.process import Holder

PY = sys.executable
FreeBlock = Callable[[int], int]

# -- child processes ------------------------------------------------------------------------------

# Leases n ports of start..stop, prints them, holds them until a line arrives on stdin.
HOLD = """
import sys
from freeport_compose import FreePorts
n, start, stop, label, owner = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
print("start", flush=True)
fps = FreePorts(n, start, stop, timeout=30, labels=[label] * n, owner=owner or None)
print(",".join(map(str, fps.ports)), flush=True)
sys.stdin.readline()
fps.release()
print("released", flush=True)
"""

# One attempt at start..stop from a fresh process: "got PORT" or "busy: MESSAGE".
TRY = """
import sys
from freeport_compose import FreePort, NoFreePortError
try:
    fp = FreePort(int(sys.argv[1]), int(sys.argv[2]), timeout=float(sys.argv[3]))
except NoFreePortError as e:
    print("busy:", e)
else:
    print("got", fp.port)
"""

# Takes a named lease and exits normally without releasing it.
NAMED = """
import sys
from freeport_compose import FreePort
port = int(sys.argv[1])
fp = FreePort(port, port, owner=sys.argv[2], label="kept", timeout=5)
print(fp.port)
"""

# Takes a port with get_free_port() and exits without release_port().
GET_AND_EXIT = """
import sys
from freeport_compose import get_free_port
port = int(sys.argv[1])
print(get_free_port(port, port, timeout=5))
"""

# Leases a port, forks; the child ends like a real program (sys.exit: atexit handlers and finalizers
# run), after dropping or releasing its inherited copy of the lease; the parent then holds on.
FORK_EXIT = """
import gc, os, sys
from freeport_compose import FreePort
port, how = int(sys.argv[1]), sys.argv[2]
fp = FreePort(port, port, timeout=5)
pid = os.fork()
if pid == 0:
    if how == "gc-then-exit":
        del fp
        gc.collect()
    elif how == "release-then-exit":
        fp.release()
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print(fp.port, os.waitstatus_to_exitcode(status), flush=True)
sys.stdin.readline()
fp.release()
print("released", flush=True)
"""


def hold(spawn: Spawn, start: int, stop: int, *, n: int = 1, label: str = "", owner: str = "") -> Child:
    """A child process leasing n ports of start..stop (read its next line for them)."""
    child = spawn(HOLD, n, start, stop, label, owner)
    assert child.line(timeout=30) == "start"
    return child


def take_elsewhere(start: int, stop: int, timeout: float = 0.0) -> str:
    """What another, fresh process gets when it asks for start..stop: 'got PORT' or 'busy: ...'."""
    out = subprocess.run([PY, "-c", TRY, str(start), str(stop), str(timeout)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# -- forking this process ---------------------------------------------------------------------------


def _reap(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None after killing it when it did not end within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def run_forked(body: Callable[[], bytes], timeout: float = 20.0) -> tuple[int, str]:
    """Run body() in an os.fork() child; (exit code, what body returned). Fails if the child hangs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves through os._exit and never returns into pytest
        status = 1
        try:
            os.close(r)
            os.write(w, body())
            status = 0
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(w, f"error: {e!r}".encode())
        finally:
            os._exit(status)
    os.close(w)
    deadline = time.monotonic() + timeout
    data = b""
    code: int | None = None
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([r], [], [], left)
            chunk = os.read(r, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        code = _reap(pid, max(deadline - time.monotonic(), 0.5))
    if code is None:
        pytest.fail(f"forked child did not finish within {timeout} s (deadlock?); it said {data!r}")
    return code, data.decode()


# -- the basics -----------------------------------------------------------------------------------


def test_one_port_range_gives_that_port(free_block: FreeBlock) -> None:
    first = free_block(1)
    with FreePort(first, first, timeout=5) as fp:
        assert fp.port == first
        assert int(fp) == first
        assert fp.ports == [first]


def test_one_port_range_taken_released_taken_again(free_block: FreeBlock) -> None:
    first = free_block(1)
    fp = FreePort(first, first, timeout=5)
    assert fp.port == first
    with pytest.raises(NoFreePortError):
        FreePort(first, first, timeout=0)
    fp.release()
    fp.release()  # twice is harmless
    again = FreePort(first, first, timeout=0)
    assert again.port == first
    with pytest.raises(NoFreePortError):
        FreePort(first, first, timeout=0)
    again.release()
    with FreePort(first, first, timeout=0) as third:
        assert third.port == first
    # leaving `with` released it
    with FreePort(first, first, timeout=0) as fourth:
        assert fourth.port == first


def test_second_process_waits_for_held_port_then_gets_it(spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(1)
    fp = FreePort(first, first, timeout=5)
    try:
        child = hold(spawn, first, first)  # returns once the child is about to ask
        time.sleep(0.5)
        assert child.proc.poll() is None, "the waiting process gave up or crashed"
        assert not child.has_output(), "the second process got a port that is held"
        fp.release()
        assert child.line(timeout=15) == str(first)
        child.send()
        assert child.line(timeout=30) == "released"
        assert child.wait() == 0
    finally:
        fp.release()


def test_hundred_threads_on_hundred_ports_get_distinct_ports(free_block: FreeBlock) -> None:
    first = free_block(100)
    ports: list[int] = []
    errors: list[BaseException] = []
    held_at_barrier: list[int] = []
    lock = threading.Lock()

    def all_in() -> None:  # runs once, when every thread holds its port
        held_at_barrier.append(len(held_records()))

    barrier = threading.Barrier(100, action=all_in, timeout=60)

    def worker() -> None:
        try:
            with FreePort(first, first + 99, timeout=30) as fp:
                with lock:
                    ports.append(fp.port)
                barrier.wait()
                time.sleep(1.0)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(ports) == list(range(first, first + 100))
    assert held_at_barrier == [100]
    assert_nothing_held()


def test_ten_processes_on_ten_ports_get_distinct_ports(spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(10)
    children = [spawn(HOLD, 1, first, first + 9, f"proc{i}", "") for i in range(10)]
    got: dict[int, int] = {}
    for child in children:
        assert child.line(timeout=30) == "start"
    for child in children:
        got[child.pid] = int(child.line(timeout=60))
    # Every child holds its port at this point (they wait on stdin): all ten must differ.
    assert sorted(got.values()) == list(range(first, first + 10))
    assert {r.port: r.holder.pid for r in held_records()} == {port: pid for pid, port in got.items()}
    for child in children:
        child.send()
    for child in children:
        assert child.line(timeout=30) == "released"
        assert child.wait() == 0
    assert_nothing_held()


# -- ports used by other programs ---------------------------------------------------------------------


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6()
BUSY_KINDS = ["udp", "ipv6-only-listener", "loopback-listener", "bound-not-listening", "bound-reuseaddr"]


@contextlib.contextmanager
def occupy(kind: str, port: int) -> Iterator[socket.socket]:
    """A socket of another program holding `port`, in one of the ways a probe must notice."""
    if kind.startswith("ipv6") and not HAS_IPV6:
        pytest.skip("this machine has no IPv6")
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elif kind.startswith("ipv6"):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        if kind == "bound-reuseaddr":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1" if kind.startswith("ipv6") else "127.0.0.1", port))
        if kind.endswith("listener"):
            s.listen(1)
        yield s


@pytest.mark.parametrize("kind", BUSY_KINDS)
@pytest.mark.parametrize("busy_index", [0, 1])
def test_port_used_by_another_program_is_skipped(kind: str, busy_index: int, free_block: FreeBlock) -> None:
    first = free_block(2)
    busy, other = first + busy_index, first + 1 - busy_index
    seen = set()
    with occupy(kind, busy):
        for _ in range(24):  # the walk starts at a random port: cover both orders
            with FreePort(first, first + 1, timeout=5) as fp:
                seen.add(fp.port)
    assert seen == {other}


@pytest.mark.parametrize("kind", BUSY_KINDS)
def test_one_port_range_used_by_another_program_times_out(kind: str, free_block: FreeBlock) -> None:
    first = free_block(1)
    with occupy(kind, first), pytest.raises(NoFreePortError, match="in use by another program"):
        FreePort(first, first, timeout=0.3)
    assert_nothing_held()


# -- dying holders, exhaustion, named leases ---------------------------------------------------------


def test_sigkilled_holder_frees_its_port(spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(1)
    child = hold(spawn, first, first, label="doomed")
    assert child.line(timeout=30) == str(first)
    st = store()
    [record] = [r for r in st.records() if r.port == first]
    assert (record.holder.pid, record.label, record.owner) == (child.pid, "doomed", None)
    assert st.is_held(record)
    with pytest.raises(NoFreePortError):
        FreePort(first, first, timeout=0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert not st.is_held(record)
    with FreePort(first, first, timeout=2) as fp:
        assert fp.port == first


def test_collect_dead_returns_only_dead_holders(spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(2)
    live = FreePort(first + 1, first + 1, timeout=5, label="alive")
    try:
        child = hold(spawn, first, first, label="doomed")
        assert child.line(timeout=30) == str(first)
        st = store()
        assert st.collect_dead() == []  # both holders are alive
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        dead = st.collect_dead()
        assert [(r.port, r.holder.pid, r.label) for r in dead] == [(first, child.pid, "doomed")]
        assert st.read(first) is None  # its record is cleared
        assert st.collect_dead() == []
        [kept] = held_records()
        assert (kept.port, kept.holder.pid, kept.label) == (first + 1, os.getpid(), "alive")
    finally:
        live.release()


def test_a_port_with_a_lock_file_is_preferred_to_one_without(state_dir: Path, free_block: FreeBlock) -> None:
    # Creating a lock file costs a disk filesystem ~25-50 µs: a sweep passes over a few candidates
    # without one first, and comes back to them only when the others do not suffice.
    first = free_block(2)
    store()  # makes ports/
    (state_dir / "ports" / f"{first + 1}.lock").touch()
    for _ in range(10):
        with FreePort(first, first + 1, timeout=0) as fp:
            assert fp.port == first + 1
    assert not (state_dir / "ports" / f"{first}.lock").exists()
    with FreePort(first, first + 1, timeout=5), FreePort(first, first + 1, timeout=5) as second:
        assert second.port == first  # the one without a lock file is still tried, and its file made
    assert (state_dir / "ports" / f"{first}.lock").exists()


def test_records_show_a_live_process_lease(free_block: FreeBlock) -> None:
    first = free_block(1)
    st = store()
    fp = FreePort(first, first, timeout=5, label="FREEPORT_db")
    try:
        [record] = list(st.records())
        assert record.port == first
        assert record.owner is None
        assert record.holder.pid == os.getpid()
        assert record.label == "FREEPORT_db"
        assert record == fp.records[0]
        assert st.is_held(record)
    finally:
        fp.release()
    assert not st.is_held(record)
    assert_nothing_held()
    with FreePort(first, first, timeout=5, label="later") as later:
        assert st.is_held(later.records[0])
        assert not st.is_held(record)  # the port is leased again, but not by that earlier lease


def test_exhaustion_raises_after_timeout_naming_range_and_holder(spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(2)
    child = hold(spawn, first, first + 1, n=2)
    assert sorted(map(int, child.line(timeout=30).split(","))) == [first, first + 1]
    t0 = time.monotonic()
    with pytest.raises(NoFreePortError) as exc:
        FreePort(first, first + 1, timeout=0.5)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 10
    message = str(exc.value)
    assert f"{first}-{first + 1}" in message
    assert f"pid {child.pid}" in message
    assert exc.value.exit_code == ExitCode.NO_FREE_PORT
    assert {r.holder.pid for r in held_records()} == {child.pid}


def test_named_lease_survives_its_process(free_block: FreeBlock) -> None:
    first = free_block(1)
    out = subprocess.run([PY, "-c", NAMED, str(first), "job-1"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(first)
    with pytest.raises(NoFreePortError, match="owner 'job-1'"):
        FreePort(first, first, timeout=0.2)
    st = store()
    records = st.owner_ports("job-1")
    assert records is not None
    assert [(r.port, r.owner, r.label) for r in records] == [(first, "job-1", "kept")]
    assert st.is_held(records[0])
    assert release_owner("job-1") == [first]
    assert st.owner_ports("job-1") is None
    assert not st.is_held(records[0])
    with FreePort(first, first, timeout=0) as fp:
        assert fp.port == first
    with pytest.raises(UnknownOwnerError):
        release_owner("job-1")


def test_named_lease_outlives_its_object_but_not_release(free_block: FreeBlock) -> None:
    first = free_block(2)
    fp = FreePort(first, first, owner="job-2", timeout=5)
    del fp
    gc.collect()
    with pytest.raises(NoFreePortError):
        FreePort(first, first, timeout=0)
    other = FreePort(first + 1, first + 1, owner="job-2", timeout=5)
    other.release()  # release() ends a named lease at once
    with FreePort(first + 1, first + 1, timeout=0):
        pass
    records = store().owner_ports("job-2")
    assert records is not None
    assert [r.port for r in records] == [first]
    assert release_owner("job-2") == [first]


# -- FreePorts ----------------------------------------------------------------------------------------


def test_free_ports_gives_distinct_ports_with_labels(free_block: FreeBlock) -> None:
    first = free_block(4)
    with FreePorts(3, first, first + 3, labels=["a", "b", "c"], timeout=5) as fps:
        assert len(fps) == 3
        assert len(set(fps.ports)) == 3
        assert all(first <= p <= first + 3 for p in fps)
        assert [fps[0], fps[1], fps[2]] == fps.ports
        by_port = {r.port: r.label for r in held_records()}
        assert by_port == dict(zip(fps.ports, ["a", "b", "c"], strict=True))
    assert_nothing_held()


@pytest.mark.parametrize("owner", [None, "grp"])
def test_free_ports_is_all_or_nothing(owner: str | None, free_block: FreeBlock) -> None:
    first = free_block(4)
    leased = FreePort(first, first, timeout=5)  # one held by a lease, one by another program
    try:
        with occupy("loopback-listener", first + 2):
            with pytest.raises(NoFreePortError):
                FreePorts(3, first, first + 3, owner=owner, timeout=0.5)
            st = store()
            for port in (first + 1, first + 3):
                record = st.read(port)
                assert record is None or not st.is_held(record), f"port {port} was left leased"
            if owner is not None:
                assert st.owner_ports(owner) is None
                with pytest.raises(UnknownOwnerError):
                    release_owner(owner)
            assert [r.port for r in held_records()] == [first]
            with FreePorts(2, first, first + 3, timeout=0) as rest:
                assert sorted(rest.ports) == [first + 1, first + 3]
    finally:
        leased.release()


def test_contiguous_block_is_consecutive(free_block: FreeBlock) -> None:
    first = free_block(10)
    for _ in range(5):
        with FreePorts(4, first, first + 9, contiguous=True, timeout=5) as fps:
            assert fps.ports == list(range(fps.ports[0], fps.ports[0] + 4))
            assert first <= fps.ports[0] <= first + 6


def test_contiguous_block_avoids_busy_and_excluded_ports(free_block: FreeBlock) -> None:
    first = free_block(8)
    with occupy("loopback-listener", first + 1):
        for _ in range(10):  # only first+2..first+4 is a free run of 3 in first..first+4
            with FreePorts(3, first, first + 4, contiguous=True, timeout=5) as fps:
                assert fps.ports == [first + 2, first + 3, first + 4]
        # three free ports, but no three in a row: must fail and leave nothing behind
        with pytest.raises(NoFreePortError):
            FreePorts(3, first, first + 3, contiguous=True, timeout=0.3)
        assert_nothing_held()
    for _ in range(10):
        with FreePorts(3, first + 2, first + 7, exclude=[first + 4], contiguous=True, timeout=5) as fps:
            assert fps.ports == [first + 5, first + 6, first + 7]


def test_exclude_is_honoured(free_block: FreeBlock) -> None:
    first = free_block(3)
    for _ in range(16):
        with FreePort(first, first + 1, exclude=[first], timeout=5) as fp:
            assert fp.port == first + 1
    with FreePorts(2, first, first + 2, exclude=[first + 1], timeout=5) as fps:
        assert sorted(fps.ports) == [first, first + 2]


def test_host_option_accepts_local_addresses(free_block: FreeBlock) -> None:
    first = free_block(1)
    hosts = ["127.0.0.1", "0.0.0.0"] + (["[::1]"] if HAS_IPV6 else [])
    with FreePort(first, first, host=hosts, timeout=5) as fp:
        assert fp.port == first


# -- get_free_port / release_port ---------------------------------------------------------------------


def test_get_free_port_held_until_release_port(free_block: FreeBlock) -> None:
    first = free_block(1)
    port = get_free_port(first, first, timeout=5)
    try:
        assert port == first
        gc.collect()  # no object of the caller's keeps the lease: the module does
        with pytest.raises(NoFreePortError):
            FreePort(first, first, timeout=0)
        assert [r.port for r in held_records()] == [first]
    finally:
        release_port(port)
    with FreePort(first, first, timeout=0) as fp:
        assert fp.port == first
    with pytest.raises(UnknownOwnerError):
        release_port(port)


def test_release_port_of_unknown_port_raises(free_block: FreeBlock) -> None:
    first = free_block(1)
    with pytest.raises(UnknownOwnerError):
        release_port(first)
    with FreePort(first, first, timeout=5) as fp:
        with pytest.raises(UnknownOwnerError):  # held, but not through get_free_port()
            release_port(fp.port)
        assert [r.port for r in held_records()] == [first]


def test_get_free_port_lease_ends_with_the_process(free_block: FreeBlock) -> None:
    first = free_block(1)
    out = subprocess.run([PY, "-c", GET_AND_EXIT, str(first)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(first)
    with FreePort(first, first, timeout=0) as fp:
        assert fp.port == first


# -- fork safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "gc-then-exit", "release-then-exit"])
def test_forked_child_exit_keeps_parent_lease(how: str, spawn: Spawn, free_block: FreeBlock) -> None:
    first = free_block(1)
    child = spawn(FORK_EXIT, first, how)
    assert child.line(timeout=30) == f"{first} 0"  # the forked child exited cleanly
    answer = take_elsewhere(first, first)
    assert answer.startswith("busy:"), answer
    assert f"pid {child.pid}" in answer
    child.send()
    assert child.line(timeout=30) == "released"
    assert child.wait() == 0
    assert take_elsewhere(first, first) == f"got {first}"


@pytest.mark.parametrize("owner", [None, "job-fork"])
def test_forked_child_release_does_not_free_parent_lease(owner: str | None, free_block: FreeBlock) -> None:
    first = free_block(1)
    fp = FreePort(first, first, owner=owner, timeout=5)
    try:

        def child() -> bytes:
            fp.release()
            try:
                FreePort(first, first, timeout=0)
            except NoFreePortError:
                return b"still held"
            return b"freed"

        assert run_forked(child) == (0, "still held")
        answer = take_elsewhere(first, first)
        assert answer.startswith("busy:"), answer
        [record] = held_records()
        assert (record.port, record.owner, record.holder.pid) == (first, owner, os.getpid())
    finally:
        fp.release()
    assert take_elsewhere(first, first) == f"got {first}"


def test_get_free_port_is_bound_to_its_process_across_fork(free_block: FreeBlock) -> None:
    first = free_block(1)
    port = get_free_port(first, first, timeout=5)
    try:

        def child() -> bytes:
            try:
                release_port(port)
            except UnknownOwnerError:
                return b"not mine"
            return b"released"

        assert run_forked(child) == (0, "not mine")
        assert take_elsewhere(first, first).startswith("busy:")
    finally:
        release_port(port)
    assert take_elsewhere(first, first) == f"got {first}"


def test_forked_child_allocates_while_parent_thread_allocates(free_block: FreeBlock) -> None:
    first = free_block(3)
    stop = threading.Event()
    errors: list[BaseException] = []
    rounds = [0]

    def churn() -> None:
        try:
            while not stop.is_set():
                with FreePorts(1, first, first + 1, timeout=10):
                    rounds[0] += 1
        except BaseException as e:
            errors.append(e)

    def child() -> bytes:
        with FreePort(first, first + 2, timeout=10) as fp:
            return str(fp.port).encode()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        while rounds[0] < 20:  # the thread is well into its loop
            time.sleep(0.001)
        for _ in range(12):
            code, out = run_forked(child, timeout=30)
            assert code == 0, out
            assert first <= int(out) <= first + 2
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    assert_nothing_held()


def test_forked_child_allocates_while_parent_thread_encodes_records(free_block: FreeBlock) -> None:
    """No lock a parent thread may hold while serialising a lease record can deadlock a forked child."""
    first = free_block(1)
    with FreePort(first, first, timeout=5) as fp:
        template = fp.records[0]
    stop = threading.Event()

    def encode_fresh_records() -> None:  # e.g. a status reporter serialising what it saw
        while not stop.is_set():
            h = template.holder
            template._replace(holder=Holder(h.pid, h.start_time, h.host)).encode()

    def child() -> bytes:
        with FreePort(first, first, timeout=5) as taken:
            return str(taken.port).encode()

    thread = threading.Thread(target=encode_fresh_records, daemon=True)
    thread.start()
    try:
        for _ in range(10):
            assert run_forked(child, timeout=10) == (0, str(first))
    finally:
        stop.set()
        thread.join(10)


# -- bad input ------------------------------------------------------------------------------------------


def _any(value: object) -> Any:
    """Pass a deliberately wrong type past the type checker."""
    return value


BadCall = Callable[[int], object]
BAD_INPUT: list[tuple[str, BadCall, type[Exception]]] = [
    ("start-above-stop", lambda f: FreePort(f + 1, f), InvalidRangeError),
    ("start-zero", lambda f: FreePort(0, f), InvalidRangeError),
    ("stop-65536", lambda f: FreePort(f, 65536), InvalidRangeError),
    ("start-negative", lambda f: FreePort(-1, f), InvalidRangeError),
    ("start-not-a-number", lambda f: FreePort(_any("abc"), f), InvalidRangeError),
    ("start-float", lambda f: FreePort(_any(1.5), f), InvalidRangeError),
    ("stop-integral-float", lambda f: FreePort(f, _any(float(f + 1))), InvalidRangeError),
    ("start-bool", lambda f: FreePort(_any(True), f), InvalidRangeError),
    ("stop-missing", lambda f: FreePort(f, None), InvalidRangeError),
    ("excluded-everything", lambda f: FreePort(f, f + 1, exclude=[f, f + 1]), EmptyRangeError),
    ("exclude-not-a-port", lambda f: FreePort(f, f + 1, exclude=[0]), InvalidRangeError),
    ("n-above-range", lambda f: FreePorts(5, f, f + 3), InvalidRangeError),
    ("n-above-range-after-exclude", lambda f: FreePorts(4, f, f + 3, exclude=[f]), InvalidRangeError),
    ("no-run-long-enough", lambda f: FreePorts(2, f, f + 2, exclude=[f + 1], contiguous=True, timeout=5),
     EmptyRangeError),
    ("n-zero", lambda f: FreePorts(0, f, f + 3), InvalidRangeError),
    ("n-bool", lambda f: FreePorts(_any(True), f, f + 3), InvalidRangeError),
    ("negative-timeout", lambda f: FreePort(f, f, timeout=-1), InvalidRangeError),
    ("nan-timeout", lambda f: FreePort(f, f, timeout=math.nan), InvalidRangeError),
    ("string-timeout", lambda f: FreePort(f, f, timeout=_any("5")), InvalidRangeError),
    ("owner-dotdot", lambda f: FreePort(f, f, owner="../x"), InvalidNameError),
    ("owner-empty", lambda f: FreePort(f, f, owner=""), InvalidNameError),
    ("owner-space", lambda f: FreePort(f, f, owner="a b"), InvalidNameError),
    ("owner-slash", lambda f: FreePorts(2, f, f + 3, owner="a/b"), InvalidNameError),
    ("owner-too-long", lambda f: FreePort(f, f, owner="x" * 129), InvalidNameError),
    ("release-owner-bad-name", lambda f: release_owner("../x"), InvalidNameError),
    ("release-unknown-owner", lambda f: release_owner("nobody-holds-this"), UnknownOwnerError),
    ("host-name", lambda f: FreePort(f, f, host="localhost"), InvalidRangeError),
    ("host-garbage", lambda f: FreePort(f, f, host="not-an-ip"), InvalidRangeError),
    ("host-bad-octet", lambda f: FreePort(f, f, host="256.1.1.1"), InvalidRangeError),
    ("host-not-here-v4", lambda f: FreePort(f, f, host="192.0.2.1"), InvalidRangeError),
    ("host-not-here-v6", lambda f: FreePort(f, f, host=["127.0.0.1", "2001:db8::1"]), InvalidRangeError),
    ("get-free-port-bad-range", lambda f: get_free_port(f + 1, f), InvalidRangeError),
    ("get-free-port-bad-owner", lambda f: get_free_port(f, f, owner="a b"), InvalidNameError),
]


@pytest.mark.parametrize(("call", "error"), [pytest.param(c, e, id=name) for name, c, e in BAD_INPUT])
def test_bad_input_raises_typed_error_and_leases_nothing(
    call: BadCall, error: type[Exception], free_block: FreeBlock
) -> None:
    first = free_block(4)
    t0 = time.monotonic()
    with pytest.raises(error) as exc:
        call(first)
    assert type(exc.value) is error
    assert time.monotonic() - t0 < 2, "a request that can never succeed waited instead of failing"
    assert list(store().records()) == []


def test_release_owner_does_not_hang_on_a_stale_index_entry(free_block: FreeBlock, state_dir: Any) -> None:
    """An owners/<name> entry left by a crash, for a port a live process lease now holds."""
    first = free_block(1)
    with FreePort(first, first, owner="crashed") as named:
        assert named.port == first
    (state_dir / "owners" / "crashed").write_text(f"{first}\n")
    with FreePort(first, first) as live:  # a process lease: its flock stays held
        t0 = time.monotonic()
        with pytest.raises(UnknownOwnerError):
            release_owner("crashed")
        assert time.monotonic() - t0 < 5
        assert store().is_held(store().read(live.port))  # type: ignore[arg-type]
