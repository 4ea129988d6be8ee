"""The state directory deleted while leases are held: never a duplicate port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from freeport_compose import FreePort, NoFreePortError, store

HOLD = """
import sys
from freeport_compose import FreePort
fp = FreePort(int(sys.argv[1]), int(sys.argv[1]))
print(fp.port, flush=True)
sys.stdin.readline()
"""
TRY = """
import sys
from freeport_compose import FreePort, NoFreePortError
try:
    print("got", FreePort(int(sys.argv[1]), int(sys.argv[1]), timeout=0.3).port)
except NoFreePortError as e:
    print("busy:", e)
"""


@pytest.fixture
def holder() -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(port: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(port)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def try_elsewhere(port: int) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(port)], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_deleted_state_dir_does_not_free_a_held_port(
    holder: Callable[[int], subprocess.Popen[str]], free_block: Callable[[int], int], state_dir: Path
) -> None:
    port = free_block(1)
    proc = holder(port)
    shutil.rmtree(state_dir)
    answer = try_elsewhere(port)
    assert answer.startswith("busy:"), answer
    assert f"pid {proc.pid}" in answer
    assert "deleted" in answer
    assert [(r.port, r.holder.pid, r.adopted) for r in store().records()] == [(port, proc.pid, True)]
    assert stat_mode(state_dir) == 0o700
    # Once the holder is gone, its adopted lease goes with it.
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)
    assert try_elsewhere(port) == f"got {port}"


def test_holder_killed_before_the_deletion_leaves_nothing_to_adopt(
    holder: Callable[[int], subprocess.Popen[str]], free_block: Callable[[int], int], state_dir: Path
) -> None:
    port = free_block(1)
    proc = holder(port)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    shutil.rmtree(state_dir)
    assert try_elsewhere(port) == f"got {port}"


def test_process_whose_state_dir_was_deleted_keeps_its_own_leases(
    free_block: Callable[[int], int], state_dir: Path
) -> None:
    first = free_block(2)
    with FreePort(first, first) as mine:
        shutil.rmtree(state_dir)
        time.sleep(0.15)  # past the throttle of the deletion check
        with pytest.raises(NoFreePortError):
            FreePort(first, first, timeout=0.3)
        assert try_elsewhere(first).startswith("busy:")
        other = FreePort(first, first + 1, timeout=5)
        assert other.port == first + 1
        other.release()
    assert mine.port == first


def test_named_leases_do_not_survive_the_deletion_but_bound_ports_stay_safe(
    free_block: Callable[[int], int], state_dir: Path
) -> None:
    """What is lost: a named lease lives in the state dir. A port its user has bound is still
    never handed out (the probe sees it); an unbound one can be."""
    import socket

    first = free_block(1)
    named = FreePort(first, first, owner="job")
    with socket.socket() as server:
        server.bind(("127.0.0.1", named.port))
        server.listen()
        shutil.rmtree(state_dir)
        assert try_elsewhere(first).startswith("busy:")
    assert not (state_dir / "owners").exists()  # made anew only by a named lease


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_adoption_through_a_symlinked_state_path(
    holder: Callable[[int], subprocess.Popen[str]], free_block: Callable[[int], int], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/proc shows resolved paths: a state dir reached through a symlink is adopted all the same."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(tmp_path / "link" / "state"))
    port = free_block(1)
    proc = holder(port)
    shutil.rmtree(real / "state")
    answer = try_elsewhere(port)
    assert answer.startswith("busy:"), answer
    assert f"pid {proc.pid}" in answer


def test_only_ports_dir_deleted(
    holder: Callable[[int], subprocess.Popen[str]], free_block: Callable[[int], int], state_dir: Path
) -> None:
    first = free_block(2)
    proc = holder(first)
    with FreePort(first + 1, first + 1) as mine:
        shutil.rmtree(state_dir / "ports")
        time.sleep(0.15)  # past the throttle of the deletion check
        assert try_elsewhere(first).startswith("busy:")  # the other process's lease, adopted
        assert try_elsewhere(first + 1).startswith("busy:")  # ours, adopted too
        with pytest.raises(NoFreePortError):  # and this process goes on working
            FreePort(first, first + 1, timeout=0.3)
    assert mine.port == first + 1
    assert proc.poll() is None
