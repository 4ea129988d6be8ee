"""Conformance with `docker compose` (issue 19): for every command line Compose accepts,
`freeport-compose` with the same arguments does what Compose does, on leased ports, with Compose's
exit status. What freeport-compose adds (leased ports, the `FREEPORT_<name>=<port>` lines `up`
prints on stdout, its own `freeport-compose: ...` lines on stderr) never changes what a Compose
command line means.

Each case is one Compose command line, run twice on the real engine on the same Compose files with
the same fixed host ports, each side in a fresh directory of its own and under a project name of
its own: once as `docker compose ARGS` (the reference) and once as `freeport-compose ARGS`. `{P}`
in a case is the side's project name, which is also the name of the side's directory (so a case
without `-p` gets that name from Compose's own rule). After each case both sides are compared:

- the exit status, exactly;
- the project's containers as sorted (service, state) pairs, and its networks; on our side, no
  container publishes one of the file's fixed host ports (ours run on leased ports: the plain
  side holds the fixed ones at the same time, so a stack of ours on them could not even start);
- stdout and stderr, normalised: the side's directory and project name become placeholders,
  container ids, human durations ("2 seconds ago") and digit runs (host ports, pids, times) are
  normalised, column padding is collapsed, and Compose's progress lines on stderr (` Container
  x  Started`, written by concurrent goroutines) are compared as a sorted multiset. From our side
  only the documented additions are dropped: stderr lines starting with `freeport-compose:`, and
  on the stdout of `up` the `FREEPORT_\\w+=\\S+` lines (which include `FREEPORT_\\w+_HOST=...`).

Cases are grouped into scenarios (one stack brought up, then many commands on it), which run the
first time one of their cases is asked for: the steps are interleaved (plain side, then ours), and
the scenario cleans both sides up when it ends, however it ends (`docker compose --profile '*'
down -v --remove-orphans`; on our side `freeport-compose down -p P` first, then `gc`, and `release`
of whatever lease is left). test_cleanup checks that nothing of either side was left. Each case is
a test of its own, named by its command line; a case's output is compared only, never rerun.
The scenarios keep each other's order: run the module in one process (under xdist, with
`--dist loadgroup`).

No registry is reached: every service has `pull_policy: never`, and the image is the local test
image under a tag of this run's own (not `latest`: Compose's `pull --policy missing` always pulls a
`:latest` image, present or not), removed when the module ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from _docker import FPC, IMAGE, PROJECT_LABEL, docker
from _ports import find_free_block

pytestmark = [
    pytest.mark.docker,
    pytest.mark.usefixtures("docker_engine"),  # conftest: skips the module without an engine
    pytest.mark.xdist_group("conformance"),
]

CMD_TIMEOUT = 60.0  # one command line; a hang (say an attached `up`) is a result, not a stuck run
GLOBAL_WITH_VALUE = {"-f", "--file", "-p", "--project-name", "--profile", "--env-file", "--project-directory"}


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One Compose command line, `{P}` standing for the side's project name."""

    scenario: str
    index: int
    args: tuple[str, ...]
    # stdout lines compared as a sorted multiset: Compose writes several containers' logs as
    # they come, in no fixed order between services
    sort_stdout: bool = False
    # how stdout is compared: "text", "ps-json" or "ls-json" (see _stdout)
    kind: str = "text"
    # after this case, neither side may have a container or network left
    leaves_nothing: bool = False
    # A difference docs/cli.md documents ("Where it differs from Compose"): freeport-compose's own exit
    # status and what its one error line says, where Compose fails with its own status and message.
    differs: tuple[int, str] | None = None

    @property
    def verb(self) -> str:
        """The Compose command (the first word after the global options)."""
        args = iter(self.args)
        for word in args:
            if word in GLOBAL_WITH_VALUE:
                next(args, None)
            elif not word.startswith("-"):
                return word
        return ""

    @property
    def id(self) -> str:
        return f"{self.scenario}{self.index:02d}: {self.line}"

    @property
    def line(self) -> str:
        """The command line as typed (quoted where a shell needs it; `{P}` left as it is)."""
        return " ".join(a if re.fullmatch(r"[\w@%+=:,./{}-]+", a) else shlex.quote(a) for a in self.args)

    def argv(self, project: str) -> list[str]:
        return [a.replace("{P}", project) for a in self.args]


@dataclasses.dataclass(frozen=True)
class With:
    """A command line with options of its Case (sort_stdout, kind, leaves_nothing)."""

    args: tuple[str, ...]
    sort_stdout: bool = False
    kind: str = "text"
    leaves_nothing: bool = False
    differs: tuple[int, str] | None = None


def _scenario(name: str, *lines: tuple[str, ...] | With) -> list[Case]:
    return [Case(name, i, line.args, line.sort_stdout, line.kind, line.leaves_nothing, line.differs)
            if isinstance(line, With) else Case(name, i, line) for i, line in enumerate(lines)]


P = ("-p", "{P}")  # the global option as users type it, before the verb

SCENARIOS: dict[str, list[Case]] = {
    # One stack up, then the read-only verbs, then refused command lines on the running stack.
    "read": _scenario(
        "read",
        (*P, "up", "-d"),
        (*P, "ps"),
        (*P, "ps", "-a"),
        (*P, "ps", "--services"),
        (*P, "ps", "-q"),
        With((*P, "ps", "--format", "json"), kind="ps-json"),
        (*P, "logs", "web"),
        With((*P, "logs"), sort_stdout=True),
        (*P, "logs", "--no-log-prefix", "worker"),
        (*P, "port", "web", "8080"),
        (*P, "images"),
        (*P, "top", "web"),
        (*P, "config", "--services"),
        (*P, "config"),
        (*P, "exec", "-T", "web", "busybox", "echo", "hello"),
        (*P, "exec", "-T", "web", "busybox", "sh", "-c", "echo $GREETING"),
        (*P, "run", "--rm", "worker", "busybox", "echo", "ran"),
        (*P, "pull", "--policy", "missing"),
        # Bounded: an empty window one second ago. (On this engine Compose ends a bounded stream
        # with "EOF" and exit 1: whatever Compose does is what is compared.)
        (*P, "events", "--json", "--since", "1s", "--until", "1s"),
        # `ls` lists every project of the engine, other tests' too, with CONFIG FILES: the files
        # Compose was given, the user's compose.yaml on the plain side and freeport-compose's
        # rendered copies in its state dir on ours. So the JSON form is read, and the Name and
        # Status of the side's own project are compared (see _stdout).
        With(("ls", "--format", "json"), kind="ls-json"),
        ("ls", "-q", "--filter", "name={P}"),
        ("version",),
        ("version", "--short"),
        (*P, "up", "-d"),
        (*P, "up", "--no-recreat"),  # a typo: refused, and the stack keeps running
        (*P, "up", "--bogus"),
        (*P, "ps", "--bogus"),
        (*P, "exec", "nosuch-service", "busybox", "true"),
        (*P, "port", "web", "9999"),
        (*P, "down"),
    ),
    # State changes, service by service.
    "life": _scenario(
        "life",
        (*P, "create"),
        (*P, "ps", "-a"),
        (*P, "start"),
        (*P, "stop", "worker"),
        (*P, "ps", "-a"),
        (*P, "start", "worker"),
        (*P, "restart", "web"),
        (*P, "kill", "worker"),
        (*P, "ps", "-a"),
        (*P, "pause", "web"),
        (*P, "ps"),
        (*P, "unpause", "web"),
        (*P, "stop"),
        (*P, "rm", "-f", "worker"),
        (*P, "start"),
        (*P, "up", "-d", "worker"),
        (*P, "kill", "-s", "SIGKILL"),
        (*P, "rm", "-f"),
        With((*P, "down", "-v"), leaves_nothing=True),
    ),
    # Profiles: a service of a profile started, then `up` and `down` without the profile.
    "prof": _scenario(
        "prof",
        ("--profile", "debug", *P, "up", "-d"),
        ("--profile", "debug", *P, "ps", "--services"),
        ("--profile", "debug", *P, "config", "--services"),
        (*P, "up", "-d"),
        (*P, "ps", "--services"),
        With((*P, "down"), leaves_nothing=True),
    ),
    # No -p: the project is named after the directory, on both sides.
    "dflt": _scenario(
        "dflt",
        ("up", "-d"),
        ("ps", "--services"),
        ("ps",),
        ("config", "--services"),
        ("ls", "-q", "--filter", "name={P}"),
        With(("down",), leaves_nothing=True),
    ),
    # Other files, env files and project directories, given before the verb.
    "files": _scenario(
        "files",
        ("-f", "stack.yml", *P, "up", "-d"),
        ("-f", "stack.yml", *P, "ps", "--services"),
        ("--env-file", "alt.env", "-f", "stack.yml", *P, "up", "-d"),
        ("-f", "stack.yml", *P, "exec", "-T", "web", "busybox", "sh", "-c", "echo $GREETING"),
        ("-f", "stack.yml", *P, "config", "--services"),
        ("-f", "compose.yaml", "-f", "stack.yml", *P, "config", "--services"),
        With(("-f", "stack.yml", *P, "down"), leaves_nothing=True),
        ("--project-directory", "app", *P, "up", "-d"),
        ("--project-directory", "app", *P, "exec", "-T", "api", "busybox", "sh", "-c", "echo $GREETING"),
        ("--project-directory", "app", *P, "ps", "--services"),
        With(("--project-directory", "app", *P, "down"), leaves_nothing=True),
        # freeport-compose reads the files itself (to lease their ports): a missing one is its own
        # template error, file:line:column and exit 4, before Compose runs (docs/cli.md)
        With(("-f", "missing.yml", *P, "up", "-d"), differs=(4, "missing.yml:1:1: no such file")),
    ),
    # Command lines for a project that has nothing on the engine.
    "none": _scenario(
        "none",
        ("-p", "{P}-gone", "down"),  # Compose: a warning, exit 0
        (*P, "ps"),
        (*P, "logs", "web"),
        (*P, "stop"),
        (*P, "exec", "-T", "web", "busybox", "true"),
        (*P, "nosuchverb"),
    ),
}
CASES = [case for cases in SCENARIOS.values() for case in cases]


# --------------------------------------------------------------------------------------------
# The files: one set per side, the same but for nothing
# --------------------------------------------------------------------------------------------


def _service(image: str, command: Sequence[str], port: str, env: bool = False, profile: str = "") -> str:
    lines = [f"    image: {image}", "    pull_policy: never", "    stop_signal: SIGKILL",
             f"    command: {json.dumps(list(command))}"]
    if profile:
        lines.append(f"    profiles: [{profile}]")
    if env:
        lines += ["    environment:", "      GREETING: ${GREETING:-plain}"]
    lines += ["    ports:", f'      - "{port}"']
    return "\n".join(lines) + "\n"


def _write_files(directory: Path, image: str, fixed: Sequence[int]) -> None:
    web = ["busybox", "sh", "-c", "echo web says hello; exec busybox httpd -f -p 8080 -h /"]
    worker = ["busybox", "sh", "-c", "echo worker ready; exec busybox sleep 3600"]
    sleep = ["busybox", "sleep", "3600"]
    (directory / "app").mkdir(parents=True)
    (directory / "compose.yaml").write_text(
        "services:\n"
        f"  web:\n{_service(image, web, f'127.0.0.1:{fixed[0]}:8080', env=True)}"
        f"  worker:\n{_service(image, worker, f'127.0.0.1:{fixed[1]}:9000')}"
        f"  debug:\n{_service(image, sleep, f'127.0.0.1:{fixed[2]}:9100', profile='debug')}"
    )
    (directory / "stack.yml").write_text(
        "services:\n"
        f"  web:\n{_service(image, web, f'127.0.0.1:{fixed[3]}:8080', env=True)}"
        f"  extra:\n{_service(image, sleep, f'127.0.0.1:{fixed[4]}:9200')}"
    )
    (directory / "alt.env").write_text("GREETING=alt\n")
    (directory / "app" / "compose.yaml").write_text(
        f"services:\n  api:\n{_service(image, sleep, f'127.0.0.1:{fixed[5]}:9300', env=True)}"
    )
    (directory / "app" / ".env").write_text("GREETING=from-dotenv\n")


FIXED_PORTS = 6


# --------------------------------------------------------------------------------------------
# Running a scenario
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    status: int | None  # None: timed out
    stdout: str
    stderr: str


@dataclasses.dataclass
class Snapshot:
    """A project's containers ("service state", sorted), networks and published host ports."""

    containers: list[str]
    networks: list[str]
    host_ports: set[int]


@dataclasses.dataclass
class Side:
    name: str  # "plain" or "ours"
    command: tuple[str, ...]
    project: str
    directory: Path


@dataclasses.dataclass
class ScenarioRun:
    sides: tuple[Side, Side]
    fixed: list[int]
    results: dict[str, tuple[Outcome, Snapshot, Outcome, Snapshot]] = dataclasses.field(default_factory=dict)
    aborted: str = ""
    leftovers: list[str] = dataclasses.field(default_factory=list)


def _env() -> dict[str, str]:
    """This test's environment (FREEPORT_STATE_DIR from conftest), without what would change what
    Compose reads: the same for both sides."""
    env = dict(os.environ)
    for var in list(env):
        if var.startswith("COMPOSE_") or var == "GREETING":
            del env[var]
    return env


def _run(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> Outcome:
    """argv to completion in a session of its own (a timeout kills it and everything it started)."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        return Outcome(None, out, err + f"\n[timed out after {CMD_TIMEOUT:.0f}s]\n")
    return Outcome(proc.returncode, out, err)


def _snapshot(project: str) -> Snapshot:
    ps = docker("ps", "-a", "--filter", f"label={PROJECT_LABEL}={project}",
                "--format", '{{.Label "com.docker.compose.service"}} {{.State}}\t{{.Ports}}')
    nets = docker("network", "ls", "--filter", f"label={PROJECT_LABEL}={project}", "--format", "{{.Name}}")
    assert ps.returncode == 0, ps.stderr
    assert nets.returncode == 0, nets.stderr
    containers, ports = [], set()
    for line in ps.stdout.splitlines():
        container, _, published = line.partition("\t")
        containers.append(container)
        ports.update(int(p) for p in re.findall(r":(\d+)->", published))
    return Snapshot(sorted(containers), sorted(nets.stdout.split()), ports)


def _cleanup(sides: Sequence[Side], env: dict[str, str]) -> list[str]:
    """Bring both sides down whatever happened; what is still there afterwards, as problems."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fpc-conformance-down-") as empty:
        for side in sides:
            projects = [side.project, f"{side.project}-gone"]
            if side.name == "ours":
                for project in projects:
                    _run([FPC, "down", "-p", project], Path(empty), env)
            for project in projects:
                _run(["docker", "compose", "-p", project, "--profile", "*", "down", "-v", "--remove-orphans",
                      "--timeout", "0"], Path(empty), env)
            for project in projects:
                left = _snapshot(project)
                if left.containers or left.networks:
                    problems.append(f"{side.name}: {project} left {left.containers} {left.networks}")
                    ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split()
                    if ids:
                        docker("rm", "-f", "-v", *ids)
                    if left.networks:
                        docker("network", "rm", *left.networks)
            if side.name == "ours":
                _run([FPC, "gc"], Path(empty), env)
                for project in projects:
                    leases, stacks = _leases(project, Path(empty), env)
                    if leases:
                        _run([FPC, "release", "--owner", project], Path(empty), env)
                    leases, stacks = _leases(project, Path(empty), env)
                    if leases or stacks:
                        problems.append(f"ours: {project} left leases {leases} and stack records {stacks}")
    return problems


def _leases(project: str, cwd: Path, env: dict[str, str]) -> tuple[list[int], list[str]]:
    """The ports leased to the project, and its stack records, in our state dir. (The listing is
    `leases --json`; `ls --json` before `ls` became Compose's.)"""
    errors = []
    for command in ("leases", "ls"):
        out = _run([FPC, command, "--json"], cwd, env)
        try:
            state = json.loads(out.stdout)
            return ([lease["port"] for lease in state["leases"] if lease["owner"] == project],
                    [s["project"] for s in state["stacks"] if s["project"] == project])
        except (ValueError, KeyError, TypeError):
            errors.append(f"`freeport-compose {command} --json` exit {out.status}: {out.stderr.strip()[-200:]}")
    return [], [f"unknown: neither listing is readable ({'; '.join(errors)})"]


def _execute(name: str, root: Path, image: str) -> ScenarioRun:
    token = secrets.token_hex(3)
    fixed = list(range(first := find_free_block(FIXED_PORTS), first + FIXED_PORTS))
    plain, ours = (
        Side(side, command, f"cf{name}-{side}-{token}", root / side / f"cf{name}-{side}-{token}")
        for side, command in (("plain", ("docker", "compose")), ("ours", (FPC,)))
    )
    run = ScenarioRun((plain, ours), fixed)
    env = _env()
    try:
        for side in run.sides:
            _write_files(side.directory, image, fixed)
        for case in SCENARIOS[name]:
            # plain first: its stack holds the fixed ports while ours runs
            p_out = _run([*plain.command, *case.argv(plain.project)], plain.directory, env)
            p_snap = _snapshot(plain.project)
            o_out = _run([*ours.command, *case.argv(ours.project)], ours.directory, env)
            run.results[case.id] = (p_out, p_snap, o_out, _snapshot(ours.project))
    except Exception:  # recorded: every case not run yet fails saying why
        run.aborted = traceback.format_exc()
    finally:
        run.leftovers = _cleanup(run.sides, env)
    return run


_RUNS: dict[str, ScenarioRun] = {}


@pytest.fixture(scope="module")
def conformance_image() -> Iterator[str]:
    """The local test image under a tag of this module's own (see the module's docstring)."""
    tag = f"{IMAGE.rsplit(':', 1)[0]}:conformance-{secrets.token_hex(4)}"
    result = docker("tag", IMAGE, tag)
    assert result.returncode == 0, result.stderr
    try:
        yield tag
    finally:
        docker("rmi", tag)  # the tag only: the image keeps its own


def _scenario_run(name: str, tmp_path_factory: pytest.TempPathFactory, image: str) -> ScenarioRun:
    """The scenario's run, made the first time one of its cases asks: in that test, with the
    FREEPORT_STATE_DIR conftest gave it (the scenario is cleaned up before that test ends)."""
    if name not in _RUNS:
        _RUNS[name] = _execute(name, tmp_path_factory.mktemp(f"conformance-{name}"), image)
    return _RUNS[name]


# --------------------------------------------------------------------------------------------
# Normalising and comparing
# --------------------------------------------------------------------------------------------

ID = re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{12}\b")
DURATION = re.compile(r"\b(?:Less than a second|About an? (?:minute|hour)|\d+ (?:second|minute|hour|day)s?)\b")
DIGITS = re.compile(r"\d+")
PADDING = re.compile(r"(?<=\S)[ \t]{2,}")  # between columns; indentation is kept (YAML)
FREEPORT_LINE = re.compile(r"FREEPORT_\w+=\S+")


def _text(text: str, side: Side) -> str:
    """Side-neutral text: directory and project as placeholders, ids, durations, digit runs and
    column padding normalised."""
    text = text.replace("\r", "")
    for directory in {str(side.directory), os.path.realpath(side.directory)}:
        text = text.replace(directory, "<DIR>")
    text = text.replace(side.project, "<P>")
    text = ID.sub("<ID>", text)
    text = DURATION.sub("<T>", text)
    text = DIGITS.sub("N", text)
    return "\n".join(PADDING.sub("  ", line).rstrip() for line in text.splitlines())


def _stdout(case: Case, outcome: Outcome, side: Side) -> list[str]:
    raw = outcome.stdout
    if side.name == "ours" and case.verb == "up":
        raw = "\n".join(line for line in raw.splitlines() if not FREEPORT_LINE.fullmatch(line.strip()))
    if case.kind == "ls-json":
        # Name and Status of the side's own project, as written (the Status is "running(2)": its
        # count carries meaning, and no port is in it). ConfigFiles: see the case.
        try:
            entries = json.loads(raw)
            return [f"Name={e['Name'].replace(side.project, '<P>')} Status={e['Status']}"
                    for e in entries if e.get("Name") == side.project]
        except (ValueError, TypeError, KeyError, AttributeError):
            return ["(not `ls --format json` output)", *_text(raw, side).splitlines()]
    if case.kind == "ps-json":
        # Every field, but the com.docker.compose.project.config_files label: the files Compose
        # was given (the user's on the plain side, freeport-compose's rendered copies on ours).
        # The labels are a comma-joined string in the engine's map order: compared sorted. (A
        # value may hold commas too, config_files' list of files: a piece without "=" goes on.)
        lines = []
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
                labels: list[str] = []
                for piece in entry["Labels"].split(","):
                    if "=" in piece or not labels:
                        labels.append(piece)
                    else:
                        labels[-1] += "," + piece
                labels = [kv for kv in labels if not kv.startswith("com.docker.compose.project.config_files=")]
                entry["Labels"] = ",".join(sorted(labels))
                line = json.dumps(entry, sort_keys=True)
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            lines.append(_text(line, side))
        return lines
    lines = _text(raw, side).splitlines()
    # `--services` lists services in dependency order; between independent ones Compose's order
    # varies from run to run (it walks a Go map), so these lists are compared sorted too
    return sorted(lines) if case.sort_stdout or "--services" in case.args else lines


def _stderr(outcome: Outcome, side: Side) -> list[str]:
    """Compose's own lines in order, then its progress lines (they start with a space) sorted."""
    lines = [line for line in _text(outcome.stderr, side).splitlines()
             if line.strip() and not (side.name == "ours" and line.startswith("freeport-compose:"))]
    return [line for line in lines if not line.startswith(" ")] + sorted(
        line for line in lines if line.startswith(" "))


def _diff(what: str, plain: list[str], ours: list[str]) -> list[str]:
    if plain == ours:
        return []
    diff = difflib.unified_diff(plain, ours, "docker compose", "freeport-compose", n=1, lineterm="")
    return [f"{what} differs:", *(f"    {line}" for line in list(diff)[2:])]


def _compare(case: Case, run: ScenarioRun) -> list[str]:
    plain, ours = run.sides
    p_out, p_snap, o_out, o_snap = run.results[case.id]
    problems = []
    if case.differs is not None:  # documented: ours is its own error, where Compose fails with its own
        status, says = case.differs
        if p_out.status == 0 or o_out.status != status or says not in o_out.stderr:
            problems.append(f"documented difference not met: docker compose exit {p_out.status}, freeport-compose "
                            f"exit {o_out.status} (want {status} saying {says!r})")
    elif p_out.status != o_out.status:
        problems.append(f"exit status: docker compose {p_out.status}, freeport-compose {o_out.status}")

    def state(snap: Snapshot, side: Side) -> list[str]:
        return snap.containers + [f"network {n.replace(side.project, '<P>')}" for n in snap.networks]

    problems += _diff("containers and networks afterwards", state(p_snap, plain), state(o_snap, ours))
    if case.leaves_nothing and (p_snap.containers or p_snap.networks or o_snap.containers or o_snap.networks):
        problems.append(f"left after `{case.verb}`: docker compose {state(p_snap, plain)}, "
                        f"freeport-compose {state(o_snap, ours)}")
    if on_fixed := sorted(o_snap.host_ports & set(run.fixed)):
        problems.append(f"freeport-compose's containers publish the file's fixed ports {on_fixed}, not leased ones")
    problems += _diff("stdout (normalised)", _stdout(case, p_out, plain), _stdout(case, o_out, ours))
    if case.differs is None:
        problems += _diff("stderr (normalised)", _stderr(p_out, plain), _stderr(o_out, ours))
    if problems:  # context, not compared: what freeport-compose said, its own lines included
        tail = o_out.stderr.strip().splitlines()[-6:]
        problems += ["freeport-compose's stderr ended (raw):", *(f"    {line}" for line in tail or ["(nothing)"])]
    return problems


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_conformance(case: Case, tmp_path_factory: pytest.TempPathFactory, conformance_image: str) -> None:
    run = _scenario_run(case.scenario, tmp_path_factory, conformance_image)
    if case.id not in run.results:
        pytest.fail(f"scenario {case.scenario!r} stopped before this case:\n{run.aborted}")
    problems = _compare(case, run)
    assert not problems, f"`{case.line}`:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_cleanup(name: str, tmp_path_factory: pytest.TempPathFactory, conformance_image: str) -> None:
    """The scenario left no container, network, lease or stack record on either side."""
    run = _scenario_run(name, tmp_path_factory, conformance_image)
    assert not run.aborted, run.aborted
    assert not run.leftovers, "\n".join(run.leftovers)
