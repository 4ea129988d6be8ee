"""`Stack`: a Compose stack on leased ports as a Python object, for tests and scripts.

Guarantees: `with Stack(...)` brings the stack up (and ready) on entering, and down on leaving, however
the body leaves (an exception, KeyboardInterrupt), and, should this process be killed outright
(SIGKILL, its process group killed, its terminal closed), the stack's reaper brings it down within
seconds (reaper.py); an `up` that fails leaves nothing; `Stack.attach`
reads a stack someone else started and never brings it down. A readiness timeout raises
StackNotReadyError showing `ps`, the last log lines of each unready service and its failing
healthcheck output.

May touch: what `up` and `down` touch; TCP connections and HTTP requests to the stack's own ports;
within `with`, the stack's users' flock and its reaper (reaper.py).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._error import FreeportError, StackNotReadyError, UnknownOwnerError
from .._leasing.allocator import DEFAULT_TIMEOUT
from .lookup import port_name
from .names import PREFIX
from .records import StackRecord, StackStatus
from .target import resolve

if TYPE_CHECKING:
    from .reaper import Hold

Files = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class Stack:
    """A Compose stack on leased ports: `with Stack("compose.yaml") as stack: stack.url("web")`."""

    def __init__(
        self,
        files: Files,
        project: str | None = None,
        *,
        wait: bool = True,
        profiles: Sequence[str] = (),
        env_files: Sequence[str] = (),
        up_args: Sequence[str] = (),
        wait_for: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        project_directory: str | None = None,
        lease_all: bool = False,
        drop_container_names: bool = False,
        state_dir: str | None = None,
        context: str | None = None,
    ) -> None:
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        self.files = [os.fspath(f) for f in paths]
        self.wait, self.up_args, self.timeout = wait, tuple(up_args), timeout
        self.wait_for = dict(wait_for or {})
        self._options: dict[str, Any] = {
            "project": project,
            "project_directory": project_directory,
            "profiles": tuple(profiles),
            "env_files": tuple(env_files),
            "lease_all": lease_all,
            "drop_container_names": drop_container_names,
        }
        self._state_dir = state_dir
        # The engine Compose would use (--context, else $DOCKER_HOST, $DOCKER_CONTEXT, the current
        # context): resolved now, so a context that does not exist fails before anything starts.
        self.engine = resolve(context, os.environ)
        self._record: StackRecord | None = None
        self._owned = True  # brought down on exit (not an attached stack)
        self._users: Hold | None = None  # its users' flock, while a reaper watches it (`with`)

    @classmethod
    def attach(cls, project: str, *, state_dir: str | None = None, context: str | None = None) -> Stack:
        """A stack started elsewhere (`freeport-compose up -p PROJECT`): its ports, never brought down here."""
        from .state import State

        stack = cls([], project, state_dir=state_dir, context=context)
        record = State.open(state_dir, stack.engine).stacks.load(project)
        if record is None or record.status is StackStatus.STOPPING:
            raise UnknownOwnerError(f"no stack named {project!r} (see `freeport-compose leases`)")
        stack.files = list(record.files)
        stack._record, stack._owned = record, False
        return stack

    # -- what a test needs ---------------------------------------------------------------------

    @property
    def record(self) -> StackRecord:
        if self._record is None:
            raise FreeportError("the stack is not up: use `with Stack(...) as stack`, or call up()")
        return self._record

    @property
    def project(self) -> str:
        """The Compose project name."""
        return self.record.project

    @property
    def ports(self) -> dict[str, int]:
        """{"FREEPORT_db": 20417, ...}"""
        return dict(self.record.ports)

    def port(self, name: str) -> int:
        """The port of `name`: "FREEPORT_db", "db", or a zero-edit service's one port ("db")."""
        return self.record.ports[port_name(self.record.ports, name)]

    def host(self, name: str) -> str:
        """The address to reach `name`'s port on: the one it is published on, else the engine's host
        (127.0.0.1 for an engine on this machine)."""
        return self.record.hosts.get(port_name(self.record.ports, name), "127.0.0.1")

    def url(self, name: str, path: str = "/", scheme: str = "http") -> str:
        """`scheme://host:port/path` of `name`'s port (an IPv6 host in brackets)."""
        host = self.host(name)
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port(name)}{path if path.startswith('/') else '/' + path}"

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self) -> Stack:
        """Bring the stack up (`--wait` unless wait=False), then wait for `wait_for`; on any failure
        the stack is brought down again before the error is raised. Called outside `with`, the stack
        stays up until `down()` (or `freeport-compose down`), also after this process ends."""
        return self._up(watched=False)

    def _up(self, *, watched: bool) -> Stack:
        """up(); `watched`: a stack that must not outlive this process (`with Stack(...)`): recorded as
        `run`, and watched by its reaper (reaper.py), which brings it down if this process is killed
        outright (SIGKILL, its process group or terminal gone) before `__exit__` could."""
        from dataclasses import replace

        from .lifecycle import Options, up
        from .reaper import watch
        from .records import project_name
        from .state import State

        state = State.open(self._state_dir, self.engine)
        opts = Options(files=self.files, timeout=DEFAULT_TIMEOUT, unique_name=True, **self._options)
        status = StackStatus.UP
        if watched and opts.files:
            # Named now, not by `up`: the reaper must watch the stack before anything of it exists.
            opts = replace(opts, project=project_name(opts.project, opts.files))
            assert opts.project is not None
            self._users = watch(state, opts.project, volumes=True)
            status = StackStatus.RUN  # gc and reap_dead: up only while this process lives
        try:
            self._record = up(state, opts, wait=self.wait, extra=self.up_args, status=status)
        except BaseException:
            self._let_go()
            raise
        try:
            self.ready()
        except BaseException:
            self.down()
            raise
        return self

    def ready(self) -> None:
        """Wait until every `wait_for` check passes, or raise StackNotReadyError after `timeout`.

        A check is "tcp" (a connection is accepted), "http" or "http:/path" (an HTTP status below
        500), or "log:REGEX" (a line of the service's log matches).
        """
        deadline = time.monotonic() + self.timeout
        pending = dict(self.wait_for)
        last: dict[str, str] = {}
        while pending:
            for name, check in list(pending.items()):
                ok, why = self._check(name, check)
                if ok:
                    del pending[name]
                else:
                    last[name] = why
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise self._not_ready(pending, last)
            time.sleep(0.2)

    def _check(self, name: str, check: str) -> tuple[bool, str]:
        kind, _, arg = check.partition(":")
        if kind == "log":
            from .compose import Compose

            text = Compose.find(self.engine).logs(self.record.compose_project(), name, tail=1000)
            return (re.search(arg, text, re.MULTILINE) is not None, f"no log line matches {arg!r}")
        import socket
        import urllib.error
        import urllib.request

        host, port = self.host(name), self.port(name)
        if kind == "tcp":
            try:
                with socket.create_connection((host, port), timeout=2):
                    return True, ""
            except OSError as e:
                return False, f"tcp {host}:{port}: {e.strerror or e}"
        if kind == "http":
            url = self.url(name, arg or "/")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (our own stack's URL)
                    return response.status < 500, f"{url}: HTTP {response.status}"
            except urllib.error.HTTPError as e:
                return e.code < 500, f"{url}: HTTP {e.code}"
            except OSError as e:
                return False, f"{url}: {getattr(e, 'reason', e)}"
        raise FreeportError(f"wait_for[{name!r}] = {check!r}: use 'tcp', 'http', 'http:/path' or 'log:REGEX'")

    def _not_ready(self, pending: Mapping[str, str], last: Mapping[str, str]) -> StackNotReadyError:
        from .compose import Compose
        from .lifecycle import why_failed

        compose = Compose.find(self.engine)
        target = self.record.compose_project()
        lines = ["docker compose ps:", *("  " + ln for ln in compose.ps(target).splitlines())]
        for name in pending:
            service = name.removeprefix(PREFIX)
            lines.append(f"{name}: {last.get(name, 'not checked')}; last log lines of {service}:")
            lines += ["  " + ln for ln in compose.logs(target, service).splitlines()] or ["  (none)"]
        lines += why_failed(self.engine, self.project)
        what = ", ".join(f"{n} ({c})" for n, c in pending.items())
        return StackNotReadyError(
            f"stack {self.project} not ready after {self.timeout:g} s: {what}\n" + "\n".join(lines)
        )

    def down(self, *, volumes: bool = True) -> None:
        """Bring the stack down and free its ports (a no-op for an attached or never started stack)."""
        if self._record is None or not self._owned:
            return
        from .lifecycle import down
        from .state import State

        record, self._record = self._record, None
        try:
            down(State.open(self._state_dir, self.engine), record.project, volumes=volumes)
        finally:
            self._let_go()  # the reaper finds it down and exits, or finishes a `down` that failed

    def _let_go(self) -> None:
        users, self._users = self._users, None
        if users is not None:
            users.close()

    def __enter__(self) -> Stack:
        return self if self._record is not None else self._up(watched=True)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    def __repr__(self) -> str:
        where = self._record.project if self._record is not None else "not up"
        return f"Stack({self.files!r}, {where})"
