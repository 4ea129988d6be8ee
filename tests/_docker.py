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
import dataclasses
import functools
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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


DOCKERD_LOG = os.path.join(os.environ.get("TMPDIR") or "/tmp", "freeport-dockerd.log")


def rootful_dockerd_pid() -> int | None:
    """The rootful dockerd that scripts/setup.sh started (its default pidfile): not a rootless one,
    nor a test's second engine, which have pidfiles of their own and are not the machine's engine."""
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Whether `condition` came true within `timeout` seconds (polled every `interval`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@contextlib.contextmanager
def engine_stopped(pid: int) -> Iterator[None]:
    """The machine's dockerd (`pid`, see rootful_dockerd_pid) stopped for the block (SIGTERM, until it
    no longer answers), then started again as scripts/setup.sh does, however the block ends."""
    os.kill(pid, signal.SIGTERM)
    try:
        assert wait_until(lambda: not engine_answers(), 60), "dockerd still answers 60 s after SIGTERM"
        # Gone, not only silent: what the block times runs from here, not from a shutdown that
        # can still take 10 s stopping containers.
        assert wait_until(lambda: pid_gone(pid), 60), f"dockerd {pid} did not exit within 60 s of SIGTERM"
        yield
    finally:
        if not engine_answers():
            if not wait_until(lambda: pid_gone(pid), 60):
                pytest.fail(f"dockerd {pid} did not exit within 60 s of SIGTERM; not starting a second one")
            with open(DOCKERD_LOG, "ab") as log:
                # In a session of its own: the engine must outlive this test run's process group,
                # which whoever started pytest may kill when it ends.
                subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            if not wait_until(engine_answers, 60):
                with contextlib.suppress(OSError):
                    tail = Path(DOCKERD_LOG).read_text(errors="replace").splitlines()[-20:]
                    pytest.fail("dockerd did not come back within 60 s:\n" + "\n".join(tail))
                pytest.fail("dockerd did not come back within 60 s")


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


def fpc_without_engine(*args: str, env: Mapping[str, str] | None = None) -> Result[str]:
    """The CLI with the machine's engine not answering for it alone: run in a mount namespace of
    its own where the engine's socket is covered by an empty file (connect: refused). The engine,
    its containers and every other process are untouched."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to hide the engine's socket from one process")
    cover = tempfile.NamedTemporaryFile(prefix="fpc-no-engine-", delete=False)  # noqa: SIM115
    cover.close()
    try:
        # "$0" and "$@": the paths and the CLI's arguments reach the shell as argv, never as code
        hide = 'mount --bind "$0" /var/run/docker.sock && exec "$@"'
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, cover.name,
                               FPC, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    finally:
        os.unlink(cover.name)


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


COMPOSE_STATUS = 1
"""The exit status of `docker compose` itself when it fails (which ours then is, as Compose's would be)."""


def assert_compose_error(result: Result[str], code: int, *fragments: str) -> None:
    """A line Compose itself refused (our process became Compose): Compose's exit status, no traceback,
    nothing of ours but warnings, and every fragment somewhere on stderr."""
    exits(result, code)
    own = [ln for ln in result.stderr.splitlines() if ln.startswith("freeport-compose") and "warning:" not in ln]
    assert own == [], result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


def assert_error(result: Result[str], code: int, *fragments: str, usage: bool = False) -> str:
    """The documented error shape (docs/cli.md, "Exit codes"): exit `code`, no traceback, nothing on stdout,
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
    """`freeport-compose leases --json` of the state dir `state` (default: $FREEPORT_STATE_DIR), as `user`."""
    env = None if state is None else {"FREEPORT_STATE_DIR": str(state)}
    out: dict[str, Any] = json.loads(ok(fpc("leases", "--json", env=env, user=user)).stdout)
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


# --------------------------------------------------------------------------------------------
# One test's footprint on the engine, and what its containers serve
# --------------------------------------------------------------------------------------------

# Serves /index.html holding $BODY ($$: Compose's escaped dollar, so the container's shell expands it).
HTTPD = ["/bin/busybox", "sh", "-c", 'echo "$$BODY" > /index.html && exec /bin/busybox httpd -f -p 80 -h /']

# `run`'s command: says it started (its pid, atomically), then waits to be killed.
SLEEPER = (
    "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)"
)


_F = TypeVar("_F", bound="Footprint")


@dataclasses.dataclass
class Footprint:
    """One test's Docker footprint: its projects, the label token on its containers, its Compose files."""

    tmp: Path
    label_key: str = "fpc.test"
    prefix: str = "fpc-test"
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    projects: list[str] = dataclasses.field(default_factory=list)

    def project(self) -> str:
        name = f"{self.prefix}-{secrets.token_hex(4)}"
        self.projects.append(name)
        return name

    def service(self, name: str, *, ports: Sequence[str] = (), body: str = "ok",
                env: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                command: Sequence[str] = HTTPD, image: str = IMAGE, extra: Sequence[str] = ()) -> str:
        """One service of a Compose file, as YAML text (JSON strings are YAML double-quoted scalars)."""
        lines = [f"  {name}:", f"    image: {image}", "    pull_policy: never", "    stop_signal: SIGKILL",
                 *(f"    {line}" for line in extra), "    command:"]
        lines += [f"      - {json.dumps(arg)}" for arg in command]
        lines += ["    environment:", f"      BODY: {json.dumps(body)}"]
        lines += [f"      {k}: {json.dumps(v)}" for k, v in (env or {}).items()]
        lines += ["    labels:", f"      {self.label_key}: {json.dumps(self.token)}"]
        lines += [f"      {k}: {json.dumps(v)}" for k, v in (labels or {}).items()]
        if ports:
            lines += ["    ports:", *(f"      - {json.dumps(p)}" for p in ports)]
        return "\n".join(lines) + "\n"

    def compose_file(self, name: str, *services: str) -> str:
        path = self.tmp / name
        path.write_text("services:\n" + "".join(services))
        return str(path)

    @property
    def label(self) -> str:
        """The label on every container of this test ("key=value")."""
        return f"{self.label_key}={self.token}"

    def cleanup(self) -> None:
        """Remove everything this test may have started, whatever freeport-compose did."""
        if engine_answers():  # a test that stops the engine restarts it in its own finally
            down_projects(*self.projects, label=self.label)

    def __enter__(self: _F) -> _F:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def http_get(port: int, *, attempts: int = 60, delay: float = 0.1) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/, retried while the server is still starting."""
    url = f"http://127.0.0.1:{port}/"
    last: BaseException | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except (OSError, http.client.HTTPException) as e:  # refused or reset while httpd starts
            last = e
            time.sleep(delay)
    raise AssertionError(f"nothing answers HTTP on {url}: {last}")


def refused(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:port is refused (nothing listens there)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def parse_dotenv(text: str) -> dict[str, int]:
    """The ports of dotenv output (`up`'s stdout, `ports --format dotenv`), in order: NAME: port.

    `ports` follows each `NAME=port` line with `NAME_HOST=<address>`; those lines are checked
    (a non-empty address) and left out, so the same call reads both commands' output.
    """
    ports: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, value = line.split("=", 1)
        if key.endswith("_HOST"):
            assert value.strip(), f"empty address in {line!r}"
            continue
        ports[key] = int(value)
    return ports


def pid_gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def spawn_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the CLI in a session of its own, so killpg reaches it and everything it started."""
    return subprocess.Popen([FPC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, start_new_session=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` has not exited yet (zombies count as exited)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


def kill_group(proc: subprocess.Popen[str]) -> str:
    """SIGKILL the process group led by proc (the CLI, Compose, a wrapper...); returns its stderr
    once every process of the group has exited (proc's pipes can reach EOF while one still dies)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return err


def wait_for(what: str, condition: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
             timeout: float = 60.0) -> None:
    """Poll until condition() holds; fail early if proc (the CLI under test) exits meanwhile."""

    def ready() -> bool:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"{what}: the CLI exited {proc.returncode} first:\n{err}")
        return False

    assert wait_until(ready, timeout, interval=0.05), f"timed out waiting for {what}"
