"""Units of the engine half, without Docker: which engine a command targets (as the docker CLI
chooses), what its children are told, the engine API over a unix socket (a fake engine the test
serves), the stack file for `docker stack deploy`, the verdict on Swarm stacks, and the per-engine
state directories."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from _fake_engine import FakeEngine
from freeport_compose._argv import parse
from freeport_compose._error import (
    ComposeError,
    EngineUnreachableError,
    InvalidNameError,
    NotSwarmManagerError,
    StateDirError,
    UnknownContextError,
)
from freeport_compose._stacks import engine as api
from freeport_compose._stacks.engine import Containers
from freeport_compose._stacks.lifecycle import Options, attempt
from freeport_compose._stacks.reclaim import ask_swarm, left_of, verdict
from freeport_compose._stacks.records import StackRecord, StackStatus
from freeport_compose._stacks.state import State
from freeport_compose._stacks.swarm import stack_file
from freeport_compose._stacks.target import DEFAULT_ADDRESS, Engine, TLSFiles, resolve

# -- which engine ---------------------------------------------------------------------------


def make_context(config: Path, name: str, host: str, *, tls: bool = False) -> None:
    """A context as `docker context create` writes it: meta.json under the sha256 of its name."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}}))
    if tls:
        d = config / "contexts" / "tls" / digest / "docker"
        d.mkdir(parents=True)
        for f in ("ca.pem", "cert.pem", "key.pem"):
            (d / f).write_text("x")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    d = tmp_path / "docker-config"
    make_context(d, "far", "tcp://far.example:2376", tls=True)
    make_context(d, "near", "unix:///tmp/near.sock")
    (d / "config.json").write_text(json.dumps({"currentContext": "near"}))
    return d


def test_the_engine_is_chosen_as_the_docker_cli_chooses(config: Path) -> None:
    env = {"DOCKER_CONFIG": str(config)}
    assert resolve(None, env).address == "unix:///tmp/near.sock"  # the current context
    assert resolve(None, {**env, "DOCKER_CONTEXT": "far"}).address == "tcp://far.example:2376"
    assert resolve(None, {**env, "DOCKER_CONTEXT": "far", "DOCKER_HOST": "tcp://h:1"}).address == "tcp://h:1"
    assert resolve("far", {**env, "DOCKER_HOST": "tcp://h:1"}).address == "tcp://far.example:2376"  # flag wins
    assert resolve("default", {**env, "DOCKER_HOST": "tcp://h:1"}).address == "tcp://h:1"
    assert resolve("default", env).address == DEFAULT_ADDRESS
    assert resolve(None, {"DOCKER_CONFIG": str(config / "nowhere")}).address == DEFAULT_ADDRESS
    far = resolve("far", env)
    assert far.tls is not None
    assert far.tls.verify
    assert far.tls.ca
    assert far.tls.ca.endswith("ca.pem")
    assert (far.host, far.on_this_machine, far.name) == ("far.example", False, "far")


def test_a_context_that_does_not_exist_is_named(config: Path) -> None:
    with pytest.raises(UnknownContextError, match="docker context 'nosuch' does not exist"):
        resolve("nosuch", {"DOCKER_CONFIG": str(config)})
    with pytest.raises(UnknownContextError, match="'nosuch'"):
        resolve(None, {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "nosuch"})
    bad = config / "contexts" / "meta" / hashlib.sha256(b"broken").hexdigest()
    bad.mkdir(parents=True)
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(UnknownContextError, match="cannot be read"):
        resolve("broken", {"DOCKER_CONFIG": str(config)})


def test_tls_variables_are_read_as_the_docker_cli_reads_them(tmp_path: Path) -> None:
    for f in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / f).write_text("x")
    base = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_CERT_PATH": str(tmp_path)}
    assert resolve(None, base).tls is None  # a cert path alone: plain HTTP, as the CLI does
    on = resolve(None, {**base, "DOCKER_TLS_VERIFY": "0"}).tls  # any value turns verification on
    assert on is not None
    assert on.verify
    assert on.ca == str(tmp_path / "ca.pem")
    plain = resolve(None, {**base, "DOCKER_TLS": "1"}).tls
    assert plain is not None
    assert not plain.verify


def test_children_are_pinned_to_the_engine_whatever_the_shell_names() -> None:
    shell = {"DOCKER_HOST": "tcp://other:1", "DOCKER_CONTEXT": "other", "PATH": "/bin"}
    assert Engine("unix:///x.sock").child_env(shell) == {"DOCKER_HOST": "unix:///x.sock", "PATH": "/bin"}
    assert Engine("tcp://far:2376", "far").child_env(shell) == {"DOCKER_CONTEXT": "far", "PATH": "/bin"}
    # the default context is $DOCKER_HOST's engine: pinned by address, not sent to the default socket
    assert Engine("tcp://h:1", "default").child_env({}) == {"DOCKER_HOST": "tcp://h:1"}


def test_one_engine_has_one_lease_store_whatever_its_address_looks_like(tmp_path: Path) -> None:
    real = Engine(DEFAULT_ADDRESS)
    alias = Engine("unix://" + os.path.realpath("/var/run/docker.sock"))
    assert alias.is_default
    assert alias.key == real.key == ""
    assert Engine("tcp://LOCALHOST:2375").key == Engine("tcp://127.0.0.1:2375").key
    assert Engine("tcp://a:2375").key != Engine("tcp://b:2375").key
    assert Engine("tcp://localhost:2375").on_this_machine
    assert not Engine("ssh://u@far").on_this_machine


# -- the engine's API over a unix socket --------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeEngine, Engine]]:
    path = str(tmp_path / "engine.sock")
    server = FakeEngine(path)
    yield server, Engine(f"unix://{path}")
    server.close()


WORKER = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."
INACTIVE = 'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node'


def test_published_ports_are_the_containers_and_the_services(fake: tuple[FakeEngine, Engine]) -> None:
    server, engine = fake
    server.routes["/containers/json"] = (200, [{"Ports": [{"PublicPort": 20001}, {"PrivatePort": 80}]}])
    server.routes["/services"] = (200, [{"Endpoint": {"Ports": [{"PublishedPort": 20002}]}}])
    assert api.published_ports(engine) == {20001, 20002}
    server.routes["/services"] = (503, {"message": WORKER})  # a worker: its containers are all it can tell
    assert api.published_ports(engine) == {20001}
    server.routes["/services"] = (500, {"message": "boom"})
    with pytest.raises(EngineUnreachableError, match="answered GET /services with 500: boom") as e:
        api.published_ports(engine)
    assert e.value.answered


def test_only_an_engine_in_no_swarm_has_no_swarm_stacks(fake: tuple[FakeEngine, Engine]) -> None:
    server, engine = fake
    label = {"Spec": {"Labels": {api.STACK_LABEL: "shop"}}}
    server.routes["/services"] = (200, [label, label])
    assert ask_swarm(engine) == {"shop": 2}
    assert json.loads(unquote(server.seen[-1].split("filters=")[1])) == {"label": [api.STACK_LABEL]}
    server.routes["/services"] = (503, {"message": INACTIVE})
    assert ask_swarm(engine) == {}  # a Swarm left takes its stacks with it
    server.routes["/services"] = (503, {"message": WORKER})
    with pytest.raises(NotSwarmManagerError, match="Worker nodes"):
        ask_swarm(engine)  # its stacks may exist: never read as "gone"


def test_an_engine_that_does_not_answer_is_named(tmp_path: Path) -> None:
    engine = Engine(f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineUnreachableError, match=f"no Docker engine answers at unix://{tmp_path}/none.sock") as e:
        api.project_containers(engine)
    assert not e.value.answered


# -- Swarm stacks -------------------------------------------------------------------------------


def test_the_stack_file_is_what_the_stack_loader_accepts() -> None:
    model = {
        "name": "p",
        "networks": {"default": {"name": "p_default", "ipam": {}}},
        "services": {
            "web": {
                "image": "x",
                "entrypoint": None,
                "pull_policy": "never",
                "networks": {"default": None},
                "depends_on": {"db": {"condition": "service_started", "required": True}},
                "ports": [{"target": 80, "published": "20001", "mode": "ingress"}, {"target": 81, "published": "7-7"}],
                "volumes": [{"type": "bind", "source": "/d", "target": "/d", "bind": {"create_host_path": True}}],
            }
        },
    }
    out, dropped = stack_file(model)
    web = out["services"]["web"]
    assert "name" not in out
    assert "entrypoint" not in web
    assert "pull_policy" not in web
    assert dropped == ["web.pull_policy"]
    assert web["networks"] == ["default"]
    assert web["depends_on"] == ["db"]
    assert [p["published"] for p in web["ports"]] == [20001, 7]
    assert web["volumes"] == [{"type": "bind", "source": "/d", "target": "/d"}]
    model["services"]["web"]["ports"] = [{"target": 80, "published": "8000-8001"}]  # type: ignore[index]
    with pytest.raises(ComposeError, match="publishes the range 8000-8001"):
        stack_file(model)


def record(status: StackStatus, *, swarm: bool, alive: bool = True) -> StackRecord:
    r = StackRecord("shop", [], [], "/", status=status, swarm=swarm)
    if not alive:
        r.driver = type(r.driver)(pid=2**22 + 7, start_time=1, host=r.driver.host)  # no such process
    return r


def test_a_swarm_stack_is_judged_by_its_services(tmp_path: Path) -> None:
    leases = State.open(str(tmp_path / "state"), Engine(DEFAULT_ADDRESS)).leases
    no_containers: dict[str, Containers] = {}
    deployed = record(StackStatus.DEPLOYED, swarm=True)
    assert verdict(deployed, no_containers, leases, 0.0, {"shop": 1}) is None
    assert verdict(deployed, no_containers, leases, 0.0, None) is None  # the Swarm could not tell
    assert verdict(deployed, no_containers, leases, 0.0, {}) == "its Swarm stack is gone"
    stopping = record(StackStatus.STOPPING, swarm=True)
    assert verdict(stopping, no_containers, leases, 0.0, {"shop": 2}) is None  # no Compose container is no proof
    killed = record(StackStatus.STARTING, swarm=True, alive=False)
    assert verdict(killed, no_containers, leases, 0.0, {"shop": 1}) == "its `deploy` was killed"
    assert left_of(killed, no_containers, {"shop": 1}) == 1  # so reclaim leaves it to gc, which removes it first


# -- per-engine state ---------------------------------------------------------------------------


def test_each_engine_has_its_own_state_dir_and_ls_finds_them(tmp_path: Path) -> None:
    root = str(tmp_path / "state")
    far = Engine("tcp://far.example:2376")
    state = State.open(root, far)
    assert state.path == os.path.join(root, "engines", far.key)
    assert state.root == root
    assert [s.engine.address for s in State.every(root, Engine(DEFAULT_ADDRESS))] == [DEFAULT_ADDRESS, far.address]


def test_a_planted_engines_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    State.open(str(root), Engine(DEFAULT_ADDRESS))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (root / "engines").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="symlink"):
        State.open(str(root), Engine("tcp://far.example:2376"))
    with pytest.raises(StateDirError, match="symlink"):
        State.every(str(root), Engine(DEFAULT_ADDRESS))
    assert list(elsewhere.iterdir()) == []


def test_a_project_name_is_one_kind_of_stack(tmp_path: Path, fake: tuple[FakeEngine, Engine]) -> None:
    server, engine = fake
    server.routes["/containers/json"] = (200, [])
    state = State.open(str(tmp_path / "state"), engine)
    state.stacks.save(StackRecord("shop", [], [], "/", status=StackStatus.DEPLOYED, swarm=True))
    opts = Options(files=[str(tmp_path / "c.yml")])
    with pytest.raises(InvalidNameError, match="'shop' is a Swarm stack on this engine"), \
            attempt(state, opts, "shop", StackStatus.STARTING, None, swarm=False):
        pass
    state.stacks.save(StackRecord("shop", [], [], "/", status=StackStatus.UP))
    with pytest.raises(InvalidNameError, match="'shop' is a Compose stack"), \
            attempt(state, opts, "shop", StackStatus.STARTING, None, swarm=True):
        pass
    state.stacks.save(StackRecord("shop", [], [], "/", status=StackStatus.RENDERED))
    with attempt(state, opts, "shop", StackStatus.STARTING, None, swarm=True) as current:  # nothing of it runs
        assert current.record.swarm
    # rendered, then started by hand with `docker compose up`: its containers are not to be orphaned
    server.routes["/containers/json"] = (200, [{"Labels": {"com.docker.compose.project": "shop"}, "State": "running"}])
    state.stacks.save(StackRecord("shop", [], [], "/", status=StackStatus.RENDERED))
    with pytest.raises(InvalidNameError, match="'shop' is a Compose stack"), \
            attempt(state, opts, "shop", StackStatus.STARTING, None, swarm=True):
        pass


# -- the command line ---------------------------------------------------------------------------


def test_rm_takes_the_project_and_context_after_the_verb() -> None:
    def read(*words: str) -> tuple[dict[str, str], list[str]]:
        args = parse(words)
        given = {k: getattr(args, k) for k in ("state_dir", "context", "project") if getattr(args, k) is not None}
        return given, args.compose_args

    assert read("rm", "-p", "shop", "-f") == ({"project": "shop"}, ["rm", "-f"])
    assert read("rm", "--project-name=shop", "--context=far", "web") == (
        {"project": "shop", "context": "far"}, ["rm", "web"])
    assert read("--context", "far", "-p", "shop", "logs", "-f") == (
        {"context": "far", "project": "shop"}, ["logs", "-f"])
    assert read("--context=far", "rm", "-p", "shop") == ({"context": "far", "project": "shop"}, ["rm"])
    assert parse(["up", "-d", "-f", "x"]).compose_args is None


def test_a_malformed_engine_address_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineUnreachableError, match=r"tcp://h:abc: not a valid address \(\$DOCKER_HOST\)"):
        resolve(None, {"DOCKER_HOST": "tcp://h:abc"})
    assert Engine("tcp://h:abc").canonical == "tcp://h:abc"  # never a ValueError on the way to that error
    root = tmp_path / "state"
    State.open(str(root), Engine("tcp://far.example:2376"))
    bad = root / "engines" / ("0" * 20)
    bad.mkdir(mode=0o700)
    (bad / "engine.json").write_text('{"address": "tcp://h:99999"}')
    (root / "engines" / ("1" * 20)).write_text("a stray file, not a directory")
    assert [s.engine.address for s in State.every(str(root), Engine(DEFAULT_ADDRESS))] == [
        DEFAULT_ADDRESS, "tcp://far.example:2376"]


def test_children_get_the_engines_own_tls_and_an_unchanged_env_when_it_is_the_shells(tmp_path: Path) -> None:
    shell = {"DOCKER_HOST": "tcp://a:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/certs/a"}
    plain = Engine("tcp://b:2375").child_env(shell)
    assert plain == {"DOCKER_HOST": "tcp://b:2375"}  # not a's certificates
    tls = Engine("tcp://c:2376", tls=TLSFiles("/certs/c/ca.pem", "/certs/c/cert.pem", "/certs/c/key.pem", True))
    assert tls.child_env(shell) == {"DOCKER_HOST": "tcp://c:2376", "DOCKER_TLS_VERIFY": "1",
                                    "DOCKER_CERT_PATH": "/certs/c"}
    config = {"DOCKER_CONFIG": str(tmp_path / "no-config")}
    assert Engine(DEFAULT_ADDRESS).child_env(config) == config  # podman compose reads $DOCKER_HOST: left unset


def test_a_holder_is_immutable() -> None:
    from freeport_compose._leasing.process import Holder

    h = Holder(1, 2, "h")
    with pytest.raises(AttributeError):
        h.pid = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del h.pid
    assert h == Holder(1, 2, "h")
    assert h != (1, 2, "h")
    assert hash(h) == hash(Holder(1, 2, "h"))


def test_the_command_is_found_behind_the_top_levels_options() -> None:
    assert parse(["--state-dir", "leases", "get", "--owner", "x"]).command == "get"
    assert parse(["--context=far", "ports"]).command == "ports"
    with pytest.raises(SystemExit):
        parse(["-h"])
