"""The public surface the layout promises: the LeaseStore view, the probe injection point, state passed
down explicitly (never through os.environ), library code that does not print, and a leasing half that
never loads the stacks half, PyYAML or the Docker SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import freeport_compose
from freeport_compose import FreePort, FreePorts, LeaseStore, NoFreePortError, store

FreeBlock = Callable[[int], int]


def test_store_is_the_small_view(free_block: FreeBlock) -> None:
    first = free_block(3)
    leases = store()
    assert isinstance(leases, LeaseStore)
    assert leases.path == os.environ["FREEPORT_STATE_DIR"]
    assert not hasattr(leases, "try_claim")
    assert not hasattr(leases, "sd")
    FreePort(first + 1, first + 1, owner="job", label="db")  # named: outlives this object
    with FreePort(first, first, label="web") as proc:
        held = {r.port: r for r in leases.held()}
        assert set(held) == {proc.port, first + 1}
        assert (held[proc.port].kind, held[proc.port].owner, held[proc.port].label) == ("process", None, "web")
        assert (held[first + 1].kind, held[first + 1].owner, held[first + 1].label) == ("named", "job", "db")
        assert held[proc.port].holder.pid == os.getpid()
        assert leases.release(held[proc.port]) is False  # a process lease ends with its holder, not by record
        assert leases.is_held(held[proc.port])
    assert [r.port for r in leases.held()] == [first + 1]  # the process lease ended with its `with`
    assert leases.release_owner("job") == [first + 1]
    assert leases.held() == []


def test_release_of_a_record_frees_that_lease_only(free_block: FreeBlock) -> None:
    first = free_block(1)
    leases = store()
    FreePort(first, first, owner="old")
    [old] = leases.owner_ports("old") or []
    assert leases.release(old) is True
    assert leases.release(old) is False  # already gone
    FreePort(first, first, owner="old")  # the same owner leases the same port again: a new lease
    assert leases.release(old) is False  # the stale record must not free the new lease
    [new] = leases.owner_ports("old") or []
    assert new.token != old.token
    assert leases.is_held(new)
    assert leases.release(new) is True
    assert leases.owner_ports("old") is None


def test_probe_decides_what_is_in_use_outside_the_leases(free_block: FreeBlock) -> None:
    first = free_block(6)
    asked: list[int] = []

    def only_the_last(port: int) -> bool:
        asked.append(port)
        return port == first + 5

    with FreePort(first, first + 5, probe=only_the_last, timeout=5) as fp:
        assert fp.port == first + 5
    assert set(asked) <= set(range(first, first + 6))
    with pytest.raises(NoFreePortError, match=r"6 of 6 taken \(6 in use by another program\)"):
        FreePorts(2, first, first + 5, probe=lambda port: False, timeout=0)
    assert store().held() == []


def test_state_dir_is_an_argument_not_an_environment_write(tmp_path: Path, free_block: FreeBlock) -> None:
    from freeport_compose._cli import main

    first = free_block(1)
    other = tmp_path / "other-state"
    before = os.environ["FREEPORT_STATE_DIR"]
    assert main(["--state-dir", str(other), "get", "--owner", "elsewhere", "--range", f"{first}-{first}"]) == 0
    assert os.environ["FREEPORT_STATE_DIR"] == before
    assert [r.port for r in store(str(other)).owner_ports("elsewhere") or []] == [first]
    assert store().owner_ports("elsewhere") is None  # not in the default state dir


def test_lease_store_given_as_state_dir(tmp_path: Path, free_block: FreeBlock) -> None:
    first = free_block(1)
    other = store(str(tmp_path / "given"))
    fps = FreePorts(1, first, first, owner="given", state_dir=other, timeout=1)
    assert fps.ports == [first]
    assert [r.port for r in other.owner_ports("given") or []] == [first]
    assert store().owner_ports("given") is None
    with pytest.raises(NoFreePortError):  # held in `other`: the same store refuses it
        FreePort(first, first, state_dir=other, timeout=0)
    assert freeport_compose.release_owner("given", state_dir=other) == [first]


def test_library_render_does_not_print(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from freeport_compose._stacks.lifecycle import Options, render
    from freeport_compose._stacks.state import State

    template = tmp_path / "compose.yml"
    template.write_text(
        'services:\n  web:\n    image: x\n    container_name: fixed\n    ports: ["$<FREEPORT_web>:80"]\n'
    )
    heard: list[str] = []
    state = State.open()
    record = render(state, Options([str(template)], project="quiet", check=False), notify=heard.append)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert len(heard) == 1
    assert "container_name" in heard[0]
    assert f"{template}:4:5" in heard[0]
    assert set(record.ports) == {"FREEPORT_web"}
    assert state.leases.release_owner("quiet") == list(record.ports.values())


def test_leasing_half_loads_nothing_of_the_stacks_half(tmp_path: Path, free_block: FreeBlock) -> None:
    """FreePort() in a unit test must not start talking to Docker, nor pay for YAML."""
    first = free_block(1)
    code = f"""
import json, sys
from freeport_compose import FreePort, store
with FreePort({first}, {first}, timeout=5):
    store().held()
names = [m for m in sys.modules if m.startswith(("freeport_compose._stacks", "docker", "yaml"))]
print(json.dumps(names))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_leasing_modules_never_import_the_stacks_half() -> None:
    leasing = Path(freeport_compose.__file__).parent / "_leasing"
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(leasing.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "_stacks" in line or "_cli" in line or "pytest" in line
    ]
    assert offenders == []
