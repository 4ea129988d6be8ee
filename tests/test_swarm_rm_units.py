"""`rm` of a Swarm stack, engine-free (issue 21's take-downs, CI's "network is in use by task"):
the branches of dockerstack.remove_locked against a fake engine (tests/_fake_engine.py) whose
answers change as `docker stack rm` (a stand-in recording its calls) would change them. The real
Swarm's slow-task case is tests/test_engines.py::test_rm_waits_for_tasks_slow_to_stop; the race
behind "in use by task" cannot be provoked there at will, so its branch is here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _fake_engine import FakeEngine
from freeport_compose import FreePort
from freeport_compose._error import ComposeError, EngineUnreachableError
from freeport_compose._stacks import dockerstack
from freeport_compose._stacks.compose import Result
from freeport_compose._stacks.dockerstack import Swarm, remove_locked
from freeport_compose._stacks.records import StackRecord, StackStatus
from freeport_compose._stacks.state import State
from freeport_compose._stacks.target import Engine

LABEL = "com.docker.stack.namespace"
IN_USE = "Failed to remove network x: network x is in use by task y"


class Stack:
    """The fake engine's view of one Swarm stack; `rm` answers as scripted, one answer per call."""

    def __init__(self, server: FakeEngine, services: int, containers: int, networks: int) -> None:
        self.server = server
        self.counts = {"services": services, "containers": containers, "networks": networks}
        self.calls = 0
        self.broken = ""  # the engine's error message, once it answers 500 to everything
        self.show()

    def show(self) -> None:
        if self.broken:
            for route in ("/services", "/containers/json", "/networks"):
                self.server.routes[route] = (500, {"message": self.broken})
            return
        labelled = [{"Labels": {LABEL: "shop"}, "Spec": {"Labels": {LABEL: "shop"}}}]
        self.server.routes["/services"] = (200, labelled * self.counts["services"])
        self.server.routes["/containers/json"] = (200, labelled * self.counts["containers"])
        self.server.routes["/networks"] = (200, labelled * self.counts["networks"])

    def set(self, broken: str = "", **counts: int) -> None:
        """New counts (services, containers, networks); `broken`: from now on the engine fails."""
        self.counts.update(counts)
        self.broken = broken or self.broken
        self.show()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[FakeEngine, State]]:
    path = str(tmp_path / "engine.sock")
    server = FakeEngine(path)
    yield server, State.open(str(tmp_path / "state"), Engine(f"unix://{path}"))
    server.close()


def deployed(state: State, free_block: Callable[[int], int]) -> tuple[StackRecord, int]:
    """A deployed Swarm stack `shop` of ours holding one leased port."""
    first = free_block(1)
    port = FreePort(first, first, owner="shop", label="FREEPORT_web", state_dir=state.leases).port
    record = StackRecord("shop", [], [], "/", ports={"FREEPORT_web": port}, status=StackStatus.DEPLOYED, swarm=True)
    state.stacks.save(record)
    return record, port


def assert_kept(state: State, port: int) -> None:
    """The stack is kept `stopping`, its port still leased: for `rm` or gc to finish."""
    assert [r.port for r in state.leases.owner_ports("shop") or []] == [port]
    saved = state.stacks.load("shop")
    assert saved is not None
    assert saved.status is StackStatus.STOPPING


def script_rm(monkeypatch: pytest.MonkeyPatch, stack: Stack, *answers: tuple[Result, dict[str, Any]]) -> None:
    """`docker stack rm` answers with each (result, engine counts after it) in turn."""

    def rm(self: Swarm, name: str) -> Result:
        assert name == "shop"
        result, after = answers[stack.calls]
        stack.calls += 1
        stack.set(**after)
        return result

    monkeypatch.setattr(Swarm, "rm", rm)


def test_a_network_a_stopping_task_held_is_removed_by_a_second_rm(
        state: tuple[FakeEngine, State], monkeypatch: pytest.MonkeyPatch, free_block: Callable[[int], int]) -> None:
    server, st = state
    record, port = deployed(st, free_block)
    stack = Stack(server, services=1, containers=1, networks=1)
    # the services go, the network fails ("in use by task"); the task's container stops a moment later
    script_rm(monkeypatch, stack, (Result(1, IN_USE), {"services": 0}), (Result(0, ""), {"networks": 0}))
    monkeypatch.setattr(dockerstack.time, "sleep", lambda s: stack.set(containers=0))
    remove_locked(st, record)
    assert stack.calls == 2
    assert st.stacks.load("shop") is None
    assert st.leases.owner_ports("shop") in (None, [])
    assert port not in {r.port for r in st.leases.held()}


def test_services_that_would_not_go_keep_the_ports(
        state: tuple[FakeEngine, State], monkeypatch: pytest.MonkeyPatch, free_block: Callable[[int], int]) -> None:
    server, st = state
    record, port = deployed(st, free_block)
    stack = Stack(server, services=2, containers=2, networks=1)
    script_rm(monkeypatch, stack, (Result(1, "Error response from daemon: rpc error"), {}))
    with pytest.raises(ComposeError, match=r"docker stack rm failed: .*rpc error \(2 of its services are left") as e:
        remove_locked(st, record)
    assert e.value.returncode == 1
    assert stack.calls == 1  # nothing waited for: the services are still there
    assert_kept(st, port)


def test_a_stack_not_gone_in_time_stays_stopping(
        state: tuple[FakeEngine, State], monkeypatch: pytest.MonkeyPatch, free_block: Callable[[int], int]) -> None:
    server, st = state
    record, port = deployed(st, free_block)
    stack = Stack(server, services=1, containers=1, networks=1)
    script_rm(monkeypatch, stack, (Result(0, ""), {"services": 0}))  # a task that never stops
    monkeypatch.setattr(dockerstack, "RM_WAIT", 0.3)
    gone = r"shop was not gone after 0 s \(2 of its task containers or networks are left"
    with pytest.raises(ComposeError, match=gone) as e:
        remove_locked(st, record)
    assert e.value.returncode == 0  # docker stack rm did not fail: the CLI exits with COMPOSE_FAILED (5)
    assert_kept(st, port)


def test_an_engine_gone_while_waiting_says_so_and_keeps_the_ports(
        state: tuple[FakeEngine, State], monkeypatch: pytest.MonkeyPatch, free_block: Callable[[int], int]) -> None:
    server, st = state
    record, port = deployed(st, free_block)
    stack = Stack(server, services=1, containers=1, networks=1)
    script_rm(monkeypatch, stack, (Result(0, ""), {"services": 0, "broken": "engine shutting down"}))
    with pytest.raises(EngineUnreachableError, match=r"engine shutting down.*its services may still exist"):
        remove_locked(st, record)
    assert_kept(st, port)
