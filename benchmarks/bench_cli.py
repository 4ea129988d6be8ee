"""Benchmark: the CPU time of whole freeport-compose commands against `python -c pass`.

Each command runs as its own process with this interpreter's console script; its CPU time (user +
system, from os.wait4) is compared with that of `python -c pass` run by the same interpreter in the
same round. Rounds run every command once, in a shuffled order; the verdict is the median over
rounds of each round's own ratio. `ports` reads a stack rendered beforehand (`render --no-check`,
which needs no engine); `get` leases one port under an owner that `release` frees right after.
Everything goes to a private FREEPORT_STATE_DIR, removed at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    Report,
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
LIMIT = 3.0  # CPU time of `get` and of `ports`, at most this many times that of `python -c pass`
TITLE = "Command start-up: CPU time against `python -c pass`"
TEMPLATE = """services:
  web:
    image: freeport-test-busybox:latest
    pull_policy: never
    ports:
      - "127.0.0.1:$<FREEPORT_web>:8080"
  api:
    image: freeport-test-busybox:latest
    pull_policy: never
    ports:
      - "127.0.0.1:$<FREEPORT_api>:8080"
  cache:
    image: freeport-test-busybox:latest
    pull_policy: never
    ports:
      - "127.0.0.1:$<FREEPORT_cache>:8080"
"""


# Runs freeport-compose's main() on argv[2:] in this process and writes, to the file named in
# argv[1], the standard-library modules imported by then that `python -c pass` had not.
_MODULES_OF = """
import sys
before = set(sys.modules)
from freeport_compose._cli import main
main(sys.argv[2:])
names = {m for m in set(sys.modules) - before if m.partition(".")[0] in sys.stdlib_module_names}
with open(sys.argv[1], "w") as f:
    f.write(", ".join(sorted(names)))
"""


def stdlib_floor(py: str, args: list[str], env: dict[str, str], work: str) -> list[str]:
    """`python -c 'import ...'` of the standard modules that the freeport-compose command line `args`
    imports beyond `python -c pass`: what the command costs before any code of ours runs."""
    listing = os.path.join(work, "modules.txt")
    baseline = output([py, "-c", "import sys; print(','.join(sys.modules))"], env).strip().split(",")
    output([py, "-c", _MODULES_OF, listing, *args], env)
    names = [m for m in Path(listing).read_text().split(", ") if m and m not in baseline]
    return [py, "-c", f"import {', '.join(names)}" if names else "pass"]


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    exit_on_sigterm()
    report = Report("cli")
    rounds = 15 if args.quick else 100
    work = tempfile.mkdtemp(prefix="fpc-bench-cli-")
    env = bench_env(os.path.join(work, "state"))
    tag = f"fpcbench-cli-{os.getpid()}"
    owner, project = f"{tag}-owner", f"{tag}-stack"
    py = sys.executable
    base = "`python -c pass`"
    get, release = "`freeport-compose get --owner X`", "`freeport-compose release --owner X`"
    ports = "`freeport-compose ports -p P`"
    commands = {
        base: [py, "-c", "pass"],
        "`python -c 'import freeport_compose'`": [py, "-c", "import freeport_compose"],
        get: [FPC, "get", "--owner", owner],
        release: [FPC, "release", "--owner", owner],
        ports: [FPC, "ports", "-p", project],
        "`freeport-compose port -p P web`": [FPC, "port", "-p", project, "web"],
    }
    try:
        template = os.path.join(work, "compose.yml")
        Path(template).write_text(TEMPLATE)
        output([FPC, "render", "-p", project, "-f", template, "--no-check"], env)
        # The floor under each target: the standard modules the command imports, and nothing of ours.
        floor_get, floor_ports = "`python -c 'import ...'`: the standard modules `get` imports", \
            "`python -c 'import ...'`: the standard modules `ports` imports"  # fmt: skip
        commands[floor_get] = stdlib_floor(py, ["get", "--owner", f"{owner}-probe"], env, work)
        quiet([FPC, "release", "--owner", f"{owner}-probe"], env)
        commands[floor_ports] = stdlib_floor(py, ["ports", "-p", project], env, work)
        goals = {get: LIMIT, ports: LIMIT}
        cpu: dict[str, list[float]] = {label: [] for label in commands}
        wall: dict[str, list[float]] = {label: [] for label in commands}
        progress(f"{rounds} rounds of {len(commands)} commands, CPU time from wait4")
        for i in range(rounds + 1):  # round 0 warms the caches and is dropped
            # `release` right after `get` (it frees what get took); the pair's place is shuffled.
            order = [[label] for label in commands if label not in (get, release)] + [[get, release]]
            random.shuffle(order)
            for group in order:
                for label in group:
                    usage = run_child(commands[label], env)
                    if i:
                        cpu[label].append(usage.cpu)
                        wall[label].append(usage.wall)
    finally:
        with shielded():
            quiet([FPC, "release", "--owner", owner], env)
            quiet([FPC, "down", "-p", project], env)
            quiet([FPC, "release", "--owner", project], env)
            shutil.rmtree(work, ignore_errors=True)

    def count(label: str) -> int:
        return len(commands[label][2].split(","))

    base_cpu = median(cpu[base])
    rows = []
    for label in commands:
        ratio = paired_ratio(cpu[label], cpu[base])
        if label in goals:
            goal, met = f"<= {goals[label]:.2f}x", ratio <= goals[label]
            cell = report.target(TITLE, f"{label}: CPU time {goal} `python -c pass`'s", ratio_text(ratio), met)
        else:
            goal, cell = "-", "-"
        rows.append([label, ms(median(cpu[label])), ms(median(wall[label])), ratio_text(ratio),
                     ratio_text(median(cpu[label]) / base_cpu), goal, cell])  # fmt: skip
    headers = ["command", "CPU ms", "wall ms", "CPU vs `python -c pass`", "ratio of the medians", "goal",
               "verdict"]  # fmt: skip
    report.section(
        TITLE,
        f"Each command is a whole process of the same interpreter (`{os.path.relpath(py)}`; "
        f"`freeport-compose` is its console script); {rounds} rounds, each running every command once in a "
        "shuffled order. CPU time: user + system of the process from `wait4`; wall time: spawn to exit, for "
        "information. Medians over the rounds; "
        "*CPU vs `python -c pass`* is the median of each round's own ratio (the verdict), the ratio of the "
        "medians is beside it. `ports` and `port` read a stack rendered beforehand (3 placeholders); "
        "`release` frees the one port `get` leased just before it. The two `import ...` rows import the "
        f"standard modules each command imports and `python -c pass` does not (`get`: {count(floor_get)}, "
        f"`ports`: {count(floor_ports)}, listed in the raw results): the floor under the command "
        "before any code of ours runs.",
        table(headers, rows, [False, True, True, True, True, False, False]),
    )
    report.raw = {
        "rounds": rounds,
        "cpu": cpu,
        "wall": wall,
        "floors": {floor_get: commands[floor_get][2], floor_ports: commands[floor_ports][2]},
    }
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
