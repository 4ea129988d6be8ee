"""The reaper: a stack its starter brings down itself comes down even when the starter is killed outright.

`run -- CMD`, a `Stack` used as a context manager, the pytest fixtures (`compose_stack`, the
session stacks every xdist worker shares) bring their stack down themselves when they are done.
Each process using such a stack holds a shared flock on stacks/<project>.users for as long as it
uses it (`use`). Before anything is leased, the first of them starts a reaper (`ensure_reaper`): a
small process in a session of its own that waits for that flock exclusively. The kernel grants it
the moment the last holder lets go of it, however that went (it returned, it was SIGKILLed, its
terminal closed, its CI job was cancelled, its whole process group was killed); the reaper then
brings down what is left of the stack (lifecycle.down, under the project's lock), which frees its
ports, and exits.

Guarantees:
- One reaper per stack, not per user: it holds stacks/<project>.reaper (an flock) for its whole
  life, handed to it already locked by its starter, so two never watch one stack, and a user that
  finds none alive starts one (`ensure_reaper`), never a second.
- It takes down only a stack nobody uses any more (it holds the users' flock exclusively, so a late
  joiner waits meanwhile and then starts afresh), and only one its starter meant to take down
  itself (status `run`, or `starting`/`rendering` of a starter that died, or `stopping`): a stack
  kept on purpose (`--freeport-keep`, status `up`) and a stack already brought down (no record)
  are left as they are, and it just exits.
- It holds no port and no lease lock (every descriptor but its own lock is closed when it starts),
  has no terminal and is in no process group of its starter's, and appends one line per thing it
  does to <state dir>/reaper.log (one write(2) on an O_APPEND file: lines never interleave).
- `reap_dead` (for the commands that allocate) brings down the stacks whose every holder is dead:
  a reaper killed too, or a starter killed before its reaper started. It asks no engine and starts
  no Compose unless one is.
- `settle_unused` (the pytest controller, at the end of an xdist run) waits for a stack's users to
  be gone, and for a reaper at work to finish, then takes down what is left: nothing of the run's
  stacks is left running when pytest returns, even when a worker was killed.

May touch: stacks/<project>.users, .start and .reaper (removed by the reaper once the stack is
settled), <state dir>/reaper.log, what `down` touches; starts one Python process per stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from .._error import FreeportError, StateDirError, UnknownOwnerError
from .._leasing import process
from .._leasing.flock import try_lock
from .._leasing.locks import open_locks
from .._leasing.statedir import open_file, read_small

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Collection, Sequence

    from .._leasing.process import Holder
    from .records import StackRecord
    from .state import State
    from .target import Engine

USERS, START, GUARD = "users", "start", "reaper"  # stacks/<project>.<suffix>
LOG = "reaper.log"
LOG_LIMIT = 1 << 20  # bytes: a longer log is moved to reaper.log.1 (one generation kept)
RETRIES = (2.0, 4.0, 8.0, 16.0)  # seconds between the reaper's attempts at a `down` that failed
DYING = 5.0  # seconds a starter that let go of its flock may take to be seen dead (it is exiting)
# The statuses (records.StackStatus values) of a stack its starter brings down itself, read raw by
# `reap_dead`'s fast path, which must not import the stacks half for a `get` (test_reaper checks
# them against StackStatus.driven).
DRIVEN = frozenset({"rendering", "starting", "run"})


class Hold:
    """A lock descriptor this process holds on a stack's lock file. Registered with `process.track`:
    a child forked meanwhile closes its copy (never unlocks it), so a fork does not keep the stack's
    users' flock after this process dies (which would keep the stack up as long as the child lives)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        """Let go: closing the last descriptor of the open file description drops its flock."""
        with process.fd_lock():
            fd, self.fd = self.fd, None
            if fd is None:
                return
            process.untrack(self)
            os.close(fd)


def hold_file(state: State, project: str, suffix: str) -> Hold:
    """stacks/<project>.<suffix>, opened (created if missing) for an flock this process holds."""
    # Opened and tracked under fd_lock: a fork in another thread in between would copy an
    # untracked descriptor, and its child would keep the flock alive.
    with process.fd_lock():
        hold = Hold(state.stacks.lock_file(project, suffix))
        process.track(hold)
    return hold


def _flock(hold: Hold, how: int) -> bool:
    """flock(how), waited for; False if the file was removed meanwhile (a reaper that settled the
    stack removes it while holding it: whoever waited on it must open the new one)."""
    assert hold.fd is not None
    from .._leasing.statedir import state_errors

    with state_errors("cannot lock the stack's users file"):
        fcntl.flock(hold.fd, how)
        return os.fstat(hold.fd).st_nlink > 0


def use(state: State, project: str) -> Hold:
    """Become a user of the stack: a shared flock on stacks/<project>.users, held until `close()`
    (or this process's death). Waits while a last user or the reaper takes the stack down."""
    while True:
        hold = hold_file(state, project, USERS)
        try:
            if _flock(hold, fcntl.LOCK_SH):
                return hold
        except BaseException:
            hold.close()
            raise
        hold.close()  # removed by a reaper while we waited: the next user's file is a new one


def watch(state: State, project: str, *, volumes: bool = True) -> Hold:
    """For a starter that brings its (private) stack down itself (`run`, `with Stack(...)`,
    `compose_stack`): become its user and make sure its reaper watches it. Call it before `up`
    (the stack's name fixed already), `close()` the result after `down`: if this process is killed
    outright meanwhile, the reaper takes the stack down the moment the kernel drops the flock.
    `volumes`: whether that `down` removes the stack's volumes, as the starter's own would."""
    held = use(state, project)
    try:
        ensure_reaper(state, project, volumes=volumes)
    except BaseException:
        held.close()
        raise
    return held


def ensure_reaper(state: State, project: str, *, volumes: bool = True) -> bool:
    """Start the stack's reaper unless one lives; call it holding `use`, before anything is leased
    (a starter killed during `up` is a stack to take down too). True if one was started.

    Never raises: a stack whose reaper cannot be started still works, and `reap_dead` or `gc`
    brings it down if its starter dies (the log says why)."""
    try:
        guard = hold_file(state, project, GUARD)
    except FreeportError as e:
        log(state, project, f"no reaper: {e}")
        return False
    try:
        assert guard.fd is not None
        if not try_lock(guard.fd):
            return False  # one watches this stack already
        _spawn(state, project, volumes, guard.fd)  # hands the locked guard over
        return True
    except (OSError, FreeportError) as e:
        log(state, project, f"no reaper: cannot start one: {e}")
        return False
    finally:
        guard.close()  # the reaper's copy of it keeps the flock


_SPAWNED: list[subprocess.Popen[bytes]] = []  # kept, so none is garbage-collected (a ResourceWarning) while it runs


def _spawn(state: State, project: str, volumes: bool, guard: int) -> None:
    import subprocess

    if not sys.executable:
        raise FreeportError("no Python interpreter to run it with (sys.executable is empty)")
    argv = [sys.executable, "-m", __name__, "--state-dir", os.path.abspath(state.root)]
    argv += ["--engine", _engine_arg(state.engine), "--project", project, "--guard-fd", str(guard)]
    if not volumes:
        argv.append("--keep-volumes")
    # This package where the starter found it (a checkout on sys.path, say), whatever the reaper's
    # own sys.path would be.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]  # collect the ones that exited (no zombies)
    # A session of its own: a process-group SIGKILL (a cancelled CI job, kill -9 -PGID) and the
    # SIGHUP of a closed terminal do not reach it. No descriptor of ours but the guard: it must
    # hold no port, no lease and no users' flock (it would wait for itself), and no pipe of an
    # xdist worker's (the controller would wait for its EOF).
    _SPAWNED.append(
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(guard,),
            start_new_session=True,
            cwd="/",  # no directory of the starter's kept busy
            env=env,
        )
    )


def _engine_arg(engine: Engine) -> str:
    tls = None if engine.tls is None else list(engine.tls)
    return json.dumps({"address": engine.address, "context": engine.context, "tls": tls})


def _engine_of(text: str) -> Engine:
    from .target import Engine, TLSFiles

    raw = json.loads(text)
    tls = raw.get("tls")
    return Engine(raw["address"], raw.get("context"), None if tls is None else TLSFiles(*tls))


# -- what is done once nobody uses the stack -----------------------------------------------------


class Settled(NamedTuple):
    """What was done with a stack nobody uses any more, as the log says it."""

    took_down: bool
    what: str


def take_down_unused(state: State, project: str, *, volumes: bool) -> Settled | None:
    """Bring down what is left of the stack, for a caller holding stacks/<project>.users exclusively
    (so nobody uses it, and nobody starts to meanwhile). Returns what was done, or None when there
    was nothing to do (no record: it was brought down normally)."""
    from .lifecycle import down
    from .records import StackStatus

    record = state.stacks.load(project)
    if record is None:
        return None
    status = record.status
    if status not in (StackStatus.RUN, StackStatus.STARTING, StackStatus.RENDERING, StackStatus.STOPPING):
        return Settled(False, f"left up: kept on purpose (status {status})")  # --freeport-keep, keep=True
    if status is not StackStatus.RUN and status.driven and not _gone(record.driver, wait=DYING):
        # Not one of its users (they all let go): an `up -p` of the same name by another process.
        return Settled(False, f"left alone: a live process (pid {record.driver.pid}) is starting it")
    ports = ", ".join(str(p) for p in sorted(record.ports.values())) or "none"
    try:
        down(state, project, volumes=volumes)
    except UnknownOwnerError:
        return None  # brought down meanwhile
    except FreeportError:
        if state.stacks.load(project) is not None:
            raise  # kept `stopping`, its ports held: tried again
        # Its ports were freed (the engine lists no container of it), but the failed `down` (one
        # racing another: the Compose of a user killed inside its own) may have left its network.
        from .compose import Compose

        with contextlib.suppress(FreeportError):
            Compose.find(state.engine).down(project, volumes=volumes)
    return Settled(True, f"took it down (status {status}, ports {ports}): every user of it is gone")


def _gone(holder: Holder, *, wait: float = 0.0) -> bool:
    """Whether the process is dead or dying, waiting up to `wait` s for it to be: a process that is
    exiting has let go of its flocks (which is what woke us) before its parent reaps it, and is a
    zombie meanwhile, alive by /proc/<pid>/stat (a starter killed during `up` was taken for alive so,
    and its stack left up, when its parent was killed with it and nobody reaped it for a while)."""
    deadline = time.monotonic() + wait
    while True:
        alive = process.holder_alive(holder)
        if alive is False or (alive and _exiting(holder.pid)):
            return True
        if alive is None or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _exiting(pid: int) -> bool:
    """Whether the process is a zombie, or dead and not yet gone from /proc (state Z, X)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False  # no /proc (liveness by kill(0)): holder_alive's answer stands


def _settle(state: State, project: str, volumes: bool) -> Settled | None:
    """take_down_unused, retried while the engine or Compose fails (the users' flock stays held)."""
    for pause in (*RETRIES, None):
        try:
            return take_down_unused(state, project, volumes=volumes)
        except FreeportError as e:
            if pause is None:
                what = f"gave up after {len(RETRIES) + 1} attempts ({_one_line(e)}): `freeport-compose gc` finishes it"
                return Settled(False, what)
            log(state, project, f"down failed, retrying in {pause:g} s: {_one_line(e)}")
            time.sleep(pause)
    return None  # not reached


def _exclusive(state: State, project: str, *, wait: float | None) -> Hold | None:
    """stacks/<project>.users held exclusively: waited for (`wait` None: as long as it takes), or
    None if it stays held `wait` seconds."""
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        hold = hold_file(state, project, USERS)
        try:
            if deadline is None:
                got = _flock(hold, fcntl.LOCK_EX)
            else:
                assert hold.fd is not None
                while not try_lock(hold.fd):
                    if time.monotonic() >= deadline:
                        hold.close()
                        return None
                    time.sleep(0.05)
                got = os.fstat(hold.fd).st_nlink > 0
        except BaseException:
            hold.close()
            raise
        if got:
            return hold
        hold.close()


def settle_unused(state: State, project: str, *, volumes: bool = True, timeout: float = 60.0) -> Settled | None:
    """Wait (up to `timeout` s) until nobody uses the stack and no reaper is taking it down, then
    take down what is left of it; what was done (None: nothing). For a caller that knows the stack's
    users are all gone or going (the pytest controller once its workers ended)."""
    hold = _exclusive(state, project, wait=timeout)
    if hold is None:
        return None  # still used: its users, then its reaper, take it down
    try:
        done = take_down_unused(state, project, volumes=volumes)
    finally:
        hold.close()
    if done is not None:
        log(state, project, f"pytest controller: {done.what}")
    return done


# -- before an allocation: stacks whose every holder is dead --------------------------------------


def anything_dead(state_dir: str | None) -> bool:
    """Whether the state dir has a stack whose starter brings it down itself and whose driver is
    dead (on this machine): what `reap_dead` would look at. Reads the records raw (json and
    /proc only, not the stacks half: a `get` must not pay for it), no engine."""
    sd = open_locks(state_dir).sd
    try:
        os.stat("stacks", dir_fd=sd.fd, follow_symlinks=False)
    except FileNotFoundError:
        return False  # no stack was ever started here (and nothing is created for asking)
    try:
        names = [n for n in os.listdir(sd.stacks_fd) if n.endswith(".json")]
    except (OSError, StateDirError):
        return False
    return any(_raw_dead(sd.stacks_fd, n) for n in names)


def _raw_dead(stacks_fd: int, name: str) -> bool:
    try:
        raw = json.loads(read_small(stacks_fd, name) or b"")
        if raw["status"] not in DRIVEN:
            return False
        driver = raw["driver"]
        holder = process.Holder(int(driver["pid"]), driver["start_time"], str(driver["host"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return False  # unreadable here: reap_dead decodes it properly, or gc says so
    return _gone(holder)


def reap_dead(state: State, *, spare: Collection[str] = (), notify: Callable[[str], None] | None = None) -> list[str]:
    """Bring down the stacks whose every holder is dead, before an allocation leases: status `run`,
    `starting` or `rendering` (a stack its starter brings down itself, or a killed `up`), its driver
    dead on this machine, its users' flock free (no user, no reaper at work) and its project not
    locked (no Compose of a killed `up` still running). The projects brought down, in order.

    Cheap when nothing is dead: the records and /proc are read, no engine is asked and no Compose
    is started. `spare`: projects not to touch (the one the caller is about to start: its `up`
    takes over what a killed one left). A stack that cannot be brought down is left for `gc`,
    which says why; `notify` hears it too. Never raises for one stack.
    """
    from .._error import ProjectBusyError

    try:
        records = [r for r in state.stacks.all() if r.project not in spare and _dead(r)]
    except FreeportError:
        return []
    reaped = []
    for record in records:
        project = record.project
        try:
            # Not created: a stack that was never watched (a killed `up`) has none, and needs none.
            hold = _existing(state, project, USERS)
        except FreeportError:
            continue
        try:
            if hold is not None:
                assert hold.fd is not None
                if not try_lock(hold.fd) or os.fstat(hold.fd).st_nlink == 0:
                    continue  # a user lives, or its reaper is at work
            with state.stacks.locked(project, wait=False):
                pass  # busy (an up, down or gc of it in flight, the Compose of a killed up): skipped
            current = state.stacks.load(project)
            if current is None or current.created != record.created or not _dead(current):
                continue  # changed meanwhile
            done = take_down_unused(state, project, volumes=False)  # as gc: its starter's choice is unknown
            if done is not None and done.took_down:
                log(
                    state,
                    project,
                    f"reaped before an allocation: {done.what} (its starter, pid {record.driver.pid}, died)",
                )
                reaped.append(project)
            if hold is not None:  # as the reaper does (anyone waiting on them opens new ones)
                for suffix in (START, USERS):
                    with contextlib.suppress(OSError):
                        os.unlink(f"{project}.{suffix}", dir_fd=state.stacks.sd.stacks_fd)
        except ProjectBusyError:
            continue
        except FreeportError as e:
            log(state, project, f"not reaped: {_one_line(e)}")
            if notify is not None:
                notify(f"could not bring down stack {project}, whose starter died: {_one_line(e)}")
        finally:
            if hold is not None:
                hold.close()
    return reaped


def _existing(state: State, project: str, suffix: str) -> Hold | None:
    """stacks/<project>.<suffix> if it exists (never followed if a symlink), opened for an flock."""
    from .._leasing.statedir import state_errors

    with process.fd_lock(), state_errors(f"cannot open the {suffix} file of project {project!r}"):
        try:
            fd = open_file(state.stacks.sd.stacks_fd, f"{project}.{suffix}", os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        hold = Hold(fd)
        process.track(hold)
    return hold


def _dead(record: StackRecord) -> bool:
    return record.status.driven and _gone(record.driver)


# -- the log ----------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    return " | ".join(line.strip() for line in str(e).splitlines() if line.strip())[:1000]


def log(state: State, project: str, what: str) -> None:
    """Append one line to <state dir>/reaper.log: when, which process, which stack, what. Never
    raises: a log that cannot be written must not stop a stack from coming down."""
    if _state_gone(state):
        return  # deleted: opening it again would make a new one
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{when} pid {os.getpid()} {project}: {what}".replace("\n", " ")[:3000] + "\n"
    try:
        sd = open_locks(state.root).sd
        fd = open_file(sd.fd, LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, sd.file_mode)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return  # planted (a FIFO, a hard link to someone's file): never written through
            if st.st_size > LOG_LIMIT:
                os.rename(LOG, LOG + ".1", src_dir_fd=sd.fd, dst_dir_fd=sd.fd)  # this line ends the old one
            os.write(fd, line.encode())  # one write on O_APPEND, under 4 KiB: never interleaved
        finally:
            os.close(fd)
    except (OSError, FreeportError):
        pass


# -- the reaper process -------------------------------------------------------------------------------


def _state_gone(state: State) -> bool:
    """Whether the state dir was deleted while the reaper waited: its records went with it."""
    try:
        return any(os.fstat(fd).st_nlink == 0 for fd in (state.stacks.sd.fd, state.stacks.sd.stacks_fd))
    except (OSError, FreeportError):
        return True


def _reap_when_unused(state: State, project: str, *, volumes: bool, guard: Hold) -> None:
    """The reaper's life: wait until nobody uses the stack, settle it, let go of the guard, exit."""
    log(state, project, "reaper watching: it comes down when its last user is gone")
    users = _exclusive(state, project, wait=None)
    assert users is not None
    try:
        if _state_gone(state):
            return  # nothing to log to, nothing recorded to take down
        done = _settle(state, project, volumes)
        log(state, project, f"reaper: {done.what if done else 'nothing to do: it was brought down by its users'}")
        # Settled: the lock files go (they are only ever opened holding the users' flock, or
        # checked to be linked after it is taken), so stacks/ does not fill with them.
        for suffix in (START, GUARD, USERS):
            with contextlib.suppress(OSError, FreeportError):
                os.unlink(f"{project}.{suffix}", dir_fd=state.stacks.sd.stacks_fd)
    finally:
        # The guard first: a user that gets the users' flock after us must find no reaper alive
        # and start one; the other order left a moment in which it saw us and started none.
        guard.close()
        users.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m freeport_compose._stacks.reaper`: started by `ensure_reaper`, never by hand."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="freeport-compose-reaper")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--guard-fd", type=int, required=True)
    parser.add_argument("--keep-volumes", action="store_true")
    args = parser.parse_args(argv)
    for signum in (signal.SIGHUP, signal.SIGINT):  # no terminal's to end it (SIGTERM and SIGKILL still do)
        signal.signal(signum, signal.SIG_IGN)
    guard = Hold(args.guard_fd)
    from .records import check_project
    from .state import State

    try:
        state = State.open(args.state_dir, _engine_of(args.engine))
        project = check_project(args.project)
    except (FreeportError, ValueError, KeyError, TypeError):
        guard.close()
        return 2
    try:
        _reap_when_unused(state, project, volumes=not args.keep_volumes, guard=guard)
    except BaseException as e:
        log(state, project, f"reaper failed: {type(e).__name__}: {_one_line(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
