"""Stacks: one port's way from template to lease to a running stack, and back at `down`.

render -> leases named after the project (FreePorts(owner=project)), rendered files and a stack
record in the state dir; up -> render + `docker compose up`; down -> `docker compose down` +
release of the project's leases. The stack record is what `down`, `ports`, `ls` and `gc` replay.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from ._allocator import DEFAULT_TIMEOUT, FreePorts, store
from ._compose import Compose, Project
from ._error import (
    ComposeError,
    FreeportError,
    InvalidNameError,
    OutputError,
    ProjectBusyError,
    TemplateError,
    UnknownOwnerError,
)
from ._lease import Holder, current_holder, holder_alive
from ._state import StateDir, open_file, read_small, state_dir, state_errors, write_atomic
from ._template import Stack, check_published, load_stack, sort_key, write_file

PORT_RETRIES = 3  # how often `up` re-leases ports that something outside our leases grabbed
BUSY_WAIT = 120.0  # seconds to wait while another freeport-compose works on the same project
_PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_MIN_OVERRIDE = (2, 24, 4)  # first Compose with the !override tag
# A stack's life: rendering -> rendered (render); starting -> up | run (up, run); stopping (a down
# that could not finish, for gc to complete).
STATUSES = ("rendering", "rendered", "starting", "up", "run", "stopping")


def warn(message: str) -> None:
    print(f"freeport-compose: {message}", file=sys.stderr)


def check_project(name: str) -> str:
    """A valid Compose project name: lowercase letters, digits, '_' and '-', starting with a letter or digit."""
    if not _PROJECT_RE.fullmatch(name):
        raise InvalidNameError(
            f"project name {name!r} is invalid for Compose: use lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit"
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
    return f"{base}-{secrets.token_hex(3)}"


@dataclass
class StackRecord:
    """What render/up did, so `down`, `ports`, `ls` and `gc` can replay it without the user repeating it."""

    project: str
    files: list[str]  # the user's -f files, absolute
    compose_files: list[str]  # what Compose is given: the user's plain files, rendered copies, the override
    project_directory: str
    profiles: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    # rendering -> rendered | starting -> up (or run: up for as long as `run`'s process lives);
    # stopping: a `down` that could not reach the engine, to be finished by `down` or gc.
    status: str = "rendering"
    driver: Holder = field(default_factory=current_holder)  # the process doing render/up/run: gc asks if it died
    created: float = field(default_factory=time.time)

    def compose_project(self) -> Project:
        return Project(
            self.project, tuple(self.compose_files), self.project_directory, tuple(self.profiles), tuple(self.env_files)
        )

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> StackRecord | None:
        """The record, or None for a missing, corrupt or hostile file (never trusted beyond its types)."""
        if not data:
            return None
        try:
            raw = json.loads(data)
            driver = raw["driver"]
            raw["driver"] = Holder(**driver)
            record = cls(**raw)
            lists = (record.files, record.compose_files, record.profiles, record.env_files)
            ok = (
                isinstance(record.project, str)
                and _PROJECT_RE.fullmatch(record.project) is not None
                and record.status in STATUSES
                and isinstance(record.project_directory, str)
                and all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in lists)
                and isinstance(record.ports, dict)
                and all(isinstance(k, str) and type(v) is int for k, v in record.ports.items())
                and type(driver["pid"]) is int
                and (driver["start_time"] is None or type(driver["start_time"]) is int)
                and isinstance(driver["host"], str)
                and isinstance(record.created, (int, float))
            )
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):
            return None
        return record if ok else None


class Stacks:
    """Stack records in the state dir; one per project, changed only under the project's lock."""

    def __init__(self, sd: StateDir | None = None) -> None:
        self.sd = sd or state_dir()

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

    def forget(self, project: str) -> None:
        """Remove the project's record and rendered files (not its leases)."""
        with suppress(FileNotFoundError):
            os.unlink(f"{project}.json", dir_fd=self.sd.stacks_fd)
        try:
            dfd = os.open(
                project, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.sd.stacks_fd
            )
        except OSError:
            return
        try:
            for name in os.listdir(dfd):
                with suppress(OSError):
                    os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        with suppress(OSError):
            os.rmdir(project, dir_fd=self.sd.stacks_fd)

    def all(self) -> list[StackRecord]:
        with state_errors("cannot list the stacks"):
            names = sorted(n[:-5] for n in os.listdir(self.sd.stacks_fd) if n.endswith(".json"))
        return [r for r in map(self.load, names) if r is not None]

    @contextmanager
    def locked(self, project: str) -> Iterator[None]:
        """Exclusive use of a project by this process, so two up/down of one project never interleave."""
        with state_errors(f"cannot lock project {project!r}"):
            fd = open_file(
                self.sd.stacks_fd, f"{project}.lock", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, self.sd.file_mode
            )
        try:
            deadline = time.monotonic() + BUSY_WAIT
            while not lock_descriptor(fd, blocking=False):
                if time.monotonic() >= deadline:
                    raise ProjectBusyError(
                        f"project {project!r} is busy: another freeport-compose kept it for {BUSY_WAIT:g} s "
                        "(an up, down or gc of it)"
                    )
                time.sleep(0.05)
            try:
                yield
            finally:
                unlock_descriptor(fd)
        finally:
            os.close(fd)


def lease(stack: Stack, project: str, *, reuse: bool, timeout: float | None) -> dict[str, int]:
    """One port per placeholder name, leased under the project's name (kept across `up` when reuse)."""
    lease_store = store()
    held = {r.label: r.port for r in lease_store.owner_ports(project) or []} if reuse else {}
    ports = {name: held[name] for name in stack.names if name in held}
    missing = [name for name in stack.names if name not in ports]
    if missing:
        ports.update(_lease_names(stack, project, missing, timeout))
    return dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))


def _lease_names(
    stack: Stack, project: str, names: Sequence[str], timeout: float | None, exclude: Sequence[int] = ()
) -> dict[str, int]:
    """Lease one port per name under the project, all or nothing, free on every host a name is bound to."""
    hosts = sorted({h for name in names for h in stack.hosts(name)})
    fps = FreePorts(len(names), owner=project, labels=names, host=hosts, timeout=timeout, exclude=exclude)
    return dict(zip(names, fps.ports, strict=True))


def _write_outputs(
    stack: Stack, ports: Mapping[str, int], stacks: Stacks, project: str, out: str | None, compose: Compose | None
) -> list[str]:
    """Render every template, into the state dir (out None) or to `out`; returns the files Compose
    must be given, in order: the user's plain files, the rendered ones, and the override if any."""
    conflicts = stack.conflicts()
    if conflicts and compose is not None and compose.version() < _MIN_OVERRIDE:
        e = next(iter(conflicts.values()))[0]
        raise TemplateError(
            e.path,
            e.line,
            e.column,
            f"a base file also publishes {e.service}:{e.target}; replacing it needs Compose >= 2.24.4",
        )
    rendered = [t for t in stack.templates if t.occurrences]
    single = out is not None and len(rendered) == 1 and not conflicts and not os.path.isdir(out)
    if out is not None and not single:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output directory {out}: {e.strerror or e}") from None
    dfd = stacks.files_dir(project) if out is None else None

    def emit(name: str, text: str) -> str:
        """Write one output file atomically; its path."""
        if dfd is not None:
            with state_errors(f"cannot write {stacks.path(project, name)}"):
                write_atomic(dfd, name, text.encode(), stacks.sd.file_mode)
            return stacks.path(project, name)
        assert out is not None
        dest = os.path.abspath(out if single else os.path.join(out, name))
        try:
            write_file(dest, text)
        except OSError as e:
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from None
        return dest

    try:
        files = [
            emit(f"{i}-{os.path.basename(t.path)}", t.render(ports)) if t.occurrences else os.path.abspath(t.path)
            for i, t in enumerate(stack.templates, 1)
        ]
        if conflicts:
            files.append(emit("freeport-override.yml", stack.override_text(ports, conflicts)))
    finally:
        if dfd is not None:
            os.close(dfd)
    return files


def _verify(compose: Compose, project: Project, stack: Stack, ports: Mapping[str, int]) -> None:
    """Raise ComposeError unless `docker compose config` publishes exactly the leased ports."""
    problems = check_published(compose.config(project), stack, ports)
    if problems:
        raise ComposeError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


class _Check(threading.Thread):
    """_verify run beside `docker compose up`: the ~60 ms of `compose config` need not add to up's time."""

    def __init__(self, compose: Compose, project: Project, stack: Stack, ports: Mapping[str, int]) -> None:
        super().__init__(daemon=True)
        self.args_ = (compose, project, stack, ports)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            _verify(*self.args_)
        except BaseException as e:  # handed to the main thread by result()
            self.error = e

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


@dataclass
class Options:
    """The stack options every verb shares, as given on the command line."""

    files: Sequence[str]
    project: str | None = None
    project_directory: str | None = None
    profiles: Sequence[str] = ()
    env_files: Sequence[str] = ()
    timeout: float | None = DEFAULT_TIMEOUT  # for leasing ports
    check: bool = True  # check with `docker compose config` that exactly the leased ports are published


def _new_record(opts: Options, project: str) -> StackRecord:
    files = [os.path.abspath(f) for f in opts.files]
    return StackRecord(
        project=project,
        files=files,
        compose_files=[],
        project_directory=os.path.abspath(opts.project_directory or os.path.dirname(files[0])),
        profiles=list(opts.profiles),
        env_files=[os.path.abspath(e) for e in opts.env_files],
    )


def _release(project: str, keep: set[str] | None = None) -> None:
    """Free the project's leases (but those of the placeholders in `keep`)."""
    lease_store = store()
    if keep is None:
        with suppress(UnknownOwnerError):
            lease_store.release_owner(project)
        return
    for record in lease_store.owner_ports(project) or []:
        if record.label not in keep:
            lease_store.release_named(record.port, project, record.token)


def render(opts: Options, *, out: str | None = None) -> StackRecord:
    """Lease a port per placeholder under the project's name and write the concrete files.

    The leases stay until `down` (or `release --owner PROJECT`). On any error nothing is leased
    and no output file is left half-written.
    """
    stack = load_stack(opts.files)
    project = project_name(opts.project, opts.files)
    for w in stack.warnings():
        warn(f"warning: {w}")
    compose = None
    if opts.check:
        try:
            compose = Compose.find()
        except FreeportError as e:
            warn(f"warning: not checked with `docker compose config`: {e}")
    stacks = Stacks()
    with stacks.locked(project):
        old = stacks.load(project)
        record = _new_record(opts, project)
        stacks.save(record)
        try:
            record.ports = lease(stack, project, reuse=old is not None, timeout=opts.timeout)
            if out is None or compose is not None:
                # With -o, the check runs on copies in the state dir: OUT is written only once Compose
                # accepted the stack, so a failed render never leaves OUT changed or created.
                record.compose_files = _write_outputs(stack, record.ports, stacks, project, None, compose)
                if compose is not None:
                    _verify(compose, record.compose_project(), stack, record.ports)
            if out is not None:
                record.compose_files = _write_outputs(stack, record.ports, stacks, project, out, compose)
            if old is None or old.status in ("rendering", "stopping"):
                record.status = "rendered"
            else:  # a stack that was there before keeps its status, and the process gc checks it by
                record.status, record.driver = old.status, old.driver
            stacks.save(record)
        except BaseException:
            with _deferred_signals():
                if old is None:
                    _release(project)
                    stacks.forget(project)
                else:  # a stack that was there before keeps its record and leases, not the ones added now
                    _release(project, keep=set(old.ports))
                    stacks.save(old)
            raise
    return record


def up(
    opts: Options, *, wait: bool = False, extra: Sequence[str] = (), compose: Compose | None = None, status: str = "up"
) -> StackRecord:
    """Render, then `docker compose up --detach`; the leases stay until `down`.

    If something outside our leases grabbed a leased port in the meantime, those placeholders get
    new ports and `up` is retried (PORT_RETRIES times). If `up` fails, the stack is brought down
    and its leases freed: nothing is left behind. `status="run"` records a stack that must not
    outlive this process: gc brings it down once the process is gone (even by SIGKILL).
    """
    stack = load_stack(opts.files)
    project = project_name(opts.project, opts.files)
    compose = compose or Compose.find()
    for w in stack.warnings():
        warn(f"warning: {w}")
    stacks = Stacks()
    with stacks.locked(project):
        old = stacks.load(project)
        record = _new_record(opts, project)
        record.status = "starting"
        stacks.save(record)  # before leasing: a killed `up` leaves a record for gc to find
        started = False
        try:
            record.ports = lease(stack, project, reuse=old is not None, timeout=opts.timeout)
            for attempt in range(PORT_RETRIES + 1):
                record.compose_files = _write_outputs(stack, record.ports, stacks, project, None, compose)
                stacks.save(record)
                check = _Check(compose, record.compose_project(), stack, dict(record.ports)) if opts.check else None
                started = True
                result = compose.up(record.compose_project(), wait=wait, extra=extra)
                if check is not None:
                    check.result()  # a mismatch brings the stack just started down again, below
                if result.ok:
                    break
                clashed = {n for n, p in record.ports.items() if p in result.port_clashes()}
                if not clashed or attempt == PORT_RETRIES:
                    raise ComposeError(f"docker compose up failed: {result.last_line()}", result.returncode)
                warn(
                    f"port(s) {', '.join(str(record.ports[n]) for n in sorted(clashed))} taken outside "
                    f"freeport-compose meanwhile; leasing new ones and retrying"
                )
                record.ports = _relocate(stack, project, record.ports, clashed, opts.timeout)
            record.status = status
            stacks.save(record)
            return record
        except BaseException:
            with _deferred_signals():
                if started:
                    _down_until_gone(compose, record.compose_project())
                if old is not None and not started:
                    # Compose never ran: the stack that was there keeps its record and its leases.
                    _release(project, keep=set(old.ports))
                    stacks.save(old)
                else:
                    _release(project)
                    stacks.forget(project)
            raise


def _down_until_gone(compose: Compose, project: Project, rounds: int = 5) -> None:
    """`down` after a failed `up`, repeated while the engine still lists containers of the project.

    When one service fails, Compose gives up on the others while the engine may still be creating
    their containers: such a container can outlive the first `down` (seen as "Error while Stopping").
    """
    from ._engine import project_containers

    for attempt in range(rounds):
        with suppress(FreeportError):
            compose.down(project)
        try:
            if not project_containers().get(project.name, 0):
                return
        except FreeportError:
            return  # the engine does not answer: nothing more to do
        time.sleep(0.2 * (attempt + 1))


def _relocate(
    stack: Stack, project: str, ports: dict[str, int], names: set[str], timeout: float | None
) -> dict[str, int]:
    """New leases for `names` (avoiding their clashed ports), then the old ones released."""
    lease_store = store()
    ordered = sorted(names, key=sort_key)
    fresh = _lease_names(stack, project, ordered, timeout, exclude=[ports[n] for n in ordered])
    for record in lease_store.owner_ports(project) or []:
        if record.label in names and record.port == ports[record.label]:
            lease_store.release_named(record.port, project, record.token)
    return {**ports, **fresh}


def find_project(project: str | None, files: Sequence[str] = ()) -> str:
    """The project a command means: -p, $COMPOSE_PROJECT_NAME, or the one stack from these files/this dir."""
    name = project or os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return check_project(name)
    records = Stacks().all()
    if files:
        wanted = [os.path.abspath(f) for f in files]
        records = [r for r in records if r.files == wanted]
    else:
        cwd = os.getcwd()
        records = [r for r in records if r.project_directory == cwd]
    if len(records) == 1:
        return records[0].project
    if not records:
        raise UnknownOwnerError("no stack of freeport-compose here: give -p PROJECT (see `freeport-compose ls`)")
    raise UnknownOwnerError(f"{len(records)} stacks match ({', '.join(r.project for r in records)}): give -p PROJECT")


def down(project: str, *, volumes: bool = False, compose: Compose | None = None) -> StackRecord | None:
    """`docker compose down` with the files, profiles and env files recorded at `up`; the leases are
    freed even if Compose fails. UnknownOwnerError if the project has neither record nor leases."""
    check_project(project)
    stacks = Stacks()
    with stacks.locked(project):
        record = stacks.load(project)
        if record is None:
            if store().owner_ports(project) is None:
                raise UnknownOwnerError(f"no stack or lease named {project!r} (see `freeport-compose ls`)")
            _release(project)
            return None
        with _deferred_signals():
            finished = False
            try:
                compose = compose or Compose.find()
                target: Project | str = record.compose_project()
                if not all(os.path.exists(f) for f in record.compose_files):
                    target = project  # a file went missing: Compose finds the stack by its labels
                result = compose.down(target, volumes=volumes)
                if not result.ok:
                    raise ComposeError(f"docker compose down failed: {result.last_line()}", result.returncode)
                finished = True
            except FreeportError as e:
                # Its containers may still be there: forgetting the stack would leave them to no one.
                e.args = (
                    f"{e} (its ports are freed; run `freeport-compose down -p {project}` again, "
                    "or `freeport-compose gc`, to remove what is left)",
                )
                raise
            finally:
                _release(project)
                if finished:
                    stacks.forget(project)
                else:
                    record.status = "stopping"
                    stacks.save(record)
    return record


def ports_of(project: str) -> dict[str, int]:
    """The leased port of each placeholder of a stack; UnknownOwnerError for an unknown project."""
    record = Stacks().load(check_project(project))
    held = {r.label: r.port for r in store().owner_ports(project) or []}
    if record is None or not held:
        raise UnknownOwnerError(f"no stack named {project!r} holds ports (see `freeport-compose ls`)")
    return {
        name: port
        for name, port in sorted(record.ports.items(), key=lambda kv: sort_key(kv[0]))
        if held.get(name) == port
    }


def format_ports(ports: Mapping[str, int], fmt: str) -> str:
    """`json`: exactly {"FREEPORT_1": 20417}; `dotenv`/`make`/`shell`: lines to include or eval."""
    if fmt == "json":
        return json.dumps(dict(ports))
    line = {"dotenv": "{}={}", "make": "{} := {}", "shell": "export {}={}"}[fmt]
    return "\n".join(line.format(name, port) for name, port in ports.items())


@contextmanager
def _deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until cleanup is done, so a second Ctrl-C cannot leave a half-removed stack."""
    got: list[int] = []
    handler = lambda signum, frame: got.append(signum)  # noqa: E731
    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to manage
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in got:
            signal.raise_signal(signum)


def run(opts: Options, command: Sequence[str], *, keep_volumes: bool = False, extra: Sequence[str] = ()) -> int:
    """up --wait, run `command` with FREEPORT_* in its environment, down; returns the command's exit status.

    Ctrl-C and SIGTERM reach the command, and the stack is brought down whatever happens.
    """
    record = up(opts, wait=True, extra=extra, status="run")  # gc brings it down if this process is killed
    code = 1
    try:
        env = {**os.environ, **{k: str(v) for k, v in record.ports.items()}, "COMPOSE_PROJECT_NAME": record.project}
        child: subprocess.Popen[bytes] | None = None
        early: list[int] = []  # signals that came before the command existed

        def forward(signum: int, frame: Any) -> None:
            if child is None:
                early.append(signum)
            else:
                child.send_signal(signum)

        # Ctrl-C reaches the command from the terminal itself (same process group): only wait for it.
        old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
        old.update({s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)})
        try:
            try:
                child = subprocess.Popen(list(command), env=env)
            except OSError as e:
                warn(f"cannot run {command[0]!r}: {e.strerror}")
                code = 127 if e.errno == errno.ENOENT else 126
            else:
                for signum in early:
                    child.send_signal(signum)
                status = child.wait()
                code = 128 - status if status < 0 else status
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    finally:
        try:
            down(record.project, volumes=not keep_volumes)
        except FreeportError as e:  # the command's status still stands; say what is left
            warn(str(e))
    return code


@dataclass
class GcReport:
    """What gc freed, by reason, for the CLI to print."""

    dead_process_leases: list[int] = field(default_factory=list)
    stacks: list[tuple[str, str]] = field(default_factory=list)  # (project, why)


def gc(*, containers: Callable[[], Mapping[str, int]] | None = None, compose: Compose | None = None) -> GcReport:
    """Free what no one holds any more: leases of dead processes, and stacks that no longer exist
    (a plain `docker compose down`, a reboot, an `up`, `render` or `run` killed half-way, a `down`
    that could not reach the engine)."""
    report = GcReport(dead_process_leases=[r.port for r in store().collect_dead()])
    stacks = Stacks()
    records = stacks.all()
    if not records:
        return report
    if containers is None:
        from ._engine import project_containers

        containers = project_containers
    live = containers()
    for record in records:
        if record.status == "stopping":  # a `down` that could not reach the engine: finish it
            try:
                down(record.project, compose=compose)
            except FreeportError as e:
                warn(f"gc: skipped {record.project}: {e}")
            else:
                report.stacks.append((record.project, "its `down` did not finish"))
            continue
        interrupted = record.status in ("rendering", "starting", "run") and holder_alive(record.driver) is False
        gone = record.status == "up" and live.get(record.project, 0) == 0
        # `release --owner P` after `render`: the record outlived its leases.
        released = record.status == "rendered" and store().owner_ports(record.project) is None
        if not (interrupted or gone or released):
            continue
        try:
            with stacks.locked(record.project):
                current = stacks.load(record.project)
                if current is None or (current.created, current.status) != (record.created, record.status):
                    continue  # an up, render or down of this project ran meanwhile: not ours to judge
                if interrupted and live.get(record.project, 0):
                    with suppress(FreeportError):
                        (compose or Compose.find()).down(record.compose_project())
                _release(record.project)
                stacks.forget(record.project)
        except FreeportError as e:
            warn(f"gc: skipped {record.project}: {e}")
            continue
        if interrupted:
            verb = {"starting": "up", "rendering": "render"}.get(record.status, record.status)
            why = f"its `{verb}` was killed"
        else:
            why = "no container left" if gone else "its leases were released"
        report.stacks.append((record.project, why))
    return report
