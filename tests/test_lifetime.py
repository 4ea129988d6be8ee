"""Leases live exactly as long as the stack: ports follow the containers however they go, every way
out (Ctrl-C in `run`, a failed `up --wait`) is clean and says why, and the races around it.

Every test runs the real CLI against the real engine; stacks are made of the local busybox image.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    COMPOSE_STATUS,
    FPC,
    Footprint,
    assert_error,
    assert_nothing_left,
    containers,
    docker,
    fpc,
    fpc_without_engine,
    http_get,
    kill_group,
    leases_of,
    ls_json,
    ok,
    parse_dotenv,
    pid_gone,
    spawn_cli,
    wait_for,
)
from freeport_compose._error import ExitCode

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# A Compose stand-in: `up` waits until the file $FPC_GO exists (having said so in $FPC_AT), then runs
# the real `docker compose up`; every other verb goes straight to `docker compose`.
STALLING_COMPOSE = """#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = up ]; then
        echo $$ > "$FPC_AT.tmp" && mv "$FPC_AT.tmp" "$FPC_AT"
        while [ ! -e "$FPC_GO" ]; do sleep 0.05; done
        exec docker compose "$@"
    fi
done
exec docker compose "$@"
"""


def stalled_up(box: Footprint, template: str, project: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """`up` started with a Compose that stalls at `up` until the file `go` exists; (proc, at, go):
    `at` appears, holding Compose's pid, once it stalls."""
    wrapper = box.tmp / "compose.sh"
    wrapper.write_text(STALLING_COMPOSE)
    wrapper.chmod(0o755)
    at, go = box.tmp / "at-up", box.tmp / "go"
    env = {"FREEPORT_COMPOSE": str(wrapper), "FPC_AT": str(at), "FPC_GO": str(go)}
    return spawn_cli("up", "-d", "-f", template, "-p", project, env=env), at, go


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Footprint]:
    with Footprint(tmp_path, "fpc.lifetime", "fpc-life") as footprint:
        yield footprint


@pytest.fixture
def one_port(monkeypatch: pytest.MonkeyPatch, free_block: Any) -> int:
    """FREEPORT_RANGE of a single port, for every command this test runs: stacks must share it in turn."""
    port: int = free_block(1)
    monkeypatch.setenv("FREEPORT_RANGE", f"{port}-{port}")
    return port


def web(box: Footprint, name: str = "compose.yml") -> str:
    return box.compose_file(name, box.service("web", ports=["$<FREEPORT_web>:80"], body="web $<FREEPORT_web>"))


def stack(project: str) -> dict[str, Any]:
    [found] = [s for s in ls_json()["stacks"] if s["project"] == project]
    return found


def compose(project: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The user's own `docker compose -p PROJECT ...`, run where no compose file lies."""
    result = docker("compose", "-p", project, *args, cwd="/")
    assert result.returncode == 0, result.stderr
    return result


# -- ports follow the containers ---------------------------------------------------------------


def test_plain_compose_down_gives_the_ports_to_the_next_up(box: Footprint, one_port: int) -> None:
    template, a, b = web(box), box.project(), box.project()
    assert parse_dotenv(ok(fpc("up", "-d", "-f", template, "-p", a)).stdout) == {"FREEPORT_web": one_port}
    compose(a, "down")
    assert (stack(a)["status"], stack(a)["containers"]) == ("gone", 0)  # never "up" with no container
    started = time.monotonic()
    up = ok(fpc("up", "-d", "-f", template, "-p", b, "--lease-timeout", "20"))
    assert time.monotonic() - started < 15  # no wait for a timeout: a's lease was given back at once
    assert parse_dotenv(up.stdout) == {"FREEPORT_web": one_port}
    assert http_get(one_port) == (200, f"web {one_port}\n")
    assert leases_of(a) == {}
    assert [s["project"] for s in ls_json()["stacks"]] == [b]
    ok(fpc("down", "-p", b))
    assert_nothing_left(a, b, label=box.label)


def test_removed_containers_give_the_ports_to_get(box: Footprint, one_port: int) -> None:
    template, a = web(box), box.project()
    ok(fpc("up", "-d", "-f", template, "-p", a))
    [cid] = containers(a)
    assert docker("rm", "-f", cid).returncode == 0  # an engine reset or a reboot looks the same
    got = ok(fpc("get", "--owner", "next", "--timeout", "5"))
    assert got.stdout.split() == [str(one_port)]
    assert leases_of(a) == {}
    ok(fpc("release", "--owner", "next"))


def test_stopped_and_partial_stacks_keep_their_ports(box: Footprint, free_block: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_block(2)
    monkeypatch.setenv("FREEPORT_RANGE", f"{first}-{first + 1}")
    template = box.compose_file("compose.yml", box.service("web", ports=["$<FREEPORT_web>:80"]),
                                box.service("api", ports=["$<FREEPORT_api>:80"]))
    a = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", template, "-p", a)).stdout)
    assert set(ports.values()) == {first, first + 1}
    assert (stack(a)["status"], stack(a)["containers"], stack(a)["running"]) == ("up", 2, 2)
    compose(a, "stop", "api")
    assert (stack(a)["status"], stack(a)["running"]) == ("partial", 1)
    assert f"{a}  partial (1 of 2 running)  2" in ok(fpc("leases")).stdout
    compose(a, "stop")
    assert (stack(a)["status"], stack(a)["containers"], stack(a)["running"]) == ("stopped", 2, 0)
    error = assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT)
    assert f"2 leased by owner {a!r}" in error  # stopped: still the user's, `docker compose start` works
    compose(a, "start")
    assert stack(a)["status"] == "up"
    assert http_get(ports["FREEPORT_web"])[0] == 200
    ok(fpc("down", "-p", a))
    assert_nothing_left(a, label=box.label)


def test_a_rendered_stack_keeps_its_ports_until_down_or_its_ttl(box: Footprint, one_port: int) -> None:
    template, kept, timed = web(box), box.project(), box.project()
    ok(fpc("render", "-f", template, "-p", kept))
    assert stack(kept)["status"] == "rendered"
    assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT, f"owner {kept!r}")
    ok(fpc("down", "-p", kept))
    ok(fpc("render", "-f", template, "-p", timed, "--ttl", "2s"))
    assert "rendered (expires in" in ok(fpc("leases")).stdout
    assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT, f"owner {timed!r}")
    time.sleep(2.2)
    assert "rendered (expired)" in ok(fpc("leases")).stdout
    assert ok(fpc("get", "--owner", "other", "--timeout", "0")).stdout.split() == [str(one_port)]
    assert leases_of(timed) == {}
    assert ls_json()["stacks"] == []
    ok(fpc("release", "--owner", "other"))


def test_a_started_rendered_stack_outlives_its_ttl_while_its_containers_do(box: Footprint, one_port: int) -> None:
    template, project = web(box), box.project()
    [rendered] = ok(fpc("render", "-f", template, "-p", project, "--ttl", "1s")).stdout.split()
    result = docker("compose", "-p", project, "-f", rendered, "--project-directory", str(box.tmp), "up", "-d")
    assert result.returncode == 0, result.stderr
    time.sleep(1.2)
    assert stack(project)["status"] == "up"
    assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT, f"owner {project!r}")
    compose(project, "down")
    assert ok(fpc("get", "--owner", "other", "--timeout", "0")).stdout.split() == [str(one_port)]
    ok(fpc("release", "--owner", "other"))


def test_a_locked_project_is_never_reclaimed(box: Footprint, one_port: int, state_dir: Path) -> None:
    """An up, down or gc of the project in flight holds its lock: its stack is not judged meanwhile."""
    template, a = web(box), box.project()
    ok(fpc("up", "-d", "-f", template, "-p", a))
    compose(a, "down")
    fd = os.open(state_dir / "stacks" / f"{a}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another freeport-compose working on `a` would
        assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT, f"owner {a!r}")
        assert "gc: skipped" in ok(fpc("gc")).stderr
        assert leases_of(a) == {"FREEPORT_web": one_port}
    finally:
        os.close(fd)
    assert ok(fpc("get", "--owner", "other", "--timeout", "0")).stdout.split() == [str(one_port)]
    ok(fpc("release", "--owner", "other"))


def test_an_up_in_flight_is_never_reclaimed(box: Footprint, one_port: int) -> None:
    template, a = web(box), box.project()
    proc, at, go = stalled_up(box, template, a)
    try:
        wait_for("the stalled `docker compose up`", at.exists, proc)
        assert stack(a)["status"] == "starting"
        assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT, f"owner {a!r}")
        go.touch()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert stack(a)["status"] == "up"
    ok(fpc("down", "-p", a))


def test_engine_unreachable_reclaims_nothing_and_says_where_it_asked(box: Footprint, one_port: int) -> None:
    template, a = web(box), box.project()
    ok(fpc("up", "-d", "-f", template, "-p", a))
    compose(a, "down")
    error = assert_error(fpc_without_engine("get", "--owner", "other", "--timeout", "0"),
                         ExitCode.NO_FREE_PORT, f"owner {a!r}", "the engine could not be asked",
                         "unix:///var/run/docker.sock")
    assert f"stack(s) {a} still exist" in error
    assert leases_of(a) == {"FREEPORT_web": one_port}  # never a guess
    assert ok(fpc("get", "--owner", "other", "--timeout", "0")).stdout.split() == [str(one_port)]
    ok(fpc("release", "--owner", "other"))


# -- every way out: Ctrl-C, a failed up, a killed CLI -----------------------------------------------

# `run`'s command: says it is ready, then sleeps; on SIGINT it writes what it saw and exits 130,
# as pytest or any Python program does on Ctrl-C. Python installs its KeyboardInterrupt handler only
# when SIGINT is not ignored at start: a command started with SIGINT ignored never sees Ctrl-C.
CTRL_C_COMMAND = """
import os, signal, sys, time
seen = "ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "default"
open(sys.argv[1], "w").write(seen)
try:
    time.sleep(120)
except KeyboardInterrupt:
    open(sys.argv[2], "w").write("KeyboardInterrupt")
    sys.exit(130)
"""

# Start the CLI with SIGINT at its default disposition (as a terminal's shell does), in a process
# group of its own: the test then signals that group, as a terminal's Ctrl-C does.
DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def _run_in_terminal_group(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT, FPC, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.parametrize("command", ["python", "sleep"])
def test_ctrl_c_in_run_reaches_the_command_at_once(box: Footprint, command: str) -> None:
    template, project = web(box), box.project()
    ready, interrupted = box.tmp / "ready", box.tmp / "interrupted"
    if command == "python":
        argv = [sys.executable, "-c", CTRL_C_COMMAND, str(ready), str(interrupted)]
    else:
        argv = ["sh", "-c", f'echo default > "{ready}"; exec sleep 120']  # sleep dies of SIGINT
    proc = _run_in_terminal_group("run", "-f", template, "-p", project, "--", *argv)
    try:
        wait_for("the command to start", ready.exists, proc, timeout=120)
        assert len(containers(project, running=True)) == 1
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets it
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert ready.read_text().strip() == "default"  # the command was not started with SIGINT ignored
    if command == "python":
        assert interrupted.read_text() == "KeyboardInterrupt"
    assert proc.returncode == 130, err  # the command's own status: 130 = died of (or exited on) SIGINT
    assert took < 30, f"run took {took:.1f} s to return after Ctrl-C"
    assert_nothing_left(project, label=box.label)


HEALTHCHECK = ["healthcheck:", '  test: ["CMD", "/bin/busybox", "sh", "-c", "echo probe-said-no; exit 1"]',
               "  interval: 1s", "  timeout: 2s", "  retries: 1", "  start_period: 0s"]


@pytest.mark.parametrize("how", ["unhealthy", "exited"])
@pytest.mark.parametrize("verb", ["up", "run"])
def test_a_failed_up_wait_says_why_before_it_rolls_back(box: Footprint, how: str, verb: str) -> None:
    if how == "unhealthy":
        bad = box.service("db", command=["/bin/busybox", "sh", "-c", "echo db-log-marker; exec sleep 120"],
                          extra=HEALTHCHECK)
    else:
        bad = box.service("db", command=["/bin/busybox", "sh", "-c", "echo db-log-marker; exit 3"])
    template = box.compose_file("compose.yml", box.service("web", ports=["$<FREEPORT_web>:80"]), bad)
    project = box.project()
    args = ["up", "--wait"] if verb == "up" else ["run"]
    tail = ["--", "true"] if verb == "run" else []
    result = fpc(*args, "-f", template, "-p", project, *tail)
    assert_error(result, COMPOSE_STATUS, "docker compose up failed")
    lines = result.stderr.splitlines()
    state = "running (unhealthy)" if how == "unhealthy" else "exited (3)"
    header = f"service db ({project}-db-1): {state}"
    assert header in lines, result.stderr
    after = lines[lines.index(header):]
    assert "    db-log-marker" in after, result.stderr  # its last log lines
    if how == "unhealthy":
        assert "  last failing healthcheck: probe-said-no" in after, result.stderr
    assert not any(line.startswith("service web") for line in lines), result.stderr  # the healthy one: not shown
    assert_nothing_left(project, label=box.label)  # and then rolled back


def test_cli_killed_alone_during_compose_up_keeps_the_project_locked(box: Footprint, one_port: int) -> None:
    """SIGKILL of the CLI process only (not its group): its Compose child goes on, and holds the project's
    lock while it lives, so gc cannot free the ports before the containers appear."""
    template, a = web(box), box.project()
    proc, at, go = stalled_up(box, template, a)
    try:
        wait_for("the stalled `docker compose up`", at.exists, proc)
        compose_pid = int(at.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # not communicate(): Compose, alive, still holds the CLI's pipes
        assert not pid_gone(compose_pid)  # Compose outlived the CLI
        gc = ok(fpc("gc"))
        assert f"gc: skipped {a}" in gc.stderr, gc.stderr
        assert leases_of(a) == {"FREEPORT_web": one_port}
        assert_error(fpc("get", "--owner", "other", "--timeout", "0"), ExitCode.NO_FREE_PORT)
        go.touch()
        # Compose goes on until it is done, or dies of a write to the dead CLI's pipe (SIGPIPE), maybe
        # half-way: either way, whatever it made is gc's once it has ended.
        wait_for("Compose to end", lambda: pid_gone(compose_pid), timeout=120)
    finally:
        go.touch()
        if proc.poll() is None:
            kill_group(proc)
    gc = ok(fpc("gc"))  # now the `up` is over, and its process dead: its stack goes, containers first
    assert f"freeport-compose: freed stack {a}: its `up` was killed" in gc.stderr.splitlines(), gc.stderr
    assert_nothing_left(a, label=box.label)


# -- down when the engine does not answer, and records that are gone ------------------------------


def test_down_without_an_engine_keeps_the_ports(box: Footprint) -> None:
    template, a = web(box), box.project()
    port = parse_dotenv(ok(fpc("up", "-d", "-f", template, "-p", a)).stdout)["FREEPORT_web"]
    assert_error(fpc_without_engine("down", "-p", a), ExitCode.ENGINE_UNREACHABLE, "its ports stay leased")
    assert leases_of(a) == {"FREEPORT_web": port}  # a restart policy could bring the container back
    assert stack(a)["status"] == "stopping"
    assert http_get(port)[0] == 200
    ok(fpc("down", "-p", a))
    assert_nothing_left(a, label=box.label)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_stack_record_crashes_nothing_and_down_still_cleans_up(box: Footprint, damage: str,
                                                                          state_dir: Path) -> None:
    template, a = web(box), box.project()
    ok(fpc("up", "-d", "-f", template, "-p", a))
    record = state_dir / "stacks" / f"{a}.json"
    record.write_bytes(b"" if damage == "truncated" else os.urandom(300))
    assert [s for s in ls_json()["stacks"] if s["project"] == a] == []
    ok(fpc("leases"))
    ok(fpc("gc"))
    ok(fpc("down", "-p", a))  # no record: its leases go, and its containers (found by label) too
    assert_nothing_left(a, label=box.label)


# -- temporary files of killed writers ---------------------------------------------------------------

NO_SUCH_PID = 4194305  # above PID_MAX_LIMIT: never a live process


def test_gc_sweeps_temporaries_of_dead_writers_only(state_dir: Path) -> None:
    ok(fpc("leases"))  # creates the state dir
    (state_dir / "owners").mkdir(mode=0o700, exist_ok=True)  # made at the first named lease: it is lazy
    dead = [
        state_dir / f".web.json.{NO_SUCH_PID}.0a1b2c3d.tmp",
        state_dir / "stacks" / f".p.json.{NO_SUCH_PID}.0a1b2c3d.tmp",
        state_dir / "ports" / f".slots.{NO_SUCH_PID}.0a1b2c3d",
        state_dir / "owners" / f".x.{NO_SUCH_PID}.0a1b2c3d.tmp",
    ]
    ports_dir = state_dir / f".ports.{NO_SUCH_PID}.0a1b2c3d"
    ports_dir.mkdir()
    (ports_dir / "20001.lock").write_text("{}")
    live = state_dir / "stacks" / f".q.json.{os.getpid()}.0a1b2c3d.tmp"  # its writer (this test) lives
    ours = state_dir / "stacks" / ".not-a-temporary"
    for path in [*dead, live, ours]:
        path.write_text("x")
    gc = ok(fpc("gc"))
    for path in [*dead, ports_dir]:
        assert not path.exists(), path
        assert f"removed {path}, left by a writer that was killed" in gc.stderr, gc.stderr
    assert live.exists()
    assert ours.exists()
    assert "nothing to free" in ok(fpc("gc")).stderr


def test_the_compose_stack_fixture_says_why_a_stack_failed(box: Footprint) -> None:
    bad = box.service("db", command=["/bin/busybox", "sh", "-c", "echo fixture-log-marker; exit 4"])
    template = box.compose_file("compose.yml", box.service("web", ports=["$<FREEPORT_web>:80"]), bad)
    project = box.project()
    suite = box.tmp / "test_user.py"
    suite.write_text(
        "def test_stack(compose_stack):\n"
        f"    compose_stack({template!r}, project={project!r})\n"
    )
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                          capture_output=True, text=True, timeout=300, cwd=box.tmp, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ComposeError: docker compose up failed" in done.stdout, done.stdout
    assert f"service db ({project}-db-1): exited (4)" in done.stdout, done.stdout
    assert "fixture-log-marker" in done.stdout, done.stdout
    assert_nothing_left(project, label=box.label)
