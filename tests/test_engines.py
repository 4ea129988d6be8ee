"""Beyond one machine: a second, real engine (tests/_engines.py) whose published ports a bind probe
here cannot see, reached by unix socket ($DOCKER_HOST) and by a TLS docker context, and a
single-node Swarm on it.

Each test checks what it claims on the engine itself (its own `docker ps`/`service ls`), and that
a bind probe here is blind to it, so the claim could not be met by the local probe alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _docker import FPC, IMAGE, assert_error, fpc, ls_json, ok, parse_dotenv
from _engines import CONTEXT, SecondEngine, missing, second_engine
from freeport_compose._error import ExitCode

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

HTTPD = '["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/"]'


@pytest.fixture(scope="module")
def remote() -> Iterator[SecondEngine]:
    why = missing()
    if why:
        pytest.skip(why)
    with second_engine() as engine:
        yield engine


@pytest.fixture
def engine(remote: SecondEngine) -> Iterator[SecondEngine]:
    """The second engine, emptied of whatever the test left on it."""
    yield remote
    remote.clean()


def template(tmp_path: Path, *names: str, mode: str = "") -> str:
    """A Compose template: one busybox httpd service per name, published on $<FREEPORT_name>."""
    text = "services:\n"
    for name in names:
        text += f"  {name}:\n    image: {IMAGE}\n    pull_policy: never\n    command: {HTTPD}\n    ports:\n"
        if mode:
            text += f'      - target: 80\n        published: "$<FREEPORT_{name}>"\n        mode: {mode}\n'
        else:
            text += f'      - "$<FREEPORT_{name}>:80"\n'
    path = tmp_path / f"t-{'-'.join(names)}.yml"
    path.write_text(text)
    return str(path)


def bindable_here(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def squat(engine: SecondEngine, *ports: int) -> None:
    """Publish `ports` on the engine with a container (its bindings, in its namespace)."""
    args = [a for p in ports for a in ("-p", f"{p}:80")]
    engine.docker("run", "-d", "--label", "fpc.squatter=1", *args, IMAGE, "/bin/busybox", "httpd", "-f", "-p", "80")
    assert set(ports) <= engine.published()
    assert all(bindable_here(p) for p in ports)  # invisible to a bind probe here


def leased(env: dict[str, str], project: str) -> dict[str, int]:
    out = json.loads(ok(fpc("leases", "--json", env=env)).stdout)
    return {x["label"]: x["port"] for x in out["leases"] if x["owner"] == project}


def answers_inside(engine: SecondEngine, port: int, host: str = "127.0.0.1", attempts: int = 100) -> bool:
    """Whether HTTP on host:port answers inside the engine's namespace (retried while it starts)."""
    code = ("import urllib.error, urllib.request\n"
            f"try: urllib.request.urlopen('http://{host}:{port}/', timeout=2)\n"
            "except urllib.error.HTTPError: pass  # an HTTP answer (busybox httpd: 404 for /) is an answer")
    for _ in range(attempts):
        if engine.inside("python3", "-c", code).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def context_env(engine: SecondEngine) -> dict[str, str]:
    """This environment, with the `fpc-remote` context known and no $DOCKER_HOST to override it."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    return {**env, "DOCKER_CONFIG": engine.config}


def run_fpc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in exactly `env` (fpc() adds to os.environ, which may hold $DOCKER_HOST)."""
    return subprocess.run([FPC, *args], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# Engine-aware allocation
# --------------------------------------------------------------------------------------------


def test_ports_the_engine_published_are_never_handed_out(engine: SecondEngine, tmp_path: Path,
                                                         free_block: Callable[[int], int]) -> None:
    first = free_block(6)
    squat(engine, *range(first, first + 4))
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 5}"}
    ok(fpc("render", "-f", template(tmp_path, "a", "b"), "-p", "fpc-eng-pub", env=env))
    assert set(leased(env, "fpc-eng-pub").values()) == {first + 4, first + 5}
    # the range is now exhausted for this engine: the engine's ports and our leases both count
    result = fpc("render", "-f", template(tmp_path, "c"), "-p", "fpc-eng-pub2", "--lease-timeout", "0", env=env)
    assert_error(result, ExitCode.NO_FREE_PORT, "no free port")
    ok(fpc("down", "-p", "fpc-eng-pub", env=env))


def test_leases_for_an_engine_elsewhere_do_not_block_this_machine(engine: SecondEngine, tmp_path: Path,
                                                                  free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    # By its TLS context the engine is elsewhere (tcp to another address): a lease store of its own.
    env = {**context_env(engine), "FREEPORT_RANGE": f"{first}-{first + 1}", "DOCKER_CONTEXT": CONTEXT}
    ok(run_fpc("render", "-f", template(tmp_path, "a", "b"), "-p", "fpc-eng-a", env=env))
    assert set(leased(env, "fpc-eng-a").values()) == {first, first + 1}
    # the machine's own leases (plain `get`, the default engine) are another store: both free there
    got = ok(fpc("get", "--owner", "fpc-local", "-n", "2", "--range", f"{first}-{first + 1}"))
    assert sorted(map(int, got.stdout.split())) == [first, first + 1]
    # ... while for the engine elsewhere they are taken
    result = run_fpc("render", "-f", template(tmp_path, "c"), "-p", "fpc-eng-b", "--lease-timeout", "0", env=env)
    assert_error(result, ExitCode.NO_FREE_PORT)
    listing = json.loads(ok(run_fpc("leases", "--json", env=context_env(engine))).stdout)
    engines = {(x["owner"], x["engine"]) for x in listing["leases"]}
    assert ("fpc-local", "unix:///var/run/docker.sock") in engines
    assert ("fpc-eng-a", engine.tcp) in engines
    assert [(s["project"], s["engine"]) for s in listing["stacks"]] == [("fpc-eng-a", engine.tcp)]
    # asked on the default engine, the stack is unknown there, and the error says where it is
    assert_error(run_fpc("ports", "-p", "fpc-eng-a", env=context_env(engine)), ExitCode.UNKNOWN_OWNER,
                 f"is on the engine at {engine.tcp}: give --context {CONTEXT}")
    ok(run_fpc("down", "-p", "fpc-eng-a", env=env))
    ok(fpc("release", "--owner", "fpc-local"))


def test_an_engine_on_a_unix_socket_leases_from_the_machines_store(engine: SecondEngine, tmp_path: Path,
                                                                    free_block: Callable[[int], int]) -> None:
    """A unix socket is this machine's engine (issue 20): its leases and the default engine's (and
    plain `get`'s) are one store, so neither hands out a port the other holds; its stack records
    stay its own, and each lease is listed once, under its engine."""
    first = free_block(2)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    ok(fpc("render", "-f", template(tmp_path, "a"), "-p", "fpc-eng-a", env=env))
    got = ok(fpc("get", "--owner", "fpc-local", "-n", "1", "--range", f"{first}-{first + 1}"))
    assert set(leased(env, "fpc-eng-a").values()) | {int(got.stdout)} == {first, first + 1}
    result = fpc("render", "-f", template(tmp_path, "c"), "-p", "fpc-eng-b", "--lease-timeout", "0", env=env)
    assert_error(result, ExitCode.NO_FREE_PORT)
    # the same project name on the default engine is another stack: it never reuses those leases
    result = fpc("render", "-f", template(tmp_path, "a"), "-p", "fpc-eng-a", "--lease-timeout", "0",
                 env={"FREEPORT_RANGE": f"{first}-{first + 1}"})
    assert_error(result, ExitCode.NO_FREE_PORT)
    listing = ls_json()
    engines = sorted((x["owner"], x["engine"]) for x in listing["leases"])
    assert engines == [("fpc-eng-a", engine.sock), ("fpc-local", "unix:///var/run/docker.sock")]
    assert [(s["project"], s["engine"]) for s in listing["stacks"]] == [("fpc-eng-a", engine.sock)]
    ok(fpc("down", "-p", "fpc-eng-a", env=env))
    assert leased(env, "fpc-eng-a") == {}
    assert ok(fpc("leases", "--json")).stdout.count('"fpc-local"') == 1  # the other engine's down left it
    ok(fpc("release", "--owner", "fpc-local"))


def test_two_clients_rendering_for_the_engine_at_once_never_collide(engine: SecondEngine, tmp_path: Path,
                                                                     free_block: Callable[[int], int]) -> None:
    first = free_block(12)
    env = {**os.environ, **engine.env, "FREEPORT_RANGE": f"{first}-{first + 11}"}
    squat(engine, first, first + 1)
    file = template(tmp_path, "a", "b", "c", "d", "e")
    procs = [subprocess.Popen([FPC, "render", "-f", file, "-p", f"fpc-race-{i}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = [leased(env, f"fpc-race-{i}") for i in range(2)]
    ports = [p for g in got for p in g.values()]
    assert len(ports) == 10
    assert len(set(ports)) == 10
    assert not set(ports) & {first, first + 1}  # published on the engine: never handed out
    for i in range(2):
        ok(fpc("down", "-p", f"fpc-race-{i}", env=env))


def test_a_port_taken_on_the_engine_between_lease_and_up_is_leased_anew(engine: SecondEngine, tmp_path: Path,
                                                                          free_block: Callable[[int], int]) -> None:
    first = free_block(4)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 3}"}
    file = template(tmp_path, "web")
    ok(fpc("render", "-f", file, "-p", "fpc-eng-retry", env=env))
    old = leased(env, "fpc-eng-retry")["FREEPORT_web"]
    squat(engine, old)  # taken on the engine after the lease, before `up`
    up = ok(fpc("up", "-d", "-f", file, "-p", "fpc-eng-retry", env=env))
    assert "taken outside freeport-compose meanwhile" in up.stderr
    new = parse_dotenv(up.stdout)["FREEPORT_web"]
    assert new != old
    assert leased(env, "fpc-eng-retry") == {"FREEPORT_web": new}
    assert answers_inside(engine, new)
    ok(fpc("down", "-p", "fpc-eng-retry", env=env))
    assert leased(env, "fpc-eng-retry") == {}


# --------------------------------------------------------------------------------------------
# A context, an engine elsewhere
# --------------------------------------------------------------------------------------------


def test_a_context_targets_an_engine_elsewhere(engine: SecondEngine, tmp_path: Path,
                                               free_block: Callable[[int], int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_block(2)
    env = {**context_env(engine), "FREEPORT_RANGE": f"{first}-{first + 1}"}
    file = template(tmp_path, "web")
    # Both ports busy here: for an engine elsewhere the bind probe is not the test.
    held = [socket.socket() for _ in range(2)]
    try:
        for s, port in zip(held, (first, first + 1), strict=True):
            s.bind(("0.0.0.0", port))
            s.listen()
        up = run_fpc("--context", CONTEXT, "up", "-d", "-f", file, "-p", "fpc-ctx", "--wait", env=env)
        assert up.returncode == 0, up.stderr
    finally:
        for s in held:
            s.close()
    port = parse_dotenv(up.stdout)["FREEPORT_web"]
    assert port in (first, first + 1)
    assert "fpc-ctx" in engine.docker("ps", "--format", "{{.Names}}").stdout  # on that engine, not here
    assert_error(run_fpc("down", "-p", "fpc-ctx", env=env), ExitCode.UNKNOWN_OWNER, f"give --context {CONTEXT}")
    shown = run_fpc("ports", "-p", "fpc-ctx", "--context", CONTEXT, env=env)
    assert f"FREEPORT_web_HOST={engine.address}" in shown.stdout.splitlines(), shown.stderr
    try:
        with urllib.request.urlopen(f"http://{engine.address}:{port}/", timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 404  # busybox httpd answered, from the engine's namespace (no index.html)
    stacks = json.loads(run_fpc("leases", "--json", env=env).stdout)["stacks"]
    assert [(s["project"], s["context"], s["status"]) for s in stacks] == [("fpc-ctx", CONTEXT, "up")]
    from freeport_compose import Stack

    monkeypatch.setenv("DOCKER_CONFIG", engine.config)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    attached = Stack.attach("fpc-ctx", context=CONTEXT)
    assert (attached.host("web"), attached.port("web")) == (engine.address, port)
    assert attached.url("web") == f"http://{engine.address}:{port}/"
    down = run_fpc("--context", CONTEXT, "down", "-p", "fpc-ctx", env=env)
    assert down.returncode == 0, down.stderr
    assert "fpc-ctx" not in engine.docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert json.loads(run_fpc("leases", "--json", env=env).stdout)["leases"] == []


def test_an_engine_that_does_not_answer_is_named(engine: SecondEngine, tmp_path: Path) -> None:
    address = f"tcp://{engine.address}:1"  # its namespace answers, nothing listens: refused at once
    result = fpc("render", "-f", template(tmp_path, "web"), "-p", "fpc-dead", env={"DOCKER_HOST": address})
    assert_error(result, ExitCode.ENGINE_UNREACHABLE, f"no Docker engine answers at {address}")
    assert ls_json()["stacks"] == []


# --------------------------------------------------------------------------------------------
# Swarm
# --------------------------------------------------------------------------------------------


def test_a_port_the_ingress_mesh_publishes_is_avoided(engine: SecondEngine, tmp_path: Path,
                                                      free_block: Callable[[int], int]) -> None:
    first = free_block(3)
    for port in (first, first + 1):
        engine.docker("service", "create", "--detach", "--name", f"fpc-ingress-{port}", "-p", f"{port}:80", IMAGE,
                      "/bin/busybox", "sleep", "600")
    assert {first, first + 1} <= engine.published()
    assert bindable_here(first)
    assert bindable_here(first + 1)
    assert "LISTEN" not in engine.inside("ss", "-ltn", f"sport = :{first}").stdout  # the mesh binds no socket
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 2}"}
    # for the machine's own engine, that Swarm's ports are no obstacle: both are handed out there
    got = ok(fpc("get", "--owner", "fpc-swarm-get", "-n", "2", "--context", "default", "--range",
                 f"{first}-{first + 1}", env={**context_env(engine)}))
    assert sorted(map(int, got.stdout.split())) == [first, first + 1]
    ok(fpc("release", "--owner", "fpc-swarm-get"))
    ok(fpc("render", "-f", template(tmp_path, "web"), "-p", "fpc-swarm-avoid", env=env))
    assert leased(env, "fpc-swarm-avoid") == {"FREEPORT_web": first + 2}
    ok(fpc("down", "-p", "fpc-swarm-avoid", env=env))


def wait_services(engine: SecondEngine, stack: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(engine.docker("stack", "services", "-q", stack, check=False).stdout.split()) != count:
        assert time.monotonic() < deadline, engine.docker("stack", "services", stack, check=False)
        time.sleep(0.2)


def test_deploy_then_rm(engine: SecondEngine, tmp_path: Path, free_block: Callable[[int], int]) -> None:
    first = free_block(4)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 3}"}
    file = template(tmp_path, "web", mode="host")
    out = ok(fpc("deploy", "-f", file, "-p", "fpc-deploy", env=env))
    port = parse_dotenv(out.stdout)["FREEPORT_web"]
    assert leased(env, "fpc-deploy") == {"FREEPORT_web": port}
    wait_services(engine, "fpc-deploy", 1)
    assert answers_inside(engine, port)  # mode: host, on the node (the namespace)
    stacks = ls_json(None)["stacks"]
    assert [(s["project"], s["status"], s["swarm"]) for s in stacks] == [("fpc-deploy", "deployed", True)]
    assert "deployed (1 service)" in ok(fpc("leases")).stdout
    ok(fpc("rm", "-p", "fpc-deploy", env=env))
    assert engine.docker("stack", "ls", "--format", "{{.Name}}").stdout.split() == []
    assert leased(env, "fpc-deploy") == {}
    assert ls_json()["stacks"] == []


def test_rm_waits_for_tasks_slow_to_stop(engine: SecondEngine, tmp_path: Path,
                                         free_block: Callable[[int], int]) -> None:
    """`docker stack rm` returns while the tasks still stop, and a network still in use by one of
    them fails to go: `rm` returns once nothing of the stack is left, and not much later."""
    first = free_block(1)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first}"}
    file = tmp_path / "slow.yml"
    # busybox sleep as PID 1 ignores SIGTERM: the task stops only when its grace period ends
    file.write_text(f"services:\n  slow:\n    image: {IMAGE}\n    command: [\"/bin/busybox\", \"sleep\", \"600\"]\n"
                    "    stop_grace_period: 4s\n    ports:\n      - \"$<FREEPORT_slow>:80\"\n")
    ok(fpc("deploy", "-f", str(file), "-p", "fpc-slowrm", env=env))
    wait_services(engine, "fpc-slowrm", 1)
    deadline = time.monotonic() + 30
    while not engine.docker("ps", "-q", "--filter", "label=com.docker.stack.namespace=fpc-slowrm").stdout.split():
        assert time.monotonic() < deadline, "the stack's task never started"
        time.sleep(0.2)
    started = time.monotonic()
    ok(fpc("rm", "-p", "fpc-slowrm", env=env))
    assert time.monotonic() - started < 4 + 30  # the grace period, then no wait for what is gone
    networks = engine.docker("network", "ls", "--filter", "label=com.docker.stack.namespace=fpc-slowrm",
                             "--format", "{{.Name}}").stdout.split()
    assert networks == []
    assert engine.docker("ps", "-aq", "--filter", "label=com.docker.stack.namespace=fpc-slowrm").stdout.split() == []
    assert leased(env, "fpc-slowrm") == {}
    assert ls_json()["stacks"] == []
    # at once again under the same name: no network of the old stack half-removed in its way
    ok(fpc("deploy", "-f", str(file), "-p", "fpc-slowrm", env=env))
    ok(fpc("rm", "-p", "fpc-slowrm", env=env))


def test_a_stack_removed_with_docker_stack_rm_frees_its_ports(engine: SecondEngine, tmp_path: Path,
                                                              free_block: Callable[[int], int]) -> None:
    first = free_block(1)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first}"}
    ok(fpc("deploy", "-f", template(tmp_path, "web"), "-p", "fpc-stackrm", env=env))
    wait_services(engine, "fpc-stackrm", 1)
    assert leased(env, "fpc-stackrm") == {"FREEPORT_web": first}
    engine.docker("stack", "rm", "fpc-stackrm")
    wait_services(engine, "fpc-stackrm", 0)
    assert [s["status"] for s in ls_json()["stacks"]] == ["gone"]
    # the range is exhausted: the allocation asks the engine, finds the stack gone, takes its port
    got = ok(fpc("render", "-f", template(tmp_path, "other"), "-p", "fpc-stackrm2", "--lease-timeout", "5", env=env))
    assert leased(env, "fpc-stackrm2") == {"FREEPORT_other": first}, got.stderr
    assert [s["project"] for s in ls_json()["stacks"]] == ["fpc-stackrm2"]
    ok(fpc("down", "-p", "fpc-stackrm2", env=env))


def test_gc_frees_a_swarm_stack_that_is_gone(engine: SecondEngine, tmp_path: Path,
                                             free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    ok(fpc("deploy", "-f", template(tmp_path, "web"), "-p", "fpc-gcswarm", env=env))
    wait_services(engine, "fpc-gcswarm", 1)
    gc = ok(fpc("gc", env=env))
    assert "fpc-gcswarm" not in gc.stderr  # deployed and there: kept
    engine.docker("stack", "rm", "fpc-gcswarm")
    wait_services(engine, "fpc-gcswarm", 0)
    gc = ok(fpc("gc", env=env))
    assert "freed stack fpc-gcswarm: its Swarm stack is gone" in gc.stderr
    assert leased(env, "fpc-gcswarm") == {}


def test_deploy_an_unmodified_file_on_a_leased_port(engine: SecondEngine, tmp_path: Path,
                                                    free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    path = tmp_path / "compose.yaml"
    path.write_text(f'services:\n  web:\n    image: {IMAGE}\n    command: {HTTPD}\n    ports:\n      - "8080:80"\n'
                    "    depends_on: [side]\n    volumes:\n      - ./data:/data\n"
                    f"  side:\n    image: {IMAGE}\n    command: [\"/bin/busybox\", \"sleep\", \"600\"]\n")
    (tmp_path / "data").mkdir()
    before = path.read_bytes()
    out = ok(fpc("deploy", "-f", str(path), "-p", "fpc-zero", env=env))
    port = parse_dotenv(out.stdout)["FREEPORT_web_80"]
    assert port in (first, first + 1)
    wait_services(engine, "fpc-zero", 2)
    spec = json.loads(engine.docker("service", "inspect", "fpc-zero_web").stdout)[0]
    assert [p["PublishedPort"] for p in spec["Endpoint"]["Spec"]["Ports"]] == [port]
    mounts = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert [m["Source"] for m in mounts] == [str(tmp_path / "data")]  # relative paths resolved as Compose does
    assert path.read_bytes() == before
    ok(fpc("rm", "-p", "fpc-zero", env=env))


def test_deploy_retries_a_port_the_swarm_refuses(engine: SecondEngine, tmp_path: Path,
                                                 free_block: Callable[[int], int]) -> None:
    first = free_block(3)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 2}"}
    file = template(tmp_path, "web")
    ok(fpc("render", "-f", file, "-p", "fpc-swarm-retry", env=env))
    old = leased(env, "fpc-swarm-retry")["FREEPORT_web"]
    engine.docker("service", "create", "--detach", "--name", "fpc-squat", "-p", f"{old}:80", IMAGE,
                  "/bin/busybox", "sleep", "600")
    out = ok(fpc("deploy", "-f", file, "-p", "fpc-swarm-retry", env=env))
    assert "taken in the Swarm meanwhile" in out.stderr
    new = parse_dotenv(out.stdout)["FREEPORT_web"]
    assert new != old
    assert leased(env, "fpc-swarm-retry") == {"FREEPORT_web": new}
    ok(fpc("rm", "-p", "fpc-swarm-retry", env=env))


def test_deploy_on_a_context_that_does_not_exist(engine: SecondEngine, tmp_path: Path) -> None:
    env = context_env(engine)
    result = run_fpc("deploy", "--context", "fpc-nosuch", "-f", template(tmp_path, "web"), "-p", "x", env=env)
    assert_error(result, ExitCode.UNKNOWN_CONTEXT, "docker context 'fpc-nosuch' does not exist")


def test_the_second_engine_is_torn_down_also_on_failure(remote: SecondEngine) -> None:
    """The test engine's own promise: a failure inside leaves no daemon, namespace, veth or directory."""
    made: list[SecondEngine] = []

    def fail_inside() -> None:
        with second_engine() as other:
            made.append(other)
            other.docker("run", "-d", IMAGE, "/bin/busybox", "sleep", "600")
            raise RuntimeError("failing on purpose")

    with pytest.raises(RuntimeError, match="failing on purpose"):
        fail_inside()
    other = made[0]
    assert not os.path.exists(f"/proc/{other.pid}")
    assert other.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert other.address != remote.address
    assert f"fpch{other.address.split('.')[2]}:" not in links
    assert not other.root.exists()


def test_gc_reaches_each_stack_on_its_own_engine(engine: SecondEngine, tmp_path: Path, state_dir: Path,
                                                 free_block: Callable[[int], int]) -> None:
    """gc run from a shell aimed at the second engine still finishes a local stack on the local one."""
    first = free_block(2)
    local, remote_env = "fpc-gc-local", {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    try:
        ok(fpc("up", "-d", "-f", template(tmp_path, "web"), "-p", local,
               env={"FREEPORT_RANGE": f"{first}-{first + 1}"}))
        ok(fpc("up", "-d", "-f", template(tmp_path, "web"), "-p", "fpc-gc-remote", env=remote_env))
        record = state_dir / "stacks" / f"{local}.json"
        raw = json.loads(record.read_text())
        record.write_text(json.dumps({**raw, "status": "stopping"}))  # a down that could not finish
        gc = ok(fpc("gc", env=remote_env))
        assert f"freed stack {local}: its `down` did not finish" in gc.stderr
        assert docker_ids(local) == []  # brought down on the machine's engine, where it runs
        assert leased({}, local) == {}
        assert [s["status"] for s in ls_json()["stacks"] if s["project"] == "fpc-gc-remote"] == ["up"]
        ok(fpc("down", "-p", "fpc-gc-remote", env=remote_env))
    finally:
        fpc("down", "-p", local)


def docker_ids(project: str) -> list[str]:
    from _docker import containers

    return containers(project)


def test_deploy_publishes_ingress_ports_on_the_leased_port(engine: SecondEngine, tmp_path: Path,
                                                           free_block: Callable[[int], int]) -> None:
    """The Swarm allocates the leased port to the service's ingress endpoint. (Traffic through the
    routing mesh is not checked: this machine's kernel has no IPVS, so the mesh answers nothing
    here; `mode: host` ports are checked to answer in test_deploy_then_rm.)"""
    first = free_block(2)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    out = ok(fpc("deploy", "-f", template(tmp_path, "web"), "-p", "fpc-ingress", env=env))
    port = parse_dotenv(out.stdout)["FREEPORT_web"]
    spec = json.loads(engine.docker("service", "inspect", "fpc-ingress_web").stdout)[0]
    assert [(p["PublishedPort"], p["PublishMode"]) for p in spec["Endpoint"]["Spec"]["Ports"]] == [(port, "ingress")]
    assert port in engine.published()
    assert "LISTEN" not in engine.inside("ss", "-ltn", f"sport = :{port}").stdout  # the mesh binds no socket
    ok(fpc("rm", "-p", "fpc-ingress", env=env))
    assert port not in engine.published()


def test_one_project_name_is_one_kind_of_stack(engine: SecondEngine, tmp_path: Path,
                                               free_block: Callable[[int], int]) -> None:
    first = free_block(2)
    env = {**engine.env, "FREEPORT_RANGE": f"{first}-{first + 1}"}
    file = template(tmp_path, "web")
    ok(fpc("deploy", "-f", file, "-p", "fpc-kind", env=env))
    assert_error(fpc("up", "-d", "-f", file, "-p", "fpc-kind", env=env), ExitCode.INVALID_NAME,
                 "'fpc-kind' is a Swarm stack on this engine")
    assert engine.docker("stack", "services", "-q", "fpc-kind").stdout.split()  # untouched
    assert_error(fpc("rm", "-p", "fpc-kind", "web", env=env), ExitCode.USAGE, "removes it whole")
    ok(fpc("rm", "--project-name=fpc-kind", env=env))
    assert leased(env, "fpc-kind") == {}


def test_rm_of_a_compose_stack_is_composes_own(tmp_path: Path, free_block: Callable[[int], int]) -> None:
    first = free_block(1)
    env = {"FREEPORT_RANGE": f"{first}-{first}"}
    ok(fpc("up", "-d", "-f", template(tmp_path, "web"), "-p", "fpc-rm-compose", env=env))
    try:
        assert docker_ids("fpc-rm-compose")
        ok(fpc("rm", "-p", "fpc-rm-compose", "--stop", "--force", env=env))  # `docker compose rm -s -f`
        assert docker_ids("fpc-rm-compose") == []
        assert leased(env, "fpc-rm-compose") == {"FREEPORT_web": first}  # Compose's rm frees nothing of ours
    finally:
        ok(fpc("down", "-p", "fpc-rm-compose", env=env))
