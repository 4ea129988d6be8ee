"""Load tests of the allocator: many processes and threads holding many ports at once, and exhausted ranges.

Every test is marked `load` (the quick suite runs `-m "not load"`). Each one holds every lease of a
round at the same time before it checks anything, so a port handed out twice is seen, not missed
because one holder had already let go.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from _children import Child, Spawn, assert_nothing_held, held_records
from _ports import find_roomy_range
from freeport_compose import FreePort, store

FreeBlock = Callable[[int], int]

# -- child processes ------------------------------------------------------------------------------

# A long-lived worker speaking a line protocol, so a round costs a line, not an interpreter:
#   take MODE N START STOP TIMEOUT LABEL -> {"ports": [...]} once it holds them all (or {"error": ...})
#     MODE many: one FreePorts(N); one: N FreePort one after another; threads: N threads released
#     together by a barrier, each taking one FreePort
#   release -> {"released": true} once every lease it holds is released
# It starts by printing {"pid": ...} and ends when stdin closes.
WORKER = r"""
import json, os, sys, threading
from freeport_compose import FreePort, FreePorts

held = []

def take(mode, n, start, stop, timeout, label):
    if mode == "many":
        fps = FreePorts(n, start, stop, timeout=timeout, labels=[label] * n)
        held.append(fps)
        return list(fps.ports)
    if mode == "one":
        ports = []
        for _ in range(n):
            fp = FreePort(start, stop, timeout=timeout, label=label)
            held.append(fp)
            ports.append(fp.port)
        return ports
    assert mode == "threads", mode
    ports, errors = [], []
    lock = threading.Lock()
    gate = threading.Barrier(n, timeout=timeout + 60)

    def one():
        try:
            gate.wait()  # all n threads ask at the same moment
            fp = FreePort(start, stop, timeout=timeout, label=label)
            with lock:
                held.append(fp)
                ports.append(fp.port)
        except BaseException as e:
            with lock:
                errors.append(repr(e))
            gate.abort()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return ports

print(json.dumps({"pid": os.getpid()}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "take":
        mode, label = args[0], args[5]
        n, start, stop, timeout = int(args[1]), int(args[2]), int(args[3]), float(args[4])
        try:
            answer = {"ports": take(mode, n, start, stop, timeout, label)}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    elif cmd == "release":
        for lease in held:
            lease.release()
        held.clear()
        print(json.dumps({"released": True}), flush=True)
"""

# One waiter on an exhausted range: prints "ready", starts asking on "go". On success it proves it
# is the only holder of its port by creating <marks>/<port> exclusively (a holder before it removes
# its marker before releasing), holds the port `hold` seconds, and reports; on NoFreePortError it
# reports the message and how long it waited. Any other exception is a traceback and exit 1.
WAITER = r"""
import json, os, sys, time
from freeport_compose import FreePort, NoFreePortError

start, stop, marks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[5]
timeout, hold = float(sys.argv[3]), float(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
try:
    fp = FreePort(start, stop, timeout=timeout, label="waiter")
except NoFreePortError as e:
    print(json.dumps({"error": "NoFreePortError", "message": str(e), "waited": time.monotonic() - t0}), flush=True)
    sys.exit(0)
waited = time.monotonic() - t0
mark = os.path.join(marks, str(fp.port))
try:
    fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
except FileExistsError:
    try:
        with open(mark) as f:
            other = f.read()
    except OSError:
        other = "?"
    print(json.dumps({"duplicate": fp.port, "other": other}), flush=True)
    sys.exit(0)
os.write(fd, str(os.getpid()).encode())
os.close(fd)
print(json.dumps({"got": fp.port, "waited": waited}), flush=True)
time.sleep(hold)
os.unlink(mark)
fp.release()
print(json.dumps({"released": fp.port}), flush=True)
"""


def owners_of(answers: dict[int, list[int]]) -> tuple[dict[int, int], list[tuple[int, int, int]]]:
    """{port: pid} from {pid: ports held}, and every (port, pid, pid) handed to two holders at once."""
    owner: dict[int, int] = {}
    twice: list[tuple[int, int, int]] = []
    for pid, ports in answers.items():
        for port in ports:
            if port in owner:
                twice.append((port, owner[port], pid))
            owner[port] = pid
    return owner, twice


def start_workers(spawn: Spawn, n: int) -> list[Child]:
    workers = [spawn(WORKER) for _ in range(n)]
    for w in workers:
        assert w.json(timeout=120) == {"pid": w.pid}
    return workers


def release_all(workers: list[Child]) -> None:
    for w in workers:
        w.send("release")
    for w in workers:
        assert w.json(timeout=120) == {"released": True}


# -- many processes, many ports -----------------------------------------------------------------------


@pytest.mark.load
def test_64_processes_hold_50_ports_each_together_for_20_rounds(spawn: Spawn, free_block: FreeBlock) -> None:
    workers_n, per_worker, rounds, size = 64, 50, 20, 4000
    # 3,200 ports held at once: the range need not be all free (a port in TIME_WAIT after an earlier
    # test is skipped by the allocator like any busy port), only roomy enough.
    first = find_roomy_range(size, workers_n * per_worker + 200)
    last = first + size - 1
    workers = start_workers(spawn, workers_n)
    st = store()
    for rnd in range(rounds):
        mode = "many" if rnd % 2 == 0 else "one"  # FreePorts(50) and 50 x FreePort in turn
        labels = {w.pid: f"r{rnd}w{i}" for i, w in enumerate(workers)}
        for w in workers:
            w.send(f"take {mode} {per_worker} {first} {last} 120 {labels[w.pid]}")
        answers: dict[int, list[int]] = {}
        for w in workers:
            answer = w.json(timeout=300)
            assert "ports" in answer, f"round {rnd} ({mode}): worker {w.pid} failed: {answer}"
            assert len(answer["ports"]) == per_worker
            answers[w.pid] = answer["ports"]
        # The barrier: every worker holds its 50 ports now, until it reads "release".
        owner, twice = owners_of(answers)
        assert twice == [], f"round {rnd} ({mode}): ports handed to two processes at once (port, pid, pid)"
        assert len(owner) == workers_n * per_worker
        assert all(first <= p <= last for p in owner)
        records = {r.port: r for r in st.records()}
        wrong = [
            (port, pid, records[port].holder.pid if port in records else None)
            for port, pid in owner.items()
            if port not in records or records[port].holder.pid != pid or not st.is_held(records[port])
        ]
        assert wrong == [], f"round {rnd}: held ports not shown as held by their holder (port, pid, shown pid)"
        mislabelled = [(p, r.label) for p, r in records.items() if p in owner and r.label != labels[owner[p]]]
        assert mislabelled == []
        extra = [r for p, r in records.items() if p not in owner and st.is_held(r)]
        assert extra == [], f"round {rnd}: leases held that no worker reported"
        release_all(workers)
        assert held_records() == [], f"round {rnd}: leases left after every worker released"
    for w in workers:
        assert w.finish() == 0, w.stderr()
    assert_nothing_held()


# -- many threads ----------------------------------------------------------------------------------------


@pytest.mark.load
def test_200_threads_hold_200_ports_together_for_several_rounds(free_block: FreeBlock) -> None:
    n, rounds = 200, 20
    first = free_block(n)
    last = first + n - 1
    lock = threading.Lock()
    got: list[list[int]] = [[] for _ in range(rounds)]
    seen_held: list[list[tuple[int, int, str]]] = []
    errors: list[str] = []

    def all_holding() -> None:  # the barrier's action: runs once per round, while every thread holds its port
        seen_held.append(sorted((r.port, r.holder.pid, r.label) for r in held_records()))

    gate = threading.Barrier(n, timeout=120)  # a round starts once every thread released the last one
    holding = threading.Barrier(n, action=all_holding, timeout=120)

    def worker(i: int) -> None:
        try:
            for rnd in range(rounds):
                gate.wait()
                with FreePort(first, last, timeout=60, label="load") as fp:
                    with lock:
                        got[rnd].append(fp.port)
                    holding.wait()
        except BaseException as e:
            with lock:
                errors.append(f"thread {i}: {e!r}")
            gate.abort()
            holding.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "threads still running after 300 s"
    assert errors == []
    me = os.getpid()
    for rnd, ports in enumerate(got):
        twice = sorted(p for p in set(ports) if ports.count(p) > 1)
        assert twice == [], f"round {rnd}: ports handed to two threads at once"
        assert sorted(ports) == list(range(first, last + 1))
    assert seen_held == [[(p, me, "load") for p in range(first, last + 1)]] * rounds
    assert_nothing_held()


@pytest.mark.load
def test_8_processes_of_25_threads_hold_ports_together(spawn: Spawn, free_block: FreeBlock) -> None:
    procs_n, threads_n, rounds = 8, 25, 20
    n = procs_n * threads_n
    first = free_block(n)
    last = first + n - 1
    workers = start_workers(spawn, procs_n)
    for rnd in range(rounds):
        for w in workers:
            w.send(f"take threads {threads_n} {first} {last} 60 mix{rnd}")
        answers: dict[int, list[int]] = {}
        for w in workers:
            answer = w.json(timeout=180)
            assert "ports" in answer, f"round {rnd}: worker {w.pid} failed: {answer}"
            assert len(answer["ports"]) == threads_n
            answers[w.pid] = answer["ports"]
        owner, twice = owners_of(answers)
        assert twice == [], f"round {rnd}: ports handed out twice (port, pid, pid)"
        assert sorted(owner) == list(range(first, last + 1))  # 200 holders on 200 ports: every port, once
        assert {r.port: (r.holder.pid, r.label) for r in held_records()} == {
            p: (pid, f"mix{rnd}") for p, pid in owner.items()
        }
        release_all(workers)
        assert held_records() == [], f"round {rnd}: leases left after every worker released"
    for w in workers:
        assert w.finish() == 0, w.stderr()
    assert_nothing_held()


# -- exhausted ranges ------------------------------------------------------------------------------------


@pytest.mark.load
def test_waiters_outnumbering_ports_all_get_one_as_holders_release(
    spawn: Spawn, free_block: FreeBlock, tmp_path: Path
) -> None:
    ports_n, waiters_n, timeout, hold_s, step = 10, 30, 20.0, 0.3, 0.3
    first = free_block(ports_n)
    last = first + ports_n - 1
    marks = tmp_path / "marks"
    marks.mkdir()
    holders = start_workers(spawn, ports_n)
    for h in holders:
        h.send(f"take one 1 {first} {last} 10 holder")
    holder_port = {h.pid: h.json()["ports"][0] for h in holders}
    assert sorted(holder_port.values()) == list(range(first, last + 1))
    for pid, port in holder_port.items():
        (marks / str(port)).write_text(str(pid))
    waiters = [spawn(WAITER, first, last, timeout, hold_s, marks) for _ in range(waiters_n)]
    for w in waiters:
        assert w.line(timeout=120) == "ready"
    for w in waiters:
        w.send("go")
    time.sleep(1.0)
    early = [w.pid for w in waiters if w.has_output()]
    assert early == [], "waiters answered while every port of the range was held"
    t0 = time.monotonic()
    for h in holders:  # one by one, over ~3 s
        (marks / str(holder_port[h.pid])).unlink()
        h.send("release")
        assert h.json() == {"released": True}
        time.sleep(step)
    got: dict[int, int] = {}
    for w in waiters:
        answer = w.json(timeout=timeout + 30)
        assert "got" in answer, f"waiter {w.pid}: {answer}"
        assert first <= answer["got"] <= last
        assert answer["waited"] < timeout
        got[w.pid] = answer["got"]
        assert w.json(timeout=30) == {"released": answer["got"]}
        assert w.finish() == 0, w.stderr()
    assert len(got) == waiters_n
    assert time.monotonic() - t0 < timeout + 30
    assert list(marks.iterdir()) == []
    for h in holders:
        assert h.finish() == 0, h.stderr()
    assert_nothing_held()


@pytest.mark.load
def test_waiters_on_a_range_never_released_all_time_out_naming_range_and_holders(
    spawn: Spawn, free_block: FreeBlock, tmp_path: Path
) -> None:
    shares, waiters_n, timeout, slack = [3, 3, 2, 2], 30, 3.0, 12.0
    ports_n = sum(shares)
    first = free_block(ports_n)
    last = first + ports_n - 1
    holders = start_workers(spawn, len(shares))
    for h, k in zip(holders, shares, strict=True):
        h.send(f"take many {k} {first} {last} 10 holder")
    holder_ports = {h.pid: h.json()["ports"] for h in holders}
    owner, twice = owners_of(holder_ports)
    assert twice == []
    assert sorted(owner) == list(range(first, last + 1))
    waiters = [spawn(WAITER, first, last, timeout, 0, tmp_path) for _ in range(waiters_n)]
    for w in waiters:
        assert w.line(timeout=120) == "ready"
    t0 = time.monotonic()
    for w in waiters:
        w.send("go")
    expected = {str(pid): str(len(ports)) for pid, ports in holder_ports.items()}
    for w in waiters:
        answer = w.json(timeout=timeout + slack + 60)
        assert answer.get("error") == "NoFreePortError", f"waiter {w.pid} got {answer} from a range held throughout"
        assert timeout <= answer["waited"] <= timeout + slack, f"waiter {w.pid} gave up after {answer['waited']} s"
        message = answer["message"]
        assert f"{first}-{last}" in message, message
        assert f"{ports_n} of {ports_n} taken" in message, message
        named = {pid: count for count, pid in re.findall(r"(\d+) leased by pid (\d+)", message)}
        assert named == expected, message
        assert w.finish() == 0, w.stderr()
    assert time.monotonic() - t0 < timeout + slack + 60
    assert {r.port: r.holder.pid for r in held_records()} == owner  # the holders kept every port
    release_all(holders)
    for h in holders:
        assert h.finish() == 0, h.stderr()
    assert_nothing_held()
