"""pytest fixtures: ports and Compose stacks leased for one test, safe under pytest-xdist and
parallel CI jobs.

- `free_port`: one port, leased until the test ends.
- `free_port_factory(n=1, **FreePorts options)`: more ports, all released when the test ends.
- `compose_stack(*files, **options)`: `freeport-compose up --wait` a stack for this test; it is
  brought down (volumes included) and its ports freed when the test ends.
- `freeport_stack`: a session stack (a `Stack`) from the ini options `freeport_compose_files`,
  `freeport_compose_profiles` and `freeport_compose_env_files`.
- `stack_fixture(*files, scope="session", **Stack options)`: declares more stacks in a conftest.py.

A session stack is shared by every pytest-xdist worker of one run: the first worker that needs it
starts it, the others wait for it and reuse its ports, the last one to finish takes it down (see
_stacks/sharing.py: kernel locks, so a worker killed outright neither takes it down under the others
nor leaves it up). `--freeport-keep` leaves it up after the run; `--freeport-reuse` reuses a kept
stack whose files and options are unchanged.

Every stack these fixtures start is watched by a reaper (_stacks/reaper.py): if the run is killed
outright (SIGKILL of its process group, a cancelled CI job, a closed terminal), the stack comes
down within seconds all the same. Under xdist, the controller waits at the end of the run for the
stacks of a worker killed as their last user to be down: nothing is left running when pytest
returns.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._error import ComposeError
from ._leasing.allocator import FreePort, FreePorts

if TYPE_CHECKING:
    from ._stacks.stack import Stack


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port no other test, worker or process gets until this test ends."""
    with FreePort() as fp:
        yield fp.port


@pytest.fixture
def free_port_factory() -> Iterator[Callable[..., FreePorts]]:
    """Call with (n=1, **FreePorts options) for more ports; all are released when the test ends."""
    taken: list[FreePorts] = []

    def take(n: int = 1, **kwargs: Any) -> FreePorts:
        fps = FreePorts(n, **kwargs)
        taken.append(fps)
        return fps

    yield take
    for fps in taken:
        fps.release()


@dataclass(frozen=True)
class RunningStack:
    """A stack started for a test: its Compose project name and the port of each placeholder."""

    project: str
    ports: dict[str, int]

    def port(self, name: str) -> int:
        """The port of `name`: "FREEPORT_db" or just "db"."""
        from ._stacks.names import placeholder_key

        return self.ports[placeholder_key(name)]


@pytest.fixture
def compose_stack() -> Iterator[Callable[..., RunningStack]]:
    """Call with template files (and Options fields: project, profiles, env_files, ...) to start a
    stack with `up --wait`; every stack started is brought down when the test ends."""
    from dataclasses import replace

    from ._stacks.lifecycle import Options, down, up
    from ._stacks.reaper import Hold, watch
    from ._stacks.records import StackStatus, project_name
    from ._stacks.state import State

    state = State.open()
    started: list[tuple[str, Hold]] = []

    def start(*files: str, wait: bool = True, **options: Any) -> RunningStack:
        opts = Options(files=list(files), unique_name=True, **options)
        if opts.files:
            # Named now, not by `up`: its reaper watches it before anything of it exists, and takes
            # it down if this process is killed outright (see _stacks/reaper.py).
            opts = replace(opts, project=project_name(opts.project, opts.files))
        users = None if opts.project is None else watch(state, opts.project, volumes=True)
        try:
            record = up(state, opts, wait=wait, status=StackStatus.RUN)
        except ComposeError as e:
            if users is not None:
                users.close()
            if not e.details:
                raise
            # The failed services' states and logs, which are gone once the stack is rolled back.
            raise ComposeError("\n".join((str(e), *e.details)), e.returncode, e.details) from None
        except BaseException:
            if users is not None:
                users.close()
            raise
        assert users is not None
        started.append((record.project, users))
        return RunningStack(record.project, dict(record.ports))

    yield start
    errors = []
    for project, users in started:  # every stack, even if bringing one down fails
        try:
            down(state, project, volumes=True)
        except Exception as e:
            errors.append(f"{project}: {e}")
        finally:
            users.close()  # its reaper finds it down and exits (or finishes a down that failed)
    if errors:
        raise RuntimeError("compose_stack could not bring down: " + "; ".join(errors))


# -- session stacks, shared by the workers of one run ------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("freeport-compose")
    group.addoption("--freeport-keep", action="store_true", help="leave session stacks up after the run")
    group.addoption(
        "--freeport-reuse",
        action="store_true",
        help="reuse a stack kept by an earlier run when its files and options are unchanged",
    )
    parser.addini("freeport_compose_files", "Compose files of the `freeport_stack` fixture", type="linelist")
    parser.addini("freeport_compose_profiles", "Compose profiles of `freeport_stack`", type="linelist")
    parser.addini("freeport_compose_env_files", "env files of `freeport_stack`", type="linelist")


_DECLARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}  # fingerprint: the stacks this run may keep


def _fingerprint(files: tuple[str, ...], options: dict[str, Any]) -> str:
    """Of the files' contents and the options: a kept stack is reused only when nothing changed."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in (*files, *options.get("env_files", ())):
        digest.update(path.encode())
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"(missing)")
    return digest.hexdigest()[:12]


def _run_id(config: pytest.Config) -> str:
    """The same for every worker of one run (xdist's testrunuid), else this process's own."""
    worker = getattr(config, "workerinput", None)
    if worker and worker.get("testrunuid"):
        return str(worker["testrunuid"])[:10]
    return f"{os.getpid()}"


def _driver() -> Any:
    """The process the run lives as long as: the xdist controller (a worker's parent), else this one."""
    from ._leasing.process import Holder, current_holder, process_start_time

    if os.environ.get("PYTEST_XDIST_WORKER"):
        parent = os.getppid()
        return Holder(parent, process_start_time(parent), current_holder().host)
    return current_holder()


def _session_stack(request: pytest.FixtureRequest, files: tuple[str, ...], options: dict[str, Any]) -> Iterator[Stack]:
    from ._stacks.lifecycle import Options
    from ._stacks.sharing import join
    from ._stacks.stack import Stack
    from ._stacks.state import State
    from ._stacks.target import resolve

    config = request.config
    keep, reuse = config.getoption("freeport_keep"), config.getoption("freeport_reuse")
    wait_for = options.pop("wait_for", None)
    timeout = options.pop("timeout", 120.0)
    up_args = tuple(options.pop("up_args", ()))
    wait = options.pop("wait", True)
    fingerprint = _fingerprint(files, options)
    project = f"pytest-{fingerprint}" if keep or reuse else f"pytest-{_run_id(config)}-{fingerprint[:6]}"
    context = options.pop("context", None)
    state = State.open(options.pop("state_dir", None), resolve(context, os.environ))
    opts = Options(files=list(files), project=project, **options)
    share = join(state, opts, driver=_driver(), keep=keep or reuse, wait=wait, up_args=up_args)
    try:
        stack = Stack.attach(project, state_dir=state.root, context=context)
        stack.wait_for, stack.timeout = dict(wait_for or {}), timeout
        stack.ready()
        yield stack
    finally:
        share.leave()


def stack_fixture(*files: str, scope: str = "session", **options: Any) -> Any:
    """A fixture of a `Stack` from these Compose files (relative to the calling conftest.py), for a
    conftest.py: `db = stack_fixture("compose.yaml", wait_for={"db": "tcp"})`.

    Session scope (the default): one stack for the whole run, shared by every xdist worker. Any other
    scope: a stack of its own for each use, brought down afterwards.
    """
    here = Path(inspect.stack()[1].filename).resolve().parent
    paths = tuple(str((here / f).resolve()) for f in files)
    _DECLARED[_fingerprint(paths, {k: v for k, v in options.items() if k not in _RUN_OPTIONS})] = (paths, options)

    fixture_scope: Any = scope  # one of pytest's scope names; pytest says so if it is not

    @pytest.fixture(scope=fixture_scope)
    def _stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
        if scope == "session":
            yield from _session_stack(request, paths, dict(options))
            return
        from ._stacks.stack import Stack

        with Stack(paths, **options) as stack:
            yield stack

    return _stack


_RUN_OPTIONS = ("wait_for", "timeout", "up_args", "wait", "state_dir")  # not part of what a kept stack is


@pytest.fixture(scope="session")
def freeport_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The session stack of the ini options `freeport_compose_files` (and `_profiles`, `_env_files`)."""
    config = request.config
    files = config.getini("freeport_compose_files")
    if not files:
        raise pytest.UsageError("freeport_stack needs the ini option freeport_compose_files (one file per line)")
    root = config.rootpath
    options: dict[str, Any] = {
        "profiles": tuple(config.getini("freeport_compose_profiles")),
        "env_files": tuple(str(root / f) for f in config.getini("freeport_compose_env_files")),
    }
    yield from _session_stack(request, tuple(str(root / f) for f in files), options)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the xdist controller, once every worker has ended (xdist's own sessionfinish, which runs
    before this one, waits for them or kills them): take down what is left of this run's session
    stacks. A worker that was killed while it was their last user leaves them to their reaper, which
    may still be at work when the run ends; this waits for it, so nothing of the run is left running
    when pytest returns."""
    config = session.config
    if getattr(config, "workerinput", None) is not None:
        return
    if config.getoption("freeport_keep") or config.getoption("freeport_reuse"):
        return  # kept on purpose
    manager = getattr(config.pluginmanager.getplugin("dsession"), "nodemanager", None)
    uid = getattr(manager, "testrunuid", None)
    if not uid:
        return  # no xdist run: each session stack was left by its one user, or its reaper
    from ._error import FreeportError
    from ._leasing.statedir import default_state_path

    if not os.path.isdir(os.path.join(default_state_path(), "stacks")):
        return  # no stack was ever started here (and nothing is created for asking)
    from ._stacks.reaper import settle_unused
    from ._stacks.state import State

    prefix = f"pytest-{str(uid)[:10]}-"  # _session_stack's name for this run's stacks
    try:
        for state in State.every():
            for record in state.stacks.all():
                if record.project.startswith(prefix):
                    settle_unused(state, record.project, volumes=True)
    except FreeportError as e:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"freeport-compose: could not take down this run's session stacks: {e}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say how to reach and remove the stacks `--freeport-keep` left up."""
    if not config.getoption("freeport_keep") or getattr(config, "workerinput", None):
        return
    from ._stacks.lookup import ports_of
    from ._stacks.state import State

    state = State.open()
    names = list(_DECLARED)
    files = config.getini("freeport_compose_files")
    if files:
        root = config.rootpath
        env_files = tuple(str(root / f) for f in config.getini("freeport_compose_env_files"))
        options = {"profiles": tuple(config.getini("freeport_compose_profiles")), "env_files": env_files}
        names.append(_fingerprint(tuple(str(root / f) for f in files), options))
    for fingerprint in names:
        project = f"pytest-{fingerprint}"
        try:
            ports = ports_of(state, project)
        except Exception:  # noqa: S112 (not kept by this run: nothing to say)
            continue
        shown = " ".join(f"{k}={v}" for k, v in ports.items())
        terminalreporter.write_line(
            f"freeport-compose: kept stack {project} ({shown}); reuse it with --freeport-reuse, "
            f"remove it with `freeport-compose down -p {project}`"
        )
