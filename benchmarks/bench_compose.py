"""Benchmark: Compose commands through freeport-compose against docker compose itself, in wall time.

- up: `freeport-compose up` of a 3-service template against `docker compose up -d` of the same
  stack with fixed ports, each brought down (untimed) before the next;
- ps: the pass-through `freeport-compose -p P ps` against `docker compose ps` given the same project
  name, project directory and files, on a stack that is up;
- render: `freeport-compose render` of a 100-placeholder template, interpreter start included.

Rounds run each side once, in a shuffled order; a ratio's verdict is the median over rounds of each
round's own ratio, so the engine's drift over the run cancels within a round. Needs the engine,
Compose v2 and the local test image of scripts/setup.sh (never pulled). Every stack is brought down
and every lease freed at the end, also when a round fails; everything freeport writes goes to a
private FREEPORT_STATE_DIR, removed at the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    Report,
    Usage,
    bench_env,
    exit_on_sigterm,
    median,
    ms,
    output,
    paired_ratio,
    parse_args,
    progress,
    quiet,
    ratio_text,
    run_child,
    shielded,
    table,
)

FPC = str(Path(sys.executable).with_name("freeport-compose"))
IMAGE = os.environ.get("FREEPORT_TEST_IMAGE", "freeport-test-busybox:latest")
UP_LIMIT = 1.05
PS_LIMIT = 1.10
RENDER_LIMIT = 0.3  # seconds
SERVICES = ("web", "api", "cache")
SERVICE = """  {name}:
    image: {image}
    pull_policy: never
    stop_signal: SIGKILL
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/"]
    environment:
      SELF_URL: "http://127.0.0.1:{port}/"
    ports:
      - "127.0.0.1:{port}:8080"
"""
UP_TITLE = "`freeport-compose up` against `docker compose up -d`"
PS_TITLE = "Pass-through `freeport-compose -p P ps` against `docker compose ps`"
RENDER_TITLE = "`freeport-compose render` of 100 placeholders"


def stack(ports: dict[str, str]) -> str:
    return "services:\n" + "".join(SERVICE.format(name=n, image=IMAGE, port=ports[n]) for n in SERVICES)


def s(seconds: float) -> str:
    return f"{seconds:.3f}"


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        self.env = bench_env(str(work / "state"))
        tag = f"fpcbench-{os.getpid()}"
        self.plain, self.up, self.ps, self.render = (f"{tag}-{k}" for k in ("plain", "up", "ps", "render"))
        self.docker = ["docker", "compose", "--project-directory", str(work)]
        self.template = work / "template.yml"
        self.template.write_text(stack({n: f"$<FREEPORT_{n}>" for n in SERVICES}))

    def cleanup(self) -> None:
        """Every stack down and every lease freed, whatever state a failure left them in."""
        for project in (self.up, self.ps, self.render):
            quiet([FPC, "down", "-p", project], self.env)
        for project in (self.plain, self.up, self.ps, self.render):
            quiet(["docker", "compose", "-p", project, "down", "--remove-orphans"], self.env)
            quiet([FPC, "release", "--owner", project], self.env)

    def bench_up(self, report: Report) -> None:
        rounds = 3 if self.quick else 24
        progress(f"up: {rounds} rounds of plain / freeport-compose / --no-check")
        # The plain stack gets fixed ports leased for the whole run, so both sides bind free ports.
        held = output([FPC, "get", "--owner", self.plain, "-n", str(len(SERVICES))], self.env).split()
        plain_file = self.work / "plain.yml"
        plain_file.write_text(stack(dict(zip(SERVICES, held, strict=True))))
        plain = "`docker compose up -d` (the stack with fixed ports)"
        fpc = "`freeport-compose up` (lease + render + up, `compose config` check beside it)"
        fast = "`freeport-compose up --no-check`"
        usage: dict[str, list[Usage]] = {plain: [], fpc: [], fast: []}
        for i in range(rounds + 1):  # round 0 warms the caches and is dropped
            sides = list(usage)
            random.shuffle(sides)
            took = {}
            for side in sides:
                if side == plain:
                    took[side] = run_child([*self.docker, "-p", self.plain, "-f", str(plain_file), "up", "-d"],
                                           self.env)  # fmt: skip
                    run_child([*self.docker, "-p", self.plain, "-f", str(plain_file), "down"], self.env)
                else:
                    extra = ["--no-check"] if side == fast else []
                    took[side] = run_child([FPC, "up", "-d", "-p", self.up, "-f", str(self.template), *extra], self.env)
                    run_child([FPC, "down", "-p", self.up], self.env)
            if i:
                for side in sides:
                    usage[side].append(took[side])
        quiet([FPC, "release", "--owner", self.plain], self.env)
        rows = []
        base = [u.wall for u in usage[plain]]
        for label, runs in usage.items():
            wall = [u.wall for u in runs]
            ratio = paired_ratio(wall, base)
            goal, cell = "-", "-"
            if label == fpc:
                goal = f"<= {UP_LIMIT:.2f}x"
                cell = report.target(UP_TITLE, f"`freeport-compose up`: wall time {goal} `docker compose up -d`'s",
                                     ratio_text(ratio), ratio <= UP_LIMIT)  # fmt: skip
            rows.append([label, s(median(wall)), spread(wall), ms(median([u.cpu for u in runs])), ratio_text(ratio),
                         ratio_text(median(wall) / median(base)), goal, cell])  # fmt: skip
        report.section(
            UP_TITLE,
            f"A {len(SERVICES)}-service stack of the local busybox image (each an httpd on a published "
            f"loopback port); {rounds} rounds, each running the three sides once in a shuffled order, each "
            "side's stack brought down again (untimed) before the next. Wall time from spawn to exit; CPU "
            "time of the command and every process it waited for (`wait4`), for information. *vs plain* "
            "is the median of each round's own ratio (the verdict); the ratio of the medians is beside it.",
            table(["command", "wall s", "min-max s", "CPU ms", "vs plain", "ratio of the medians", "goal",
                   "verdict"], rows, [False, True, True, True, True, True, False, False]),
        )  # fmt: skip
        report.raw["up"] = {label: [u.__dict__ for u in runs] for label, runs in usage.items()}

    def bench_ps(self, report: Report) -> None:
        rounds = 10 if self.quick else 60
        progress(f"ps: {rounds} rounds of freeport-compose -p P ps / docker compose ps")
        run_child([FPC, "up", "-d", "-p", self.ps, "-f", str(self.template), "--no-check"], self.env)
        # The project directory and files of the stack as Compose recorded them on its containers.
        ids = output(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.ps}"]).split()
        labels = json.loads(output(["docker", "inspect", "--format", "{{json .Config.Labels}}", ids[0]]))
        files = labels["com.docker.compose.project.config_files"].split(",")
        directory = labels["com.docker.compose.project.working_dir"]
        head = ["docker", "compose", "--project-name", self.ps, "--project-directory", directory]
        for f in files:
            head += ["--file", f]
        plain = "`docker compose -p P --project-directory D -f F ps`"
        fpc = "`freeport-compose -p P ps`"
        floor = "`python -c 'os.execvp(...)'` of the same `docker compose ... ps`"
        commands = {
            plain: [*head, "ps"],
            fpc: [FPC, "-p", self.ps, "ps"],
            # Any Python front end's floor: the interpreter's start, then Compose itself.
            floor: [sys.executable, "-c", "import os, sys; os.execvp(sys.argv[1], sys.argv[1:])", *head, "ps"],
        }
        # All must answer the same: the stack's containers.
        listed = {label: sorted(output([*cmd, "-q"], self.env).split()) for label, cmd in commands.items()}
        if not listed[plain] == listed[fpc] == listed[floor] or len(listed[fpc]) != len(SERVICES):
            raise RuntimeError(f"ps: the two commands list different containers: {listed}")
        usage: dict[str, list[Usage]] = {label: [] for label in commands}
        for i in range(rounds + 1):  # round 0 warms the caches and is dropped
            order = list(commands)
            random.shuffle(order)
            took = {label: run_child(commands[label], self.env) for label in order}
            if i:
                for label in commands:
                    usage[label].append(took[label])
        run_child([FPC, "down", "-p", self.ps], self.env)
        base = [u.wall for u in usage[plain]]
        rows = []
        for label, runs in usage.items():
            wall = [u.wall for u in runs]
            ratio = paired_ratio(wall, base)
            goal, cell = "-", "-"
            if label == fpc:
                goal = f"<= {PS_LIMIT:.2f}x"
                cell = report.target(PS_TITLE, f"`freeport-compose -p P ps`: wall time {goal} `docker compose ps`'s",
                                     ratio_text(ratio), ratio <= PS_LIMIT)  # fmt: skip
            rows.append([label, ms(median(wall)), f"{ms(min(wall))}-{ms(max(wall))}", ms(median([u.cpu for u in runs])),
                         ratio_text(ratio), ratio_text(median(wall) / median(base)), goal, cell])  # fmt: skip
        report.section(
            PS_TITLE,
            f"The {len(SERVICES)}-service stack up (`freeport-compose up`); `docker compose` is given the "
            "project name, project directory and files Compose recorded on the stack's containers, which "
            "is what the pass-through runs (all list the same containers, checked first). The last row is "
            "a Python process that does nothing but exec that `docker compose ps`: the floor of any front "
            f"end written in Python. {rounds} rounds, each running every command once in a shuffled order. "
            "Wall time from spawn to exit; CPU "
            "time of the command and every process it waited for, for information. *vs plain* is the median "
            "of each round's own ratio (the verdict); the ratio of the medians is beside it.",
            table(["command", "wall ms", "min-max ms", "CPU ms", "vs plain", "ratio of the medians", "goal",
                   "verdict"], rows, [False, True, True, True, True, True, False, False]),
        )  # fmt: skip
        report.raw["ps"] = {label: [u.__dict__ for u in runs] for label, runs in usage.items()}

    def bench_render(self, report: Report) -> None:
        rounds = 5 if self.quick else 30
        progress(f"render: {rounds} rounds of a 100-placeholder template, with and without the check")
        big = self.work / "big.yml"
        lines = ["services:", "  app:", f"    image: {IMAGE}", "    pull_policy: never", "    ports:"]
        lines += [f'      - "127.0.0.1:$<FREEPORT_{i}>:{10000 + i}"' for i in range(1, 101)]
        big.write_text("\n".join(lines) + "\n")
        out = self.work / "rendered.yml"
        fast = "`freeport-compose render`, `--no-check`"
        checked = "`freeport-compose render`, with the `compose config` check"
        sides = {fast: ["--no-check"], checked: []}
        usage: dict[str, list[Usage]] = {label: [] for label in sides}
        for i in range(rounds + 1):  # round 0 warms the caches and is dropped
            order = list(sides)
            random.shuffle(order)
            for label in order:
                cmd = [FPC, "render", "-p", self.render, "-f", str(big), "-o", str(out), *sides[label]]
                took = run_child(cmd, self.env)
                run_child([FPC, "release", "--owner", self.render], self.env)
                if i:
                    usage[label].append(took)
        rows = []
        for label, runs in usage.items():
            wall = [u.wall for u in runs]
            goal, cell = "-", "-"
            if label == fast:
                goal = f"<= {RENDER_LIMIT:.3f} s"
                cell = report.target(RENDER_TITLE, f"`render --no-check` of 100 placeholders: wall time {goal}",
                                     f"{median(wall):.3f} s", median(wall) <= RENDER_LIMIT)  # fmt: skip
            rows.append([label, s(median(wall)), spread(wall), ms(median([u.cpu for u in runs])), goal, cell])
        report.section(
            RENDER_TITLE,
            "One service publishing 100 ports, each a placeholder: lease 100 ports and write the concrete "
            f"file, interpreter start included. {rounds} rounds, each running both once in a shuffled order, "
            "the leases freed (untimed) after each. Wall time from spawn to exit (the goal); CPU time of "
            "the command and every process it waited for, for information.",
            table(["command", "wall s", "min-max s", "CPU ms", "goal", "verdict"], rows,
                  [False, True, True, True, False, False]),
        )  # fmt: skip
        report.raw["render"] = {label: [u.__dict__ for u in runs] for label, runs in usage.items()}


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    exit_on_sigterm()
    report = Report("compose")
    if quiet(["docker", "image", "inspect", IMAGE]) != 0:
        progress(f"no local image {IMAGE} (or no engine answers): run scripts/setup.sh")
        return 1
    work = Path(tempfile.mkdtemp(prefix="fpc-bench-compose-"))
    bench = Bench(work, args.quick)
    try:
        bench.bench_up(report)
        bench.bench_ps(report)
        bench.bench_render(report)
    finally:
        with shielded():
            bench.cleanup()
            shutil.rmtree(work, ignore_errors=True)
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
