"""The `freeport-compose` command line: dispatch, output, and exit codes. No logic of its own; what
argv says is read by _argv.py, the one parser.

Guarantees: the only module that prints (besides argparse's help, usage errors and --version, in
_argv.py); every FreeportError becomes one `freeport-compose:` line and its own exit code; the state
dir given with --state-dir is passed down, never put in the environment.
"""

from __future__ import annotations

import os
import sys
import time
from signal import SIGTERM, signal
from typing import TYPE_CHECKING, NoReturn

from ._argv import duration_arg, parse, ports_arg, range_arg, timeout_arg
from ._error import ExitCode, FreeportError, UnknownOwnerError

if TYPE_CHECKING:  # imported where used: every command pays only for what it needs
    from argparse import Namespace
    from collections.abc import Callable, Mapping, Sequence

    from ._leasing.ranges import PortRange
    from ._leasing.store import LeaseStore, Reclaimed
    from ._stacks.lifecycle import Options
    from ._stacks.state import State
    from ._stacks.target import Engine


def _opts(args: Namespace) -> Options:
    """The stack options of a command, found the way Compose finds them where not given (the CLI is
    where the environment is read: the library is handed what it found)."""
    from ._stacks.discovery import compose_files, listed
    from ._stacks.lifecycle import Options

    return Options(
        # Without -f, Compose looks in its project directory (--project-directory), else here
        files=compose_files(args.files, os.environ, args.project_directory or os.getcwd()),
        project=args.project,
        project_directory=args.project_directory,
        profiles=listed(args.profiles, os.environ, "COMPOSE_PROFILES"),
        env_files=listed(args.env_files, os.environ, "COMPOSE_ENV_FILES"),
        timeout=timeout_arg(args.lease_timeout, "--lease-timeout"),
        check=args.check,
        lease_all=args.lease_all,
        drop_container_names=args.drop_container_names,
    )


def _say(message: str) -> None:
    """The CLI's one way to tell the user something: one `freeport-compose:` line on stderr."""
    print(f"freeport-compose: {message}", file=sys.stderr)


def _engine(args: Namespace) -> Engine:
    """The engine a command targets: --context, else what Compose would use ($DOCKER_HOST...)."""
    from ._stacks.target import resolve

    return resolve(args.context, os.environ)


def _state(args: Namespace) -> State:
    from ._stacks.state import State

    return State.open(args.state_dir, _engine(args))


def _machine_leases(state_dir: str | None) -> LeaseStore:
    """`get` and `release` without --context: the machine's own leases (plain ports for this
    machine, shared with its engine's stacks), which reclaim the ports of that engine's stacks that
    are gone. The stacks half is imported only if a range is exhausted: every `get` would otherwise
    pay ~5 ms for records and engines it does not touch."""
    from ._leasing.locks import open_locks
    from ._leasing.store import LeaseStore

    def reclaim(ports: PortRange) -> Reclaimed:
        from ._stacks.state import State
        from ._stacks.target import DEFAULT_ADDRESS, Engine

        return State.open(state_dir, Engine(DEFAULT_ADDRESS)).leases.reclaim(ports)

    return LeaseStore(open_locks(state_dir), reclaim)


def _reap_dead(state_dir: str | None) -> None:
    """Before `get` leases: the machine's engine's stacks whose every holder died give their ports
    back (reaper.reap_dead). Their records and /proc are read; the stacks half is imported, and the
    engine asked, only when one is dead."""
    from ._stacks.reaper import anything_dead

    if anything_dead(state_dir):
        from ._stacks.reaper import reap_dead
        from ._stacks.state import State
        from ._stacks.target import DEFAULT_ADDRESS, Engine

        reap_dead(State.open(state_dir, Engine(DEFAULT_ADDRESS)), notify=_say)


def format_ports(ports: Mapping[str, int], fmt: str, hosts: Mapping[str, str] | None = None) -> str:
    """`json`: exactly {"FREEPORT_1": 20417}; `dotenv`/`make`/`shell`/`env-file`: lines to include,
    eval or give `docker run --env-file`, each port followed by `NAME_HOST`, the address to reach it
    on, when `hosts` is given."""
    if fmt == "json":
        import json

        return json.dumps(dict(ports))
    line = {"dotenv": "{}={}", "env-file": "{}={}", "make": "{} := {}", "shell": "export {}={}"}[fmt]
    out = []
    for name, port in ports.items():
        out.append(line.format(name, port))
        if hosts is not None:
            out.append(line.format(f"{name}_HOST", hosts.get(name, "127.0.0.1")))
    return "\n".join(out)


def _to_github(ports: Mapping[str, int], hosts: Mapping[str, str]) -> None:
    """Append NAME=port and NAME_HOST=host to $GITHUB_ENV (later steps' environment) and to $GITHUB_OUTPUT."""
    from ._error import OutputError

    lines = format_ports(ports, "dotenv", hosts) + "\n"
    targets = [os.environ.get(v, "") for v in ("GITHUB_ENV", "GITHUB_OUTPUT")]
    if not any(targets):
        raise OutputError(
            "--format github: neither $GITHUB_ENV nor $GITHUB_OUTPUT is set (not in a GitHub Actions job?)"
        )
    for path in filter(None, targets):
        try:
            with open(path, "a") as f:
                f.write(lines)
        except OSError as e:
            raise OutputError(f"cannot append to {path}: {e.strerror or e}") from None
        _say(f"wrote {len(ports)} port(s) to {path}")


def _cmd_get(args: Namespace) -> int:
    from ._leasing.allocator import FreePorts

    start, stop = range_arg(args.range) if args.range else (None, None)
    exclude = [p for text in args.exclude for p in ports_arg(text)]
    probe = None
    hosts = args.host
    if args.context:  # an engine named: its leases, and its published ports avoided (asked once), as for a stack
        from ._stacks.leases import port_check
        from ._stacks.reaper import reap_dead

        state = _state(args)
        reap_dead(state, notify=_say)  # stacks whose every holder died give their ports back first
        leases = state.leases
        check = port_check(state.engine)
        hosts = check.hosts(args.host)
        probe = check.probe(hosts)
    else:
        _reap_dead(args.state_dir)
        leases = _machine_leases(args.state_dir)
    fps = FreePorts(
        args.n,
        start,
        stop,
        contiguous=args.contiguous,
        timeout=timeout_arg(args.timeout),
        host=hosts,
        exclude=exclude,
        owner=args.owner,
        state_dir=leases,  # its store frees the ports of stacks that are gone, when it must
        probe=probe,
    )
    print(f"[{', '.join(map(str, fps.ports))}]" if args.format == "json" else "\n".join(map(str, fps.ports)))
    return 0


def _cmd_release(args: Namespace) -> int:
    if args.context:
        ports = _state(args).leases.release_owner(args.owner)
    else:
        from ._leasing.store import store

        ports = store(args.state_dir).release_owner(args.owner)
    _say(f"released {len(ports)} port(s) of {args.owner!r}: {' '.join(map(str, ports))}")
    return 0


def _cmd_leases(args: Namespace) -> int:
    from ._stacks.overview import overview
    from ._stacks.state import State

    views = [overview(state) for state in State.every(args.state_dir, _engine(args))]
    for view in views:
        if view.engine_error is not None:
            _say(f"warning: container counts unknown on {_engine_name(view.engine)}: {view.engine_error}")
    if args.json:
        import json

        out = {
            "state_dir": views[0].state_dir,
            "leases": [
                {
                    "port": r.port,
                    "owner": r.owner,
                    "label": r.label,
                    "pid": r.holder.pid,
                    "host": r.holder.host,
                    "created": r.created,
                    "kind": r.kind,
                    "engine": view.engine.address,
                }
                for view in views
                for r in view.leases
            ],
            "stacks": [
                {
                    "project": s.record.project,
                    "status": s.state,
                    "ports": s.record.ports,
                    "files": s.record.files,
                    "containers": None if s.containers is None else s.containers.total,
                    "running": None if s.containers is None else s.containers.running,
                    "services": s.services,
                    "expires": s.record.expires,
                    "engine": view.engine.address,
                    "context": view.engine.context,
                    "swarm": s.record.swarm,
                }
                for view in views
                for s in view.stacks
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"# state dir: {views[0].state_dir}")
    rows = [("PORT", "KIND", "OWNER", "LABEL", "HOLDER", "SINCE", "ENGINE")]
    for view in views:
        for r in view.leases:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
            holder = f"pid {r.holder.pid}@{r.holder.host}"
            rows.append((str(r.port), r.kind, r.owner or "-", r.label or "-", holder, since, _engine_name(view.engine)))
    _table(rows)
    srows = [("PROJECT", "STATUS", "CONTAINERS", "ENGINE", "PORTS")]
    for view in views:
        for s in view.stacks:
            count = "?" if s.containers is None else str(s.containers.total)
            ports = " ".join(f"{k}={v}" for k, v in s.record.ports.items())
            srows.append((s.record.project, s.describe(), count, _engine_name(view.engine), ports))
    if len(srows) > 1:
        print()
        _table(srows)
    return 0


def _engine_name(engine: Engine) -> str:
    return "default" if engine.is_default else engine.name


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def _cmd_gc(args: Namespace) -> int:
    from ._stacks.lifecycle import GcReport, gc
    from ._stacks.state import State

    report = GcReport()
    for state in State.every(args.state_dir, _engine(args)):
        one = gc(state)
        report.dead_process_leases += one.dead_process_leases
        report.stacks += one.stacks
        report.skipped += one.skipped
        report.temporaries += one.temporaries
        report.locks += one.locks
    for project, error in report.skipped:
        _say(f"gc: skipped {project}: {error}")
    for path in report.temporaries:
        _say(f"removed {path}, left by a writer that was killed")
    if report.dead_process_leases:
        _say(f"freed {len(report.dead_process_leases)} lease record(s) of dead processes")
    for project, why in report.stacks:
        _say(f"freed stack {project}: {why}")
    if report.locks:
        _say(f"removed the lock files of {len(report.locks)} project(s) nothing is left of")
    if not (report.dead_process_leases or report.stacks or report.temporaries or report.locks):
        _say("nothing to free")
    return 0


def _cmd_render(args: Namespace) -> int:
    from ._stacks.lifecycle import render

    ttl = duration_arg(args.ttl) if args.ttl else None
    record = render(_state(args), _opts(args), out=args.output, ttl=ttl, notify=_say)
    _say(f"project {record.project}: " + " ".join(f"{k}={v}" for k, v in record.ports.items()))
    print("\n".join(record.compose_files))
    return 0


def _cmd_up(args: Namespace) -> int:
    """`up` as Compose's: detached with -d/--wait (ours then says the ports), else attached: the
    stack is leased and checked here, then this process becomes Compose's `up` in the foreground
    (its logs, its Ctrl-C, its exit status); the leases stay until `down` either way."""
    from ._argv import _detached
    from ._stacks.lifecycle import up

    extra: list[str] = args.compose_extra
    state = _state(args)
    if not _detached(extra):
        from ._stacks.passthrough import exec_compose

        record = up(state, _opts(args), extra=extra, launch=False, notify=_say)
        _say(f"project {record.project}: " + " ".join(f"{k}={v}" for k, v in record.ports.items()))
        sys.stdout.flush()
        sys.stderr.flush()
        exec_compose(state, record, [*args.compose_globals, "up", *extra])
    record = up(state, _opts(args), extra=extra, notify=_say)
    _say(f"project {record.project} is up; `freeport-compose down -p {record.project}` stops it")
    print(format_ports(record.ports, "dotenv"))
    return 0


def _project_of(args: Namespace, state: State) -> str:
    """The project a command of ours means (lookup.find_project), or UnknownOwnerError."""
    from ._stacks.lookup import find_project

    project = find_project(
        state, args.project, args.files, project_directory=args.project_directory, env_files=args.env_files
    )
    if project is None:
        raise UnknownOwnerError("no stack here: give -p PROJECT (see `freeport-compose leases`)")
    return project


def _cmd_down(args: Namespace) -> int:
    from ._stacks.lifecycle import down

    state = _state(args)
    project = _project_of(args, state)
    record = down(state, project, volumes=args.volumes, extra=args.compose_extra)
    if record is not None:
        _say(f"project {project} is down; its ports are free")
    return 0


def _cmd_ports(args: Namespace) -> int:
    from ._stacks.lookup import stack_ports

    state = _state(args)
    found = stack_ports(state, _project_of(args, state))
    for warning in found.warnings:  # a lost lease recovered from the engine's word, or left out
        _say(f"warning: {warning}")
    if args.format == "github":
        _to_github(found.ports, found.hosts)
    else:
        print(format_ports(found.ports, args.format, None if args.format == "json" else found.hosts))
    return 0


def _cmd_port(args: Namespace) -> int:
    from ._stacks.lookup import port_name, stack_ports

    state = _state(args)
    found = stack_ports(state, _project_of(args, state))
    for warning in found.warnings:
        _say(f"warning: {warning}")
    print(found.ports[port_name(found.ports, args.name)])
    return 0


def _cmd_doctor(args: Namespace) -> int:
    from ._stacks.doctor import doctor

    findings = doctor(args.state_dir, args.context)
    width = max(len(f.what) for f in findings)
    for f in findings:
        print(f"{'ok ' if f.ok else 'NO '} {f.what:<{width}}  {f.found}")
    return 0 if all(f.ok for f in findings) else 1


def _cmd_deploy(args: Namespace) -> int:
    from ._stacks.swarm import deploy

    record = deploy(_state(args), _opts(args), extra=args.after, notify=_say)
    _say(f"Swarm stack {record.project} is deployed; `freeport-compose rm -p {record.project}` removes it")
    print(format_ports(record.ports, "dotenv"))
    return 0


def _cmd_run(args: Namespace) -> int:
    from ._stacks.supervise import run

    return run(_state(args), _opts(args), args.after, keep_volumes=args.keep_volumes, notify=_say)


class _UsageError(FreeportError):
    exit_code = ExitCode.USAGE


HANDLERS: dict[str, Callable[[Namespace], int]] = {
    "get": _cmd_get,
    "release": _cmd_release,
    "leases": _cmd_leases,
    "gc": _cmd_gc,
    "doctor": _cmd_doctor,
    "render": _cmd_render,
    "up": _cmd_up,
    "down": _cmd_down,
    "ports": _cmd_ports,
    "port": _cmd_port,
    "run": _cmd_run,
    "deploy": _cmd_deploy,
}
"""Each command of _argv.COMMANDS, its handler: parsed arguments -> exit status."""


def _terminate(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: cleanup code runs, leases are freed


# Compose's verbs that make containers: on a stack of ours, or one leased for them first (as `up`
# leases), never on the file's own fixed ports.
_MAKES_CONTAINERS = frozenset(("run", "create"))


def _cmd_compose(args: Namespace) -> int:
    """A Compose command line, for a stack: `freeport-compose logs -f web` is `docker compose <the
    stack's options> logs -f web`. Where no stack of ours answers, it is Compose's as typed (a
    project Compose started, `version`, `ls`), except `run SERVICE` and `create`, which lease the
    stack first. `rm` of a Swarm stack of ours is `docker stack rm` and frees its ports."""
    from ._argv import COMPOSE_VERBS, PROJECTLESS
    from ._stacks.lookup import find_project
    from ._stacks.passthrough import exec_compose

    words: list[str] = [*args.compose_globals, *args.compose_args]
    verb = args.compose_args[0] if args.compose_args else ""
    state = _state(args)
    project = None
    if verb not in PROJECTLESS and (verb in COMPOSE_VERBS or args.command in ("compose", "run", "port")):
        project = find_project(
            state, args.project, args.files, project_directory=args.project_directory, env_files=args.env_files
        )
    record = None if project is None else state.stacks.load(project)
    if project is not None and record is None and verb in _MAKES_CONTAINERS:
        from ._stacks.lifecycle import render

        # its ports leased, its files written: then Compose's verb
        record = render(state, _opts(args), notify=_say)
    if project is None or record is None or (args.files and [os.path.abspath(f) for f in args.files] != record.files):
        _exec_plain(args, state, words)  # no stack of ours, or files other than the stack's: Compose's alone
    if verb == "rm":
        from ._stacks.swarm import remove

        if record.swarm:
            if [a for a in args.compose_args[1:] if a not in ("-f", "--force")]:
                raise _UsageError(
                    f"{project} is a Swarm stack: `rm -p {project}` removes it whole (docker stack rm), "
                    f"and takes no {' '.join(args.compose_args[1:])}"
                )
            remove(state, project)
            _say(f"Swarm stack {project} is removed; its ports are free")
            return 0
    sys.stdout.flush()
    sys.stderr.flush()
    exec_compose(state, record, words)


def _exec_plain(args: Namespace, state: State, words: list[str]) -> NoReturn:
    """Become `docker compose` with the global options as the user typed them: no stack of ours is
    concerned, so the command line is Compose's alone (on the engine the command targets)."""
    from ._stacks.compose import global_args
    from ._stacks.passthrough import exec_plain

    given = global_args(args.project, args.project_directory, args.files, args.profiles, args.env_files)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_plain(state.engine, [*given, *words])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `freeport-compose` command: the exit status (SystemExit for --help,
    --version and usage errors, from the parser)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.state_dir:
        args.state_dir = os.path.abspath(args.state_dir)
    signal(SIGTERM, _terminate)
    try:
        if args.compose_args is not None:
            return _cmd_compose(args)  # execs Compose, or removes a Swarm stack of ours
        return HANDLERS[args.command](args)
    except FreeportError as e:
        for line in getattr(e, "details", ()):
            print(line, file=sys.stderr)  # why it failed, before the one error line
        _say(str(e))
        from ._error import ComposeError

        if isinstance(e, ComposeError) and e.returncode > 0:
            return e.returncode  # Compose's own exit status, as `docker compose` would have exited
        return int(e.exit_code)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        return 0


def console_main() -> NoReturn:
    """The console script: main(), then exit without the interpreter's teardown.

    Tearing down every imported module costs ~20 ms on each command; nothing of ours needs it (every
    lease a command takes is named, so nothing is left to release), only the output must be flushed.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
