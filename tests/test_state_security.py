"""The state directory can be trusted: unsafe directories are refused, planted files are never followed."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from freeport_compose import FreePort, FreeportError, NoFreePortError, StateDirError, release_owner, store

PY = sys.executable
FreeBlock = Callable[[int], int]
OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown or to switch user")


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_size


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file an attacker would like us to overwrite, with an old mtime so that any write shows."""
    path = tmp_path / "victim"
    path.write_bytes(b"precious contents\n")
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return path


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- the state directory itself ---------------------------------------------------------------------


def test_symlinked_state_dir_is_refused(state_dir: Path, tmp_path: Path, free_block: FreeBlock) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    state_dir.symlink_to(target)
    first = free_block(1)
    with pytest.raises(StateDirError, match="is a symlink"):
        FreePort(first, first, timeout=0)
    with pytest.raises(StateDirError):
        store()
    assert tree(target) == []  # nothing was created through the link


def test_dangling_symlinked_state_dir_is_refused(state_dir: Path, tmp_path: Path, free_block: FreeBlock) -> None:
    target = tmp_path / "not-yet"
    state_dir.symlink_to(target)
    first = free_block(1)
    with pytest.raises(StateDirError, match="is a symlink"):
        FreePort(first, first, timeout=0)
    assert not target.exists()


# How each subdirectory is first used: owners/ and stacks/ are opened (and verified) only then.
FIRST_USE: dict[str, Callable[[int], object]] = {
    "ports": lambda port: FreePort(port, port, timeout=0),
    "owners": lambda port: FreePort(port, port, timeout=0, owner="job"),
    "stacks": lambda port: store()._locks.sd.stacks_fd,
}


@pytest.mark.parametrize("sub", ["ports", "owners", "stacks"])
def test_symlinked_subdir_is_refused(sub: str, state_dir: Path, tmp_path: Path, free_block: FreeBlock) -> None:
    state_dir.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (state_dir / sub).symlink_to(target)
    first = free_block(1)
    with pytest.raises(StateDirError):
        FIRST_USE[sub](first)
    assert tree(target) == []


def test_process_lease_opens_neither_owners_nor_stacks(state_dir: Path, tmp_path: Path, free_block: FreeBlock) -> None:
    # Only named leases need owners/, only stacks stacks/: a process lease does not open them
    # (that costs a fresh process's first FreePort() two opens and fstats), so never through a link.
    state_dir.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    for sub in ("owners", "stacks"):
        (state_dir / sub).symlink_to(target)
    first = free_block(1)
    with FreePort(first, first, timeout=0) as fp:
        assert fp.port == first
    assert tree(target) == []
    with pytest.raises(StateDirError, match="is a symlink"):
        FreePort(first, first, timeout=0, owner="job")
    assert tree(target) == []


@needs_root
def test_state_dir_of_another_user_is_refused(state_dir: Path, free_block: FreeBlock) -> None:
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, OTHER_UID, OTHER_UID)
    first = free_block(1)
    with pytest.raises(StateDirError, match=f"uid {OTHER_UID}"):
        FreePort(first, first, timeout=0)
    assert tree(state_dir) == []


@pytest.mark.parametrize("shared", [False, True])
def test_world_writable_state_dir_without_sticky_bit_is_refused(
    shared: bool, state_dir: Path, monkeypatch: pytest.MonkeyPatch, free_block: FreeBlock
) -> None:
    if shared:
        monkeypatch.setenv("FREEPORT_SHARED", "1")  # sharing on purpose does not make this one safe
    state_dir.mkdir()
    state_dir.chmod(0o777)
    first = free_block(1)
    with pytest.raises(StateDirError, match="world-writable"):
        FreePort(first, first, timeout=0)
    assert tree(state_dir) == []


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o1770, 0o1777, 0o702])
def test_private_state_dir_writable_by_others_is_refused(mode: int, state_dir: Path, free_block: FreeBlock) -> None:
    state_dir.mkdir()
    state_dir.chmod(mode)
    first = free_block(1)
    with pytest.raises(StateDirError):
        FreePort(first, first, timeout=0)
    assert tree(state_dir) == []


def test_group_writable_subdir_is_refused(state_dir: Path, free_block: FreeBlock) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "ports").mkdir()
    (state_dir / "ports").chmod(0o770)
    first = free_block(1)
    with pytest.raises(StateDirError, match="writable by others"):
        FreePort(first, first, timeout=0)


def test_state_dir_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_block: FreeBlock) -> None:
    path = tmp_path / "deep" / "er" / "state"
    monkeypatch.setenv("FREEPORT_STATE_DIR", str(path))
    first = free_block(1)
    old_umask = os.umask(0)  # the modes must not depend on a careful umask
    try:
        with FreePort(first, first, timeout=5, owner="job-mode") as fp:
            assert fp.port == first
            owner_index_mode = stat.S_IMODE((path / "owners" / "job-mode").stat().st_mode)
        store()._locks.sd.stacks_fd  # made when first used  # noqa: B018
    finally:
        os.umask(old_umask)
    for d in (path, path / "ports", path / "owners", path / "stacks"):
        st = d.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700, d
        assert st.st_uid == os.geteuid()
    assert owner_index_mode == 0o600
    assert stat.S_IMODE((path / "ports" / f"{first}.lock").stat().st_mode) == 0o600


# -- sharing one directory on purpose -------------------------------------------------------------------


@needs_root
def test_shared_mode_accepts_sticky_world_writable_dir_of_another_user(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, free_block: FreeBlock
) -> None:
    state_dir.mkdir()
    state_dir.chmod(0o1777)
    os.chown(state_dir, OTHER_UID, OTHER_UID)
    first = free_block(1)
    with pytest.raises(StateDirError):  # not without opting in
        FreePort(first, first, timeout=0)
    monkeypatch.setenv("FREEPORT_SHARED", "1")
    with FreePort(first, first, timeout=5, owner="job") as fp:
        assert fp.port == first
    store()._locks.sd.stacks_fd  # made when first used  # noqa: B018
    for sub in ("ports", "owners", "stacks"):
        assert stat.S_IMODE((state_dir / sub).stat().st_mode) == 0o1777  # others can add, not swap


def _run_as_other_user(body: Callable[[], bytes], uid: int = OTHER_UID) -> tuple[int, bytes]:
    """body() in a forked child that switched to `uid`; (exit status, its output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, body())
            status = 0
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(w, f"error: {e!r}".encode())
        finally:
            os._exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    finally:
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), data


@needs_root
def test_shared_mode_lock_files_are_usable_by_other_users(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, free_block: FreeBlock
) -> None:
    state_dir.mkdir()
    state_dir.chmod(0o1777)
    monkeypatch.setenv("FREEPORT_SHARED", "1")
    first = free_block(1)
    with FreePort(first, first, timeout=5):
        pass  # the lock file now exists, created by us
    lock = state_dir / "ports" / f"{first}.lock"
    assert stat.S_IMODE(lock.stat().st_mode) & 0o666 == 0o666

    def other_user_takes_it() -> bytes:
        with FreePort(first, first, timeout=2) as fp:
            return str(fp.port).encode()

    assert _run_as_other_user(other_user_takes_it) == (0, str(first).encode())


THIRD_UID = 65533  # neither us, nor the planter


@needs_root
def test_shared_mode_skips_a_lock_file_another_user_planted(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, free_block: FreeBlock
) -> None:
    """In a directory shared on purpose, a lock file another user made private (or a FIFO, or a
    symlink) takes that port out of play for the others; it must not fail their allocations."""
    state_dir.mkdir()
    state_dir.chmod(0o1777)
    monkeypatch.setenv("FREEPORT_SHARED", "1")
    first = free_block(3)
    store()  # the shared subdirectories
    private = state_dir / "ports" / f"{first}.lock"
    private.write_bytes(b"")
    os.chown(private, OTHER_UID, OTHER_UID)
    private.chmod(0o600)
    os.mkfifo(state_dir / "ports" / f"{first + 1}.lock", 0o666)

    def third_user(start: int, stop: int) -> bytes:
        def allocate() -> bytes:
            try:
                with FreePort(start, stop, timeout=0.5) as fp:
                    return f"got {fp.port}".encode()
            except FreeportError as e:
                return f"{type(e).__name__}: {e}".encode()

        status, said = _run_as_other_user(allocate, THIRD_UID)
        assert status == 0, said
        return said

    assert third_user(first, first + 2) == f"got {first + 2}".encode()  # the two planted ports skipped
    said = third_user(first, first + 1).decode()
    assert said.startswith("NoFreePortError: "), said  # not StateDirError: there is just no port for it
    assert "2 of 2 taken" in said
    assert "lock file" in said


# -- files planted inside the state directory --------------------------------------------------------------


def test_symlink_planted_as_lock_file_is_never_followed(
    state_dir: Path, victim: Path, free_block: FreeBlock
) -> None:
    first = free_block(1)
    st = store()
    (state_dir / "ports" / f"{first}.lock").symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(StateDirError):
        FreePort(first, first, timeout=0.5)
    assert list(st.records()) == []
    assert st.collect_dead() == []
    assert snapshot(victim) == before


def test_dangling_symlink_planted_as_lock_file_creates_nothing(
    state_dir: Path, tmp_path: Path, free_block: FreeBlock
) -> None:
    first = free_block(1)
    store()
    target = tmp_path / "would-be-created"
    (state_dir / "ports" / f"{first}.lock").symlink_to(target)
    with pytest.raises(StateDirError):
        FreePort(first, first, timeout=0.5)
    assert not target.exists()


def test_hard_link_planted_as_lock_file_is_never_written(
    state_dir: Path, victim: Path, free_block: FreeBlock
) -> None:
    first = free_block(1)
    st = store()
    os.link(victim, state_dir / "ports" / f"{first}.lock")
    before = snapshot(victim)
    with pytest.raises(StateDirError):
        FreePort(first, first, timeout=0.5)
    assert st.collect_dead() == []
    assert snapshot(victim) == before


def test_symlink_planted_as_owner_index_is_never_followed(
    state_dir: Path, tmp_path: Path, free_block: FreeBlock
) -> None:
    first = free_block(1)
    store()
    (state_dir / "owners").mkdir(mode=0o700)  # owners/ is made by the first named lease
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    (state_dir / "owners" / "job-x").symlink_to(target)
    with pytest.raises(StateDirError):
        release_owner("job-x")
    with pytest.raises(StateDirError):
        FreePort(first, first, owner="job-x", timeout=0.5)
    assert target.read_bytes() == b"keep me"


FIFO_CHILD = """
import sys
from freeport_compose import FreePort, StateDirError, store
port = int(sys.argv[1])
try:
    FreePort(port, port, timeout=1)
except StateDirError:
    print("refused")
else:
    print("got")
st = store()
print(len(list(st.records())), len(st.collect_dead()))
"""


def test_fifo_planted_as_lock_file_does_not_hang(state_dir: Path, free_block: FreeBlock) -> None:
    first = free_block(1)
    store()
    os.mkfifo(state_dir / "ports" / f"{first}.lock", 0o600)
    try:
        out = subprocess.run([PY, "-c", FIFO_CHILD, str(first)], capture_output=True, text=True, timeout=20,
                             check=False)
    except subprocess.TimeoutExpired:  # run() has killed it
        pytest.fail("the allocator hung on a FIFO planted as a lock file")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused", "0 0"]


# -- corrupt or hostile records ----------------------------------------------------------------------------


DROP = object()


def _record(for_port: int, **changes: object) -> bytes:
    """A well-formed named-lease record for `port`, with `changes` applied (DROP removes a key)."""
    rec: dict[str, object] = {
        "port": for_port,
        "owner": "job-1",
        "created": 1.0,
        "token": "0123456789abcdef",
        "label": "",
        "holder": {"pid": 1, "start_time": None, "host": socket.gethostname()},
    }
    for key, value in changes.items():
        if value is DROP:
            del rec[key]
        else:
            rec[key] = value
    return json.dumps(rec).encode()


def _holder(**changes: object) -> dict[str, object]:
    h: dict[str, object] = {"pid": 1, "start_time": None, "host": socket.gethostname()}
    h.update(changes)
    return h


HOSTILE: list[tuple[str, Callable[[int], bytes]]] = [
    ("garbage-bytes", lambda p: b"\x00\xff\xfe\x80 not a record \x1b[2J"),
    ("truncated-json", lambda p: _record(p)[:40]),
    ("json-null", lambda p: b"null"),
    ("json-list", lambda p: b"[1, 2, 3]"),
    ("json-string", lambda p: b'"leased"'),
    ("deeply-nested", lambda p: b"[" * 4000),
    ("deeply-nested-owner", lambda p: b'{"port":%d,"owner":' % p + b"[" * 4000),
    ("owner-not-a-string", lambda p: _record(p, owner=123)),
    ("owner-path", lambda p: _record(p, owner="../../etc")),
    ("port-as-string", lambda p: _record(p, port=str(p))),
    ("another-port", lambda p: _record(p + 1)),
    ("created-not-a-number", lambda p: _record(p, created={"x": 1})),
    ("token-not-a-string", lambda p: _record(p, token=7)),
    ("label-not-a-string", lambda p: _record(p, label=["x"])),
    ("holder-a-list", lambda p: _record(p, holder=[1, 2])),
    ("holder-missing", lambda p: _record(p, holder=DROP)),
    ("pid-a-bool", lambda p: _record(p, holder=_holder(pid=True))),
    ("pid-a-string", lambda p: _record(p, holder=_holder(pid="1"))),
    ("start-time-a-float", lambda p: _record(p, holder=_holder(start_time=1.5))),
    ("host-not-a-string", lambda p: _record(p, holder=_holder(host=5))),
    ("oversized", lambda p: _record(p) + b" " * 5000),
    ("live-pid-record-without-lock", lambda p: _record(p, owner=None, holder=_holder(pid=os.getpid()))),
]


@pytest.mark.parametrize("payload", [pytest.param(f, id=name) for name, f in HOSTILE])
def test_corrupt_or_hostile_record_counts_as_stale(
    payload: Callable[[int], bytes], state_dir: Path, free_block: FreeBlock
) -> None:
    first = free_block(1)
    st = store()
    lock = state_dir / "ports" / f"{first}.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(payload(first))
    assert all(not st.is_held(r) for r in st.records())  # listing does not choke on it either
    with FreePort(first, first, timeout=2, label="mine") as fp:
        assert fp.port == first
        record = st.read(first)  # our record replaced it entirely, no hostile tail left behind
        assert record is not None
        assert (record.holder.pid, record.label, record.token) == (os.getpid(), "mine", fp.records[0].token)


def test_well_formed_named_record_is_respected(state_dir: Path, free_block: FreeBlock) -> None:
    """The control for the hostile cases: a valid named record does hold its port."""
    first = free_block(1)
    store()
    (state_dir / "ports" / f"{first}.lock").write_bytes(_record(first))
    with pytest.raises(NoFreePortError, match="owner 'job-1'"):
        FreePort(first, first, timeout=0.2)
