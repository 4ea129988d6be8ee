"""The stack commands on every kind of engine this machine may run (issue 20): rootful Docker,
rootful Podman, rootless Podman and rootless Docker, each through its Docker-compatible socket.

Each test runs on each engine: `up` of two stacks side by side on distinct ports that answer
from the host, a port that engine's own container publishes avoided, `down` leaving nothing,
`gc` after the containers went behind our back, `run -- CMD`, leases on two local engines never
overlapping, a port taken between `render` and `up` retried on another, and the pytest plugin's
session stack shared by two xdist workers. The rootless engines belong to an unprivileged user
(scripts/setup.sh makes it): the CLI, and pytest, run as that user, with a state dir of that user's own.

An engine that is not set up here is skipped, saying why and how to set it up; CI sets up all of
them (`CI=true bash scripts/setup.sh`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
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
        prefix = [FPC]
        if self.user is not None:
            prefix, path = _cli_for(self.user)
            if path:
                full["PYTHONPATH"] = path
        return self.as_user([*prefix, *args], full, self.home, timeout)

    def python(self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None,
               timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """A Python with this project's packages (pytest and xdist among them), as the engine's user:
        the virtualenv's, or, where that user may not execute it, the one `_cli_for` picks. A run of
        its own: none of this run's pytest or xdist variables reaches it."""
        full = {k: v for k, v in self.env(env).items() if not k.startswith("PYTEST_")}
        python = sys.executable
        if self.user is not None:
            prefix, path = _cli_for(self.user)
            if prefix != [FPC]:
                python = prefix[0]
            if path:
                full["PYTHONPATH"] = path
        return self.as_user([python, *args], full, cwd or self.home, timeout)

    def as_user(self, command: list[str], env: dict[str, str], cwd: str,
                timeout: float) -> subprocess.CompletedProcess[str]:
        """`command` in exactly the environment `env`, as the engine's user."""
        if self.user is not None:
            # runuser passes no environment through on its own: `env` sets it for the command exactly.
            command = ["runuser", "-u", self.user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                       *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
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

    def networks(self, project: str) -> list[str]:
        out = self.docker("network", "ls", "-q", "--filter", f"label={PROJECT_LABEL}={project}")
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
    for project in ("fpc-le-a", "fpc-le-b", "fpc-le-gc", "fpc-le-run", "fpc-le-pub", "fpc-le-clash"):
        if local_engine.containers(project):
            local_engine.docker("rm", "-f", *local_engine.containers(project))
        if local_engine.networks(project):
            local_engine.docker("network", "rm", *local_engine.networks(project))
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


def test_a_port_taken_before_up_is_retried_on_another(engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    """A port `render` leased, taken on the machine before `up`, fails the engine's Compose: `up` retries on another."""
    first = free_block(4)
    env = {"FREEPORT_RANGE": f"{first}-{first + 3}"}
    file = template(engine, "web")
    ok(engine.fpc("render", "-f", file, "-p", "fpc-le-clash", env=env))
    [taken] = leases(engine)["fpc-le-clash"]
    # Outside freeport-compose and the engine: a socket of this (root's) process on 0.0.0.0. Every
    # engine here binds its published ports on the host itself (docker-proxy, Podman's conmon,
    # rootlessport, rootlesskit's builtin port driver), so each one's Compose fails on it.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("0.0.0.0", taken))
        squatter.listen(1)
        up = ok(engine.fpc("up", "-d", "-f", file, "-p", "fpc-le-clash", env=env))
        assert f"port(s) {taken} taken outside freeport-compose meanwhile" in up.stderr, up.stderr
        port = parse_dotenv(up.stdout)["FREEPORT_web"]
        assert port != taken
        assert first <= port <= first + 3
        assert leases(engine) == {"fpc-le-clash": [port]}  # the clashed lease was given back
        published = engine.published()
        assert port in published
        assert taken not in published
        assert http_get(port, attempts=150) == (200, "web\n")  # the stack's own answer, from the host
        with socket.create_connection(("127.0.0.1", taken), timeout=5):  # still ours: the engine never took it over
            conn, _ = squatter.accept()
            conn.close()
    finally:
        squatter.close()
    ok(engine.fpc("down", "-p", "fpc-le-clash"))
    assert engine.containers("fpc-le-clash") == []
    assert engine.networks("fpc-le-clash") == []
    assert leases(engine) == {}
    assert json.loads(ok(engine.fpc("leases", "--json")).stdout)["stacks"] == []


# Each test says, in a file of its own, which worker and user ran it and what of the session stack it
# saw: the project, the port, the container that answered on it (its hostname: its own id, by
# default) and the containers of the project on the engine (the one of $DOCKER_HOST).
SHARED_SUITE = """
import json, os, subprocess, time, urllib.request

def _use(stack, name):
    for _ in range(150):
        try:
            with urllib.request.urlopen(stack.url("web"), timeout=2) as page:
                body = page.read().decode().strip()
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError("nothing answers on " + stack.url("web"))
    listed = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter",
                             "label=com.docker.compose.project=" + stack.project],
                            capture_output=True, text=True, check=True).stdout.split()
    seen = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "uid": os.getuid(), "project": stack.project,
            "port": stack.port("web"), "answered": body, "containers": listed}
    path = os.path.join(os.environ["FPC_SEEN"], name)
    with open(path + ".tmp", "w") as f:
        json.dump(seen, f)
    os.rename(path + ".tmp", path)
    time.sleep(1)  # the other worker's test runs meanwhile

def test_a(freeport_stack):
    _use(freeport_stack, "a")

def test_b(freeport_stack):
    _use(freeport_stack, "b")
"""


def test_the_shared_pytest_stack_on_this_engine(engine: LocalEngine, free_block: Callable[[int], int]) -> None:
    """`pytest -n 2` with `freeport_stack`, as the engine's user: one stack for both workers, nothing left after."""
    first = free_block(4)
    suite = os.path.join(engine.home, "suite")
    os.mkdir(suite)
    seen = os.path.join(suite, "seen")
    os.mkdir(seen)
    if engine.user is not None:
        for path in (suite, seen):
            shutil.chown(path, engine.user, engine.user)
    command = json.dumps(["/bin/busybox", "sh", "-c",
                          "/bin/busybox hostname > /index.html && exec /bin/busybox httpd -f -p 80 -h /"])
    engine.write("suite/compose.yaml", f"services:\n  web:\n    image: {IMAGE}\n    pull_policy: never\n"
                                       f"    command: {command}\n    ports:\n      - \"$<FREEPORT_web>:80\"\n")
    engine.write("suite/pytest.ini", "[pytest]\nfreeport_compose_files = compose.yaml\n")
    engine.write("suite/test_shared.py", textwrap.dedent(SHARED_SUITE))
    env = {"FREEPORT_RANGE": f"{first}-{first + 3}", "FPC_SEEN": seen}
    result = engine.python("-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", env=env, cwd=suite,
                           timeout=300)
    said = [json.loads(Path(seen, name).read_text()) for name in ("a", "b") if Path(seen, name).exists()]
    projects = {s["project"] for s in said}
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout, result.stdout
        assert {s["worker"] for s in said} == {"gw0", "gw1"}  # both workers used it...
        assert {s["uid"] for s in said} == {_uid(engine.user) if engine.user is not None else os.getuid()}
        assert len(projects) == 1  # ...one stack: one project,
        assert len({s["port"] for s in said}) == 1  # one port,
        [container] = said[0]["containers"]  # one container of it on this engine,
        assert all(s["containers"] == [container] for s in said)
        assert {s["answered"] for s in said} == {container[:12]}  # the one that answered both (its hostname)
        [project] = projects
        [port] = {s["port"] for s in said}
        assert first <= port <= first + 3
        # pytest has returned: nothing of the stack is left on this engine, nor any lease or record of it
        assert engine.containers(project) == []
        assert engine.networks(project) == []
        assert port not in engine.published()
        assert leases(engine) == {}
        assert json.loads(ok(engine.fpc("leases", "--json")).stdout)["stacks"] == []
        deadline = time.monotonic() + 10  # its reaper, told the stack is down, exits on its own
        while reapers(project):
            assert time.monotonic() < deadline, f"the reaper of {project} is still running"
            time.sleep(0.1)
    finally:  # whatever the run left, taken away
        for project in projects:
            if engine.containers(project):
                engine.docker("rm", "-f", *engine.containers(project))
            if engine.networks(project):
                engine.docker("network", "rm", *engine.networks(project))


def reapers(project: str) -> list[int]:
    """Pids of the live reapers of `project`, by their command lines."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"freeport_compose._stacks.reaper" in argv and project.encode() in argv:
            found.append(int(cmdline.parent.name))
    return found
