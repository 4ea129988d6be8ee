"""Nothing left running: a stack its starter brings down itself (`run`, `with Stack`, the pytest
fixtures, the xdist session stack) comes down however the starter ends, SIGKILL included.

Real processes, real SIGKILLs, the real engine. Each kill is followed by a deadline: within
DEADLINE seconds no container, network, lease or record of the stack is left, and its reaper has
exited. Every test has a private state dir (conftest) and a port range below 32768.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _children import PY
from _docker import (
    FPC,
    SLEEPER,
    Footprint,
    containers,
    engine_stopped,
    kill_group,
    networks,
    pid_gone,
    rootful_dockerd_pid,
    spawn_cli,
    wait_for,
    wait_until,
)
from freeport_compose import store
from freeport_compose._stacks.records import StackStatus
from freeport_compose._stacks.state import State

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

DEADLINE = 10.0  # seconds from the kill until nothing of the stack may be left
PYTEST_TIMEOUT = 240.0
REAPER_MODULE = "freeport_compose._stacks.reaper"

# A Compose stand-in that stalls once, at $FPC_STALL_VERB ("up": after the real `up` made the
# containers; "down": before anything is removed), having said so in $FPC_AT; every other call, and
# every call after that one (the reaper's `down`), goes straight to `docker compose`.
STALLING_COMPOSE = """#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = "$FPC_STALL_VERB" ] && [ ! -e "$FPC_AT" ]; then
        if [ "$arg" = up ]; then docker compose "$@" || exit $?; fi
        echo $$ > "$FPC_AT.tmp" && mv "$FPC_AT.tmp" "$FPC_AT"
        exec sleep 300
    fi
done
exec docker compose "$@"
"""


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_block: Callable[[int], int]) -> Iterator[Footprint]:
    first = free_block(16)
    monkeypatch.setenv("FREEPORT_RANGE", f"{first}-{first + 15}")
    with Footprint(tmp_path, "fpc.reaper", "fpc-reap") as footprint:
        yield footprint


def web(box: Footprint, directory: Path | None = None) -> str:
    service = box.service("web", ports=["$<FREEPORT_web>:80"], body="web $<FREEPORT_web>")
    if directory is None:
        return box.compose_file("compose.yaml", service)
    path = directory / "compose.yaml"
    path.write_text("services:\n" + service)
    return str(path)


def child_env(**extra: str) -> dict[str, str]:
    """This environment (the private state dir and range included) without this run's own xdist or
    pytest variables: the child is a run of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env.update(extra)
    return env


def stalling_compose(box: Footprint, verb: str) -> dict[str, str]:
    wrapper = box.tmp / "compose.sh"
    wrapper.write_text(STALLING_COMPOSE)
    wrapper.chmod(0o755)
    return {"FREEPORT_COMPOSE": str(wrapper), "FPC_STALL_VERB": verb, "FPC_AT": str(box.tmp / "stalled")}


# -- what is left of a stack --------------------------------------------------------------------------


def reapers(project: str | None = None) -> list[int]:
    """Pids of the live reapers (of `project`, or of any stack), found by their command lines."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if REAPER_MODULE.encode() in argv and (project is None or project.encode() in argv):
                pid = int(cmdline.parent.name)
                if not pid_gone(pid):
                    found.append(pid)
    return found


def left_of(project: str, state_dir: Path) -> list[str]:
    """What is left of the stack: its containers, networks, leases, record, reaper (empty: nothing)."""
    left = []
    if found := containers(project):
        left.append(f"{len(found)} container(s)")
    if found := networks(project):
        left.append(f"{len(found)} network(s)")
    leases = [r.port for r in store(str(state_dir)).held() if r.owner == project]
    if leases:
        left.append(f"leases {leases}")
    if State.open(str(state_dir)).stacks.load(project) is not None:
        left.append("its record")
    if pids := reapers(project):
        left.append(f"its reaper {pids}")
    return left


def gone_within(project: str, state_dir: Path, deadline: float = DEADLINE) -> float:
    """Seconds until nothing of the stack is left; fails after `deadline`, saying what is left."""
    started = time.monotonic()
    while left := left_of(project, state_dir):
        if time.monotonic() - started > deadline:
            log = state_dir / "reaper.log"
            said = log.read_text() if log.exists() else "(no reaper.log)"
            pytest.fail(f"{deadline:g} s after the kill, {project} still has {', '.join(left)}; reaper.log:\n{said}")
        time.sleep(0.1)
    return time.monotonic() - started


def reaper_log(state_dir: Path) -> str:
    log = state_dir / "reaper.log"
    return log.read_text() if log.exists() else ""


def kill_reapers(project: str) -> None:
    for pid in reapers(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the race, as it was: the last user leaves while another holds on, then that one is killed ----------

JOINER = """
import os, sys, time
from freeport_compose._leasing.process import Holder, hostname, process_start_time
from freeport_compose._stacks.lifecycle import Options
from freeport_compose._stacks.sharing import join
from freeport_compose._stacks.state import State

compose_file, project, said, leave_when = sys.argv[1:5]
parent = os.getppid()  # the driver, as the xdist controller is: alive the whole time
driver = Holder(parent, process_start_time(parent), hostname())
share = join(State.open(), Options(files=[compose_file], project=project), driver=driver, keep=False)
open(said + ".tmp", "w").write("joined")
os.rename(said + ".tmp", said)
while not os.path.exists(leave_when):
    time.sleep(0.05)
open(said + ".tmp", "w").write(str(share.leave()))
os.rename(said + ".tmp", said)
"""


def joiner(box: Footprint, template: str, project: str, name: str,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, Path]:
    said, leave = box.tmp / f"{name}.said", box.tmp / f"{name}.leave"
    proc = subprocess.Popen([PY, "-c", JOINER, template, project, str(said), str(leave)], env=child_env(**(env or {})),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, said, leave


def test_the_last_user_killed_after_the_others_left_still_brings_the_stack_down(box: Footprint,
                                                                               state_dir: Path) -> None:
    """The race of issue 21: A leaves while B still uses the stack (so A is not last), then B is
    SIGKILLed. Before the reaper nobody saw B go: the stack stayed up, its driver (the test) alive."""
    template, project = web(box), box.project()
    a, a_said, a_leave = joiner(box, template, project, "a")
    b = None
    try:
        wait_for("A to join (and start the stack)", a_said.exists, timeout=120)
        b, b_said, _ = joiner(box, template, project, "b")
        wait_for("B to join", b_said.exists, timeout=120)
        assert len(containers(project, running=True)) == 1
        assert len(reapers(project)) == 1  # one per stack, not one per user
        a_said.unlink()
        a_leave.touch()
        wait_for("A to leave", a_said.exists, timeout=60)
        assert a_said.read_text() == "False"  # B holds on: A was not last, and took nothing down
        assert a.wait(30) == 0
        assert len(containers(project, running=True)) == 1
        os.killpg(b.pid, signal.SIGKILL)
        b.wait(30)
        took = gone_within(project, state_dir)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    assert "took it down (status run" in reaper_log(state_dir), reaper_log(state_dir)
    print(f"stack gone {took:.1f} s after the last user's SIGKILL")


def test_the_last_user_killed_during_its_down_leaves_nothing(box: Footprint, state_dir: Path) -> None:
    """B, last, took the users' flock exclusively and was inside `docker compose down` when it was
    SIGKILLed (its Compose stalled, then killed with it)."""
    template, project = web(box), box.project()
    env = stalling_compose(box, "down")
    a, a_said, a_leave = joiner(box, template, project, "a", env)
    b = None
    try:
        wait_for("A to join", a_said.exists, timeout=120)
        b, b_said, b_leave = joiner(box, template, project, "b", env)
        wait_for("B to join", b_said.exists, timeout=120)
        a_said.unlink()
        a_leave.touch()
        wait_for("A to leave", a_said.exists, timeout=60)
        b_leave.touch()
        wait_for("B's `docker compose down`", (box.tmp / "stalled").exists, b, timeout=60)
        os.killpg(b.pid, signal.SIGKILL)
        b.wait(30)
        gone_within(project, state_dir)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


# -- a whole pytest run killed (kill -9 of its process group) ----------------------------------------------

SESSION_SUITE = """
import os, time

def _use(stack, name):
    mark = os.environ["FPC_MARK"]
    with open(f"{mark}.{name}.tmp", "w") as f:
        f.write(stack.project)
    os.rename(f"{mark}.{name}.tmp", f"{mark}.{name}")
    time.sleep(float(os.environ["FPC_SLEEP"]))

def test_a(freeport_stack):
    _use(freeport_stack, "a")

def test_b(freeport_stack):
    _use(freeport_stack, "b")
"""


def session_suite(box: Footprint, tests: str = SESSION_SUITE) -> Path:
    suite = box.tmp / "suite"
    suite.mkdir(exist_ok=True)
    web(box, suite)
    (suite / "pytest.ini").write_text("[pytest]\nfreeport_compose_files = compose.yaml\n")
    (suite / "test_suite.py").write_text(textwrap.dedent(tests))
    return suite


def run_pytest(suite: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m pytest` on the suite, in a session of its own (killpg reaches every worker)."""
    return subprocess.Popen([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=suite, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def only_stack(state_dir: Path) -> str:
    [record] = State.open(str(state_dir)).stacks.all()
    return record.project


@pytest.mark.parametrize("moment", ["starting", "testing", "tearing-down"])
def test_pytest_group_killed_leaves_nothing(box: Footprint, state_dir: Path, moment: str) -> None:
    """kill -9 of the process group of `pytest -n 2` using `freeport_stack` (a cancelled CI job, a
    closed terminal): before `up` finished (containers made, record still `starting`), while the
    tests run, inside the last worker's `docker compose down`."""
    mark = box.tmp / "mark"
    env = child_env(FPC_MARK=str(mark), FPC_SLEEP="300" if moment == "testing" else "0")
    if moment != "testing":
        env.update(stalling_compose(box, "up" if moment == "starting" else "down"))
    proc = run_pytest(session_suite(box), "-n", "2", env=env)
    try:
        if moment == "testing":
            wait_for("both tests to use the stack", lambda: all(Path(f"{mark}.{t}").exists() for t in "ab"),
                     proc, timeout=180)
        else:
            wait_for(f"the stalled Compose {moment}", (box.tmp / "stalled").exists, proc, timeout=180)
        project = only_stack(state_dir)
        box.projects.append(project)
        assert len(containers(project, running=True)) == 1
        assert len(reapers(project)) == 1
        status = State.open(str(state_dir)).stacks.load(project)
        assert status is not None
        assert status.status is (StackStatus.STARTING if moment == "starting" else StackStatus.RUN)
    finally:
        kill_group(proc)
    took = gone_within(project, state_dir)
    assert "every user of it is gone" in reaper_log(state_dir), reaper_log(state_dir)
    print(f"{moment}: stack gone {took:.1f} s after the kill")


# -- `run`, `Stack`, `compose_stack` killed ---------------------------------------------------------------


def watched_run(box: Footprint) -> tuple[str, subprocess.Popen[str]]:
    """`run -- CMD` of a one-service stack, once CMD runs: (its project, the `run` process), the
    stack up and its reaper watching."""
    template, project = web(box), box.project()
    marker = box.tmp / "command-started"
    proc = spawn_cli("run", "-f", template, "-p", project, "--", sys.executable, "-c", SLEEPER, str(marker))
    try:
        wait_for("run's command", marker.exists, proc, timeout=120)
        assert len(containers(project, running=True)) == 1
        assert len(reapers(project)) == 1
    except BaseException:
        kill_group(proc)
        raise
    return project, proc


def test_run_killed_with_its_group_leaves_nothing(box: Footprint, state_dir: Path) -> None:
    project, proc = watched_run(box)
    kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    took = gone_within(project, state_dir)
    assert f"{project}: reaper: took it down (status run" in reaper_log(state_dir), reaper_log(state_dir)
    print(f"run: stack gone {took:.1f} s after the kill")


@pytest.mark.load  # bounces the machine's engine: not for `make test-quick`
def test_run_killed_while_the_engine_is_down_is_reaped_once_it_is_back(box: Footprint, state_dir: Path) -> None:
    """dockerd stopped under a watched stack and its `run` SIGKILLed meanwhile: the reaper's `down`
    fails, is retried, and once the engine is back nothing of the stack is left."""
    pid = rootful_dockerd_pid()
    if os.geteuid() != 0 or pid is None:
        pytest.skip(f"needs root and the rootful dockerd to stop and restart (uid {os.geteuid()}, its pid {pid})")
    project, proc = watched_run(box)
    try:
        with engine_stopped(pid):
            kill_group(proc)
            assert wait_until(lambda: "down failed, retrying" in reaper_log(state_dir), 30), reaper_log(state_dir)
            assert reapers(project)  # still at it, while the engine is away
    finally:
        kill_group(proc)
    took = gone_within(project, state_dir, deadline=45.0)  # its retries come 2, 4, 8 and 16 s apart
    # (`stopping`: the failed attempt marked it so, as a failed `down` does)
    assert f"{project}: reaper: took it down (status stopping" in reaper_log(state_dir), reaper_log(state_dir)
    print(f"engine back: stack gone {took:.1f} s after the kill")


def test_run_killed_alone_leaves_the_stack_to_its_command_then_reaps_it(box: Footprint, state_dir: Path) -> None:
    """SIGKILL of the `run` process only: its command goes on, and holds the stack's users' flock,
    so the stack lives exactly as long as the command; once that ends too, the reaper takes it down."""
    template, project = web(box), box.project()
    marker = box.tmp / "command-started"
    proc = spawn_cli("run", "-f", template, "-p", project, "--", sys.executable, "-c", SLEEPER, str(marker))
    command = None
    try:
        wait_for("run's command", marker.exists, proc, timeout=120)
        command = int(marker.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(3)
        assert len(containers(project, running=True)) == 1  # the command still runs: so does its stack
        assert len(reapers(project)) == 1
        os.kill(command, signal.SIGKILL)
        gone_within(project, state_dir)
    finally:
        kill_group(proc)
        if command is not None and not pid_gone(command):
            os.kill(command, signal.SIGKILL)


def test_run_that_ends_normally_leaves_its_reaper_nothing_to_do(box: Footprint, state_dir: Path) -> None:
    template, project = web(box), box.project()
    result = subprocess.run([FPC, "run", "-f", template, "-p", project, "--", "true"], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr
    gone_within(project, state_dir, deadline=5)
    assert f"{project}: reaper: nothing to do" in reaper_log(state_dir), reaper_log(state_dir)
    left = sorted(p.name for p in (state_dir / "stacks").iterdir() if p.name.startswith(project + "."))
    assert set(left) <= {f"{project}.lock"}, left  # the reaper removed its own lock files


STACK_SCRIPT = """
import os, sys, time
from freeport_compose import Stack

with Stack(sys.argv[1], wait_for={"web": "tcp"}) as stack:
    open(sys.argv[2] + ".tmp", "w").write(stack.project)
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    time.sleep(300)
"""

FIXTURE_SUITE = """
import os, time

def test_uses_a_stack(compose_stack):
    stack = compose_stack(os.environ["FPC_FILE"])
    open(os.environ["FPC_MARK"] + ".tmp", "w").write(stack.project)
    os.rename(os.environ["FPC_MARK"] + ".tmp", os.environ["FPC_MARK"])
    time.sleep(300)
"""


@pytest.mark.parametrize("starter", ["Stack", "compose_stack"])
def test_private_stack_of_a_killed_process_comes_down(box: Footprint, state_dir: Path, starter: str) -> None:
    template, marker = web(box), box.tmp / "project"
    if starter == "Stack":
        argv = [PY, "-c", STACK_SCRIPT, template, str(marker)]
        env = child_env()
    else:
        (box.tmp / "test_fixture.py").write_text(FIXTURE_SUITE)
        argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(box.tmp / "test_fixture.py")]
        env = child_env(FPC_FILE=template, FPC_MARK=str(marker))
    proc = subprocess.Popen(argv, env=env, cwd=box.tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for("the stack", marker.exists, proc, timeout=180)
        project = marker.read_text()
        box.projects.append(project)
        record = State.open(str(state_dir)).stacks.load(project)
        assert record is not None
        assert record.status is StackStatus.RUN  # up only while its process lives
        assert len(reapers(project)) == 1
    finally:
        kill_group(proc)
    gone_within(project, state_dir)


def test_a_kept_session_stack_is_left_up_by_its_reaper(box: Footprint, state_dir: Path) -> None:
    mark = box.tmp / "mark"
    env = child_env(FPC_MARK=str(mark), FPC_SLEEP="0")
    proc = run_pytest(session_suite(box), "-n", "2", "--freeport-keep", env=env)
    out, _ = proc.communicate(timeout=PYTEST_TIMEOUT)
    assert proc.returncode == 0, out
    project = Path(f"{mark}.a").read_text()
    box.projects.append(project)
    wait_for("the reaper to settle it", lambda: f"{project}: reaper: left up: kept on purpose" in reaper_log(state_dir),
             timeout=DEADLINE)
    wait_for("the reaper to exit", lambda: reapers(project) == [], timeout=5)
    assert len(containers(project, running=True)) == 1  # kept
    result = subprocess.run([FPC, "down", "-p", project], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# -- the reaper killed too: the next allocation reaps -----------------------------------------------------------


def test_a_killed_reaper_leaves_it_to_the_next_allocation(box: Footprint, state_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from freeport_compose._stacks import engine, lifecycle
    from freeport_compose._stacks.reaper import anything_dead, reap_dead

    template, project = web(box), box.project()
    marker = box.tmp / "command-started"
    proc = spawn_cli("run", "-f", template, "-p", project, "--", sys.executable, "-c", SLEEPER, str(marker))
    try:
        wait_for("run's command", marker.exists, proc, timeout=120)
        state = State.open(str(state_dir))
        # Nothing dead: decided from the records and /proc alone, no engine asked, no Compose started.
        with monkeypatch.context() as m:
            def no_engine(*args: Any, **kwargs: Any) -> Any:
                raise AssertionError("reap_dead asked the engine with nothing dead")

            m.setattr(engine, "project_containers", no_engine)
            m.setattr(lifecycle, "down", no_engine)
            assert not anything_dead(str(state_dir))
            assert reap_dead(state) == []
        kill_reapers(project)
        wait_for("the reaper to die", lambda: reapers(project) == [], timeout=10)
    finally:
        kill_group(proc)
    time.sleep(2)
    assert len(containers(project, running=True)) == 1  # nobody watches it any more
    assert anything_dead(str(state_dir))
    assert reap_dead(state, spare=[project]) == []  # the project an `up` is about to take over
    started = time.monotonic()
    assert reap_dead(state) == [project]
    print(f"reap_dead took {time.monotonic() - started:.1f} s")
    assert left_of(project, state_dir) == []
    assert f"{project}: reaped before an allocation: took it down" in reaper_log(state_dir)
    assert not anything_dead(str(state_dir))


def test_reap_dead_finishes_a_killed_up_once_its_compose_is_gone(box: Footprint, state_dir: Path) -> None:
    """A dev `up` has no reaper; killed with its Compose still running (which holds the project's
    lock), it is skipped, and no lock file is made for it; once Compose is gone too, it is reaped."""
    from freeport_compose._stacks.reaper import anything_dead, reap_dead

    template, project = web(box), box.project()
    env = stalling_compose(box, "up")
    proc = spawn_cli("up", "-d", "-f", template, "-p", project, env=env)
    stalled = box.tmp / "stalled"
    try:
        wait_for("Compose's `up`", stalled.exists, proc, timeout=120)
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone: its Compose (stalled) goes on, locking the project
        proc.wait(30)
        state = State.open(str(state_dir))
        assert anything_dead(str(state_dir))
        assert reap_dead(state) == []  # busy
        assert not (state_dir / "stacks" / f"{project}.users").exists()
        assert len(containers(project, running=True)) == 1
    finally:
        kill_group(proc)  # Compose's stand-in too
    assert reap_dead(state) == [project]
    assert left_of(project, state_dir) == []


def test_the_raw_statuses_are_the_driven_ones() -> None:
    from freeport_compose._stacks.reaper import DRIVEN

    assert {s.value for s in StackStatus if s.driven} == DRIVEN


# -- one xdist worker SIGKILLed at a random moment --------------------------------------------------------------

RANDOM_SUITE = """
import os, time, pytest

@pytest.mark.parametrize("i", range(8))
def test_uses_the_stack(freeport_stack, i):
    mark = os.environ["FPC_MARK"]
    open(f"{mark}.start.{i}", "w").close()
    time.sleep(4.0 if i == 7 else 0.3)  # one worker ends well after the other: the moment of the race
    open(f"{mark}.end.{i}", "w").close()
"""


def _workers(pid: int) -> list[int]:
    """The live children of process `pid` (an xdist controller's: its workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def _wait_or_end(proc: subprocess.Popen[str], condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def kill_one_worker_at_random(box: Footprint, state_dir: Path, rng: random.Random,
                              stage: str | None = None, workers: int = 2) -> tuple[str, list[str]]:
    """One `pytest -n WORKERS` run; one worker SIGKILLed at a random moment of `stage` (random if
    None). (the moment it was killed, what was left of the run's stacks the instant pytest returned)."""
    from freeport_compose.pytest_plugin import _fingerprint

    uid = secrets.token_hex(16)
    suite = session_suite(box, RANDOM_SUITE)
    for old in box.tmp.glob("mark.*"):
        old.unlink()
    mark = box.tmp / "mark"
    fingerprint = _fingerprint((str(suite / "compose.yaml"),), {"profiles": (), "env_files": ()})
    project = f"pytest-{uid[:10]}-{fingerprint[:6]}"  # as the plugin names this run's stack
    box.projects.append(project)
    proc = run_pytest(suite, "-n", str(workers), "--testrunuid", uid, env=child_env(FPC_MARK=str(mark)))
    moment = "missed (the run had ended)"
    started, ended = (lambda: list(box.tmp.glob("mark.start.*"))), (lambda: list(box.tmp.glob("mark.end.*")))
    try:
        # A random moment in a random stage: xdist starting the workers and the stack, the tests, and
        # the teardown (the workers leaving, the last one's `down`), where the race was.
        stage = stage or rng.choice(STAGES)
        if stage == "tests":
            _wait_or_end(proc, lambda: bool(started()))
        elif stage == "teardown":
            _wait_or_end(proc, lambda: len(ended()) == 8)
        time.sleep(rng.uniform(0.3, 5.0) if stage == "start" else rng.uniform(0.0, 3.0 if stage == "tests" else 1.5))
        live = _workers(proc.pid)
        if live and proc.poll() is None:
            n_started, n_ended = len(started()), len(ended())
            moment = "before any test" if n_started == 0 else "during the tests" if n_ended < 8 else "after the tests"
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(live), signal.SIGKILL)
        out, _ = proc.communicate(timeout=PYTEST_TIMEOUT)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    left = left_of(project, state_dir)
    left = [what for what in left if not what.startswith("its reaper")]  # a reaper may still be exiting
    if proc.returncode == 3 and "gateway_bootstrap" in out:
        # Killed while xdist was still starting its workers: xdist gives up on the run itself
        # (INTERNALERROR), and no sessionfinish of ours waits for the stack. Its reaper does it.
        moment, left = "while xdist started its workers (xdist aborts the run)", []
    else:
        assert "INTERNALERROR" not in out, out
        assert proc.returncode in (0, 1), out
    gone_within(project, state_dir, deadline=DEADLINE)  # and its reaper has exited
    return moment, left


STAGES = ["start", "tests", "teardown"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_worker_killed_at_random_leaves_nothing_when_pytest_returns(box: Footprint, state_dir: Path,
                                                                       stage: str) -> None:
    moment, left = kill_one_worker_at_random(box, state_dir, random.Random(), stage)
    assert left == [], f"killed {moment}: left {left}"
    print(f"{stage}: worker killed {moment}; nothing left")


@pytest.fixture
def busy() -> Iterator[None]:
    """The machine kept busy: one process spinning per core, at the tests' own priority."""
    spinners = [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.load
def test_many_workers_killed_at_random_leave_nothing(box: Footprint, state_dir: Path, busy: None) -> None:
    """Issue 21's proof: 50 runs of `pytest -n 4` on a busy machine, in each one of the four workers
    SIGKILLed at a random moment (starting, testing, tearing down): nothing left when pytest returns."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    runs: list[tuple[str, list[str]]] = []
    for _ in range(50):
        runs.append(kill_one_worker_at_random(box, state_dir, rng, workers=4))
    moments = {m: sum(1 for x, _ in runs if x == m) for m in sorted({m for m, _ in runs})}
    bad = [(m, left) for m, left in runs if left]
    print(f"{len(runs)} runs, kills: {moments}; runs that left anything when pytest returned: {len(bad)}")
    assert bad == [], bad

