"""One stack shared by several processes (the workers of one pytest-xdist run): the first to need it
starts it, the others wait for it and reuse its ports, and the last one to leave takes it down;
if the last one dies instead, the stack's reaper does (reaper.py).

Guarantees, all from kernel locks (flock), so that a process killed outright counts as gone:
- every user holds a shared flock on stacks/<project>.users for as long as it uses the stack;
- the one that leaves and then gets that flock exclusively (without waiting) was the last: it takes
  the stack down, holding it exclusively meanwhile, so a late joiner waits and then starts afresh;
- a user that dies without leaving drops its shared flock with its life; the stack's reaper (one
  per stack, started by the first user before anything is leased) waits for that flock exclusively
  and takes the stack down the moment the last holder is gone, however it went;
- starting is serialised by stacks/<project>.start, taken after the users lock (never before: a
  joiner waiting for a teardown must not hold what the teardown needs).
A user killed by SIGKILL neither takes the stack down under the others nor leaves it up after them.
The stack's record names the run's controlling process (the xdist controller) as its driver, so
that `gc` leaves it alone while the run lives.

The race this closes: "the last to leave" used to be decided only by a user that leaves. A worker
that left while another still held its shared flock counted itself as not last and walked away;
when that other one was then SIGKILLed (xdist replaces it, and the replacement, with no test left
to run, never joins), the kernel dropped its flock but no process was waiting on it: nobody ever
saw the last user go, and the stack stayed up after pytest returned, until someone ran `gc`. The
same with a worker killed after it took the flock exclusively but before its `down`, and with a
last user whose stack had been restarted by a joiner meanwhile (its record's creation time no
longer matched, so it took nothing down). Now the kernel's release itself wakes the reaper.

May touch: stacks/<project>.users and .start; what `up` and `down` touch; starts the reaper.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._leasing.flock import try_lock
from .._leasing.process import Holder
from .lifecycle import Options, up
from .reaper import Hold, ensure_reaper, hold_file, take_down_unused, use
from .records import StackRecord, StackStatus
from .state import State


@dataclass
class Share:
    """This process's use of a shared stack: the record, and the flock that makes it a user."""

    state: State
    record: StackRecord
    users: Hold
    keep: bool  # left up after the last user (a kept stack, for a later run to reuse)

    def leave(self) -> bool:
        """Stop using the stack; the last user takes it down (unless kept). True if this one did.

        Whatever happens here (a SIGKILL half-way included), the reaper takes down what this left."""
        try:
            assert self.users.fd is not None
            # Converts our shared flock. Not atomic (flock(2)): ours is dropped first, so of two
            # users leaving at once at most one gets it, and the other, having let go, is not last.
            if not try_lock(self.users.fd):
                return False  # others still use it: the last of them, or the reaper, takes it down
            if self.keep:
                return False
            with _locked(self.state, self.record.project, "start"):
                # Any generation of the stack, not only the one we joined: holding the users' flock
                # exclusively, nobody uses any. (A joiner restarts a stack whose containers died; the
                # last user compared creation times and left the restarted one up.)
                done = take_down_unused(self.state, self.record.project, volumes=True)
                return done is not None and done.took_down
        finally:
            self.users.close()


class _locked:
    """An exclusive flock on stacks/<project>.<suffix>, waited for; taken only holding the users' flock
    (so the reaper, which removes the file holding that one exclusively, never removes it under us)."""

    def __init__(self, state: State, project: str, suffix: str) -> None:
        self.hold = hold_file(state, project, suffix)

    def __enter__(self) -> int:
        import fcntl

        from .._leasing.statedir import state_errors

        assert self.hold.fd is not None
        try:
            with state_errors("cannot lock the stack's start file"):
                fcntl.flock(self.hold.fd, fcntl.LOCK_EX)
        except BaseException:
            self.hold.close()
            raise
        return self.hold.fd

    def __exit__(self, *exc: object) -> None:
        self.hold.close()


def join(
    state: State, opts: Options, *, driver: Holder, keep: bool, wait: bool = True, up_args: tuple[str, ...] = ()
) -> Share:
    """Use the stack of `opts.project`, starting it if it is not up (see the module's guarantees)."""
    assert opts.project is not None
    project = opts.project
    users = use(state, project)  # waits while a last user, or the reaper, takes the stack down
    try:
        # Before anything is leased: a starter killed during `up` leaves a stack to take down too.
        # One reaper per stack: any user that finds none alive (it was killed) starts one.
        ensure_reaper(state, project, volumes=True)
        with _locked(state, project, "start"):
            record = state.stacks.load(project)
            if record is None or not _running(state, project) or record.status not in (StackStatus.UP, StackStatus.RUN):
                status = StackStatus.UP if keep else StackStatus.RUN
                # Recorded with its status, the run's controller is gc's test of whether the run lives.
                record = up(state, opts, wait=wait, extra=up_args, status=status, driver=None if keep else driver)
        return Share(state, record, users, keep)
    except BaseException:
        users.close()
        raise


def _running(state: State, project: str) -> bool:
    """Whether every container of the project runs (a stack worth reusing)."""
    from .._error import FreeportError
    from .engine import Containers, project_containers

    try:
        found = project_containers(state.engine).get(project, Containers())
    except FreeportError:
        return False
    return found.total > 0 and found.running == found.total
