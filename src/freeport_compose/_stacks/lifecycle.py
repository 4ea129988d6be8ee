"""The lifecycle verbs: one port's way from template to lease to a running stack, and back at `down`.

render -> leases named after the project, rendered files and a stack record in the state dir;
up -> render + `docker compose up`; down -> `docker compose down` + release of the project's leases.
The stack record is what `down`, `ports`, `ls` and `gc` replay.

Guarantees: every verb works on the State it is handed and changes a project only under its lock.
A failed render or up leaves nothing it added (no lease, no container, no file) and keeps the stack
that was there before; `down` frees the leases even when Compose fails. Nothing here prints:
warnings go to the `notify` callback, results are returned, failures raised as FreeportError.

May touch: the State's leases and stack records; `docker compose` and the engine through the driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from .._error import ComposeError, FreeportError, UnknownOwnerError
from .._leasing.allocator import DEFAULT_TIMEOUT
from .._leasing.records import LeaseRecord
from .check import BackgroundCheck, verify
from .compose import Compose, ComposeProject
from .leases import held_ports, lease, release, relocate
from .outputs import write_outputs
from .records import StackRecord, StackStatus, check_project, project_name
from .signals import deferred_signals
from .state import State
from .template import sort_key
from .templateset import load_set

PORT_RETRIES = 3  # how often `up` re-leases ports that something outside our leases grabbed

Notify = Callable[[str], None]
"""Where a verb says what the user should know but that is no failure (the CLI prints it)."""


def silent(message: str) -> None:
    """The default Notify: library callers who want the warnings pass their own."""


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


def _new_record(opts: Options, project: str, status: StackStatus) -> StackRecord:
    files = [os.path.abspath(f) for f in opts.files]
    return StackRecord(
        project=project,
        files=files,
        compose_files=[],
        project_directory=os.path.abspath(opts.project_directory or os.path.dirname(files[0])),
        profiles=list(opts.profiles),
        env_files=[os.path.abspath(e) for e in opts.env_files],
        status=status,
    )


@dataclass
class _Attempt:
    """One render or up of a project, under its lock: what was there before, and what is being made."""

    old: StackRecord | None
    record: StackRecord
    started: bool = False  # Compose ran: containers may exist

    def roll_back(self, state: State, compose: Compose | None) -> None:
        """Undo what this attempt added; the stack that was there keeps its record and leases."""
        if self.started and compose is not None:
            _down_until_gone(compose, self.record.compose_project())
        if self.old is not None and not self.started:
            release(state.leases, self.record.project, keep=set(self.old.ports))
            state.stacks.save(self.old)
        else:
            release(state.leases, self.record.project)
            state.stacks.forget(self.record.project)


@contextmanager
def _attempt(
    state: State, opts: Options, project: str, status: StackStatus, compose: Compose | None
) -> Iterator[_Attempt]:
    """Lock the project and save a fresh record before anything is leased (a killed attempt leaves
    it for gc to find); on any failure, roll back with signals held, then re-raise."""
    with state.stacks.locked(project):
        attempt = _Attempt(state.stacks.load(project), _new_record(opts, project, status))
        state.stacks.save(attempt.record)
        try:
            yield attempt
        except BaseException:
            with deferred_signals():
                attempt.roll_back(state, compose)
            raise


def render(state: State, opts: Options, *, out: str | None = None, notify: Notify = silent) -> StackRecord:
    """Lease a port per placeholder under the project's name and write the concrete files.

    The leases stay until `down` (or `release --owner PROJECT`). On any error nothing is leased
    and no output file is left half-written.
    """
    templates = load_set(opts.files)
    project = project_name(opts.project, opts.files)
    for w in templates.warnings():
        notify(f"warning: {w}")
    compose = None
    if opts.check:
        try:
            compose = Compose.find()
        except FreeportError as e:
            notify(f"warning: not checked with `docker compose config`: {e}")
    with _attempt(state, opts, project, StackStatus.RENDERING, None) as attempt:
        record, old = attempt.record, attempt.old
        record.ports = lease(state.leases, templates, project, reuse=old is not None, timeout=opts.timeout)
        if out is None or compose is not None:
            # With -o, the check runs on copies in the state dir: OUT is written only once Compose
            # accepted the stack, so a failed render never leaves OUT changed or created.
            record.compose_files = write_outputs(templates, record.ports, state.stacks, project, None, compose)
            if compose is not None:
                verify(compose, record.compose_project(), templates, record.ports)
        if out is not None:
            record.compose_files = write_outputs(templates, record.ports, state.stacks, project, out, compose)
        if old is None or old.status in (StackStatus.RENDERING, StackStatus.STOPPING):
            record.status = StackStatus.RENDERED
        else:  # a stack that was there before keeps its status, and the process gc checks it by
            record.status, record.driver = old.status, old.driver
        state.stacks.save(record)
    return record


def up(
    state: State,
    opts: Options,
    *,
    wait: bool = False,
    extra: Sequence[str] = (),
    compose: Compose | None = None,
    status: StackStatus = StackStatus.UP,
    notify: Notify = silent,
) -> StackRecord:
    """Render, then `docker compose up --detach`; the leases stay until `down`.

    If something outside our leases grabbed a leased port in the meantime, those placeholders get
    new ports and `up` is retried (PORT_RETRIES times). If `up` fails, the stack is brought down
    and its leases freed: nothing is left behind. `status=RUN` records a stack that must not
    outlive this process: gc brings it down once the process is gone (even by SIGKILL).
    """
    templates = load_set(opts.files)
    project = project_name(opts.project, opts.files)
    compose = compose or Compose.find()
    for w in templates.warnings():
        notify(f"warning: {w}")
    with _attempt(state, opts, project, StackStatus.STARTING, compose) as attempt:
        record = attempt.record
        record.ports = lease(state.leases, templates, project, reuse=attempt.old is not None, timeout=opts.timeout)
        for retry in range(PORT_RETRIES + 1):
            record.compose_files = write_outputs(templates, record.ports, state.stacks, project, None, compose)
            state.stacks.save(record)
            check = BackgroundCheck(compose, record.compose_project(), templates, record.ports) if opts.check else None
            attempt.started = True
            result = compose.up(record.compose_project(), wait=wait, extra=extra)
            if check is not None:
                check.result()  # a mismatch brings the stack just started down again (roll_back)
            if result.ok:
                break
            clashed = {n for n, p in record.ports.items() if p in result.port_clashes()}
            if not clashed or retry == PORT_RETRIES:
                raise ComposeError(f"docker compose up failed: {result.last_line()}", result.returncode)
            notify(
                f"port(s) {', '.join(str(record.ports[n]) for n in sorted(clashed))} taken outside "
                f"freeport-compose meanwhile; leasing new ones and retrying"
            )
            record.ports = relocate(state.leases, templates, project, record.ports, clashed, opts.timeout)
        record.status = status
        state.stacks.save(record)
    return record


def _down_until_gone(compose: Compose, project: ComposeProject, rounds: int = 5) -> None:
    """`down` after a failed `up`, repeated while the engine still lists containers of the project.

    When one service fails, Compose gives up on the others while the engine may still be creating
    their containers: such a container can outlive the first `down` (seen as "Error while Stopping").
    """
    from .engine import project_containers

    for retry in range(rounds):
        with suppress(FreeportError):
            compose.down(project)
        try:
            if not project_containers().get(project.name, 0):
                return
        except FreeportError:
            return  # the engine does not answer: nothing more to do
        time.sleep(0.2 * (retry + 1))


def find_project(state: State, project: str | None, files: Sequence[str] = ()) -> str:
    """The project a command means: -p, $COMPOSE_PROJECT_NAME, or the one stack from these files/this dir."""
    name = project or os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return check_project(name)
    records = state.stacks.all()
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


def down(state: State, project: str, *, volumes: bool = False, compose: Compose | None = None) -> StackRecord | None:
    """`docker compose down` with the files, profiles and env files recorded at `up`; the leases are
    freed even if Compose fails. UnknownOwnerError if the project has neither record nor leases."""
    check_project(project)
    with state.stacks.locked(project):
        record = state.stacks.load(project)
        if record is None:
            if state.leases.owner_ports(project) is None:
                raise UnknownOwnerError(f"no stack or lease named {project!r} (see `freeport-compose ls`)")
            release(state.leases, project)
            return None
        with deferred_signals():
            finished = False
            try:
                compose = compose or Compose.find()
                target: ComposeProject | str = record.compose_project()
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
                release(state.leases, project)
                if finished:
                    state.stacks.forget(project)
                else:
                    record.status = StackStatus.STOPPING
                    state.stacks.save(record)
    return record


def ports_of(state: State, project: str) -> dict[str, int]:
    """The leased port of each placeholder of a stack; UnknownOwnerError for an unknown project."""
    record = state.stacks.load(check_project(project))
    held = held_ports(state.leases, project)
    if record is None or not held:
        raise UnknownOwnerError(f"no stack named {project!r} holds ports (see `freeport-compose ls`)")
    return {
        name: port
        for name, port in sorted(record.ports.items(), key=lambda kv: sort_key(kv[0]))
        if held.get(name) == port
    }


@dataclass(frozen=True)
class StackView:
    """A stack as `ls` shows it: its record, and how many containers the engine has of it."""

    record: StackRecord
    containers: int | None  # None: the engine could not be asked


@dataclass(frozen=True)
class Overview:
    """Everything `ls` shows, gathered in one place so the CLI only formats it."""

    state_dir: str
    leases: list[LeaseRecord]
    stacks: list[StackView]
    engine_error: str | None  # why container counts are unknown


def overview(state: State) -> Overview:
    """The leases held now, and every stack with its container count (one engine query)."""
    leases = state.leases.held()
    records = state.stacks.all()
    containers: dict[str, int] | None = None
    engine_error = None
    if records:
        try:
            from .engine import project_containers

            containers = dict(project_containers())
        except FreeportError as e:
            engine_error = str(e)
    views = [StackView(r, None if containers is None else containers.get(r.project, 0)) for r in records]
    return Overview(state.path, leases, views, engine_error)


@dataclass
class GcReport:
    """What gc freed, by reason, and what it had to skip, for the CLI to print."""

    dead_process_leases: list[int] = field(default_factory=list)
    stacks: list[tuple[str, str]] = field(default_factory=list)  # (project, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (project, the error)


def gc(
    state: State, *, containers: Callable[[], dict[str, int]] | None = None, compose: Compose | None = None
) -> GcReport:
    """Free what no one holds any more: leases of dead processes, and stacks that no longer exist
    (a plain `docker compose down`, a reboot, an `up`, `render` or `run` killed half-way, a `down`
    that could not reach the engine)."""
    from .._leasing.process import holder_alive

    report = GcReport(dead_process_leases=[r.port for r in state.leases.collect_dead()])
    records = state.stacks.all()
    if not records:
        return report
    if containers is None:
        from .engine import project_containers

        live: dict[str, int] = dict(project_containers())
    else:
        live = containers()
    for record in records:
        if record.status is StackStatus.STOPPING:  # a `down` that could not reach the engine: finish it
            try:
                down(state, record.project, compose=compose)
            except FreeportError as e:
                report.skipped.append((record.project, str(e)))
            else:
                report.stacks.append((record.project, "its `down` did not finish"))
            continue
        interrupted = record.status.driven and holder_alive(record.driver) is False
        gone = record.status is StackStatus.UP and live.get(record.project, 0) == 0
        # `release --owner P` after `render`: the record outlived its leases.
        released = record.status is StackStatus.RENDERED and state.leases.owner_ports(record.project) is None
        if not (interrupted or gone or released):
            continue
        try:
            with state.stacks.locked(record.project):
                current = state.stacks.load(record.project)
                if current is None or (current.created, current.status) != (record.created, record.status):
                    continue  # an up, render or down of this project ran meanwhile: not ours to judge
                if interrupted and live.get(record.project, 0):
                    with suppress(FreeportError):
                        (compose or Compose.find()).down(record.compose_project())
                release(state.leases, record.project)
                state.stacks.forget(record.project)
        except FreeportError as e:
            report.skipped.append((record.project, str(e)))
            continue
        if interrupted:
            verb = {StackStatus.STARTING: "up", StackStatus.RENDERING: "render"}.get(record.status, "run")
            why = f"its `{verb}` was killed"
        else:
            why = "no container left" if gone else "its leases were released"
        report.stacks.append((record.project, why))
    return report
