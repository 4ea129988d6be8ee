"""Fault injection for the `freeport-compose` CLI on a real Docker engine.

`up` and `run` are SIGKILLed at several points (waiting for a port, after rendering but before
Compose ran, after Compose started the containers), and dockerd itself is stopped and restarted
under a running stack. After each fault, the commands a user would reach for (`gc`, the same
`up` again, `down`) must bring the machine back to a consistent or clean state: every container
on its leased port or gone, no lease or stack record left over, no leased port handed out twice.

Faults between rendering and Compose are placed with a Compose wrapper ($FREEPORT_COMPOSE, a
shell script written by the test) that stops at a chosen point of the `up` verb and says so in
a marker file. freeport-compose runs in its own session, and the whole process group (CLI,
wrapper, Compose, `run`'s command) is SIGKILLed at once, as a cancelled CI job would be.

Every stack runs the local image freeport-test-busybox:latest (`busybox httpd`), serving a body
that names its leased port. Each test removes what it started, by project name, in a finally
block; the dockerd test always restarts the engine, as scripts/setup.sh starts it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    SLEEPER,
    Footprint,
    assert_error,
    assert_no_traceback,
    assert_nothing_left,
    containers,
    docker,
    engine_stopped,
    fpc,
    http_get,
    kill_group,
    leases_of,
    ls_json,
    ok,
    parse_dotenv,
    pid_gone,
    rootful_dockerd_pid,
    spawn_cli,
    wait_for,
)
from freeport_compose._error import ExitCode

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]  # conftest: skips without Docker

# A Compose stand-in: every verb goes straight to `docker compose`, except `up`, which stops
# where $FPC_FAULT says and records that it got there (with its pid) in $FPC_FAULT_DIR.
WRAPPER = """#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = up ]; then
        case "$FPC_FAULT" in
        before-up)
            echo $$ > "$FPC_FAULT_DIR/wrapper.tmp" && mv "$FPC_FAULT_DIR/wrapper.tmp" "$FPC_FAULT_DIR/before-up"
            sleep 30
            exec docker compose "$@" ;;
        after-up)
            docker compose "$@"
            rc=$?
            echo $rc > "$FPC_FAULT_DIR/wrapper.tmp" && mv "$FPC_FAULT_DIR/wrapper.tmp" "$FPC_FAULT_DIR/after-up"
            sleep 30
            exit $rc ;;
        esac
    fi
done
exec docker compose "$@"
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def stacks_named(project: str) -> list[dict[str, Any]]:
    return [s for s in ls_json()["stacks"] if s["project"] == project]


def published(project: str) -> set[int]:
    """Host ports the engine bound for the web container's port 80 (the project has one container)."""
    [cid] = containers(project)
    result = docker("inspect", cid)
    assert result.returncode == 0, result.stderr
    bindings = json.loads(result.stdout)[0]["NetworkSettings"]["Ports"].get("80/tcp") or []
    return {int(b["HostPort"]) for b in bindings}


class Box(Footprint):
    """One test's footprint (_docker.Footprint: projects fpc-fault-<random>, containers labelled
    fpc.faults=<token>, cleaned up by cleanup()), with its template and its Compose wrapper."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "fpc.faults", "fpc-fault")
        # One service, web, serving "web <its port>" on FREEPORT_web.
        self.template = self.compose_file("compose.yml", self.service(
            "web", ports=["$<FREEPORT_web>:80"], body="web $<FREEPORT_web>"))
        self.wrapper = tmp / "compose-wrapper.sh"
        self.wrapper.write_text(WRAPPER)
        self.wrapper.chmod(0o755)

    def wrapper_env(self, fault: str) -> dict[str, str]:
        return {"FREEPORT_COMPOSE": str(self.wrapper), "FPC_FAULT": fault, "FPC_FAULT_DIR": str(self.tmp)}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    with Box(tmp_path) as b:  # cleanup() at the end, whatever happened
        yield b


def assert_consistent(project: str, ports: Mapping[str, int]) -> int:
    """The stack is up on exactly its leased port, and every view of it agrees; returns the port."""
    assert list(ports) == ["FREEPORT_web"], ports
    port = ports["FREEPORT_web"]
    assert leases_of(project) == {"FREEPORT_web": port}
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == {"FREEPORT_web": port}
    [stack] = stacks_named(project)
    assert (stack["status"], stack["ports"], stack["containers"]) == ("up", {"FREEPORT_web": port}, 1)
    assert len(containers(project, running=True)) == 1
    assert published(project) == {port}
    assert http_get(port) == (200, f"web {port}\n")
    return port


# --------------------------------------------------------------------------------------------
# 1. `up` SIGKILLed: while waiting for a port, before Compose, after Compose started the stack
# --------------------------------------------------------------------------------------------


def _kill_up(box: Box, project: str, stage: str, monkeypatch: pytest.MonkeyPatch,
             free_block: Callable[[int], int]) -> int | None:
    """Start `up -p project`, SIGKILL it (and all it started) at `stage`; returns the leased port, if any.

    waiting-for-port: the only port of FREEPORT_RANGE is held by owner `blocker`, so `up` waits.
    before-compose: rendered and leased, Compose's `up` not run yet (the wrapper sleeps first).
    after-compose: Compose's `up` done and the container serving (the wrapper sleeps after it).
    """
    env: dict[str, str] = {}
    if stage == "waiting-for-port":
        only = free_block(1)
        monkeypatch.setenv("FREEPORT_RANGE", f"{only}-{only}")
        assert ok(fpc("get", "--owner", "blocker")).stdout == f"{only}\n"
    else:
        env = box.wrapper_env("before-up" if stage == "before-compose" else "after-up")
    proc = spawn_cli("up", "-d", "-f", box.template, "-p", project, env=env)
    port: int | None = None
    try:
        if stage == "waiting-for-port":
            wait_for("the stack record", lambda: [s["status"] for s in stacks_named(project)] == ["starting"], proc)
            time.sleep(0.5)  # well inside the wait for a free port
            assert proc.poll() is None
            assert leases_of(project) == {}
        elif stage == "before-compose":
            wait_for("the wrapper's `up`", (box.tmp / "before-up").exists, proc)
            [port] = leases_of(project).values()
            [stack] = stacks_named(project)
            assert stack["status"] == "starting"
            assert containers(project) == []
        else:
            wait_for("Compose's `up`", (box.tmp / "after-up").exists, proc)
            assert (box.tmp / "after-up").read_text().strip() == "0"
            [port] = leases_of(project).values()
            assert len(containers(project, running=True)) == 1
            assert http_get(port) == (200, f"web {port}\n")
    finally:
        err = kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, err
    if stage == "before-compose":
        assert pid_gone(int((box.tmp / "before-up").read_text()))  # the wrapper can no longer start the stack
    return port


STAGES = ["waiting-for-port", "before-compose", "after-compose"]


@pytest.mark.parametrize("stage", STAGES)
def test_killed_up_then_gc(box: Box, stage: str, monkeypatch: pytest.MonkeyPatch,
                           free_block: Callable[[int], int]) -> None:
    project = box.project()
    port = _kill_up(box, project, stage, monkeypatch, free_block)
    if port is not None:
        assert leases_of(project) == {"FREEPORT_web": port}  # a killed `up` keeps its named leases...

    result = ok(fpc("gc"))  # ...until gc sees its driver is dead
    assert f"freeport-compose: freed stack {project}: its `up` was killed" in result.stderr.splitlines(), result.stderr
    assert_nothing_left(project)
    time.sleep(0.5)
    assert containers(project) == [], "a container appeared after gc"
    if stage == "waiting-for-port":
        assert {lease["owner"] for lease in ls_json()["leases"]} == {"blocker"}  # gc left the live lease alone
        ok(fpc("release", "--owner", "blocker"))
    assert ls_json()["leases"] == []

    again = parse_dotenv(ok(fpc("up", "-d", "-f", box.template, "-p", project)).stdout)
    assert_consistent(project, again)
    ok(fpc("down", "-p", project))
    assert_nothing_left(project)
    assert ls_json() == {"state_dir": ls_json()["state_dir"], "leases": [], "stacks": []}


@pytest.mark.parametrize("stage", STAGES)
def test_killed_up_then_up_again(box: Box, stage: str, monkeypatch: pytest.MonkeyPatch,
                                 free_block: Callable[[int], int]) -> None:
    """The next `up -p SAME`, with no gc in between, takes over what the killed one left."""
    project = box.project()
    port = _kill_up(box, project, stage, monkeypatch, free_block)
    if stage == "waiting-for-port":
        ok(fpc("release", "--owner", "blocker"))

    again = parse_dotenv(ok(fpc("up", "-d", "-f", box.template, "-p", project)).stdout)
    got = assert_consistent(project, again)
    if port is not None:
        assert got == port  # the killed `up`'s named lease is reused, not leaked beside a new one
    assert len(ls_json()["leases"]) == 1
    assert "nothing to free" in ok(fpc("gc")).stderr  # the stack is a live one now
    assert_consistent(project, again)

    ok(fpc("down", "-p", project))
    assert_nothing_left(project)
    assert ls_json() == {"state_dir": ls_json()["state_dir"], "leases": [], "stacks": []}


# --------------------------------------------------------------------------------------------
# 3. `run` SIGKILLed while its command runs
# --------------------------------------------------------------------------------------------


def test_killed_run_then_gc(box: Box) -> None:
    project = box.project()
    marker = box.tmp / "command-started"
    proc = spawn_cli("run", "-f", box.template, "-p", project, "--", sys.executable, "-c", SLEEPER, str(marker))
    command_pid = None
    try:
        wait_for("run's command", marker.exists, proc)
        command_pid = int(marker.read_text())
        [port] = leases_of(project).values()
        assert http_get(port) == (200, f"web {port}\n")
        assert [s["status"] for s in stacks_named(project)] == ["run"]  # up for as long as `run` lives
        assert "nothing to free" in ok(fpc("gc")).stderr  # a live `run`'s stack is left alone
        assert len(containers(project, running=True)) == 1
    finally:
        err = kill_group(proc)
        if command_pid is not None and not pid_gone(command_pid):
            os.kill(command_pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, err
    # Its reaper (a process of its own, outside the killed group) brings the stack down by itself
    wait_for("the reaper to take the stack down", lambda: not containers(project) and not leases_of(project))
    assert stacks_named(project) == []
    result = ok(fpc("gc"))  # nothing is left for gc to do
    assert f"freed stack {project}" not in result.stderr, result.stderr
    assert_nothing_left(project)
    assert ls_json()["leases"] == []


# --------------------------------------------------------------------------------------------
# 2. dockerd stopped and restarted under running stacks
# --------------------------------------------------------------------------------------------

@pytest.mark.load  # bounces the machine's engine: not for `make test-quick`
def test_dockerd_restart_under_running_stacks(box: Box, monkeypatch: pytest.MonkeyPatch,
                                              free_block: Callable[[int], int]) -> None:
    pid = rootful_dockerd_pid()
    if os.geteuid() != 0 or pid is None:
        pytest.skip(f"needs root and the rootful dockerd to stop and restart (uid {os.geteuid()}, its pid {pid})")
    first = free_block(4)
    block = set(range(first, first + 4))
    monkeypatch.setenv("FREEPORT_RANGE", f"{first}-{first + 3}")  # both stacks and every `get` below
    downed, kept = box.project(), box.project()
    port_a = parse_dotenv(ok(fpc("up", "-d", "-f", box.template, "-p", downed)).stdout)["FREEPORT_web"]
    port_b = parse_dotenv(ok(fpc("up", "-d", "-f", box.template, "-p", kept)).stdout)["FREEPORT_web"]
    assert {port_a, port_b} <= block
    assert http_get(port_a)[0] == http_get(port_b)[0] == 200

    down_failed = False
    with engine_stopped(pid):
        # The engine is gone, so are the containers' port bindings: the leases alone keep the ports.
        state = ok(fpc("leases", "--json"))
        assert "container counts unknown" in state.stderr
        stacks = {s["project"]: s for s in json.loads(state.stdout)["stacks"]}
        assert {p: (s["status"], s["containers"]) for p, s in stacks.items()} == {downed: ("up", None),
                                                                                     kept: ("up", None)}
        table = ok(fpc("leases"))
        rows = [ln.split() for ln in table.stdout.splitlines()]
        assert [downed, "up", "?", "default", f"FREEPORT_web={port_a}"] in rows
        got = [int(p) for p in ok(fpc("get", "--owner", "x", "-n", "2", "--timeout", "0")).stdout.split()]
        assert set(got) == block - {port_a, port_b}
        assert_error(fpc("get", "--owner", "y", "--timeout", "0"), ExitCode.NO_FREE_PORT)
        ok(fpc("release", "--owner", "x"))
        assert json.loads(ok(fpc("ports", "-p", kept, "--format", "json")).stdout) == {"FREEPORT_web": port_b}

        gc = fpc("gc")  # an engine that does not answer is not an engine without containers
        assert gc.returncode in (ExitCode.OK, ExitCode.ENGINE_UNREACHABLE), gc.stderr
        assert_no_traceback(gc)
        if gc.returncode:
            assert_error(gc, ExitCode.ENGINE_UNREACHABLE, "no Docker engine answers")
        assert leases_of(downed) == {"FREEPORT_web": port_a}
        assert leases_of(kept) == {"FREEPORT_web": port_b}

        down = fpc("down", "-p", downed)
        assert down.returncode in (ExitCode.OK, ExitCode.ENGINE_UNREACHABLE), down.stderr
        assert_no_traceback(down)
        down_failed = down.returncode == ExitCode.ENGINE_UNREACHABLE
        if down_failed:
            assert_error(down, ExitCode.ENGINE_UNREACHABLE, "no Docker engine answers", f"down -p {downed}",
                         "its ports stay leased")
            # README: while the engine cannot say the containers are gone, `down` keeps the ports
            # (a restart policy would bring them back on them) and the record, as `stopping`, so
            # that `down` or `gc` can finish once the engine is back.
            assert [s["status"] for s in stacks_named(downed)] == ["stopping"]
            assert leases_of(downed) == {"FREEPORT_web": port_a}
        else:
            assert stacks_named(downed) == []
            assert leases_of(downed) == {}
        assert leases_of(kept) == {"FREEPORT_web": port_b}
        # The stack still up keeps its port. (The downed one's, if free as a lease, may be in
        # TIME_WAIT after our HTTP requests, which the allocator's probe counts as in use.)
        got = [int(p) for p in ok(fpc("get", "--owner", "x", "-n", "2", "--timeout", "0")).stdout.split()]
        assert port_b not in got
        assert set(got) <= block
        ok(fpc("release", "--owner", "x"))

    # Back: both stacks' containers were stopped with the engine and are still there, exited.
    assert len(containers(downed)) == len(containers(kept)) == 1
    assert containers(kept, running=True) == []
    gc = ok(fpc("gc"))
    if down_failed:
        assert f"freeport-compose: freed stack {downed}: its `down` did not finish" in gc.stderr.splitlines(), gc.stderr
    assert_nothing_left(downed)
    assert leases_of(kept) == {"FREEPORT_web": port_b}  # a stopped stack is still the user's
    assert [s["containers"] for s in stacks_named(kept)] == [1]

    again = parse_dotenv(ok(fpc("up", "-d", "-f", box.template, "-p", kept)).stdout)
    assert again == {"FREEPORT_web": port_b}
    assert_consistent(kept, again)
    ok(fpc("down", "-p", kept))
    assert_nothing_left(downed, kept)
    assert ls_json()["leases"] == []
