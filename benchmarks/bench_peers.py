"""Benchmark: one pytest suite with pytest-docker, testcontainers-python and freeport-compose's
`freeport_stack`, on one PostgreSQL and on a three-service stack, under `pytest -n 1` and `-n 4`.

The suites are in benchmarks/peers/<tool>/<suite>/, each written as the tool's own README has a user
write it: pytest-docker's `docker_services` (`docker_compose_file`, `port_for`,
`wait_until_responsive`), testcontainers' container classes in session fixtures, and
freeport-compose's `freeport_stack` (the ini option `freeport_compose_files`). Each suite is eight
tests that each connect to every service of it (pg8000 for PostgreSQL, a raw PING for Redis, urllib
for the web server). benchmarks/peers/baseline is the same eight tests without any service: the
floor that pytest and xdist cost by themselves.

Rounds run every (suite, -n) group once, its tools back to back in a shuffled order; each run is a
whole `python -m pytest` process, timed from spawn to exit. The containers a run creates are counted
from `docker events` (create events of the images it uses, tagged afresh for this bench so nothing
else on the machine matches). Then one kill trial per (suite, -n, tool): the run is started with a
small plugin (peers/_plugin) whose first test in each worker writes a marker file and waits; once
every worker has written its own, the run's whole process group gets SIGKILL, and 10 s later the
containers of that run still present are counted. Everything is removed afterwards (containers,
networks and volumes of the run's Compose projects, freeport-compose's stacks and leases), also on
a failure, Ctrl-C or SIGTERM; freeport-compose's state goes to a private FREEPORT_STATE_DIR.
testcontainers runs without its reaper (Ryuk): its image cannot be pulled here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from _common import (
    Report,
    bench_env,
    exit_on_sigterm,
    median,
    output,
    paired_ratio,
    parse_args,
    progress,
    quiet,
    ratio_text,
    shielded,
    table,
)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
FPC = str(Path(sys.executable).with_name("freeport-compose"))

FREEPORT = "freeport-compose"
PEER_TOOLS = ("pytest-docker", "testcontainers")
BASELINE = "pytest alone"
# tool: (directory under peers/, pytest arguments: the other tools' pytest plugins left out, as
# on a machine where only this tool is installed)
TOOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pytest-docker": ("pytest_docker", ("-p", "no:freeport_compose")),
    "testcontainers": ("testcontainers", ("-p", "no:freeport_compose", "-p", "no:docker")),
    FREEPORT: ("freeport", ("-p", "no:docker")),
}
BASELINE_ARGS = ("-p", "no:freeport_compose", "-p", "no:docker")
SUITES = {"postgres": "PostgreSQL", "stack": "PostgreSQL + Redis + web"}
# The variable each suite reads its image from: (the local image, the name of this bench's tag of it)
IMAGES = {
    "POSTGRES_IMAGE": ("freeport-test-postgres:15", "postgres:15"),
    "REDIS_IMAGE": ("freeport-test-redis:7", "redis:7"),
    "WEB_IMAGE": ("freeport-test-busybox:latest", "busybox:latest"),
}
STACK_LIMIT = 0.5  # freeport-compose's wall time, stack suite, -n 4: at most this times the faster peer's
RUN_TIMEOUT = 300.0  # seconds a run may take before it is killed and counted as failed
HOLD = 120.0  # seconds the kill trials' first test per worker waits (the kill comes long before)
AFTER_KILL = 10.0  # seconds between the SIGKILL and counting what is left
PROJECT_LABEL = "com.docker.compose.project"
TITLE = "Beside the peers: one pytest suite with pytest-docker, testcontainers and freeport-compose"
KILL_TITLE = "Beside the peers: what a SIGKILL of the pytest run leaves"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def s(seconds: float) -> str:
    return f"{seconds:.1f}"


def count_text(values: list[int]) -> str:
    """A count that is the same in every run as one number, else its median and range."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{median(values):g} ({lo}-{hi})"


class Creates:
    """The containers created from the bench's image tags from now until stop(), as `docker events`
    streams them (live: the engine keeps only its last events for a later `--since` query)."""

    def __init__(self, images: list[str]) -> None:
        now = time.time_ns()
        since = f"{now // 10**9}.{now % 10**9:09d}"
        filters = [arg for image in images for arg in ("--filter", f"image={image}")]
        cmd = ["docker", "events", "--since", since, "--filter", "type=container", "--filter", "event=create",
               *filters, "--format", "{{json .}}"]  # fmt: skip
        self.found: dict[str, str] = {}  # container id: its Compose project ("" if none)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                actor = json.loads(line)["Actor"]
            except (ValueError, KeyError, TypeError):
                continue
            self.found[actor["ID"]] = actor.get("Attributes", {}).get(PROJECT_LABEL, "")

    def stop(self) -> None:
        time.sleep(0.5)  # the last events of the run on their way
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)

    @property
    def projects(self) -> set[str]:
        return {p for p in self.found.values() if p}


@dataclass
class Sample:
    """One timed run."""

    round: int
    wall: float
    code: int
    started: int  # containers created
    left: int  # containers of the run still present once it has ended (its own clean-up done)

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass
class KillSample:
    """One kill trial."""

    started: int  # containers created (before the kill, and in the 10 s after it)
    left: int  # of them, still present 10 s after the kill
    running: int  # of those, still running
    networks: int  # networks of the run's Compose projects still present
    reached: bool  # every worker had reached its first test (its stack up) when the kill came


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        self.state = work / "state"
        self.env = bench_env(str(self.state))
        for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_XDIST_AUTO_NUM_WORKERS", "PEER_BENCH_MARKERS"):
            self.env.pop(name, None)
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written into benchmarks/peers
        # testcontainers' reaper image (testcontainers/ryuk) cannot be pulled here.
        self.env["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        tag = f"fpcbench-peers-{os.getpid()}"
        self.tags: list[str] = []
        for variable, (image, name) in IMAGES.items():
            self.env[variable] = f"{tag}/{name}"
            self.tags.append(f"{tag}/{name}")
            output(["docker", "tag", image, f"{tag}/{name}"])
        self.current: subprocess.Popen[bytes] | None = None
        self.watching: Creates | None = None
        self.projects: set[str] = set()  # every Compose project any run created containers for
        self.log = work / "pytest.log"

    # -- one pytest run -----------------------------------------------------------------------------

    def launch(self, directory: Path, n: int, args: tuple[str, ...], env: dict[str, str], log: IO[bytes]) -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(n), "-p", "no:cacheprovider", *args]
        self.current = subprocess.Popen(cmd, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def kill_current(self) -> None:
        """SIGKILL to the whole process group of the running pytest (it leads its own session)."""
        proc = self.current
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.current = None

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def timed(self, label: str, directory: Path, n: int, args: tuple[str, ...], rnd: int) -> Sample:
        self.watching = creates = Creates(self.tags)
        with self.log.open("wb") as log:
            start = time.perf_counter()
            self.launch(directory, n, args, self.env, log)
            assert self.current is not None
            try:
                code = self.current.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill_current()
                code = -int(signal.SIGKILL)
            wall = time.perf_counter() - start
            self.current = None
        creates.stop()
        left = len(self.present(creates))
        self.cleanup(creates, freeport=label == FREEPORT and (left > 0 or code != 0))
        self.watching = None
        if code != 0:
            progress(f"{label} in {directory.relative_to(PEERS)} -n {n}: exit {code}\n{self.tail()}")
        return Sample(rnd, wall, code, len(creates.found), left)

    def kill_trial(self, label: str, directory: Path, n: int, args: tuple[str, ...]) -> KillSample:
        markers = self.work / "markers"
        shutil.rmtree(markers, ignore_errors=True)
        markers.mkdir()
        env = dict(self.env)
        env["PEER_BENCH_MARKERS"] = str(markers)
        env["PEER_BENCH_HOLD"] = str(HOLD)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PEERS / "_plugin"), env.get("PYTHONPATH")) if p)
        self.watching = creates = Creates(self.tags)
        with self.log.open("wb") as log:
            self.launch(directory, n, (*args, "-p", "peer_bench_marker"), env, log)
            assert self.current is not None
            deadline = time.monotonic() + RUN_TIMEOUT
            while len(os.listdir(markers)) < n and self.current.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            reached = len(os.listdir(markers)) >= n
            self.kill_current()
        time.sleep(AFTER_KILL)
        creates.stop()
        present = self.present(creates)
        networks = sum(len(self.project_objects("network", p)) for p in creates.projects)
        self.cleanup(creates, freeport=label == FREEPORT)
        self.watching = None
        if not reached:
            progress(f"kill trial {label} in {directory.relative_to(PEERS)} -n {n}: not every worker reached a "
                     f"test before the run ended or timed out\n{self.tail()}")  # fmt: skip
        return KillSample(len(creates.found), len(present), sum(1 for st in present.values() if st == "running"),
                          networks, reached)  # fmt: skip

    # -- what is left, and its removal ---------------------------------------------------------------

    def present(self, creates: Creates) -> dict[str, str]:
        """The containers of `creates` that still exist: id -> state."""
        if not creates.found:
            return {}
        listing = output(["docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}"])
        states = dict(line.split(" ", 1) for line in listing.splitlines() if " " in line)
        return {cid: states[cid] for cid in creates.found if cid in states}

    def project_objects(self, kind: str, project: str) -> list[str]:
        try:
            return output(["docker", kind, "ls", "-q", "--filter", f"label={PROJECT_LABEL}={project}"]).split()
        except RuntimeError:
            return []

    def remove_projects(self, projects: set[str], freeport: bool) -> None:
        for project in sorted(projects):
            if freeport:
                quiet([FPC, "down", "-p", project], self.env)  # also frees the stack's leases
            ids = output(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}"]).split()
            if ids:
                quiet(["docker", "rm", "-fv", *ids])
            for kind in ("network", "volume"):
                objects = self.project_objects(kind, project)
                if objects:
                    quiet(["docker", kind, "rm", *objects])

    def cleanup(self, creates: Creates, freeport: bool) -> None:
        """The run's containers, its Compose projects' networks and volumes, and (freeport) its stacks
        and leases removed."""
        with shielded():
            self.projects |= creates.projects
            left = list(self.present(creates))
            if left:
                quiet(["docker", "rm", "-fv", *left])
            self.remove_projects(creates.projects, freeport)

    def sweep(self) -> None:
        """At the end, whatever is left: a run interrupted, containers of our tags created outside any
        watch, every project seen, the image tags, the freeport-compose state."""
        with shielded():
            self.kill_current()
            if self.watching is not None:
                self.watching.stop()
                self.cleanup(self.watching, freeport=True)
            try:
                listing = output(["docker", "ps", "-a", "--no-trunc", "--format",
                                  f'{{{{.ID}}}} {{{{.Image}}}} {{{{.Label "{PROJECT_LABEL}"}}}}'])  # fmt: skip
            except RuntimeError:
                listing = ""
            ours = [line.split(" ") for line in listing.splitlines() if line.split(" ")[1:2] and
                    line.split(" ")[1] in self.tags]  # fmt: skip
            if ours:
                quiet(["docker", "rm", "-fv", *[fields[0] for fields in ours]])
            self.projects |= {fields[2] for fields in ours if len(fields) > 2 and fields[2]}
            self.remove_projects(self.projects, freeport=True)
            quiet([FPC, "gc"], self.env)
            for tag in self.tags:
                quiet(["docker", "rmi", "--no-prune", tag])


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    exit_on_sigterm()
    report = Report("peers")
    rounds = 1 if args.quick else 5
    ns = (4,) if args.quick else (1, 4)
    suites = ("postgres",) if args.quick else tuple(SUITES)
    tools = [*TOOLS]
    work = Path(tempfile.mkdtemp(prefix="fpc-bench-peers-"))
    samples: dict[tuple[str, str, int], list[Sample]] = {}
    kills: dict[tuple[str, str, int], KillSample] = {}
    bench: Bench | None = None
    try:
        bench = Bench(work, args.quick)
        if not args.quick:  # one untimed run of each, for the caches
            progress("warm-up: one untimed run of each tool")
            for tool in tools:
                directory, plugin_args = TOOLS[tool]
                bench.timed(tool, PEERS / directory / suites[0], ns[0], plugin_args, 0)
        progress(f"{rounds} round(s) of {len(suites)} suite(s) x -n {'/'.join(map(str, ns))} x "
                 f"{len(tools)} tools (+ {BASELINE})")  # fmt: skip
        for rnd in range(1, rounds + 1):
            for n in ns:
                groups = [(suite, [*tools, BASELINE] if suite == suites[0] else [*tools]) for suite in suites]
                for suite, labels in groups:
                    random.shuffle(labels)
                    for label in labels:
                        if label == BASELINE:
                            key, directory, plugin_args = ("none", label, n), PEERS / "baseline", BASELINE_ARGS
                        else:
                            key = (suite, label, n)
                            directory, plugin_args = PEERS / TOOLS[label][0] / suite, TOOLS[label][1]
                        sample = bench.timed(label, directory, n, plugin_args, rnd)
                        samples.setdefault(key, []).append(sample)
                        progress(f"round {rnd}/{rounds}: {key[0]} -n {n} {label}: {sample.wall:.1f} s, "
                                 f"{sample.started} containers, exit {sample.code}")  # fmt: skip
        progress(f"kill trials: SIGKILL once every worker is in its first test, count {AFTER_KILL:g} s later")
        for suite in suites:
            for n in ns:
                for tool in tools:
                    directory, plugin_args = TOOLS[tool]
                    trial = bench.kill_trial(tool, PEERS / directory / suite, n, plugin_args)
                    kills[(suite, tool, n)] = trial
                    progress(f"kill: {suite} -n {n} {tool}: {trial.started} started, {trial.left} left "
                             f"({trial.running} running), {trial.networks} networks")  # fmt: skip
    finally:
        if bench is not None:
            bench.sweep()
        shutil.rmtree(work, ignore_errors=True)

    write_report(report, samples, kills, rounds, ns, suites)
    report.emit()
    return 0


def tool_name(tool: str) -> str:
    return {
        "pytest-docker": f"pytest-docker {version('pytest-docker')}",
        "testcontainers": f"testcontainers {version('testcontainers')} (no Ryuk)",
        FREEPORT: f"freeport-compose {version('freeport-compose')} (`freeport_stack`)",
        BASELINE: "pytest alone (8 empty tests, no service)",
    }[tool]


def write_report(report: Report, samples: dict[tuple[str, str, int], list[Sample]],
                 kills: dict[tuple[str, str, int], KillSample], rounds: int, ns: tuple[int, ...],
                 suites: tuple[str, ...]) -> None:  # fmt: skip
    rows = []

    def walls(key: tuple[str, str, int]) -> list[float]:
        return [x.wall for x in samples.get(key, []) if x.ok]

    for n in ns:
        base = samples.get(("none", BASELINE, n), [])
        ok = [x.wall for x in base if x.ok]
        spread = f"{s(min(ok))}-{s(max(ok))}" if ok else "-"
        rows.append(["-", str(n), tool_name(BASELINE), s(median(ok)) if ok else "-", spread, "-", "0",
                     str(len(base) - len(ok)), "-", "-", "-"])  # fmt: skip
    for suite in suites:
        for n in ns:
            peer_medians = {p: median(walls((suite, p, n))) for p in PEER_TOOLS if walls((suite, p, n))}
            faster = min(peer_medians, key=lambda p: peer_medians[p]) if peer_medians else None
            for tool in TOOLS:
                runs = samples.get((suite, tool, n), [])
                ok = [x for x in runs if x.ok]
                ratio: float | None = None
                if faster is not None and ok:
                    mine = {x.round: x.wall for x in ok}
                    theirs = {x.round: x.wall for x in samples[(suite, faster, n)] if x.ok}
                    common = sorted(set(mine) & set(theirs))
                    if common:
                        ratio = paired_ratio([mine[r] for r in common], [theirs[r] for r in common])
                vs = f"{ratio_text(ratio)} ({faster})" if ratio is not None else "-"
                goal, cell = "-", "-"
                if tool == FREEPORT and suite == "stack" and n == 4:
                    goal = f"<= {STACK_LIMIT:.2f}x the faster peer's"
                    measured = f"{ratio_text(ratio)} of {faster}'s wall time" if ratio is not None else "not measured"
                    cell = report.target(TITLE, f"{SUITES[suite]}, `pytest -n 4`: freeport-compose's wall time "
                                         f"{goal}", measured, ratio is not None and ratio <= STACK_LIMIT)  # fmt: skip
                ws = [x.wall for x in ok]
                floor = {x.round: x.wall for x in samples.get(("none", BASELINE, n), []) if x.ok}
                above = [x.wall - floor[x.round] for x in ok if x.round in floor]
                rows.append([SUITES[suite], str(n), tool_name(tool), s(median(ws)) if ws else "-",
                             f"{s(min(ws))}-{s(max(ws))}" if ws else "-", s(median(above)) if above else "-",
                             count_text([x.started for x in runs]), str(len(runs) - len(ok)), vs, goal,
                             cell])  # fmt: skip
    left_after = sum(x.left for runs in samples.values() for x in runs)
    report.section(
        TITLE,
        "The same eight tests in each tool's documented idiom (`benchmarks/peers/<tool>/<suite>/`), each "
        "test connecting to every service of its suite: **PostgreSQL** (the local `freeport-test-postgres:15`, "
        "data on a tmpfs; a pg8000 connection and a query per test), and **PostgreSQL + Redis + web** (also "
        "`freeport-test-redis:7`, answering a raw `PING`, and a busybox httpd fetched with urllib). "
        "**pytest-docker**: its `docker_services` fixture (`docker compose up --build --wait`, then "
        "`port_for` and `wait_until_responsive` per service), once per pytest process, so once per xdist "
        "worker; its Compose file publishes each container port on a host port Docker picks (`\"5432\"`), as a "
        "fixed `\"5432:5432\"` would clash between workers. **testcontainers**: `PostgresContainer`, "
        "`RedisContainer` and a `DockerContainer` with an `HttpWaitStrategy`, in session fixtures, so also once "
        "per worker; without a reaper image (Ryuk), which cannot be pulled here "
        "(`TESTCONTAINERS_RYUK_DISABLED=true`). **freeport-compose**: `freeport_stack` on the same Compose "
        "file with `\"5432:5432\"` (published on a leased port instead), one stack for the run shared by "
        "every worker; the Compose files have healthchecks (1 s interval), which `up --wait` waits for.",
        f"{rounds} round(s), each running every suite and `-n` once, its tools back to back in a shuffled order"
        f"{'' if rounds == 1 else ' (after one untimed warm-up run of each tool)'}. *wall s*: a whole "
        "`python -m pytest -n N` process from spawn to exit, median over the rounds (failed runs left out and "
        "counted). *s above pytest alone*: the median of each round's own difference to *pytest alone* with "
        "the same `-n` (eight empty tests, no service: what pytest and its xdist workers cost by "
        "themselves, `benchmarks/peers/baseline`). *containers started*: the container create events of "
        "the run's images (tagged for this bench alone) in `docker events`. *vs the faster peer*: the median "
        "of each round's own ratio to the peer with the lower median in that suite and `-n` (the verdict). "
        f"Containers still present after the runs ended normally: {left_after} in all.",
        table(["suite", "`-n`", "tool", "wall s", "min-max s", "s above pytest alone", "containers started",
               "runs failed", "vs the faster peer", "goal", "verdict"], rows,
              [False, True, False, True, True, True, True, True, True, False, False]),
    )  # fmt: skip

    kill_rows = []
    for suite in suites:
        for n in ns:
            for tool in TOOLS:
                trial = kills.get((suite, tool, n))
                if trial is None:
                    continue
                goal, cell = "-", "-"
                if tool == FREEPORT:
                    goal = "0 left"
                    note = "" if trial.reached else " (killed before every worker was in a test)"
                    cell = report.target(KILL_TITLE, f"{SUITES[suite]}, `pytest -n {n}` killed: freeport-compose "
                                         f"containers left after {AFTER_KILL:g} s: 0",
                                         f"{trial.left} of {trial.started}{note}", trial.left == 0)  # fmt: skip
                kill_rows.append([SUITES[suite], str(n), tool_name(tool), str(trial.started), str(trial.left),
                                  str(trial.running), str(trial.networks), "yes" if trial.reached else "**no**",
                                  goal, cell])  # fmt: skip
    report.section(
        KILL_TITLE,
        "One trial per suite, `-n` and tool: the run starts with a small plugin (`benchmarks/peers/_plugin`) "
        "whose first test in each worker writes a marker file and then waits; once every worker has written "
        "its own (so every stack the run starts is up and in use), the run's whole process group (pytest, its "
        f"xdist workers and whatever they started in it) gets SIGKILL. {AFTER_KILL:g} s later the containers "
        "the run created that still exist are counted (by id, from `docker events`), and the networks of its "
        "Compose projects. Then the bench removes all of it (and freeport-compose's leases, with `down -p`). "
        "testcontainers runs without its reaper, Ryuk, whose image cannot be pulled here (with it, Ryuk would "
        "remove a session's containers once the session's connection to it has been gone for "
        "`RYUK_RECONNECTION_TIMEOUT`, 10 s by default).",
        table(["suite", "`-n`", "tool", "containers started", f"left after {AFTER_KILL:g} s", "of them running",
               "networks left", "all workers in a test", "goal", "verdict"], kill_rows,
              [False, True, False, True, True, True, True, False, False, False]),
    )  # fmt: skip
    report.raw = {
        "rounds": rounds,
        "runs": {f"{suite}|{tool}|{n}": [asdict(x) for x in runs] for (suite, tool, n), runs in samples.items()},
        "kills": {f"{suite}|{tool}|{n}": asdict(k) for (suite, tool, n), k in kills.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
