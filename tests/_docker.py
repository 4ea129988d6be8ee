"""Docker and CLI helpers shared by the tests that run the `freeport-compose` command line.

Imported as `from _docker import ...` (like tests/_children.py: tests/ itself is on sys.path).
One version of each: running the CLI (`fpc`) and `docker`, the checks of a command's result
(exit code, no traceback, the documented error shape), the containers and networks of a Compose
project (found by its com.docker.compose.project label), and the cleanup that brings projects
down and checks that no container or network of them is left. The `docker_engine` fixture that
skips a module without Docker lives in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

FPC = str(Path(sys.executable).with_name("freeport-compose"))
IMAGE = "freeport-test-busybox:latest"  # built by scripts/setup.sh; never pulled
PROJECT_LABEL = "com.docker.compose.project"
CLI_TIMEOUT = 120.0  # seconds for one CLI call; a hang fails the test instead of the whole run
NOBODY = 65534
# argparse's usage error line (exit 2), the one error line not of the form `freeport-compose: ...`
USAGE_LINE = re.compile(r"freeport-compose(?: [a-z]+)?: .+ \(see --help\)")

Result = subprocess.CompletedProcess


# --------------------------------------------------------------------------------------------
# Running docker and the CLI
# --------------------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 60.0, cwd: str | None = None,
           env: Mapping[str, str] | None = None) -> Result[str]:
    """`docker ARGS` to completion, output captured, in this environment plus `env`; never reads stdin."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def engine_answers(timeout: float = 20.0) -> bool:
    """Whether `docker info` succeeds now (not cached: the engine may be stopped and restarted by a test)."""
    try:
        return docker("info", timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def docker_missing() -> str:
    """Why tests that reach Docker cannot run here, or "" when the engine, Compose v2 and the test image are there."""
    try:
        info = docker("info", timeout=30)
        if info.returncode != 0:
            last = (info.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`docker info` failed ({last}): run `bash scripts/setup.sh` to start dockerd"
        if docker("compose", "version", "--short").returncode != 0:
            return "`docker compose` (Compose v2 plugin) is missing: run `bash scripts/setup.sh`"
        if docker("image", "inspect", IMAGE).returncode != 0:
            return f"test image {IMAGE} is missing: run `bash scripts/setup.sh`"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker does not run ({e}): run `bash scripts/setup.sh` to start dockerd"
    return ""


def require_docker() -> None:
    """Skip the calling test or fixture, saying why, when docker_missing() says why."""
    if why := docker_missing():
        pytest.skip(why)


def _as_nobody(command: list[str], env: Mapping[str, str]) -> Result[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, cwd="/", user=NOBODY, group=NOBODY, extra_groups=[])


@functools.cache
def nobody_cli() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """How uid 65534 runs the CLI: (command, extra environment); ((), ()) when it cannot.

    The console script first. Its interpreter may live where uid 65534 cannot reach it (a pyenv
    Python under /root): then a system Python of the same version runs `-m freeport_compose` with
    this virtualenv's site-packages and the package's source on PYTHONPATH.
    """
    import freeport_compose

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if _as_nobody([FPC, "--help"], {}).returncode == 0:
            return (FPC,), ()
    src = str(Path(freeport_compose.__file__).resolve().parents[1])
    path = os.pathsep.join([src, sysconfig.get_paths()["purelib"]])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"), "/usr/bin/python3"):
        if not python:
            continue
        command = (python, "-m", "freeport_compose")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if _as_nobody([*command, "--help"], {"PYTHONPATH": path}).returncode == 0:
                return command, (("PYTHONPATH", path),)
    return (), ()


def fpc(*args: str, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
        timeout: float = CLI_TIMEOUT, user: int | None = None) -> Result[str]:
    """The freeport-compose CLI to completion, output captured, in this environment plus `env`
    (FREEPORT_STATE_DIR comes from conftest's autouse fixture); never reads stdin. As uid and gid
    `user` (NOBODY only), without supplementary groups, when given."""
    command: tuple[str, ...] = (FPC,)
    extra: dict[str, str] = {}
    ids: dict[str, Any] = {}
    if user is not None:
        assert user == NOBODY
        found, pairs = nobody_cli()
        command, extra, ids = found, dict(pairs), {"user": user, "group": user, "extra_groups": []}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {}), **extra}, stdin=subprocess.DEVNULL, **ids)


# --------------------------------------------------------------------------------------------
# Checking a CLI result
# --------------------------------------------------------------------------------------------


def assert_no_traceback(result: Result[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def exits(result: Result[str], code: int) -> Result[str]:
    """result exited `code` and printed no Python traceback; returns result."""
    assert result.returncode == code, f"{result.args} exited {result.returncode}, expected {code}:\n{result.stderr}"
    assert_no_traceback(result)
    return result


def ok(result: Result[str]) -> Result[str]:
    """result exited 0 and printed no Python traceback; returns result."""
    return exits(result, 0)


def assert_error(result: Result[str], code: int, *fragments: str, usage: bool = False) -> str:
    """The documented error shape (README, "Exit codes"): exit `code`, no traceback, nothing on stdout,
    and stderr ending in one error line that holds every fragment; returns that line.

    The error line is `freeport-compose: ...`, and no other line of ours (warnings aside) comes
    before it; with usage=True it is argparse's `freeport-compose COMMAND: ... (see --help)`.
    """
    exits(result, code)
    assert result.stdout == "", result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    if usage:
        assert USAGE_LINE.fullmatch(last), result.stderr
    else:
        assert last.startswith("freeport-compose: "), result.stderr
        own = [ln for ln in lines if ln.startswith("freeport-compose")
               and not ln.startswith("freeport-compose: warning:")]
        assert own == [last], result.stderr
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


def ls_json(state: str | Path | None = None, user: int | None = None) -> dict[str, Any]:
    """`freeport-compose ls --json` of the state dir `state` (default: $FREEPORT_STATE_DIR), as `user`."""
    env = None if state is None else {"FREEPORT_STATE_DIR": str(state)}
    out: dict[str, Any] = json.loads(ok(fpc("ls", "--json", env=env, user=user)).stdout)
    return out


def leases_of(project: str) -> dict[str, int]:
    """The project's leases, label: port."""
    return {lease["label"]: lease["port"] for lease in ls_json()["leases"] if lease["owner"] == project}


# --------------------------------------------------------------------------------------------
# What a project has on the engine, and cleaning up
# --------------------------------------------------------------------------------------------


def _ids(*args: str) -> list[str]:
    result = docker(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def labelled(label: str, *, running: bool = False) -> list[str]:
    """Full ids of the containers labelled `label` ("key=value"): all of them, or the running ones."""
    return _ids("ps", "--quiet", "--no-trunc", *(() if running else ("--all",)), "--filter", f"label={label}")


def containers(project: str, *, running: bool = False) -> list[str]:
    """Full ids of the project's containers (by its com.docker.compose.project label)."""
    return labelled(f"{PROJECT_LABEL}={project}", running=running)


def networks(project: str) -> list[str]:
    """Full ids of the project's networks (by its com.docker.compose.project label)."""
    return _ids("network", "ls", "--quiet", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={project}")


def assert_engine_clean(*projects: str, label: str | None = None) -> None:
    """No container and no network of these projects on the engine, and no container labelled `label`."""
    for project in projects:
        assert containers(project) == [], f"containers of {project} left"
        assert networks(project) == [], f"networks of {project} left"
    if label is not None:
        assert labelled(label) == [], f"containers labelled {label} left"


def assert_nothing_left(*projects: str, label: str | None = None) -> None:
    """assert_engine_clean, and no lease or stack record of these projects in `ls --json`."""
    assert_engine_clean(*projects, label=label)
    state = ls_json()
    for project in projects:
        assert [lease for lease in state["leases"] if lease["owner"] == project] == [], state
        assert [s for s in state["stacks"] if s["project"] == project] == [], state


def down_projects(*projects: str, label: str | None = None) -> None:
    """Remove whatever these projects may have on the engine, whatever freeport-compose did, then
    assert_engine_clean: `docker compose down` of each (from an empty directory, so that no
    compose.yml is read by accident), then force-removal of the containers and networks that
    survived it and of every container labelled `label`."""
    with tempfile.TemporaryDirectory(prefix="fpc-down-") as empty:
        for project in projects:
            docker("compose", "-p", project, "down", "-v", "--remove-orphans", "--timeout", "0", cwd=empty)
    left = {c for project in projects for c in containers(project)}
    if label is not None:
        left.update(labelled(label))
    if left:
        docker("rm", "-f", "-v", *sorted(left))
    nets = [n for project in projects for n in networks(project)]
    if nets:
        docker("network", "rm", *nets)
    assert_engine_clean(*projects, label=label)
