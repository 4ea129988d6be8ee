"""Fault tests of the allocator: holders SIGKILLed at random points, a full state-dir filesystem, hostile records.

Instrumentation in the children only: to widen the window in which a claimer holds a port's flock,
some children pass FreePorts a `probe=` that sleeps or stalls before the real bind probe.

Duplicate detection across processes: whoever is handed a port creates `<marks>/<port>` with
O_EXCL while it holds the port and removes it before releasing, so a second simultaneous holder
fails to create it. (Children that may be SIGKILLed never use markers.)
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _children import Json, Spawn, assert_nothing_held, held_records
from freeport_compose import (
    FreePort,
    FreePorts,
    NoFreePortError,
    UnknownOwnerError,
    release_owner,
    store,
)
from freeport_compose._leasing import slots as slots_module
from freeport_compose._leasing.locks import PortLocks, open_locks
from freeport_compose._leasing.slots import FREE

PY = sys.executable
FreeBlock = Callable[[int], int]
NO_SUCH_PID = 4194305  # above PID_MAX_LIMIT: never a live process


def slots_file(state_dir: Path) -> Path:
    """Where the slots of state_dir's (existing) ports/ live: under /dev/shm when ports/ is on a
    block device, else ports/slots (slots.Slots.open's rule)."""
    st = (state_dir / "ports").stat()
    if os.major(st.st_dev) != 0:
        return Path(slots_module.SHM_DIR) / f"freeport-compose-{os.geteuid()}" / slots_module.shm_name(st)
    return state_dir / "ports" / "slots"


def slots_in_use(state_dir: Path) -> Path | None:
    """The slots file this process's allocator actually has open for state_dir, or None."""
    found = open_locks(str(state_dir)).slots
    return None if found is None else Path(os.readlink(f"/proc/self/fd/{found._fd}"))

# -- child processes ------------------------------------------------------------------------------

MARKS_CODE = r"""
import os

class Duplicate(Exception):
    pass

def mark(marks, port):
    path = os.path.join(marks, str(port))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        try:
            with open(path) as f:
                other = f.read()
        except OSError:
            other = "?"
        raise Duplicate(f"port {port} handed to pid {os.getpid()} while {other} holds it") from None
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)

def unmark(marks, port):
    os.unlink(os.path.join(marks, str(port)))
"""

# Holds one port of start..stop until a line arrives on stdin.
HOLDER = r"""
import json, sys
from freeport_compose import FreePort
fp = FreePort(int(sys.argv[1]), int(sys.argv[2]), timeout=10, label=sys.argv[3])
print(json.dumps({"port": fp.port}), flush=True)
sys.stdin.readline()
fp.release()
print(json.dumps({"released": fp.port}), flush=True)
"""

# Leases and releases ports of start..stop in a loop (marking each) until a line arrives on stdin.
LIVE_CHURN = MARKS_CODE + r"""
import json, random, sys, threading, time
from freeport_compose import FreePort
start, stop, marks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
done = threading.Event()

def wait_for_stop():
    sys.stdin.readline()
    done.set()

threading.Thread(target=wait_for_stop, daemon=True).start()
print("ready", flush=True)
claims = 0
while not done.is_set():
    with FreePort(start, stop, timeout=30, label="churn") as fp:
        mark(marks, fp.port)
        claims += 1
        time.sleep(random.random() * 0.002)
        unmark(marks, fp.port)
print(json.dumps({"claims": claims}), flush=True)
"""

# A long-lived parent of doomed children, so 200 kills cost 200 forks, not 200 interpreters. For
# each line DELAY on stdin it forks a child that leases and releases ports of start..stop in a loop
# (FreePort, or FreePorts(2, owner="dying-<pid>") in mode "named") through a probe slowed by 0-3 ms,
# SIGKILLs it DELAY seconds later (busy-waiting below 2 ms, so "at once" means microseconds after
# fork), reaps it and reports where the kill found it: inside a probe (so holding that port's
# flock) or not, and how many leases it had completed.
ZYGOTE = r"""
import ctypes, json, mmap, os, random, signal, struct, sys, time, traceback
from freeport_compose import FreePort, FreePorts, store
from freeport_compose._leasing.probe import port_is_free

start, stop, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
progress = mmap.mmap(-1, 8)  # anonymous and shared with the children: [0] in a probe, [4:8] leases done

def slow_probe(port):
    progress[0] = 1
    time.sleep(random.random() * 0.003)
    free = port_is_free(port)
    progress[0] = 0
    return free

store()  # opened before forking: a child starts allocating at once
libc = ctypes.CDLL(None, use_errno=True)
zygote = os.getpid()

def churn():
    random.seed()
    owner = f"dying-{os.getpid()}"
    done = 0
    while True:
        if mode == "named":
            lease = FreePorts(2, start, stop, owner=owner, timeout=30, probe=slow_probe)
        else:
            lease = FreePort(start, stop, timeout=30, label="doomed", probe=slow_probe)
        done += 1
        struct.pack_into("<I", progress, 4, done)
        time.sleep(random.random() * 0.001)
        lease.release()

print("ready", flush=True)
for line in sys.stdin:
    delay = float(line)
    progress[:] = bytes(8)
    pid = os.fork()
    if pid == 0:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the zygote (killed when a test fails)
        if os.getppid() != zygote:
            os._exit(0)
        try:
            churn()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(3)
    if delay < 0.002:
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({
        "pid": pid,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "in_probe": progress[0],
        "claims": struct.unpack_from("<I", progress, 4)[0],
    }), flush=True)
"""

# FreePorts(n, owner=...) whose probe stalls (forever) on its stall_at-th call, after reporting the
# ports probed so far: killed there, it holds the stalled port's flock and has leased the others.
NAMED_STALL = r"""
import json, sys, time
from freeport_compose import FreePorts
from freeport_compose._leasing.probe import port_is_free

n, start, stop, owner, stall_at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
probed = []

def stalling_probe(port):
    probed.append(port)
    if len(probed) == stall_at:
        print(json.dumps({"probed": probed}), flush=True)
        time.sleep(600)
    return port_is_free(port)

FreePorts(n, start, stop, owner=owner, labels=[f"part{i}" for i in range(n)], timeout=10, probe=stalling_probe)
print(json.dumps({"finished": probed}), flush=True)
"""


def mark(marks: Path, port: int, pid: int) -> None:
    try:
        fd = os.open(marks / str(port), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        pytest.fail(f"port {port} handed to pid {pid} while another holder has it")
    os.write(fd, str(pid).encode())
    os.close(fd)


def unmark(marks: Path, port: int) -> None:
    (marks / str(port)).unlink()


def kill_delay(rng: random.Random) -> float:
    """When to SIGKILL a child after fork: at once, within 2 ms, or within 40 ms."""
    r = rng.random()
    if r < 0.15:
        return 0.0
    if r < 0.5:
        return rng.uniform(0.0, 0.002)
    return rng.uniform(0.002, 0.04)


# -- SIGKILL at random points -------------------------------------------------------------------------


def test_sigkill_at_random_points_never_strands_a_port_or_frees_a_live_one(
    spawn: Spawn, free_block: FreeBlock, tmp_path: Path
) -> None:
    rounds, zygotes_n = 100, 2  # 200 kills
    first = free_block(4)
    last = first + 3
    marks = tmp_path / "marks"
    marks.mkdir()
    st = store()
    holder = spawn(HOLDER, first, last, "live-holder")
    held_port = holder.json()["port"]
    mark(marks, held_port, holder.pid)
    churner = spawn(LIVE_CHURN, first, last, marks)  # a live competitor the whole time
    assert churner.line() == "ready"
    zygotes = [spawn(ZYGOTE, first, last, "process") for _ in range(zygotes_n)]
    for z in zygotes:
        assert z.line() == "ready"
    rng = random.Random()
    kills: list[Json] = []
    slowest = 0.0
    for rnd in range(rounds):
        for z in zygotes:
            z.send(repr(kill_delay(rng)))
        for z in zygotes:
            kills.append(z.json(timeout=30))
        # Right after the kills: a port must come at once (a dead holder's flock is gone with it),
        # and never the live holder's.
        t0 = time.monotonic()
        try:
            fp = FreePort(first, last, timeout=2)
        except NoFreePortError as e:
            pytest.fail(f"round {rnd}: no port within 2 s right after killing holders: {e}")
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        try:
            assert fp.port != held_port, "handed the port a live process holds"
            mark(marks, fp.port, os.getpid())
            unmark(marks, fp.port)
        finally:
            fp.release()
        assert took < 2.0, f"round {rnd}: waited {took:.2f} s for a port"
        assert churner.proc.poll() is None, f"the live churner died: {churner.stderr()}"
        assert holder.proc.poll() is None
    assert len(kills) == rounds * zygotes_n
    not_killed = [k for k in kills if k["signal"] != signal.SIGKILL]
    assert not_killed == [], f"children that died of something else: {not_killed}; {[z.stderr() for z in zygotes]}"
    # The kills must have landed all over: inside the critical section (holding a flock, in the
    # probe), before the first lease was complete, and after several.
    in_probe = sum(k["in_probe"] for k in kills)
    before_first = sum(k["claims"] == 0 for k in kills)
    after_several = sum(k["claims"] >= 3 for k in kills)
    assert in_probe >= 20, f"only {in_probe} of {len(kills)} kills landed inside a probe"
    assert before_first >= 10, f"only {before_first} kills before a first lease was complete"
    assert after_several >= 10, f"only {after_several} kills after 3 leases or more"
    churner.send("stop")
    assert churner.json()["claims"] > 0
    assert churner.finish() == 0, churner.stderr()
    killed = {k["pid"] for k in kills}
    dead = st.collect_dead()
    # Every holder collect_dead() reports must be one of the killed children.
    wrong = [(r.port, r.holder.pid) for r in dead if r.holder.pid not in killed]
    assert wrong == [], f"collect_dead() reported holders that were never killed (port, pid); killed: {sorted(killed)}"
    assert held_port not in {r.port for r in dead}
    assert st.collect_dead() == []
    [kept] = held_records()
    assert (kept.port, kept.holder.pid, kept.label, kept.owner) == (held_port, holder.pid, "live-holder", None)
    unmark(marks, held_port)
    holder.send("release")
    assert holder.json() == {"released": held_port}
    assert holder.finish() == 0, holder.stderr()
    assert_nothing_held()
    assert list(marks.iterdir()) == []
    print(f"\n200 kills: {in_probe} inside a probe, {before_first} before a first lease, {after_several} after 3+; "
          f"slowest FreePort right after a kill: {slowest * 1000:.1f} ms; "
          f"collect_dead: {len(dead)} dead")


# -- SIGKILL during a named FreePorts ------------------------------------------------------------------


def lock_file_records(state_dir: Path, first: int, last: int) -> dict[int, bytes]:
    """The raw bytes of every lock file of first..last that has any."""
    out = {}
    for port in range(first, last + 1):
        path = state_dir / "ports" / f"{port}.lock"
        if path.exists() and (data := path.read_bytes()):
            out[port] = data
    return out


@pytest.mark.parametrize("stall_at", [1, 2, 4, 6])
def test_sigkill_half_way_through_named_free_ports(
    stall_at: int, spawn: Spawn, free_block: FreeBlock, state_dir: Path
) -> None:
    n, size, owner = 6, 8, "half-done"
    first = free_block(size)
    last = first + size - 1
    everything = set(range(first, last + 1))
    child = spawn(NAMED_STALL, n, first, last, owner, stall_at)
    probed = child.json()["probed"]
    assert len(probed) == len(set(probed)) == stall_at
    os.kill(child.pid, signal.SIGKILL)
    child.proc.wait(10)
    leased, stalled = probed[:-1], probed[-1]
    st = store()
    # The ports claimed before the kill are complete named leases of the owner; nothing else is.
    records = st.owner_ports(owner) or []
    assert sorted((r.port, r.owner, r.holder.pid, r.label) for r in records) == sorted(
        (p, owner, child.pid, f"part{i}") for i, p in enumerate(leased)
    )
    assert all(st.is_held(r) and re.fullmatch(r"[0-9a-f]{16}", r.token) for r in records)
    raw = lock_file_records(state_dir, first, last)
    assert stalled not in raw, f"the port being probed at the kill has a record: {raw[stalled]!r}"
    for port, data in raw.items():
        assert port in leased, f"port {port} has a record though it was never claimed: {data!r}"
        parsed = json.loads(data)
        assert (parsed["port"], parsed["owner"], parsed["holder"]["pid"]) == (port, owner, child.pid)
    assert {r.port: r.owner for r in held_records()} == dict.fromkeys(leased, owner)
    # No port handed out twice: the rest of the range, all of it, and not one of the owner's.
    with FreePorts(size - len(leased), first, last, timeout=5) as rest:
        assert sorted(rest.ports) == sorted(everything - set(leased))
        with pytest.raises(NoFreePortError):
            FreePort(first, last, timeout=0.2)
    if leased:
        assert release_owner(owner) == sorted(leased)
    else:
        with pytest.raises(UnknownOwnerError):
            release_owner(owner)
    assert st.owner_ports(owner) is None
    assert not (state_dir / "owners" / owner).exists()
    assert_nothing_held()
    with FreePorts(size, first, last, timeout=5) as whole:
        assert sorted(whole.ports) == sorted(everything)


def test_sigkill_at_random_points_of_named_leases(spawn: Spawn, free_block: FreeBlock, state_dir: Path) -> None:
    kills_n, size = 80, 6
    first = free_block(size)
    last = first + size - 1
    everything = set(range(first, last + 1))
    zygote = spawn(ZYGOTE, first, last, "named")
    assert zygote.line() == "ready"
    st = store()
    rng = random.Random()
    kills: list[Json] = []
    left_leased = 0
    for _ in range(kills_n):
        zygote.send(repr(kill_delay(rng)))
        kill = zygote.json(timeout=30)
        kills.append(kill)
        assert kill["signal"] == signal.SIGKILL, f"{kill}: {zygote.stderr()}"
        owner = f"dying-{kill['pid']}"
        records = st.owner_ports(owner) or []
        ports = sorted(r.port for r in records)
        for r in records:
            assert (r.owner, r.holder.pid, r.label) == (owner, kill["pid"], "")
            assert re.fullmatch(r"[0-9a-f]{16}", r.token)
            assert st.is_held(r)
        # Whatever names the owner on disk is one of those complete records: nothing half-written.
        for port, data in lock_file_records(state_dir, first, last).items():
            assert port in ports, f"port {port}: a record that is not a complete lease of {owner}: {data!r}"
        with FreePorts(size - len(ports), first, last, timeout=2) as rest:
            assert sorted(rest.ports) == sorted(everything - set(ports))
        if ports:
            left_leased += 1
            assert release_owner(owner) == ports
        else:
            with pytest.raises(UnknownOwnerError):
                release_owner(owner)
        assert st.owner_ports(owner) is None
        assert held_records() == []
    in_probe = sum(k["in_probe"] for k in kills)
    print(f"\n{kills_n} kills: {left_leased} left named leases, {in_probe} inside a probe")
    assert left_leased >= 5, f"only {left_leased} of {kills_n} kills left named leases behind"
    assert in_probe >= 5


# -- a full state-dir filesystem -----------------------------------------------------------------------

# Holds a process lease and a named one ("kept") taken before the disk fills, until a stdin line.
DISK_HOLDER = r"""
import json, sys
from freeport_compose import FreePort
start, stop = int(sys.argv[1]), int(sys.argv[2])
process = FreePort(start, stop, timeout=10, label="before-full")
named = FreePort(start, stop, timeout=10, owner="kept", label="before-full")
print(json.dumps({"process": process.port, "named": named.port}), flush=True)
sys.stdin.readline()
process.release()
print(json.dumps({"released": True}), flush=True)
"""

# Every kind of request once; each must succeed or raise StateDirError (anything else is a
# traceback and exit 1, a crash a signal). Prints what happened to each.
ATTEMPTS = r"""
import json, sys
from freeport_compose import FreePort, FreePorts, StateDirError, store

start, stop, fresh_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
fresh_start, fresh_stop = int(sys.argv[4]), int(sys.argv[5])
outcomes, leases = [], []

def attempt(name, call):
    try:
        got = call()
    except StateDirError as e:
        outcomes.append({"name": name, "result": "StateDirError", "message": str(e)})
        return
    if isinstance(got, FreePorts):
        leases.append(got)
        outcomes.append({"name": name, "result": "ok", "ports": list(got.ports)})
    else:
        outcomes.append({"name": name, "result": "ok"})

attempt("named", lambda: FreePort(start, stop, owner="x", timeout=2))
attempt("process", lambda: FreePort(start, stop, timeout=2))
attempt("named-pair", lambda: FreePorts(2, start, stop, owner="y", timeout=2))
attempt("process-pair", lambda: FreePorts(2, start, stop, timeout=2))
attempt("fresh-dir-process", lambda: FreePort(fresh_start, fresh_stop, timeout=2, state_dir=fresh_dir))
attempt("fresh-dir-named", lambda: FreePort(fresh_start, fresh_stop, owner="z", timeout=2, state_dir=fresh_dir))
attempt("records", lambda: list(store().records()))
attempt("collect_dead", lambda: store().collect_dead())
for lease in leases:
    attempt("release", lease.release)
print(json.dumps(outcomes), flush=True)
"""

# Releases the owners named in argv, then prints every held lease as [port, owner, pid, label].
INSPECT = r"""
import json, sys
from freeport_compose import UnknownOwnerError, release_owner, store
for owner in sys.argv[1:]:
    try:
        release_owner(owner)
    except UnknownOwnerError:
        pass
st = store()
print(json.dumps([[r.port, r.owner, r.holder.pid, r.label] for r in st.records() if st.is_held(r)]))
"""

Mount = Callable[[str], Path]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Mount]:
    """Mount tmpfs file systems with given options (skips when mounting is not permitted); unmounted after."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        try:
            out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                 capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            pytest.skip("no mount(8) here to make a small file system")
        if out.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            out = subprocess.run(["umount", str(where)], capture_output=True, text=True, timeout=30, check=False)
            if out.returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def fill(where: Path, what: str) -> list[Path]:
    """Use up the file system's blocks (what="space") or inodes (what="inodes"); the files to delete."""
    made: list[Path] = []
    if what == "inodes":
        while True:
            path = where / f"inode{len(made)}"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
            made.append(path)
        assert os.statvfs(where).f_favail == 0
        return made
    path = where / "filler"
    made.append(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0"):  # then byte by byte, into the last page
            while True:
                try:
                    if os.write(fd, chunk) < len(chunk):
                        continue
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert os.statvfs(where).f_bavail == 0
    return made


def run_py(code: str, *args: object, timeout: float = 120.0) -> str:
    """Run code in a fresh interpreter; its stdout. Fails on a hang, a crash (signal) or an exception."""
    try:
        out = subprocess.run([PY, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s")
    if out.returncode < 0:
        pytest.fail(f"killed by {signal.Signals(-out.returncode).name}: {out.stderr}")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    ("options", "what"),
    [
        pytest.param("size=256k", "space", id="256k-no-room-for-slots"),
        pytest.param("size=8m", "space", id="8m-with-slots"),
        pytest.param("size=8m,nr_inodes=64", "inodes", id="no-inodes"),
    ],
)
def test_full_state_dir_filesystem(
    options: str, what: str, small_fs: Mount, spawn: Spawn, free_block: FreeBlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = small_fs(options + ",mode=0700")
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(where / "state"))  # inherited by every child below
    first = free_block(10)
    last = first + 7
    fresh_first = first + 8  # its own range: leases in another state dir are not coordinated with these
    holder = spawn(DISK_HOLDER, first, last)
    try:
        before = holder.json()
        held = {before["process"], before["named"]}
        assert len(held) == 2
        # A tmpfs is no block device: the slots stay in ports/, on the filesystem this test fills.
        assert slots_file(where / "state") == where / "state" / "ports" / "slots"
        has_slots = (where / "state" / "ports" / "slots").exists()
        assert has_slots == (options != "size=256k")  # 256k cannot hold the 2 MiB slots map: records go to files
        made = fill(where, what)
        outcomes = json.loads(run_py(ATTEMPTS, first, last, where / "fresh", fresh_first, fresh_first + 1))
        assert [o["name"] for o in outcomes if o["name"] != "release"] == [
            "named", "process", "named-pair", "process-pair", "fresh-dir-process", "fresh-dir-named", "records",
            "collect_dead",
        ]
        for o in outcomes:
            assert o["result"] in ("ok", "StateDirError"), o
            if o["result"] == "StateDirError":
                assert o["message"], o
        given = [p for o in outcomes if o["name"] in ("named", "process", "named-pair", "process-pair")
                 for p in o.get("ports", [])]
        assert len(given) == len(set(given)), f"ports handed out twice on a full disk: {outcomes}"
        assert not held & set(given), f"a port held since before the disk filled was handed out: {outcomes}"
        assert all(first <= p <= last for p in given)
        print(f"\n{options} full ({what}):", {o["name"]: o.get("message", "ok") for o in outcomes})
        # The holder's leases outlived the full disk.
        leases = json.loads(run_py(INSPECT))
        assert sorted((p, o) for p, o, _, _ in leases) == sorted([(before["process"], None), (before["named"], "kept")])
        assert all(pid == holder.pid for _, _, pid, _ in leases)
        for path in made:
            path.unlink()
        # With room again, everything works.
        outcomes = json.loads(run_py(ATTEMPTS, first, last, where / "fresh", fresh_first, fresh_first + 1))
        assert [o for o in outcomes if o["result"] != "ok"] == []
        given = [p for o in outcomes if o["name"] in ("named", "process", "named-pair", "process-pair")
                 for p in o["ports"]]
        assert len(given) == len(set(given)) == 6
        assert not held & set(given)
        holder.send("release")
        assert holder.json() == {"released": True}
        assert holder.finish() == 0, holder.stderr()
        assert json.loads(run_py(INSPECT, "kept", "x", "y")) == []
    finally:
        holder.kill()  # before the fixture unmounts


# -- hostile records under concurrency -------------------------------------------------------------------

# Rewrites the lock files of start..stop with garbage (never taking their flock), until a stdin line;
# then empties them and reports how many writes it made. Mostly records that must count as corrupt;
# 1 in 20 a valid record of owner "forged" (which leases the port until overwritten).
GARBAGE = r"""
import json, os, random, sys, threading, time
ports_dir, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
HOST = os.uname().nodename
done = threading.Event()

def wait_for_stop():
    sys.stdin.readline()
    done.set()

threading.Thread(target=wait_for_stop, daemon=True).start()

def holder(**changes):
    h = {"pid": 1, "start_time": 1, "host": HOST}
    h.update(changes)
    return h

def record(at, **changes):
    raw = {"port": at, "owner": "forged", "created": time.time(), "token": "%016x" % random.getrandbits(64),
           "label": "", "holder": holder()}
    raw.update(changes)
    return json.dumps(raw).encode()

def corrupt(port):
    valid = record(port)
    return random.choice([
        lambda: os.urandom(random.randrange(1, 300)),
        lambda: b"",
        lambda: random.choice([b"[]", b"{}", b"null", b'"x"', b"1", b"true", b"{", b"}", b"\0" * 64]),
        lambda: b"[" * 1500 + b"]" * 1500,  # deeper than the recursion limit, shorter than RECORD_LIMIT
        lambda: b"{" + b" " * 5000 + b"}",  # longer than any record
        lambda: valid[: random.randrange(1, len(valid))],  # torn
        lambda: valid + os.urandom(random.randrange(1, 50)),  # junk after a record
        lambda: b'{"port":%d,"owner":null,' % port + os.urandom(random.randrange(0, 100)),  # a process record's prefix
        lambda: record(port + 1),
        lambda: record(port, port=str(port)),
        lambda: record(port, owner=random.choice(["../x", "", "a b", 5, ["x"], {"a": 1}, True, "x" * 200, "\ud800"])),
        lambda: record(port, holder=random.choice([[], "x", 5, None, {"pid": 1}, holder(pid="1"), holder(pid=1.5),
                                                   holder(pid=None), holder(pid=True), holder(start_time="1"),
                                                   holder(start_time=1.5), holder(host=5)])),
        lambda: record(port, created=random.choice(["abc", None, [], {}, "1e999999", True])),
        lambda: record(port, token=random.choice([5, None, [], {}])),
        lambda: record(port, label=random.choice([5, None, [], {}])),
        lambda: record(port, owner=None, adopted=True, holder=holder(pid=4194305)),  # adopted, holder long gone
        lambda: valid.replace(b"forged", b"\xff\xfe"),  # not UTF-8
        lambda: json.dumps({"port": port, "owner": "forged"}).encode("utf-16"),
    ])()

def forged(port):  # valid, if odd: they lease the port to "forged"
    return random.choice([
        lambda: record(port),
        lambda: record(port, holder=holder(pid=2**70)),
        lambda: record(port, holder=holder(pid=-1, start_time=None)),
        lambda: record(port, created=float("nan")),
        lambda: record(port, created=float("inf")),
        lambda: record(port, label="\u2603" * 30),
    ])()

print("ready", flush=True)
writes = 0
while not done.is_set():
    port = random.randint(start, stop)
    data = forged(port) if random.random() < 0.05 else corrupt(port)
    truncate = random.random() < 0.5
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(os.path.join(ports_dir, f"{port}.lock"), flags, 0o600)
    try:
        if data:
            os.pwrite(fd, data, 0)
        elif not truncate:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    writes += 1
    if random.random() < 0.5:
        time.sleep(random.random() * 0.0005)
for port in range(start, stop + 1):  # leave no forged lease behind
    path = os.path.join(ports_dir, f"{port}.lock")
    if os.path.exists(path):
        os.truncate(path, 0)
print(json.dumps({"writes": writes}), flush=True)
"""

# Threads leasing ports of start..stop in a loop: process leases (FreePort, FreePorts(2)) marked
# while held, named ones (whose records the garbage may erase, so unmarked), and one thread reading
# records as `ls`/`gc` would. Only NoFreePortError is expected; anything else is reported. On a
# stdin line every thread stops (releasing everything); the counts are printed; the process then
# waits for a second line before exiting, so its leases could still be seen if it had kept any.
ALLOCATOR = MARKS_CODE + r"""
import json, random, sys, threading, time, traceback
from freeport_compose import FreePort, FreePorts, NoFreePortError, store
start, stop, marks, threads_n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
done = threading.Event()
lock = threading.Lock()
counts = {"process": 0, "named": 0, "no_free_port": 0, "inspections": 0}
errors = []

def count(what):
    with lock:
        counts[what] += 1

def allocate(i):
    owner = f"alloc-{os.getpid()}-{i}"
    while not done.is_set():
        try:
            r = random.random()
            if r < 0.2:
                with FreePort(start, stop, owner=owner, timeout=2, label="named"):
                    time.sleep(random.random() * 0.001)
                count("named")
                continue
            with FreePorts(1 if r < 0.8 else 2, start, stop, timeout=2, labels=["process"] * 2) as fps:
                for p in fps:
                    mark(marks, p)
                count("process")
                time.sleep(random.random() * 0.002)
                for p in fps:
                    unmark(marks, p)
        except NoFreePortError:
            count("no_free_port")
        except BaseException:
            errors.append(traceback.format_exc())
            return

def inspect():
    st = store()
    while not done.is_set():
        try:
            for r in st.records():
                st.is_held(r)
            st.collect_dead()
            st.owner_ports("forged")
            count("inspections")
        except BaseException:
            errors.append(traceback.format_exc())
            return
        time.sleep(0.001)

threads = [threading.Thread(target=allocate, args=(i,)) for i in range(threads_n)]
threads.append(threading.Thread(target=inspect))
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
done.set()
for t in threads:
    t.join()
print(json.dumps({"counts": counts, "errors": errors}), flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("slots", [True, False], ids=["slots", "records-in-files"])
def test_garbage_in_lock_files_while_others_allocate(
    slots: bool, spawn: Spawn, free_block: FreeBlock, state_dir: Path, tmp_path: Path
) -> None:
    procs_n, threads_n, seconds = 3, 3, 5.0
    first = free_block(4)
    last = first + 3
    marks = tmp_path / "marks"
    marks.mkdir()
    if not slots:  # a slots file of the wrong size is ignored: process leases then write their records to files
        (state_dir / "ports").mkdir(mode=0o700, parents=True)
        planted = slots_file(state_dir)
        planted.parent.mkdir(mode=0o700, exist_ok=True)
        planted.write_bytes(b"\0")
    with FreePort(first, first, timeout=5) as probe:  # creates the state dir; shows which mode we are in
        recorded = (state_dir / "ports" / f"{probe.port}.lock").read_bytes()
        assert (recorded == b"") == slots
        assert slots_in_use(state_dir) == (slots_file(state_dir) if slots else None)
    writer = spawn(GARBAGE, state_dir / "ports", first, last)
    assert writer.line() == "ready"
    allocators = [spawn(ALLOCATOR, first, last, marks, threads_n) for _ in range(procs_n)]
    for a in allocators:
        assert a.line() == "ready"
    time.sleep(seconds)
    writer.send("stop")
    writes = writer.json()["writes"]
    assert writer.finish() == 0, writer.stderr()
    for a in allocators:
        a.send("stop")
    reports = [a.json(timeout=60) for a in allocators]
    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], "\n".join(errors)
    # Every allocator is still alive and has released everything it took.
    assert held_records() == []
    for a in allocators:
        a.send("exit")
        assert a.finish() == 0, a.stderr()
    assert list(marks.iterdir()) == []
    total = {k: sum(r["counts"][k] for r in reports) for k in reports[0]["counts"]}
    assert writes > 1000, f"the garbage writer made only {writes} writes"
    assert total["process"] > 200, total
    assert total["named"] > 50, total
    assert total["inspections"] > 50, total
    print(f"\n{writes} garbage writes; {total}")


# Truncates and overwrites one kind of shared state file (ports/slots, or every owners/ index) as fast
# as it can until told to stop: to nothing, to a random length, with random bytes of the same or
# another size. Prints how many changes it made.
VANDAL = r"""
import json, os, random, sys, threading
state_dir, kind, slots_file = sys.argv[1], sys.argv[2], sys.argv[3]
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()

def targets():
    if kind == "slots":
        return [slots_file]
    owners = os.path.join(state_dir, "owners")
    return [os.path.join(owners, name) for name in os.listdir(owners)]

changes = 0
while not done.is_set():
    for path in targets():
        try:
            size = os.path.getsize(path)
            how = random.randrange(4)
            if how == 0:
                os.truncate(path, 0)
            elif how == 1:
                os.truncate(path, random.randrange(0, size + 1))
            else:
                data = os.urandom(size if how == 2 else random.randrange(1, 4096))
                with open(path, "r+b") as f:
                    f.seek(random.randrange(0, max(size, 1)) if how == 2 else 0)
                    f.write(data[: 64] if how == 2 else data)
                    if how == 3:
                        f.truncate()
            changes += 1
        except OSError:
            pass
print(json.dumps({"changes": changes}), flush=True)
"""


@pytest.mark.parametrize("kind", ["slots", "owners"])
def test_state_files_truncated_and_overwritten_while_others_allocate(
    kind: str, spawn: Spawn, free_block: FreeBlock, state_dir: Path, tmp_path: Path
) -> None:
    """A shared state file cut short or scribbled over under live allocators: they go on (a mapped
    slots file cut short used to kill every one of them with SIGBUS), never hand a port out twice,
    and leave nothing held."""
    procs_n, threads_n, seconds = 3, 3, 4.0
    first = free_block(4)
    last = first + 3
    marks = tmp_path / "marks"
    marks.mkdir()
    with FreePort(first, first, timeout=5, owner="seed"):  # creates the slots file and owners/seed
        pass
    assert slots_in_use(state_dir) == slots_file(state_dir)  # the file the vandal works on is the one in use
    allocators = [spawn(ALLOCATOR, first, last, marks, threads_n) for _ in range(procs_n)]
    for a in allocators:
        assert a.line() == "ready"
    vandal = spawn(VANDAL, state_dir, kind, slots_file(state_dir))
    time.sleep(seconds)
    vandal.send("stop")
    changes = vandal.json()["changes"]
    assert vandal.finish() == 0, vandal.stderr()
    for a in allocators:
        assert a.proc.poll() is None, f"an allocator died (exit {a.proc.returncode}): {a.stderr()}"
        a.send("stop")
    reports = [a.json(timeout=60) for a in allocators]
    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], "\n".join(errors)
    for a in allocators:
        a.send("exit")
        assert a.finish() == 0, a.stderr()
    assert list(marks.iterdir()) == []  # no port was held by two at once
    assert held_records() == []
    total = {k: sum(r["counts"][k] for r in reports) for k in reports[0]["counts"]}
    assert changes > 100, f"the vandal made only {changes} changes"
    assert total["process"] > 100, total
    assert total["named"] > 20, total
    print(f"\n{kind}: {changes} changes; {total}")


# -- records that must count as corrupt (found by the garbage test) ------------------------------------------


def write_record(state_dir: Path, file_port: int, **raw: Any) -> None:
    record = {"port": file_port, "owner": "x", "created": 1.0, "token": "t", "label": "",
              "holder": {"pid": NO_SUCH_PID, "start_time": 1, "host": socket.gethostname()}}
    record.update(raw)
    store()  # creates the state dir
    (state_dir / "ports" / f"{file_port}.lock").write_bytes(json.dumps(record).encode())


def test_record_with_huge_integer_created_counts_as_corrupt(free_block: FreeBlock, state_dir: Path) -> None:
    port = free_block(1)
    write_record(state_dir, port, created=10**400)
    assert held_records() == []
    with FreePort(port, port, timeout=0) as fp:
        assert fp.port == port


def test_record_with_float_port_counts_as_corrupt(free_block: FreeBlock, state_dir: Path) -> None:
    port = free_block(1)
    write_record(state_dir, port, port=float(port), owner=None, adopted=True)
    st = store()
    assert st.collect_dead() == []
    for r in st.records():
        st.is_held(r)
        assert type(r.port) is int
    in_ports = ["slots"] if slots_file(state_dir).parent == state_dir / "ports" else []
    assert sorted(os.listdir(state_dir / "ports")) == sorted([f"{port}.lock", *in_ports])
    with FreePort(port, port, timeout=0) as fp:
        assert fp.port == port


def test_claimer_racing_a_release_leaves_no_phantom_lease(
    free_block: FreeBlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_block(1)
    st = store()
    fp = FreePort(port, port, timeout=0)
    raced: list[str] = []
    real_mark = PortLocks._mark

    def mark(self: PortLocks, p: int, state: int, *args: Any) -> None:
        real_mark(self, p, state, *args)
        if p == port and state == FREE and not raced:
            # Inside fp.release(): the slot says FREE, the flock is not dropped yet. Another claimer now:
            try:
                FreePort(port, port, timeout=0)
            except NoFreePortError as e:
                raced.append(str(e))

    monkeypatch.setattr(PortLocks, "_mark", mark)
    fp.release()
    monkeypatch.undo()
    if len(raced) != 1:  # not an AssertionError: this would be a worse bug than the one expected here
        pytest.fail("the racing claimer got the port while it was still held")
    assert "pid 0" not in raced[0], raced[0]
    assert [(r.port, r.holder.pid) for r in st.records()] == []
    assert st.collect_dead() == []
    with FreePort(port, port, timeout=0) as again:
        assert again.port == port


# -- where the slots file lives ---------------------------------------------------------------------


def on_block_device(path: Path) -> bool:
    return os.major(path.stat().st_dev) != 0


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory standing in for /dev/shm (slots.SHM_DIR), world-writable and sticky like it."""
    if not on_block_device(tmp_path):
        pytest.skip("the state dir must be on a block device for its slots to move to /dev/shm")
    d = tmp_path / "shm"
    d.mkdir()
    d.chmod(0o1777)
    monkeypatch.setattr(slots_module, "SHM_DIR", str(d))
    return d


def test_slots_of_a_state_dir_on_disk_live_in_a_private_dir_in_ram(
    shm: Path, state_dir: Path, free_block: FreeBlock
) -> None:
    port = free_block(1)
    with FreePort(port, port, timeout=0) as fp:
        mine = shm / f"freeport-compose-{os.geteuid()}"
        st = mine.stat(follow_symlinks=False)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        ports = (state_dir / "ports").stat()
        [name] = os.listdir(mine)
        assert name == f"{ports.st_dev}-{ports.st_ino}.slots"
        assert slots_in_use(state_dir) == mine / name
        assert "slots" not in os.listdir(state_dir / "ports")
        made = (mine / name).stat()
        assert made.st_blocks * 512 < 64 * 1024, "the slots file under /dev/shm must be sparse"
        # The process lease is described in the slot, not in its lock file.
        assert (state_dir / "ports" / f"{port}.lock").read_bytes() == b""
        assert [(r.port, r.holder.pid, r.owner) for r in store().held()] == [(port, os.getpid(), None)]
        assert fp.port == port


@pytest.mark.parametrize("planted", ["symlink", "file", "group-writable", "other-user"])
def test_an_unusable_ram_dir_leaves_the_slots_in_ports(
    planted: str, shm: Path, state_dir: Path, tmp_path: Path, free_block: FreeBlock
) -> None:
    """/dev/shm is everyone's: a directory, file or symlink planted under our name (or one we cannot
    trust) is never used; the slots go to ports/ as on tmpfs."""
    mine = shm / f"freeport-compose-{os.geteuid()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if planted == "symlink":
        mine.symlink_to(elsewhere)
    elif planted == "file":
        mine.write_bytes(b"")
    elif planted == "group-writable":
        mine.mkdir()
        mine.chmod(0o770)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to chown")
        mine.mkdir(mode=0o700)
        os.chown(mine, 65534, 65534)
    port = free_block(1)
    with FreePort(port, port, timeout=0):
        assert slots_in_use(state_dir) == state_dir / "ports" / "slots"
        assert [r.holder.pid for r in store().held()] == [os.getpid()]
    assert os.listdir(elsewhere) == []
    if planted != "symlink" and planted != "file":
        assert os.listdir(mine) == []


def test_ram_slots_of_deleted_state_dirs_are_swept(
    shm: Path, tmp_path: Path, free_block: FreeBlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each state dir on disk gets a slots file in RAM; whoever makes a new one removes those whose
    ports/ is gone (and dead writers' temporaries), and keeps those in use."""
    port = free_block(1)
    made: dict[str, Path] = {}
    for name in ("a", "b", "c"):
        monkeypatch.setenv("FREEPORT_STATE_DIR", str(tmp_path / name))
        with FreePort(port, port, timeout=0):
            made[name] = slots_in_use(tmp_path / name)  # type: ignore[assignment]
    mine = shm / f"freeport-compose-{os.geteuid()}"
    assert sorted(os.listdir(mine)) == sorted(p.name for p in made.values())
    dead_tmp = mine / f".slots.{NO_SUCH_PID}.0a1b2c3d"
    live_tmp = mine / f".slots.{os.getpid()}.0a1b2c3d"
    dead_tmp.write_bytes(b"")
    live_tmp.write_bytes(b"")
    for name in ("a", "b"):
        shutil.rmtree(tmp_path / name)
    (tmp_path / "b").mkdir(mode=0o700)  # a new state dir at b's path: its ports/ is not b's
    (tmp_path / "b" / "ports").mkdir(mode=0o700)
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(tmp_path / "d"))
    with FreePort(port, port, timeout=0):
        new = slots_in_use(tmp_path / "d")
    assert new is not None
    assert sorted(os.listdir(mine)) == sorted([made["c"].name, new.name, live_tmp.name])


def test_a_stale_ram_slots_file_costs_only_speed(
    shm: Path, state_dir: Path, free_block: FreeBlock
) -> None:
    """A slots file found under our name (an inode number reused by a new ports/, a file left by a
    crash) that calls every port leased by a live process: allocation still gets the free ports,
    and nothing reads as held that is not."""
    first = free_block(3)
    (state_dir / "ports").mkdir(mode=0o700, parents=True)
    stale = slots_file(state_dir)
    stale.parent.mkdir(mode=0o700)
    slot = slots_module._SLOT
    data = bytearray(slots_module.SIZE + slots_module._HEADER)
    for port in range(first, first + 3):
        slot.pack_into(data, port * slot.size, slots_module.PROCESS, os.getppid(), 1.0, b"stale")
    stale.write_bytes(bytes(data))
    with FreePorts(3, first, first + 2, timeout=0) as fps:
        assert sorted(fps.ports) == [first, first + 1, first + 2]
        assert slots_in_use(state_dir) == stale
        assert sorted((r.port, r.holder.pid, r.label) for r in store().held()) == [
            (p, os.getpid(), "") for p in range(first, first + 3)
        ]
    assert store().held() == []
