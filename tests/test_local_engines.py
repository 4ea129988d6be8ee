"""The stack commands on every kind of engine this machine may run (issue 20): rootful Docker,
rootful Podman, rootless Podman and rootless Docker, each through its Docker-compatible socket.

Each test runs on each engine: `up` of two stacks side by side on distinct ports that answer
from the host, a port that engine's own container publishes avoided, `down` leaving nothing,
`gc` after the containers went behind our back, `run -- CMD`, and leases on two local engines never
overlapping. The rootless engines belong to an unprivileged user (scripts/setup.sh makes it): the
CLI runs as that user, with a state dir of that user's own.

An engine that is not set up here is skipped, saying why and how to set it up; CI sets up all of
them (`CI=true bash scripts/setup.sh`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _docker import FPC, HTTPD, IMAGE, PROJECT_LABEL, http_get, parse_dotenv

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

ROOTLESS_USER = os.environ.get("FREEPORT_ROOTLESS_USER", "freeport-rootless")
SETUP = "run `sudo bash scripts/setup.sh` (FREEPORT_ENGINES=all, the default) to set it up"


@dataclasses.dataclass
class LocalEngine:
    """One engine on this machine: its socket, and the user whose engine it is (None: root's)."""

    name: str
    sock: str
    user: str | None = None
    home: str = ""  # a directory of the engine's user, for its state dir and templates

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a CLI run against this engine, as its user."""
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_HOST")}
        env["DOCKER_HOST"] = self.address
        env["FREEPORT_STATE_DIR"] = os.path.join(self.home, "state")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            env.update(HOME=entry.pw_dir, USER=self.user, XDG_RUNTIME_DIR=f"/run/user/{entry.pw_uid}")
        return {**env, **(extra or {})}

    def fpc(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """The CLI against this engine, as its user."""
        full = self.env(env)
        command = [FPC, *args]
        if self.user is not None:
            prefix, path = _cli_for(self.user)
            if path:
                full["PYTHONPATH"] = path
            # runuser passes no environment through on its own: `env` sets it for the CLI exactly.
            command = ["runuser", "-u", self.user, "--", "env", "-i", *(f"{k}={v}" for k, v in full.items()),
                       *prefix, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full, cwd=self.home,
                              stdin=subprocess.DEVNULL)

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine (root may use any user's socket)."""
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_CONFIG")}
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                              env={**env, "DOCKER_HOST": self.address}, stdin=subprocess.DEVNULL)

    def containers(self, project: str) -> list[str]:
        out = self.docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}")
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    def published(self) -> set[int]:
        """The host ports its running containers publish, by `docker inspect` (the `docker ps`
        table shows no host port for Podman's answers)."""
        ids = self.docker("ps", "-q").stdout.split()
        if not ids:
            return set()
        out = self.docker("inspect", *ids)
        assert out.returncode == 0, out.stderr
        return {int(b["HostPort"]) for c in json.loads(out.stdout)
                for bindings in ((c.get("NetworkSettings") or {}).get("Ports") or {}).values()
                for b in bindings or [] if b.get("HostPort")}

    def write(self, name: str, text: str) -> str:
        """A file in the engine user's directory, readable by that user."""
        path = os.path.join(self.home, name)
        Path(path).write_text(text)
        if self.user is not None:
            shutil.chown(path, self.user, self.user)
        return path


_CLI: dict[str, tuple[list[str], str]] = {}


def _cli_for(user: str) -> tuple[list[str], str]:
    """How `user` runs the CLI, and the PYTHONPATH it needs: the installed script, unless the
    virtualenv's interpreter is not one that user may execute (a venv made from a Python under
    /root, say); then the system's Python of the same version, pointed at the venv's packages and
    the package itself."""
    if user not in _CLI:
        python = os.path.realpath(sys.executable)
        if subprocess.run(["runuser", "-u", user, "--", "test", "-x", python]).returncode == 0:
            _CLI[user] = ([FPC], os.environ.get("PYTHONPATH", ""))
        else:
            import yaml

            import freeport_compose

            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin") or version
            package = os.path.dirname(os.path.dirname(freeport_compose.__file__))
            packages = os.path.dirname(os.path.dirname(yaml.__file__))
            _CLI[user] = ([system, "-m", "freeport_compose"], f"{package}:{packages}")
    return _CLI[user]


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _engines() -> list[tuple[str, str, str | None]]:
    uid = _uid(ROOTLESS_USER)
    run = f"/run/user/{uid}" if uid is not None else "/nonexistent"
    return [
        ("docker", "/var/run/docker.sock", None),
        ("podman", "/run/podman/podman.sock", None),
        ("rootless-podman", f"{run}/podman/podman.sock", ROOTLESS_USER),
        ("rootless-docker", f"{run}/docker.sock", ROOTLESS_USER),
    ]


def _missing(engine: LocalEngine) -> str:
    """Why this engine cannot be tested here ("" when it can)."""
    if os.geteuid() != 0 and engine.user is not None:
        return f"{engine.name}: testing a rootless engine runs the CLI as {engine.user}, which needs root"
    if engine.user is not None and _uid(engine.user) is None:
        return f"{engine.name}: no user {engine.user}; {SETUP}"
    if not os.path.exists(engine.sock):
        return f"{engine.name}: no socket at {engine.sock}; {SETUP}"
    if engine.docker("version").returncode != 0:
        return f"{engine.name}: nothing answers at {engine.address}; {SETUP}"
    if engine.docker("image", "inspect", IMAGE).returncode != 0:
        return f"{engine.name}: {IMAGE} is not loaded into it; {SETUP}"
    return ""


@pytest.fixture(scope="module", params=[e[0] for e in _engines()])
def local_engine(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    name, sock, user = next(e for e in _engines() if e[0] == request.param)
    home = tempfile.mkdtemp(prefix=f"fpc-{name}-")
    engine = LocalEngine(name, sock, user, home)
    try:
        why = _missing(engine)
        if why:
            pytest.skip(why)
        if user is not None:
            os.chown(home, _uid(user) or 0, _uid(user) or 0)  # its state dir must be the user's, private
        yield engine
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def engine(local_engine: LocalEngine) -> Iterator[LocalEngine]:
    """The engine, with whatever stacks and squatters a test left taken down afterwards."""
    yield local_engine
    for project in ("fpc-le-a", "fpc-le-b", "fpc-le-gc", "fpc-le-run", "fpc-le-pub"):
        if local_engine.containers(project):
            local_engine.docker("rm", "-f", *local_engine.containers(project))
    squatters = local_engine.docker("ps", "-aq", "--filter", "label=fpc.squatter=1").stdout.split()
    if squatters:
        local_engine.docker("rm", "-f", *squatters)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args[-8:]} exited {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def template(engine: LocalEngine, *names: str) -> str:
    """One busybox httpd per name, published on $<FREEPORT_name>, answering with its name."""
    command = json.dumps(HTTPD)
    text = "services:\n"
    for name in names:
        text += (f"  {name}:\n    image: {IMAGE}\n    pull_policy: never\n    command: {command}\n"
                 f"    environment:\n      BODY: {name}\n    ports:\n      - \"$<FREEPORT_{name}>:80\"\n")
    return engine.write(f"t-{'-'.join(names)}.yml", text)


def leases(engine: LocalEngine) -> dict[str, list[int]]:
    """Owner -> ports of the leases `ls` shows for this engine."""
    out: dict[str, list[int]] = {}
    for lease in json.loads(ok(engine.fpc("leases", "--json")).stdout)["leases"]:
        if lease["engine"] == engine.address:
            out.setdefault(lease["owner"], []).append(lease["port"])
    return out


def test_two_stacks_side_by_side_answer_from_the_host_and_down_leaves_nothing(
        engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    first = free_block(8)
    env = {"FREEPORT_RANGE": f"{first}-{first + 7}"}
    file = template(engine, "web")
    a = parse_dotenv(ok(engine.fpc("up", "-d", "-f", file, "-p", "fpc-le-a", env=env)).stdout)
    b = parse_dotenv(ok(engine.fpc("up", "-d", "-f", file, "-p", "fpc-le-b", env=env)).stdout)
    assert a["FREEPORT_web"] != b["FREEPORT_web"]
    assert {a["FREEPORT_web"], b["FREEPORT_web"]} <= engine.published()
    for ports in (a, b):
        assert http_get(ports["FREEPORT_web"], attempts=150)[0] in (200, 404)  # an HTTP answer, from the host
    assert set(leases(engine)) == {"fpc-le-a", "fpc-le-b"}
    for project in ("fpc-le-a", "fpc-le-b"):
        ok(engine.fpc("down", "-p", project))
        assert engine.containers(project) == []
    assert leases(engine) == {}
    assert json.loads(ok(engine.fpc("leases", "--json")).stdout)["stacks"] == []


def test_a_port_the_engines_own_container_publishes_is_avoided(
        engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    squat = engine.docker("run", "-d", "--label", "fpc.squatter=1", "-p", f"{first}:80", IMAGE,
                          "/bin/busybox", "httpd", "-f", "-p", "80")
    assert squat.returncode == 0, squat.stderr
    assert first in engine.published()
    env = {"FREEPORT_RANGE": f"{first}-{first + 1}"}
    out = parse_dotenv(ok(engine.fpc("up", "-d", "-f", template(engine, "web"), "-p", "fpc-le-pub", env=env)).stdout)
    assert out == {"FREEPORT_web": first + 1}
    ok(engine.fpc("down", "-p", "fpc-le-pub"))


def test_gc_frees_a_stack_whose_containers_went(engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    env = {"FREEPORT_RANGE": f"{first}-{first + 1}"}
    ok(engine.fpc("up", "-d", "-f", template(engine, "web"), "-p", "fpc-le-gc", env=env))
    assert set(leases(engine)) == {"fpc-le-gc"}
    gone = engine.docker("rm", "-f", *engine.containers("fpc-le-gc"))  # behind our back
    assert gone.returncode == 0, gone.stderr
    ok(engine.fpc("gc"))
    assert leases(engine) == {}
    assert json.loads(ok(engine.fpc("leases", "--json")).stdout)["stacks"] == []


def test_run_lives_exactly_as_long_as_the_command(engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    env = {"FREEPORT_RANGE": f"{first}-{first + 1}"}
    probe = ("import os, sys, urllib.request, urllib.error, time\n"
             "port = int(os.environ['FREEPORT_web'])\n"
             "for _ in range(150):\n"
             "    try: urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=2)\n"
             "    except urllib.error.HTTPError: pass\n"
             "    except OSError: time.sleep(0.1); continue\n"
             "    print('answered', port); sys.exit(3)\n"
             "sys.exit(1)\n")
    prefix = _cli_for(engine.user)[0] if engine.user is not None else [FPC]
    python = sys.executable if prefix == [FPC] else prefix[0]  # a Python the engine's user may run
    result = engine.fpc("run", "-f", template(engine, "web"), "-p", "fpc-le-run", "--", python, "-c", probe, env=env)
    assert result.returncode == 3, result.stderr  # the command's own status
    assert f"answered {first}" in result.stdout or f"answered {first + 1}" in result.stdout
    assert engine.containers("fpc-le-run") == []
    assert leases(engine) == {}


def test_leases_on_two_local_engines_never_overlap(engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    """This engine and the default Docker engine, as the same user with one state dir: one store.
    (For a rootless engine, its user's default engine is the rootful one's socket it may not use:
    the state dir, not the engine, is what the leases share, so `get` stands in for it.)"""
    first = free_block(2)
    env = {"FREEPORT_RANGE": f"{first}-{first + 1}"}
    ok(engine.fpc("render", "-f", template(engine, "web"), "-p", "fpc-le-a", env=env))
    mine = leases(engine)["fpc-le-a"]
    # the machine's own leases, in the same state dir, as the same user: the other port only
    other = ok(engine.fpc("get", "--owner", "fpc-le-local", "--range", f"{first}-{first + 1}", "--timeout", "0",
                          env={"DOCKER_HOST": "unix:///var/run/docker.sock"}))
    assert sorted([*mine, int(other.stdout)]) == [first, first + 1]
    full = engine.fpc("get", "--owner", "fpc-le-more", "--range", f"{first}-{first + 1}", "--timeout", "0",
                      env={"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert full.returncode != 0
    ok(engine.fpc("release", "--owner", "fpc-le-local", env={"DOCKER_HOST": "unix:///var/run/docker.sock"}))
    ok(engine.fpc("down", "-p", "fpc-le-a"))
