"""Issue 20, without Docker: an engine with no such API (Podman: 404 on /services) has nothing of
that kind, and every engine on this machine leases from one store (the machine's), while an engine
elsewhere keeps its own. A project named alike on two local engines is two owners."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from _fake_engine import FakeEngine
from freeport_compose import FreePorts
from freeport_compose._error import NoFreePortError, UnknownOwnerError
from freeport_compose._stacks import engine as api
from freeport_compose._stacks.reclaim import ask_swarm
from freeport_compose._stacks.state import State, owner_scope
from freeport_compose._stacks.target import DEFAULT_ADDRESS, Engine


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[tuple[FakeEngine, Engine]]:
    path = str(tmp_path / "podman.sock")
    server = FakeEngine(path)
    server.routes["/containers/json"] = (200, [{"Ports": [{"PrivatePort": 80, "PublicPort": 20011, "Type": "tcp"}]}])
    yield server, Engine(f"unix://{path}")
    server.close()


# -- an engine with no such API ------------------------------------------------------------------


def test_an_engine_without_a_swarm_api_has_no_services(podman: tuple[FakeEngine, Engine]) -> None:
    _, engine = podman
    assert api.published_ports(engine) == {20011}  # the containers' ports, /services 404 read as none


def test_an_engine_without_a_swarm_api_is_in_no_swarm(podman: tuple[FakeEngine, Engine]) -> None:
    server, engine = podman
    assert ask_swarm(engine) == {}  # so its (no) Swarm stacks are gone, not "cannot tell"
    server.routes["/services"] = (500, {"message": "boom"})
    with pytest.raises(Exception, match="answered GET /services with 500: boom"):
        api.published_ports(engine)  # a real failure is still one


# -- one lease store per machine -----------------------------------------------------------------


def test_every_local_engine_is_on_this_machine() -> None:
    uid = os.getuid()
    for address in (
        DEFAULT_ADDRESS,
        "unix:///run/docker.sock",
        f"unix:///run/user/{uid}/docker.sock",  # rootless Docker
        "unix:///run/podman/podman.sock",  # rootful Podman
        f"unix:///run/user/{uid}/podman/podman.sock",  # rootless Podman
        f"unix://{os.path.expanduser('~')}/.docker/run/docker.sock",  # Docker Desktop
        "tcp://127.0.0.1:2375",
        "tcp://localhost:2376",
    ):
        assert Engine(address).on_this_machine, address
    for address in ("tcp://far.example:2376", "ssh://u@far.example", "tcp://10.1.2.3:2375"):
        assert not Engine(address).on_this_machine, address
        assert owner_scope(Engine(address)) == ""  # a store of its own: its owners need no scope
    assert owner_scope(Engine(DEFAULT_ADDRESS)) == ""
    assert owner_scope(Engine("unix:///run/podman/podman.sock")).startswith(".")


def test_leases_on_two_local_engines_never_overlap(tmp_path: Path) -> None:
    root = str(tmp_path / "state")
    docker = State.open(root, Engine(DEFAULT_ADDRESS))
    podman = State.open(root, Engine("unix:///run/podman/podman.sock"))
    rootless = State.open(root, Engine(f"unix://{tmp_path}/rootless/docker.sock"))
    assert docker.leases.path == podman.leases.path == rootless.leases.path == root  # the machine's store
    assert podman.path != root  # its stack records are its own
    from _ports import find_free_block

    first = find_free_block(6)
    got: list[int] = []
    leases = []
    for state in (docker, podman, rootless):
        fp = FreePorts(2, owner="shop", labels=["a", "b"], start=first, stop=first + 5, state_dir=state.leases)
        leases.append(fp)
        got += fp.ports
    assert sorted(got) == list(range(first, first + 6))  # six distinct ports, each engine two
    with pytest.raises(NoFreePortError):
        FreePorts(1, owner="more", start=first, stop=first + 5, timeout=0, state_dir=podman.leases)
    # plain FreePort() (no engine) leases from the same store
    with pytest.raises(NoFreePortError):
        FreePorts(1, start=first, stop=first + 5, timeout=0, state_dir=root)


def test_a_project_named_alike_on_two_local_engines_is_two_owners(tmp_path: Path) -> None:
    root = str(tmp_path / "state")
    docker = State.open(root, Engine(DEFAULT_ADDRESS))
    podman = State.open(root, Engine("unix:///run/podman/podman.sock"))
    from _ports import find_free_block

    first = find_free_block(4)
    on_docker = FreePorts(2, owner="shop", labels=["a", "b"], start=first, stop=first + 3, state_dir=docker.leases)
    on_podman = FreePorts(2, owner="shop", labels=["a", "b"], start=first, stop=first + 3, state_dir=podman.leases)
    # each engine's view names its own leases by the project, and lists only its own
    assert [r.port for r in docker.leases.owner_ports("shop") or []] == sorted(on_docker.ports)
    assert [r.port for r in podman.leases.owner_ports("shop") or []] == sorted(on_podman.ports)
    assert {(r.owner, r.port) for r in podman.leases.held()} == {("shop", p) for p in on_podman.ports}
    assert {(r.owner, r.port) for r in docker.leases.held()} == {("shop", p) for p in on_docker.ports}
    assert all(podman.leases.is_held(r) for r in podman.leases.held())
    # releasing one engine's project leaves the other's
    assert sorted(podman.leases.release_owner("shop")) == sorted(on_podman.ports)
    assert [r.port for r in docker.leases.owner_ports("shop") or []] == sorted(on_docker.ports)
    with pytest.raises(UnknownOwnerError, match=r"for the engine at unix:///run/podman/podman\.sock"):
        podman.leases.release_owner("shop")
    assert podman.leases.owner_ports("shop") is None
    assert sorted(docker.leases.release_owner("shop")) == sorted(on_docker.ports)


def test_an_engine_elsewhere_keeps_a_store_of_its_own(tmp_path: Path) -> None:
    root = str(tmp_path / "state")
    far = State.open(root, Engine("tcp://far.example:2376"))
    assert far.leases.path == far.path == os.path.join(root, "engines", far.engine.key)
    from _ports import find_free_block

    first = find_free_block(1)
    held = FreePorts(1, owner="shop", start=first, stop=first, state_dir=far.leases)
    here = FreePorts(1, owner="shop", start=first, stop=first, timeout=0, state_dir=root)  # free here
    assert held.ports == here.ports == [first]
    here.release()
    held.release()


def test_ls_finds_every_engine_and_each_lease_once(tmp_path: Path) -> None:
    root = str(tmp_path / "state")
    podman = State.open(root, Engine("unix:///run/podman/podman.sock"))
    from _ports import find_free_block

    first = find_free_block(2)
    FreePorts(1, owner="shop", start=first, stop=first, state_dir=podman.leases)
    FreePorts(1, owner="tool", start=first + 1, stop=first + 1, state_dir=root)
    states = State.every(root, Engine(DEFAULT_ADDRESS))
    shown = [(s.engine.address, [(r.owner, r.port) for r in s.leases.held()]) for s in states]
    assert shown == [(DEFAULT_ADDRESS, [("tool", first + 1)]), ("unix:///run/podman/podman.sock", [("shop", first)])]


def test_doctor_names_the_engine_its_store_and_whether_it_answers(tmp_path: Path) -> None:
    from freeport_compose._stacks.doctor import doctor

    root = str(tmp_path / "state")
    found = {f.what: f for f in doctor(root, env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})}
    assert found["engine"].found.startswith(f"unix://{tmp_path}/none.sock")
    assert found["local"].found.startswith("yes")
    assert found["lease store"].found.startswith(f"{root}/ports")  # the machine's store
    assert not found["engine answers"].ok
    far = {f.what: f for f in doctor(root, env={"DOCKER_HOST": "tcp://far.example:2376"})}
    assert far["local"].found.startswith("no")
    assert far["lease store"].found.startswith(os.path.join(root, "engines"))
