"""Stack records: what render/up did for a project, kept in stacks/ so later commands can replay it.

Guarantees: one record per project, changed only under the project's lock (`StackRecords.locked`),
so two up/down/gc of one project never interleave; a record is replaced atomically; a missing,
corrupt or hostile record file reads as None, never as an exception. Project names are valid
Compose names (and so safe as file names). The lock file of a project nothing is left of is removed
(`remove_lock`, for gc) only while holding it, and a locker always holds the file at the path: a
removal never leaves two holders.

May touch: stacks/ below the state dir (records, project locks, rendered files' directories).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .._error import InvalidNameError, ProjectBusyError, StateDirError
from .._leasing.flock import try_lock, unlock
from .._leasing.process import Holder, current_holder
from .._leasing.statedir import StateDir, open_file, read_small, remove_tree, state_errors, write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    # the driver (subprocess, threading) is imported where a command runs Compose
    from .compose import ComposeProject

BUSY_WAIT = 120.0  # seconds to wait while another freeport-compose works on the same project
# Compose's own rule for project names, which sets no length; ours is what leaves room, in a lease's
# owner name (128 characters at most), for the `.<16 hex>` that tags another local engine's leases.
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,110}")


def _is_project(name: object) -> bool:
    return isinstance(name, str) and _PROJECT.fullmatch(name) is not None


def check_project(name: str) -> str:
    """A valid Compose project name: lowercase letters, digits, '_' and '-', starting with a letter or digit."""
    if not _is_project(name):
        raise InvalidNameError(
            f"project name {name!r} is invalid for Compose: use lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit (at most 111)"
        )
    return name


def project_name(given: str | None, files: Sequence[str]) -> str:
    """-p, else $COMPOSE_PROJECT_NAME, else `<directory>-<random>`: unique, so two `up` from one
    checkout do not collide."""
    name = given or os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return check_project(name)
    base = os.path.basename(os.path.dirname(os.path.abspath(files[0]))).lower()
    base = re.sub(r"[^a-z0-9_-]+", "-", base).strip("-_")[:40] or "stack"
    if not base[0].isalnum():
        base = "s" + base
    import secrets  # only for a name of its own (hashlib, hmac: a start of `ports` need not pay for them)

    return f"{base}-{secrets.token_hex(3)}"


class StackStatus(str, Enum):
    """Where a stack is in its life, so `gc` can tell a finished stack from an interrupted one.

    A `str` Enum: its value is what a record stores, and `str()` of a member is that value.
    """

    RENDERING = "rendering"  # render under way (a killed render leaves this)
    RENDERED = "rendered"  # files written, leases held; the user starts it (or not)
    STARTING = "starting"  # up under way (a killed up leaves this)
    UP = "up"  # started by `up`: held until `down`, or until its containers are gone
    RUN = "run"  # started by `run`: must not outlive the process running it
    STOPPING = "stopping"  # a `down` that could not finish, for `down` or gc to complete
    DEPLOYED = "deployed"  # a Swarm stack (`deploy`): held until `rm`, or until its services are gone

    def __str__(self) -> str:
        return str(self.value)  # as enum.StrEnum (Python 3.11+) has it

    @property
    def driven(self) -> bool:
        """Whether the stack lives only while the process that made it (the record's driver) lives."""
        return self in (StackStatus.RENDERING, StackStatus.STARTING, StackStatus.RUN)


@dataclass
class StackRecord:
    """What render/up did, so `down`, `ports`, `ls` and `gc` can replay it without the user repeating it."""

    project: str
    files: list[str]  # the user's -f files, absolute
    compose_files: list[str]  # what Compose is given: plain files, rendered copies, the override
    project_directory: str
    profiles: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    status: StackStatus = StackStatus.RENDERING
    driver: Holder = field(default_factory=current_holder)  # who does render/up/run: gc asks if it died
    created: float = field(default_factory=time.time)
    expires: float | None = None  # `render --ttl`: after this, a rendered stack with no container is freed
    hosts: dict[str, str] = field(default_factory=dict)  # the address to reach a port on, where not 127.0.0.1
    swarm: bool = False  # a Swarm stack (`deploy`): `docker stack rm` takes it down, not `docker compose down`

    def compose_project(self) -> ComposeProject:
        from .compose import ComposeProject

        return ComposeProject(
            self.project, tuple(self.compose_files), self.project_directory, tuple(self.profiles), tuple(self.env_files)
        )

    def encode(self) -> bytes:
        d = self.driver
        raw = {
            "project": self.project,
            "files": self.files,
            "compose_files": self.compose_files,
            "project_directory": self.project_directory,
            "profiles": self.profiles,
            "env_files": self.env_files,
            "ports": self.ports,
            "status": self.status.value,
            "driver": {"pid": d.pid, "start_time": d.start_time, "host": d.host},
            "created": self.created,
            "expires": self.expires,
            "hosts": self.hosts,
            "swarm": self.swarm,
        }
        return json.dumps(raw, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> StackRecord | None:
        """The record, or None for a missing, corrupt or hostile file (never trusted beyond its types)."""
        if not data:
            return None
        try:
            raw: Any = json.loads(data)
            driver = raw["driver"]
            raw["driver"] = Holder(**driver)
            raw["status"] = StackStatus(raw["status"])
            raw.setdefault("swarm", False)  # records written before Swarm stacks existed
            record = cls(**raw)
            lists = (record.files, record.compose_files, record.profiles, record.env_files)
            ok = (
                isinstance(record.project, str)
                and _is_project(record.project)
                and isinstance(record.project_directory, str)
                and all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in lists)
                and isinstance(record.ports, dict)
                and all(isinstance(k, str) and type(v) is int for k, v in record.ports.items())
                and isinstance(record.hosts, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in record.hosts.items())
                and type(driver["pid"]) is int
                and (driver["start_time"] is None or type(driver["start_time"]) is int)
                and isinstance(driver["host"], str)
                and type(record.swarm) is bool
                and isinstance(record.created, (int, float))
                and (record.expires is None or (isinstance(record.expires, (int, float)) and record.expires >= 0))
            )
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):
            return None
        return record if ok else None


class StackRecords:
    """Stack records in the state dir; one per project, changed only under the project's lock."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd

    def path(self, project: str, name: str = "") -> str:
        return (
            os.path.join(self.sd.path, "stacks", project, name)
            if name
            else os.path.join(self.sd.path, "stacks", project)
        )

    def load(self, project: str) -> StackRecord | None:
        with state_errors(f"cannot read the record of project {project!r}"):
            record = StackRecord.decode(read_small(self.sd.stacks_fd, f"{project}.json"))
        return record if record is not None and record.project == project else None

    def save(self, record: StackRecord) -> None:
        with state_errors(f"cannot save the record of project {record.project!r}"):
            write_atomic(self.sd.stacks_fd, f"{record.project}.json", record.encode(), self.sd.file_mode)

    def files_dir(self, project: str) -> int:
        """The project's directory of rendered files, opened safely (caller closes)."""
        return self.sd.subdir(self.sd.stacks_fd, project, self.path(project))

    def write_file(self, project: str, name: str, data: bytes) -> str:
        """One file in the project's directory of rendered files, written atomically; its path."""
        dfd = self.files_dir(project)
        try:
            with state_errors(f"cannot write {self.path(project, name)}"):
                write_atomic(dfd, name, data, self.sd.file_mode)
        finally:
            os.close(dfd)
        return self.path(project, name)

    def forget(self, project: str) -> None:
        """Remove the project's record and rendered files (not its leases)."""
        with suppress(FileNotFoundError):
            os.unlink(f"{project}.json", dir_fd=self.sd.stacks_fd)
        with suppress(OSError):
            remove_tree(project, self.sd.stacks_fd)

    def all(self) -> list[StackRecord]:
        with state_errors("cannot list the stacks"):
            names = sorted(n[:-5] for n in os.listdir(self.sd.stacks_fd) if n.endswith(".json"))
        return [r for r in map(self.load, names) if r is not None]

    def lock_file(self, project: str, suffix: str) -> int:
        """stacks/<project>.<suffix> (lock, users, start), opened safely for an flock (caller closes)."""
        with state_errors(f"cannot lock project {project!r}"):
            return open_file(
                self.sd.stacks_fd, f"{project}.{suffix}", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, self.sd.file_mode
            )

    @contextmanager
    def locked(self, project: str, *, wait: bool = True) -> Iterator[int]:
        """Exclusive use of a project, so two up/down of one project never interleave; yields the
        lock's descriptor (a child given it keeps the project locked for as long as it lives).

        The lock is the file at stacks/<project>.lock when it is taken: one that `remove_lock`
        removed meanwhile is let go of and the new one locked instead.

        Waits up to BUSY_WAIT seconds (not at all without `wait`) for another freeport-compose to
        finish with it, then raises ProjectBusyError.
        """
        patience = BUSY_WAIT if wait else 0.0
        deadline = time.monotonic() + patience
        while True:
            fd = self.lock_file(project, "lock")
            try:
                while not try_lock(fd):
                    if time.monotonic() >= deadline:
                        raise ProjectBusyError(
                            f"project {project!r} is busy: another freeport-compose kept it for {patience:g} s "
                            "(an up, down or gc of it)"
                        )
                    time.sleep(0.05)
                # Opened before gc removed it (holding its flock), this file is no one's lock any
                # more: a locker that opened the new one holds that one now. Without this check
                # both would be inside. (Not a wait: the new file is tried at once.)
                if self._is_at_path(project, fd):
                    break
                unlock(fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            try:
                yield fd
            finally:
                unlock(fd)
        finally:
            os.close(fd)

    def _is_at_path(self, project: str, fd: int) -> bool:
        """Whether fd is still the file at stacks/<project>.lock (not one removed, or replaced, since it was opened)."""
        with state_errors(f"cannot lock project {project!r}"):
            mine = os.fstat(fd)
            try:
                there = os.stat(f"{project}.lock", dir_fd=self.sd.stacks_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def lock_projects(self) -> list[str]:
        """The projects that have a lock file in stacks/ (a plain file, named as a project), sorted."""
        with state_errors("cannot list the stacks"), os.scandir(self.sd.stacks_fd) as entries:
            return sorted(
                e.name[:-5]
                for e in entries
                if e.name.endswith(".lock") and _is_project(e.name[:-5]) and e.is_file(follow_symlinks=False)
            )

    def remove_lock(self, project: str, unused: Callable[[str], bool]) -> bool:
        """Remove stacks/<project>.lock if the project has no record and `unused(project)` (asked
        under the lock: no lease of it is left, say); True if it was removed.

        Never waits and never takes a lock someone holds (an up, down or gc of the project, or the
        Compose child of an `up` whose CLI was killed): such a lock stays. The file is removed
        while its flock is held, so a locker that opened it before finds it gone once it gets the
        flock and locks the new one (`locked`).
        """
        try:
            with self.locked(project, wait=False) as fd:
                if self.load(project) is not None or not unused(project):
                    return False
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return False  # not a lock file of ours (planted): left alone
                # Unlinked before we let go of the flock, never after: in between, a locker could
                # take the flock of the old file while a later one creates and locks a new one.
                try:
                    os.unlink(f"{project}.lock", dir_fd=self.sd.stacks_fd)
                except PermissionError:
                    return False  # another user's, in a shared (sticky) state dir: theirs to remove
                except FileNotFoundError:
                    return False  # removed by hand meanwhile
                except OSError as e:
                    raise StateDirError(f"cannot remove the lock of project {project!r}: {e.strerror or e}") from None
                return True
        except ProjectBusyError:
            return False
