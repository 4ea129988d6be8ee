"""The Compose driver: one method per `docker compose` verb, every argument built as a list.

Guarantees: no shell is ever involved: file names, project names and extra arguments reach Compose
as argv items, whatever characters they hold. Compose's stderr is passed through and kept, an
unreachable engine is told apart from a failed command, and a Compose child never outlives an
interrupted call of ours.

May touch: runs the Compose plugin (or `docker-compose`, `podman compose`); reads plugin directories and the
docker config file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any

from .._error import ComposeError, ComposeNotFoundError, EngineUnreachableError
from .target import Engine, config_dir

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

COMPOSE_ENV = "FREEPORT_COMPOSE"  # e.g. "docker compose" or "/opt/bin/docker-compose"
# The last of the docker CLI's plugin dirs, searched after the config file's "cliPluginsExtraDirs"
# and the config dir's cli-plugins (_plugin_dirs has the whole order).
_SYSTEM_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


# The failure patterns are compiled when a Compose command fails (re caches them): compiling both
# costs every start of a command that runs Compose ~2 ms.
def _unreachable() -> re.Pattern[str]:
    return re.compile(
        r"Cannot connect to the Docker daemon|Is the docker daemon running|"
        r"permission denied while trying to connect to the Docker daemon|error during connect",
        re.IGNORECASE,
    )


def _port_clash() -> re.Pattern[str]:
    # "Bind for 0.0.0.0:20417 failed: port is already allocated" (the engine's own table),
    # "listen tcp4 0.0.0.0:20417: bind: address already in use" (docker-proxy met a foreign socket), and
    # Docker >= 28, which binds host ports itself: "failed to bind host port 0.0.0.0:20417/tcp: address
    # already in use" (28.0: "failed to bind host port for 0.0.0.0:20417:172.18.0.2:5432/tcp: ...").
    return re.compile(
        r"Bind for \[?[0-9A-Fa-f.:]*\]?:(\d+) failed: port is already allocated"
        r"|listen (?:tcp|udp)[46]? \[?[0-9A-Fa-f.:]*\]?:(\d+): bind: address already in use"
        r"|failed to bind host port (?:for )?(?:\[[0-9A-Fa-f.:]*\]|[0-9.]*):(\d+)[:/][^\n]*?address already in use"
        # Swarm's cluster-wide allocator (`docker stack deploy`): "port '20417' is already in use by
        # service 'web' (ID) as an ingress port".
        r"|port '(\d+)' is already in use by service"
    )


@dataclass(frozen=True)
class ComposeProject:
    """The global options that name one project to Compose, so every verb replays them identically."""

    name: str
    files: tuple[str, ...]
    project_directory: str
    profiles: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()

    def args(self) -> list[str]:
        # --project-directory keeps relative paths (build contexts, env_file, volumes, extends)
        # resolving against the user's directory although rendered files live in the state dir.
        return global_args(self.name, self.project_directory, self.files, self.profiles, self.env_files)


def global_args(
    project: str | None,
    project_directory: str | None,
    files: Sequence[str] = (),
    profiles: Sequence[str] = (),
    env_files: Sequence[str] = (),
) -> list[str]:
    """Compose's global options that name a project and its files, those given (None, empty: not)."""
    out = ["--project-name", project] if project else []
    if project_directory:
        out += ["--project-directory", project_directory]
    for f in files:
        out += ["--file", f]
    for p in profiles:
        out += ["--profile", p]
    for e in env_files:
        out += ["--env-file", e]
    return out


@dataclass(frozen=True)
class Result:
    """A finished Compose command: its status and what it wrote to stderr."""

    returncode: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def port_clashes(self) -> set[int]:
        """Host ports Compose could not bind because something outside our leases took them."""
        return {int(next(p for p in groups if p)) for groups in _port_clash().findall(self.stderr)}

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


def _plugin_dirs() -> list[str]:
    """Where the docker CLI looks for plugins, in its order (docker/cli's getPluginDirs): the config
    file's "cliPluginsExtraDirs" (docker >= 25), the config dir's cli-plugins, the system dirs."""
    config = config_dir(os.environ)
    extra: object = None
    try:
        with open(os.path.join(config, "config.json"), "rb") as f:
            text = f.read()
    except OSError:
        text = b""
    if b"cliPluginsExtraDirs" in text:  # json only for those who set it: every command pays for its imports
        try:
            extra = json.loads(text).get("cliPluginsExtraDirs")
        except (ValueError, AttributeError):
            extra = None  # the docker CLI would refuse the file too; the other dirs still count
    dirs = [d for d in extra if isinstance(d, str)] if isinstance(extra, list) else []
    return [*dirs, os.path.join(config, "cli-plugins"), *_SYSTEM_PLUGIN_DIRS]


def find_plugin() -> str | None:
    """The Compose plugin binary the docker CLI would run for `docker compose`: the first
    `docker-compose` in its plugin dirs. None if there is none, or if that first one is no file we
    can run (the docker CLI would refuse it too, rather than look further: `docker compose` then
    says why, as the user would see it)."""
    for d in _plugin_dirs():
        path = os.path.join(d, "docker-compose")
        if os.path.lexists(path):
            return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return None


# Set by the docker CLI for a plugin it runs (the plugin then expects `compose` as its first word):
# one inherited from a docker CLI above us must not reach a plugin we run on its own.
_PLUGIN_MARK = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"


def _nice() -> str | None:
    """coreutils' nice, if this machine has it where it always is."""
    return next((p for p in ("/usr/bin/nice", "/bin/nice") if os.access(p, os.X_OK)), None)


class Compose:
    """A Compose v2 command line; found as the docker CLI's compose plugin (run directly), then
    `docker compose` (a docker CLI that finds its plugin where we do not look), then
    `docker-compose` v2 on the PATH, then `podman compose`."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.env = dict(env) if env is not None else None  # for Compose children; None: ours

    @classmethod
    def find(cls, engine: Engine | None = None) -> Compose:
        """The first Compose v2 on this machine, pointed at `engine` (default: the one our own
        environment names), or ComposeNotFoundError (one line saying what to install)."""
        env = engine.child_env(os.environ) if engine is not None else None
        return cls._find(env)

    @classmethod
    def _find(cls, env: Mapping[str, str] | None) -> Compose:
        explicit = os.environ.get(COMPOSE_ENV)
        if explicit:
            import shlex  # only for this variable: every command pays for what it imports

            try:
                command = shlex.split(explicit)
            except ValueError as e:
                raise ComposeNotFoundError(f"${COMPOSE_ENV} is not a valid command line ({e}): {explicit!r}") from None
            if command:
                return cls(command, env)
        # The plugin is found on disk as the docker CLI finds it, and run as it is: standalone, a Compose
        # v2 plugin is a whole Compose (it reads $DOCKER_HOST, $DOCKER_CONTEXT and the config file's
        # context itself). Going through `docker compose` costs every call ~45 ms: the docker CLI starts,
        # runs the plugin once for its metadata, then again for the command. Asking for
        # `docker compose version` first would cost another ~70 ms.
        plugin = find_plugin()
        if plugin is not None:
            if _PLUGIN_MARK in (os.environ if env is None else env):
                env = {k: v for k, v in (os.environ if env is None else env).items() if k != _PLUGIN_MARK}
            return cls([plugin], env)
        import shutil  # only when no plugin is found

        if shutil.which("docker") and cls._is_v2(["docker", "compose"]):
            return cls(["docker", "compose"], env)
        legacy = shutil.which("docker-compose")
        if legacy and cls._is_v2([legacy]):
            return cls([legacy], env)
        if shutil.which("podman"):
            return cls(["podman", "compose"], env)
        raise ComposeNotFoundError(
            "Docker Compose v2 not found: install the docker compose plugin (or docker-compose v2, or podman compose)"
        )

    @staticmethod
    def _is_v2(command: list[str]) -> bool:
        try:
            out = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and not out.stdout.strip().lstrip("v").startswith("1.")

    def version(self) -> tuple[int, ...]:
        """Compose's version as numbers, e.g. (2, 40, 3)."""
        out = self._run(["version", "--short"], capture_stdout=True, tee=False)
        numbers = re.findall(r"\d+", out.stdout.split("-")[0]) if out.ok else []
        return tuple(int(n) for n in numbers[:3])

    def up(
        self, project: ComposeProject, *, wait: bool = False, extra: Sequence[str] = (), keep_fds: Sequence[int] = ()
    ) -> Result:
        """`up --detach`: start the stack in the background; --wait: until running/healthy.

        `keep_fds` stay open in Compose (a project lock: held for as long as Compose lives, even
        if we are killed meanwhile).
        """
        args = [*project.args(), "up", "--detach"]
        if wait:
            args.append("--wait")
        return self._run([*args, *extra], keep_fds=keep_fds)

    def down(self, project: ComposeProject | str, *, volumes: bool = False, extra: Sequence[str] = ()) -> Result:
        """`down --remove-orphans`: stop and remove the stack's containers and networks, those of
        every profile (`--profile *`: a service another `up --profile` started is the stack's too);
        -v: volumes too.

        Given only a name, Compose finds the stack by its containers' labels (no files needed).
        """
        if isinstance(project, ComposeProject):
            head = replace(project, profiles=("*",)).args()
        else:
            head = ["--project-name", project]
        args = [*head, "down", "--remove-orphans"]
        if volumes:
            args.append("--volumes")
        args += extra  # Compose's own options of `down` (--rmi, -t) and service names, as given
        if isinstance(project, ComposeProject):
            return self._run(args)
        # Name-only mode runs in an empty directory so that no compose.yml lying in the cwd is read.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="freeport-") as empty:
            return self._run(args, cwd=empty)

    def accepts(self, verb: str, args: Sequence[str]) -> Result:
        """Whether Compose's `verb` takes these options, asked without running it: `VERB ARGS --help`
        (its command-line parser refuses an unknown or malformed option before it reads `--help`).
        For a verb that stops or removes things: a typo must fail before anything is touched."""
        return self._run([verb, *args, "--help"], capture_stdout=True, tee=False)

    def ps(self, project: ComposeProject) -> str:
        """`ps --all`: the stack's containers as Compose shows them (for an error message)."""
        out = self._run([*project.args(), "ps", "--all"], capture_stdout=True, tee=False)
        return out.stdout if out.ok else out.stderr

    def logs(self, project: ComposeProject, service: str, *, tail: int = 20) -> str:
        """`logs --no-color --tail N SERVICE`: a service's last log lines."""
        out = self._run(
            [*project.args(), "logs", "--no-color", "--no-log-prefix", "--tail", str(tail), service],
            capture_stdout=True,
            tee=False,
        )
        return out.stdout if out.ok else ""

    def config(self, project: ComposeProject, *, yielding: bool = False) -> dict[str, Any]:
        """`config --format json`: the model Compose will run, after merging and interpolation.

        `yielding`: run at a lower CPU priority (`nice -n 10`), for a check made beside another
        Compose command: on a busy machine it yields the CPU to that command (`up`), which it would
        otherwise slow down by ~5% on 2 cores."""
        out = self._run([*project.args(), "config", "--format", "json"], capture_stdout=True, tee=False, nice=yielding)
        if not out.ok:
            raise ComposeError(f"docker compose config failed: {out.last_line()}", out.returncode)
        try:
            parsed = json.loads(out.stdout)
        except ValueError:
            raise ComposeError("docker compose config printed no JSON") from None
        return parsed if isinstance(parsed, dict) else {}

    def _run(
        self,
        args: list[str],
        *,
        capture_stdout: bool = False,
        tee: bool = True,
        cwd: str | None = None,
        keep_fds: Sequence[int] = (),
        nice: bool = False,
    ) -> Output:
        """Run Compose with `args`; its stderr is copied through to ours (tee) and kept for diagnosis.
        `nice`: at a lower CPU priority (`nice -n 10`), where this machine has coreutils' nice."""
        prefix = [path, "-n", "10"] if nice and (path := _nice()) is not None else []
        argv = [*prefix, *self.command, *args]
        return run(argv, self.env, capture_stdout=capture_stdout, tee=tee, cwd=cwd, keep_fds=keep_fds)


def run(
    argv: list[str],
    env: Mapping[str, str] | None,
    *,
    capture_stdout: bool = False,
    tee: bool = True,
    cwd: str | None = None,
    keep_fds: Sequence[int] = (),
    quiet_stdout: bool = False,
) -> Output:
    """Run a docker or Compose command (argv, never a shell); its stderr is copied through to ours
    (tee) and kept for diagnosis; an unreachable engine raises EngineUnreachableError.
    `quiet_stdout`: its stdout goes to our stderr (progress lines that must not mix with our output)."""
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if capture_stdout else sys.stderr.fileno() if quiet_stdout else None,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            pass_fds=tuple(keep_fds),
            env=env,
        )
    except FileNotFoundError:
        raise ComposeNotFoundError(f"cannot run {argv[0]!r}: not installed") from None
    except OSError as e:  # not executable, a directory, a bad interpreter line...
        raise ComposeNotFoundError(f"cannot run {argv[0]!r}: {e.strerror or e}") from None
    stdout_chunks: list[bytes] = []
    reader = None
    if capture_stdout:
        reader = threading.Thread(target=lambda: stdout_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
    err: list[str] = []
    try:
        assert proc.stderr is not None
        sink: IO[str] = sys.stderr
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            err.append(line)
            if tee:
                sink.write(line)
                sink.flush()
        proc.wait()
    except BaseException:
        proc.terminate()  # interrupted (Ctrl-C, SIGTERM): do not leave Compose running behind us
        proc.wait()
        raise
    finally:
        proc.stderr.close()  # type: ignore[union-attr]
    if reader is not None:
        reader.join()
        proc.stdout.close()  # type: ignore[union-attr]
    stderr = "".join(err)
    if proc.returncode != 0 and _unreachable().search(stderr):
        line = next((ln for ln in stderr.splitlines() if _unreachable().search(ln)), stderr.strip())
        raise EngineUnreachableError(f"no Docker engine answers: {line.strip()}")
    return Output(proc.returncode, stderr, b"".join(stdout_chunks).decode(errors="replace"))


@dataclass(frozen=True)
class Output(Result):
    """A finished command whose stdout was kept too."""

    stdout: str = ""
