"""State that heals (issue 21): a torn owner index, lost lease records, a deleted state dir, and
stale project locks. A test of a case that went wrong before says what it did then ("Was: ...");
the others hold what the fixes must not do (take another's port or lock, guess).

The owner-index and lock tests need no engine; the others run the real CLI on the real engine,
with stacks of the local busybox image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _docker import Footprint, containers, docker, fpc, leases_of, networks, ok, parse_dotenv, require_docker
from freeport_compose import FreePort, store
from freeport_compose._leasing.owners import parse
from freeport_compose._stacks.lifecycle import gc
from freeport_compose._stacks.state import State
from freeport_compose._stacks.target import DEFAULT_ADDRESS, Engine

# -- 1. an owner index with a torn last line -----------------------------------------------------------


def _tear(state_dir: Path, owner: str, partial: bytes = b"4000") -> None:
    """What a writer killed mid-append (or refused by a full disk) leaves: part of an entry, no newline."""
    with open(state_dir / "owners" / owner, "ab") as f:
        f.write(partial)


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(state_dir: Path) -> None:
    """Was: the next port was glued onto the torn line (`4000` + `28834`): `release --owner` freed
    1 of 2 ports, and no command freed the other."""
    first = FreePort(owner="job")
    _tear(state_dir, "job")
    second = FreePort(owner="job")
    assert {first.port, second.port} <= set(parse((state_dir / "owners" / "job").read_bytes()))
    assert sorted(store().release_owner("job")) == sorted([first.port, second.port])
    assert [r for r in store().records() if r.owner == "job"] == []


def test_release_by_cli_frees_every_port_after_a_torn_line(state_dir: Path) -> None:
    """The measured case, as the CLI user met it."""
    if not os.access(Path(sys.executable).with_name("freeport-compose"), os.X_OK):
        pytest.skip("the CLI is not installed")
    first = int(ok(fpc("get", "--owner", "job")).stdout)
    _tear(state_dir, "job")
    second = int(ok(fpc("get", "--owner", "job")).stdout)
    released = ok(fpc("release", "--owner", "job"))
    assert "released 2 port(s)" in released.stderr, released.stderr
    assert str(first) in released.stderr
    assert str(second) in released.stderr
    assert json.loads(ok(fpc("leases", "--json")).stdout)["leases"] == []


def test_a_line_an_older_writer_glued_still_frees_its_port(state_dir: Path) -> None:
    """An index written before the fix: `4000` and the next port on one line. The port it ends with
    is found and freed (any other number a line's digits could end with is merely skipped: its
    record is not the owner's)."""
    first = FreePort(owner="job")
    second = FreePort(owner="job")
    (state_dir / "owners" / "job").write_bytes(b"%d\n4000%d\n" % (first.port, second.port))
    assert sorted(store().release_owner("job")) == sorted([first.port, second.port])


# -- 4. project locks that nothing removed --------------------------------------------------------------


@pytest.fixture
def state(state_dir: Path) -> State:
    # The machine's engine by its address: nothing here asks it (no stack has a record).
    return State.open(str(state_dir), Engine(DEFAULT_ADDRESS))


def test_gc_removes_the_lock_of_a_project_that_is_gone(state: State, state_dir: Path) -> None:
    """Was: stacks/ kept an empty <project>.lock for every project name ever used."""
    for name in ("gone-1", "gone-2"):
        with state.stacks.locked(name):
            pass
    assert (state_dir / "stacks" / "gone-1.lock").exists()
    report = gc(state)
    assert sorted(report.locks) == ["gone-1", "gone-2"]
    assert sorted(os.listdir(state_dir / "stacks")) == []


def test_gc_keeps_a_lock_someone_holds(state: State, state_dir: Path) -> None:
    """A lock another process (here: another open file) holds is never removed, nor waited for."""
    with state.stacks.locked("busy"):
        started = time.monotonic()
        report = gc(state)
        assert time.monotonic() - started < 5
    assert report.locks == []
    assert (state_dir / "stacks" / "busy.lock").exists()


def test_gc_keeps_the_lock_of_a_project_with_leases(state: State, state_dir: Path) -> None:
    """A project with leases (its record lost, say) keeps its lock: a `down` of it still needs it."""
    with state.stacks.locked("leased"):
        pass
    held = FreePort(owner="leased")
    report = gc(state)
    assert report.locks == []
    assert (state_dir / "stacks" / "leased.lock").exists()
    held.release()
    assert gc(state).locks == ["leased"]


def test_gc_leaves_what_is_not_a_project_lock(state: State, state_dir: Path) -> None:
    """Only <valid project name>.lock files, plain ones: a name Compose would refuse, a symlink, a
    directory are no project lock of ours."""
    with state.stacks.locked("real"):
        pass
    stacks = state_dir / "stacks"
    (stacks / "Not-A-Project.lock").write_text("")
    (stacks / "target").write_text("x")
    os.symlink(stacks / "target", stacks / "linked.lock")
    os.mkdir(stacks / "dir.lock")
    assert gc(state).locks == ["real"]
    assert sorted(os.listdir(stacks)) == ["Not-A-Project.lock", "dir.lock", "linked.lock", "target"]
    assert (stacks / "target").read_text() == "x"


def test_a_locker_that_opened_a_lock_gc_removed_locks_the_new_one(state: State, state_dir: Path) -> None:
    """The unlink race: a locker opens stacks/p.lock, gc (holding it) removes it, a second locker
    creates and locks a new p.lock, gc lets go. The first locker now gets the flock of a file no
    one can open: without the check that the file it locked is still the one at the path, it and
    the second locker would both be inside."""
    path = state_dir / "stacks" / "p.lock"
    inside = threading.Event()
    errors: list[BaseException] = []
    with state.stacks.locked("p"):  # as gc holds it while it removes it

        def first() -> None:
            try:
                with state.stacks.locked("p"):  # opens the file now, then waits for its flock
                    inside.set()
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=first)
        thread.start()
        time.sleep(0.3)  # it has opened the old file and waits on it
        os.unlink(path)
    # gc let go of the old file; a second locker holds the new one.
    with state.stacks.locked("p"):
        time.sleep(0.3)
        assert not inside.is_set(), "two holders of one project's lock"
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert inside.is_set()


GC_RACER = """
import os, sys, time
from freeport_compose._stacks.lifecycle import gc
from freeport_compose._stacks.state import State
from freeport_compose._stacks.target import DEFAULT_ADDRESS, Engine

state = State.open(sys.argv[1], Engine(DEFAULT_ADDRESS))
role, marker, deadline = sys.argv[2], sys.argv[3], time.monotonic() + float(sys.argv[4])
entries = removed = 0
while time.monotonic() < deadline:
    if role == "gc":
        removed += len(gc(state).locks)
        continue
    with state.stacks.locked("race"):
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
        os.close(fd)
        time.sleep(0.0005)
        os.unlink(marker)
        entries += 1
print(entries if role != "gc" else removed, flush=True)
"""


def test_lockers_racing_gc_never_share_the_lock(state: State, state_dir: Path, tmp_path: Path) -> None:
    """Lockers of one project and gc removing its lock, in parallel processes: never two holders
    at once (each creates a marker file with O_EXCL while it holds the lock), and gc does remove it."""
    marker = str(tmp_path / "inside")
    roles = ["locker", "locker", "gc"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GC_RACER, str(state_dir), role, marker, "2.0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in roles
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    counts = [int(out) for out, _ in outs]
    assert counts[0] + counts[1] > 0  # one locker may starve the other (it sleeps between tries): either counts
    assert counts[2] > 0, "gc never removed the lock it raced for"


# -- 2, 3. with a real engine ------------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Footprint]:
    require_docker()
    with Footprint(tmp_path, "fpc.healing", "fpc-heal") as footprint:
        yield footprint


def _two_ports(box: Footprint) -> str:
    return box.compose_file(
        "compose.yml", box.service("web", ports=["$<FREEPORT_web>:80"]), box.service("db", ports=["$<FREEPORT_db>:80"])
    )


def _corrupt(state_dir: Path, port: int) -> None:
    (state_dir / "ports" / f"{port}.lock").write_bytes(b'{"port": garbage')


@pytest.mark.docker
def test_down_frees_every_port_after_a_torn_index(box: Footprint, state_dir: Path) -> None:
    """Was: `down` said `its ports are free` (exit 0) while the port leased after the tear stayed leased."""
    one = box.compose_file("one.yml", box.service("web", ports=["$<FREEPORT_web>:80"]))
    project = box.project()
    ok(fpc("up", "-d", "-f", one, "-p", project))
    _tear(state_dir, project)
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)  # db: leased now
    assert leases_of(project) == ports
    ok(fpc("down", "-p", project))
    assert leases_of(project) == {}


@pytest.mark.docker
def test_ports_recovers_a_port_whose_lease_record_is_corrupt(box: Footprint, state_dir: Path) -> None:
    """Was: `ports` left out a port the stack's container still publishes, silently."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    _corrupt(state_dir, ports["FREEPORT_db"])
    from freeport_compose._stacks.lookup import stack_ports

    found = stack_ports(State.open(), project)
    assert found.ports == ports
    assert found.hosts == {"FREEPORT_db": "127.0.0.1", "FREEPORT_web": "127.0.0.1"}
    assert len(found.warnings) == 1, found.warnings
    assert str(ports["FREEPORT_db"]) in found.warnings[0]
    assert "leased to it again" in found.warnings[0]
    assert leases_of(project) == ports  # repaired: no allocation can hand it out now
    assert stack_ports(State.open(), project).warnings == ()
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == ports
    ok(fpc("down", "-p", project))
    assert leases_of(project) == {}


@pytest.mark.docker
def test_ports_recovers_when_every_lease_record_is_corrupt(box: Footprint, state_dir: Path) -> None:
    """Was: `ports` said the stack holds no ports (exit 9) while `leases` showed it up."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    for port in ports.values():
        _corrupt(state_dir, port)
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == ports
    assert leases_of(project) == ports
    assert int(ok(fpc("port", "-p", project, "db")).stdout) == ports["FREEPORT_db"]


@pytest.mark.docker
def test_ports_never_takes_a_port_another_owner_leased(box: Footprint, state_dir: Path) -> None:
    """A port whose record was lost and that someone else leased since is theirs: left out, said."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    db = ports["FREEPORT_db"]
    _corrupt(state_dir, db)
    other = FreePort(db, db, owner="other", probe=lambda _: True)  # the bind probe would see the container
    from freeport_compose._stacks.lookup import stack_ports

    found = stack_ports(State.open(), project)
    assert found.ports == {"FREEPORT_web": ports["FREEPORT_web"]}
    assert len(found.warnings) == 1, found.warnings
    assert "'other'" in found.warnings[0]
    assert store().read(db) == other.records[0]


@pytest.mark.docker
def test_ports_never_guesses_a_port_the_engine_does_not_publish(box: Footprint, state_dir: Path) -> None:
    """A lost lease of a stopped service: the engine cannot vouch for it, so it is left out (said),
    and not leased again."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    db = ports["FREEPORT_db"]
    _corrupt(state_dir, db)
    assert docker("compose", "-p", project, "stop", "db").returncode == 0
    from freeport_compose._stacks.lookup import stack_ports

    found = stack_ports(State.open(), project)
    assert found.ports == {"FREEPORT_web": ports["FREEPORT_web"]}
    assert len(found.warnings) == 1, found.warnings
    assert "does not publish" in found.warnings[0]
    assert leases_of(project) == {"FREEPORT_web": ports["FREEPORT_web"]}


@pytest.mark.docker
def test_down_after_the_state_dir_was_deleted_takes_the_stack_down(box: Footprint, state_dir: Path) -> None:
    """Nothing of ours is left: Compose finds the stack by its labels."""
    project = box.project()
    ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project))
    assert len(containers(project, running=True)) == 2
    shutil.rmtree(state_dir)
    ok(fpc("down", "-p", project))
    assert containers(project) == []
    assert networks(project) == []
    assert json.loads(ok(fpc("leases", "--json")).stdout)["leases"] == []


# -- once _cli.py prints stack_ports' warnings and gc's removed locks, and engine.py has project_ports ---------


@pytest.mark.docker
def test_ports_says_what_it_recovered(box: Footprint, state_dir: Path) -> None:
    """Each recovered (or left out) port is one warning line on stderr; stdout stays the ports."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    db = ports["FREEPORT_db"]
    _corrupt(state_dir, db)
    shown = ok(fpc("ports", "-p", project, "--format", "json"))
    assert json.loads(shown.stdout) == ports
    assert f"freeport-compose: warning: port {db} (FREEPORT_db) of {project} lost its lease" in shown.stderr
    assert "leased to it again" in shown.stderr
    assert ok(fpc("ports", "-p", project)).stderr == ""  # repaired: nothing more to say


def test_gc_says_it_removed_lock_files(state: State) -> None:
    if not os.access(Path(sys.executable).with_name("freeport-compose"), os.X_OK):
        pytest.skip("the CLI is not installed")
    with state.stacks.locked("gone"):
        pass
    assert "removed the lock files of 1 project(s) nothing is left of" in ok(fpc("gc")).stderr
    assert "nothing to free" in ok(fpc("gc")).stderr


@pytest.mark.docker
def test_ports_never_takes_another_projects_port_for_the_stacks(box: Footprint, state_dir: Path) -> None:
    """db stopped, and its port (its lease lost) published since by a container of another project:
    the engine publishes it, but not for this stack."""
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", _two_ports(box), "-p", project)).stdout)
    db = ports["FREEPORT_db"]
    _corrupt(state_dir, db)
    assert docker("compose", "-p", project, "stop", "db").returncode == 0
    other = box.project()
    squatter = box.compose_file("other.yml", box.service("squat", ports=[f"{db}:80"]))
    assert docker("compose", "-p", other, "-f", squatter, "up", "-d").returncode == 0
    from freeport_compose._stacks.lookup import stack_ports

    found = stack_ports(State.open(), project)
    assert found.ports == {"FREEPORT_web": ports["FREEPORT_web"]}
    assert len(found.warnings) == 1, found.warnings
    assert "does not publish" in found.warnings[0]
