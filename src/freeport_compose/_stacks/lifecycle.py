"""The lifecycle verbs: one port's way from template to lease to a running stack, and back at `down`.

render -> leases named after the project, rendered files and a stack record in the state dir;
up -> render + `docker compose up`; down -> `docker compose down` + release of the project's leases.
The stack record is what `down`, `ports`, `ls` and `gc` replay.

Guarantees: every verb works on the State it is handed and changes a project only under its lock.
A failed render or up leaves nothing it added (no lease, no container, no file) and keeps the stack
that was there before; a failed `up` of a running stack never takes it down. `down` takes down every
service of the project, in every profile, and frees the leases once the engine lists no container of
the stack (a stack it cannot be sure of stays `stopping`, ports held, for `down` or gc to finish). Nothing here prints:
warnings go to the `notify` callback, results are returned, failures raised as FreeportError.

May touch: the State's leases and stack records; `docker compose` and the engine through the driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

from .._error import ComposeError, FreeportError, InvalidNameError, UnknownOwnerError
from .._leasing.allocator import DEFAULT_TIMEOUT
from .._leasing.process import Holder
from .check import BackgroundCheck
from .compose import Compose, ComposeProject, Result
from .dockerstack import remove_locked
from .engine import Containers
from .leases import port_check, release, relocate
from .naming import compose_project_name, project_directory
from .plan import Plan
from .reaper import reap_dead
from .reclaim import ask, left_of, settle_failed, unchanged, verdict
from .records import StackRecord, StackStatus, check_project, project_name
from .signals import deferred_signals
from .state import State, elsewhere
from .target import Engine

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
    lease_all: bool = False  # with placeholders, lease the fixed ports too (zero-edit for the rest)
    drop_container_names: bool = False  # `container_name: !reset null`, so copies can run side by side
    # Without -p: a name of its own (`<directory>-<random>`), for a stack its starter takes down
    # itself (`run`, a `Stack`, the pytest fixtures), so that parallel runs from one checkout never
    # meet; else Compose's rule (naming.py), so a second `up` in one directory is the same stack.
    unique_name: bool = False


def _new_record(opts: Options, project: str, status: StackStatus, swarm: bool) -> StackRecord:
    files = [os.path.abspath(f) for f in opts.files]
    return StackRecord(
        project=project,
        files=files,
        compose_files=[],
        project_directory=os.path.abspath(opts.project_directory or os.path.dirname(files[0])),
        profiles=list(opts.profiles),
        env_files=[os.path.abspath(e) for e in opts.env_files],
        status=status,
        swarm=swarm,
    )


@dataclass
class Attempt:
    """One render or up of a project, under its lock: what was there before, and what is being made."""

    old: StackRecord | None
    record: StackRecord
    lock_fd: int  # the project lock: Compose children get it, so the project stays locked while they live
    started: bool = False  # Compose ran: containers may exist

    def roll_back(self, state: State, take_down: TakeDown | None) -> None:
        """Undo what this attempt added; the stack that was there keeps its record and leases.

        A failed `up` (or `deploy`) of a stack that was already running leaves it running, as
        Compose leaves it: Compose refuses a bad option before it touches anything, and a start that
        fails half-way is Compose's to report, not ours to turn into a `down`. It keeps the new
        record and every lease (old and new): its containers may publish any of them, and `down`
        frees them all."""
        if self.started and self.old is not None and self.old.status in _RUNNING:
            self.record.status, self.record.driver = self.old.status, self.old.driver
            state.stacks.save(self.record)
            return
        if self.started and take_down is not None:
            take_down(self.record)
        if self.old is not None and not self.started:
            release(state.leases, self.record.project, keep=set(self.old.ports))
            state.stacks.save(self.old)
        else:
            release(state.leases, self.record.project)
            state.stacks.forget(self.record.project)


_RUNNING = (StackStatus.UP, StackStatus.RUN, StackStatus.DEPLOYED)
"""A stack in one of these was started and is meant to be running: a failed restart keeps it."""


def _started(state: State, record: StackRecord) -> bool:
    """Whether a stack may have containers or services: one that was started, or a rendered one the
    user started by hand (the engine has something of it; when it cannot say, assume it does)."""
    if record.status is not StackStatus.RENDERED:
        return True
    live, swarm, _ = ask(state.engine, swarm=record.swarm)
    return left_of(record, live, swarm) != 0  # None (not told) is no 0: assumed started


def name_of(opts: Options, plan: Plan) -> str:
    """The project a render, up or deploy of `opts` means (see Options.unique_name)."""
    if opts.unique_name:
        return project_name(opts.project, opts.files)
    directory = project_directory(opts.project_directory, opts.files)
    return compose_project_name(opts.project, plan.templates.project_name, directory, opts.env_files, os.environ)


TakeDown = Callable[[StackRecord], None]
"""How a failed attempt takes down what it started (`docker compose down`, `docker stack rm`)."""


@contextmanager
def attempt(
    state: State,
    opts: Options,
    project: str,
    status: StackStatus,
    take_down: TakeDown | None,
    *,
    swarm: bool | None = False,
) -> Iterator[Attempt]:
    """Lock the project and save a fresh record before anything is leased (a killed attempt leaves
    it for gc to find); on any failure, roll back with signals held, then re-raise.

    `swarm`: the kind of stack this attempt starts (a Swarm stack, a Compose one; None: render,
    either). A started stack of the other kind under the same name is refused (InvalidNameError):
    taking it over would orphan its containers or services."""
    with state.stacks.locked(project) as lock_fd:
        old = state.stacks.load(project)
        if swarm is not None and old is not None and old.swarm != swarm and _started(state, old):
            kind, verb = ("a Swarm stack", "rm") if old.swarm else ("a Compose stack", "down")
            raise InvalidNameError(
                f"project {project!r} is {kind} on this engine: `freeport-compose {verb} -p {project}` it first, "
                "or give another -p"
            )
        is_swarm = old.swarm if swarm is None and old is not None else bool(swarm)  # a render keeps the kind
        new = _new_record(opts, project, status, is_swarm)
        current = Attempt(old, new, lock_fd)
        state.stacks.save(current.record)
        try:
            yield current
        except BaseException:
            with deferred_signals():
                current.roll_back(state, take_down)
            raise


def render(
    state: State, opts: Options, *, out: str | None = None, ttl: float | None = None, notify: Notify = silent
) -> StackRecord:
    """Lease the stack's ports under the project's name and write what Compose is to be given: the
    rendered templates, or (zero-edit) the user's files and an override putting every published
    port on a leased one.

    The leases stay until `down` (or `release --owner PROJECT`), or, given a `ttl` in seconds, until
    that lifetime has run out and no container of the project is left. On any error nothing is
    leased and no output file is left half-written.
    """
    plan = Plan.read(opts.files, lease_all=opts.lease_all, drop_container_names=opts.drop_container_names)
    project = name_of(opts, plan)
    # Before leasing: stacks whose every holder died give their ports back (reaper.reap_dead: no
    # engine asked unless one did). This project is spared: its render takes over what is left.
    reap_dead(state, spare=(project,), notify=notify)
    for w in plan.warnings():
        notify(f"warning: {w}")
    compose = None
    if opts.check or plan.zero_edit:
        try:
            compose = Compose.find(state.engine)
        except FreeportError as e:
            if plan.zero_edit:
                raise  # zero-edit reads Compose's own model of the files
            notify(f"warning: not checked with `docker compose config`: {e}")
    with attempt(state, opts, project, StackStatus.RENDERING, None, swarm=None) as current:
        record, old = current.record, current.old
        record.ports = plan.lease(state, record, compose, reuse=old is not None, timeout=opts.timeout)
        record.hosts = reach(plan, record.ports, state.engine)
        for note in plan.notes:
            notify(f"note: {note}")
        if out is None or compose is not None:
            # With -o, the check runs on copies in the state dir: OUT is written only once Compose
            # accepted the stack, so a failed render never leaves OUT changed or created.
            record.compose_files = plan.write(state, project, record.ports, None, compose)
            if compose is not None and opts.check:
                plan.verify(compose, record.compose_project(), record.ports)
        if out is not None:
            record.compose_files = plan.write(state, project, record.ports, out, compose)
        if old is None or old.status in (StackStatus.RENDERING, StackStatus.STOPPING):
            record.status = StackStatus.RENDERED
        else:  # a stack that was there before keeps its status, and the process gc checks it by
            record.status, record.driver = old.status, old.driver
        record.expires = None if ttl is None else time.time() + ttl
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
    launch: bool = True,
    driver: Holder | None = None,
    notify: Notify = silent,
) -> StackRecord:
    """Lease and write as render does, then `docker compose up --detach`; the leases stay until `down`.

    `launch=False`: everything but Compose's `up` (and the check made before, not beside it), for a
    caller that runs `up` itself in the foreground (an attached `up`: its logs, its Ctrl-C); the
    stack is recorded as up.

    If something outside our leases grabbed a leased port in the meantime, those names get new
    ports and `up` is retried (PORT_RETRIES times). If `up` fails, the stack is brought down and its
    leases freed: nothing is left behind. `status=RUN` records a stack that must not outlive this
    process: gc brings it down once the process is gone (even by SIGKILL); `driver`, that process
    when it is not this one (the xdist controller of a shared stack), recorded with the status.
    """
    plan = Plan.read(opts.files, lease_all=opts.lease_all, drop_container_names=opts.drop_container_names)
    project = name_of(opts, plan)
    reap_dead(state, spare=(project,), notify=notify)  # as render does, before leasing
    compose = compose or Compose.find(state.engine)
    for w in plan.warnings():
        notify(f"warning: {w}")

    def take_down(record: StackRecord) -> None:
        down_until_gone(state.engine, compose, record.compose_project())

    def start(current: Attempt) -> Result:
        record = current.record
        if not launch:
            if opts.check:
                plan.verify(compose, record.compose_project(), dict(record.ports))
            return Result(0, "")
        verify = partial(plan.verify, compose, record.compose_project(), dict(record.ports), beside=True)
        check = BackgroundCheck(verify) if opts.check else None
        current.started = True
        result = compose.up(record.compose_project(), wait=wait, extra=extra, keep_fds=(current.lock_fd,))
        if check is not None:
            check.result()  # a mismatch brings the stack just started down again (roll_back)
        return result

    def failed(result: Result) -> ComposeError:
        details = why_failed(state.engine, project)
        return ComposeError(f"docker compose up failed: {result.last_line()}", result.returncode, details=details)

    with attempt(state, opts, project, StackStatus.STARTING, take_down) as current:
        start_leased(state, opts, plan, compose, current, (start, failed), "outside freeport-compose", notify)
        current.record.status = status
        if driver is not None:
            # Saved with its status, not after: a record `run` naming the starter (an xdist worker)
            # instead of the run's controller, found by gc after a SIGKILL of that worker, was taken
            # down under the other workers.
            current.record.driver = driver
        state.stacks.save(current.record)
    return current.record


def start_leased(
    state: State,
    opts: Options,
    plan: Plan,
    compose: Compose,
    current: Attempt,
    starter: tuple[Callable[[Attempt], Result], Callable[[Result], ComposeError]],
    where: str,
    notify: Notify,
) -> None:
    """Lease the attempt's ports, write what Compose is given, and start the stack (`starter`: how,
    and the error of a start that failed); a start the engine refuses because something `where`
    took one of the ports meanwhile (a clash) gets new ports for those names and is retried,
    PORT_RETRIES times. Shared by `up` and `deploy`."""
    start, failed = starter
    record, project = current.record, current.record.project
    record.ports = plan.lease(state, record, compose, reuse=current.old is not None, timeout=opts.timeout)
    record.hosts = reach(plan, record.ports, state.engine)
    for note in plan.notes:
        notify(f"note: {note}")
    for retry in range(PORT_RETRIES + 1):
        record.compose_files = plan.write(state, project, record.ports, None, compose)
        state.stacks.save(record)
        result = start(current)
        if result.ok:
            return
        clashed = {n for n, p in record.ports.items() if p in result.port_clashes()}
        if not clashed or retry == PORT_RETRIES:
            raise failed(result)
        notify(
            f"port(s) {', '.join(str(record.ports[n]) for n in sorted(clashed))} taken {where} "
            "meanwhile; leasing new ones and retrying"
        )
        fresh = port_check(state.engine)  # asked again: the engine has changed since
        record.ports = relocate(state.leases, fresh, plan.hosts_of, project, record.ports, clashed, opts.timeout)


def reach(plan: Plan, ports: Mapping[str, int], engine: Engine) -> dict[str, str]:
    """The address to reach each port on, where not 127.0.0.1: the one it is published on, else (an
    engine elsewhere) the engine's host; a port published on loopback there is reached on its host."""
    out = {}
    for name in ports:
        host = plan.reach(name)
        if not engine.on_this_machine and host in ("127.0.0.1", "::1", "localhost"):
            host = engine.host
        if host != "127.0.0.1":
            out[name] = host
    return out


def why_failed(engine: Engine, project: str) -> tuple[str, ...]:
    """What the user needs to see of a failed stack before it is removed: for each container not
    running (or unhealthy), its state, its last failing healthcheck output and its last log lines."""
    from .engine import failures

    try:
        found = failures(engine, project)
    except FreeportError:
        return ()  # the engine does not answer: Compose's own message has to do
    lines: list[str] = []
    for f in found:
        lines.append(f"service {f.service} ({f.container}): {f.state}")
        if f.health:
            lines += [f"  last failing healthcheck: {line}" for line in f.health.splitlines()[-5:]]
        if f.logs:
            lines.append(f"  last {len(f.logs)} log line(s):")
            lines += [f"    {line}" for line in f.logs]
        else:
            lines.append("  no log output")
    return tuple(lines)


def down_until_gone(engine: Engine, compose: Compose, project: ComposeProject, rounds: int = 5) -> None:
    """`down` after a failed `up`, repeated while the engine still lists containers of the project.

    When one service fails, Compose gives up on the others while the engine may still be creating
    their containers: such a container can outlive the first `down` (seen as "Error while Stopping").
    """

    for retry in range(rounds):
        with suppress(FreeportError):
            compose.down(project)
        if not _containers_left(engine, project.name):
            return  # none left, or the engine does not answer (None): nothing more to do
        time.sleep(0.2 * (retry + 1))


def down(
    state: State, project: str, *, volumes: bool = False, extra: Sequence[str] = (), compose: Compose | None = None
) -> StackRecord | None:
    """`docker compose down` with the files, profiles and env files recorded at `up`, then the
    project's leases freed. `extra`: Compose's own options of `down` and service names, given to it
    as they are; with services named, the stack keeps its ports while any container of it is left.
    A project we have neither record nor leases of is Compose's alone: `docker compose -p PROJECT
    down` (by its containers' labels; Compose says so and succeeds where it has nothing).
    Returns the record of a stack of ours taken down whole (its ports freed), else None.

    If Compose fails, the ports are freed only when the engine says no container of the stack is
    left: a container still there (or one the engine could not be asked about: with a restart
    policy it comes back when the engine does) keeps its ports, and the stack is kept as
    `stopping` for `down` or `gc` to finish.
    """
    check_project(project)
    if extra:  # Compose's own options: refused before anything is stopped, as Compose refuses them
        compose = compose or Compose.find(state.engine)
        checked = compose.accepts("down", [w for w in extra if w != "--"])
        if not checked.ok:
            raise ComposeError(f"docker compose down failed: {checked.last_line()}", checked.returncode)
    with state.stacks.locked(project):
        record = state.stacks.load(project)
        if record is None:
            ours = state.leases.owner_ports(project) is not None
            hint = "" if ours else elsewhere(state, project)
            if hint:  # ours, on another engine: Compose here would find nothing, and say nothing useful
                raise UnknownOwnerError(f"no stack named {project!r} on this engine{hint}")
            if not ours or _containers_left(state.engine, project):  # its record is lost, not its containers (labels)
                result = (compose or Compose.find(state.engine)).down(project, volumes=volumes, extra=extra)
                if not result.ok:
                    raise ComposeError(f"docker compose down failed: {result.last_line()}", result.returncode)
            if ours:
                release(state.leases, project)
            return None
        whole = _down_locked(state, record, volumes=volumes, compose=compose, extra=extra)
    return record if whole else None


def _down_locked(
    state: State, record: StackRecord, *, volumes: bool, compose: Compose | None, extra: Sequence[str] = ()
) -> bool:
    """down() of a stack whose project lock the caller holds; whether it went whole (False: the
    services named in `extra` went, the others still run and the stack keeps its ports)."""
    project = record.project
    if record.swarm:
        remove_locked(state, record)
        return True
    with deferred_signals():
        try:
            compose = compose or Compose.find(state.engine)
            target: ComposeProject | str = record.compose_project()
            if not all(os.path.exists(f) for f in record.compose_files):
                target = project  # a file went missing: Compose finds the stack by its labels
            result = compose.down(target, volumes=volumes, extra=extra)
            if not result.ok:
                raise ComposeError(f"docker compose down failed: {result.last_line()}", result.returncode)
            if _names_services(extra):
                if _containers_left(state.engine, project) != 0:
                    return False  # the other services still run: the stack keeps its record and its ports
            elif target != project and _containers_left(state.engine, project):
                # Something of the project outlived a down by its files (a service its files no
                # longer have, or one Compose would not take down for its profile): by its labels, as
                # plain `docker compose down -p` does. Its ports stay ours until none is left.
                result = compose.down(project, volumes=volumes)
            if not result.ok:
                raise ComposeError(f"docker compose down failed: {result.last_line()}", result.returncode)
            left = _containers_left(state.engine, project)
            if left:
                raise ComposeError(f"{left} container(s) of {project} are still there after `docker compose down`")
        except FreeportError as e:
            settle_failed(
                state.leases, state.stacks, record, e, _containers_left(state.engine, project), "down", "container"
            )
            raise
        release(state.leases, project)
        state.stacks.forget(project)
    return True


# Compose's options of `down` that take a value: the word after one is no service name.
_DOWN_VALUES = frozenset(("--rmi", "-t", "--timeout"))


def _names_services(extra: Sequence[str]) -> bool:
    """Whether Compose's `down` words name services (a partial down), not only options."""
    words = list(extra)
    for i, word in enumerate(words):
        if not word.startswith("-") and (i == 0 or words[i - 1] not in _DOWN_VALUES):
            return True
    return False


def _containers_left(engine: Engine, project: str) -> int | None:
    """How many containers of the project the engine still has; None if it cannot be asked."""
    from .engine import project_containers

    try:
        return project_containers(engine).get(project, Containers()).total
    except FreeportError:
        return None


@dataclass
class GcReport:
    """What gc freed, by reason, and what it had to skip, for the CLI to print."""

    dead_process_leases: list[int] = field(default_factory=list)
    stacks: list[tuple[str, str]] = field(default_factory=list)  # (project, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (project, the error)
    temporaries: list[str] = field(default_factory=list)  # files left by killed writers, removed
    locks: list[str] = field(default_factory=list)  # projects whose lock file (nothing else left of them) was removed


def gc(state: State, *, compose: Compose | None = None) -> GcReport:
    """Free what no one holds any more: leases of dead processes, temporary files of killed
    writers, stacks that are gone (see reclaim.verdict), and the lock files of projects nothing is
    left of (no record, no lease); a stack whose `up` or `run` was killed is brought down first,
    and a `down` that could not finish is finished. A stack whose project is busy (an up, down or
    gc of it under way) is skipped, never waited for, and so is its lock file."""
    report = GcReport(
        dead_process_leases=[r.port for r in state.leases.collect_dead()],
        temporaries=state.stacks.sd.sweep_temporaries(),
    )
    records = state.stacks.all()
    # Not asked when no stack is recorded: gc of a state dir with no stack needs no engine.
    live, swarm, error = ask(state.engine, swarm=any(r.swarm for r in records)) if records else (None, None, "")
    now = time.time()
    for record in records:
        if record.status is StackStatus.STOPPING:
            # a down (or a Swarm stack's rm) finishes it: networks go too
            why: str | None = f"its `{'rm' if record.swarm else 'down'}` did not finish"
        else:
            why = verdict(record, live, state.leases, now, swarm)
        if why is None:
            continue
        left = left_of(record, live, swarm)
        needs_down = record.status is StackStatus.STOPPING or (record.status.driven and left != 0)
        if needs_down and left is None:
            report.skipped.append((record.project, error))
            continue
        try:
            with unchanged(state.stacks, record) as current:
                if current is None:
                    continue  # an up, render or down of this project ran meanwhile: not ours to judge
                if needs_down:
                    _down_locked(state, current, volumes=False, compose=compose)
                else:
                    release(state.leases, record.project)
                    state.stacks.forget(record.project)
        except FreeportError as e:
            report.skipped.append((record.project, str(e)))
            continue
        report.stacks.append((record.project, why))
    # Last, so the locks of the stacks freed above go too. Only a project with no lease left under
    # its name (as a stack's leases are owned): one whose record was lost but whose leases remain is
    # still ours to `down`, and keeps its lock until then.
    for project in state.stacks.lock_projects():
        try:
            if state.stacks.remove_lock(project, lambda p: state.leases.owner_ports(p) is None):
                report.locks.append(project)
        except FreeportError as e:
            report.skipped.append((project, str(e)))
    return report
