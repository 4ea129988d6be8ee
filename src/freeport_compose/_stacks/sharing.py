"""One stack shared by several processes (the workers of one pytest-xdist run): the first to need it
starts it, the others wait for it and reuse its ports, and the last one to leave takes it down.

Guarantees, all from kernel locks (flock), so that a process killed outright counts as gone:
- every user holds a shared flock on stacks/<project>.users for as long as it uses the stack;
- the one that leaves and then gets that flock exclusively (without waiting) was the last: it takes
  the stack down, holding it exclusively meanwhile, so a late joiner waits and then starts afresh;
- starting is serialised by stacks/<project>.start, taken after the users lock (never before: a
  joiner waiting for a teardown must not hold what the teardown needs).
A user killed by SIGKILL drops its shared flock with its life: it neither takes the stack down under
the others nor keeps it up after them. The stack's record names the run's controlling process (the
xdist controller) as its driver, so if the whole run dies, `gc` (or the next allocation that needs
its ports) brings it down.

May touch: stacks/<project>.users and .start; what `up` and `down` touch.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from .._leasing.process import Holder
from .lifecycle import Options, down, up
from .records import StackRecord, StackStatus
from .state import State


@dataclass
class Share:
    """This process's use of a shared stack: the record, and the flock that makes it a user."""

    state: State
    record: StackRecord
    users_fd: int
    keep: bool  # left up after the last user (a kept stack, for a later run to reuse)

    def leave(self) -> bool:
        """Stop using the stack; the last user takes it down (unless kept). True if this one did."""
        try:
            try:
                fcntl.flock(self.users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts our shared flock
            except BlockingIOError:
                return False  # others still use it
            if self.keep:
                return False
            with _locked(self.state, self.record.project, "start"):
                current = self.state.stacks.load(self.record.project)
                if current is not None and current.created == self.record.created:
                    down(self.state, self.record.project, volumes=True)
                    return True
                return False
        finally:
            os.close(self.users_fd)


class _locked:
    """An exclusive flock on stacks/<project>.<suffix>, waited for."""

    def __init__(self, state: State, project: str, suffix: str) -> None:
        self.fd = state.stacks.lock_file(project, suffix)

    def __enter__(self) -> int:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def join(
    state: State, opts: Options, *, driver: Holder, keep: bool, wait: bool = True, up_args: tuple[str, ...] = ()
) -> Share:
    """Use the stack of `opts.project`, starting it if it is not up (see the module's guarantees)."""
    assert opts.project is not None
    project = opts.project
    users = state.stacks.lock_file(project, "users")

    try:
        fcntl.flock(users, fcntl.LOCK_SH)  # waits while a last user takes the stack down
        with _locked(state, project, "start"):
            record = state.stacks.load(project)
            if record is None or not _running(state, project) or record.status not in (StackStatus.UP, StackStatus.RUN):
                status = StackStatus.UP if keep else StackStatus.RUN
                record = up(state, opts, wait=wait, extra=up_args, status=status)
                if not keep:
                    with state.stacks.locked(project):  # the run's controller: gc's test of whether it lives
                        record.driver = driver
                        state.stacks.save(record)
        return Share(state, record, users, keep)
    except BaseException:
        os.close(users)
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
