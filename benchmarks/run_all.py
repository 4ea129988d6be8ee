"""Run every benchmarks/bench_*.py with this interpreter and write docs/benchmarks.md from their reports.

Each bench script prints one JSON report on stdout (see _common.py; its progress on stderr is passed
through): sections, each one benchmark's table with the goal beside each figure, its targets, and
its raw samples. This script writes them as one Markdown page with the date, the machine and its load
and a summary of every target: docs/benchmarks.md for a full run, benchmarks/results/benchmarks-quick.md
for `--quick` (fewer rounds in every script; docs/benchmarks.md is left alone). The raw samples go
to benchmarks/results/<script>.json. Exits non-zero if any script fails; the others are still written.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"
QUICK_DOC = RESULTS / "benchmarks-quick.md"
FIRST = ("bench_cli.py", "bench_compose.py")  # the start-up figures first, while the machine is quietest


def src_state() -> dict[str, float]:
    """Modification time of every source file of the package."""
    return {str(p): p.stat().st_mtime for p in SRC.rglob("*.py")}


def run(script: Path, quick: bool) -> tuple[int, str, list[str], float]:
    """(exit code, stdout, last lines of stderr, seconds) of one bench script; its stderr is passed on."""
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    print(f"[run_all] {script.name}{' --quick' if quick else ''}", file=sys.stderr, flush=True)
    tail: deque[str] = deque(maxlen=15)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip("\n"))

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: the script cleans up on SIGTERM (stacks down, leases freed)
            proc.terminate()
            try:
                proc.wait(180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    relay_thread.join(5)
    return code, out, list(tail), time.perf_counter() - t0


# -- the machine --------------------------------------------------------------------------------------


def first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout.strip().splitlines() or ["?"])[0] if done.returncode == 0 else "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or platform.machine()


def memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "?"


def filesystem(path: str) -> str:
    """The type of the filesystem `path` is on (from /proc/self/mounts)."""
    best, kind = "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                mount = fields[1]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except (OSError, IndexError):
        pass
    return kind


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tmp = tempfile.gettempdir()
    engine = first_line(["docker", "version", "--format", "{{.Server.Version}}"])
    compose = first_line(["docker", "compose", "version", "--short"])
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return (f"{cores} cores ({cpu_model()}), {memory_gib()} RAM, {platform.system()} {platform.release()}; "
            f"{python} (`{os.path.relpath(sys.executable, ROOT)}`); "
            f"Docker Engine {engine}, Compose {compose}; state dirs in `{tmp}` ({filesystem(tmp)})")  # fmt: skip


# -- the page -----------------------------------------------------------------------------------------


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def page(reports: list[dict[str, Any]], failures: list[str], head: dict[str, str]) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Written by `{head['command']}` (`benchmarks/run_all.py`) on {head['date']}, in {head['took']}; "
        "not edited by hand.",
        "",
        f"- **Machine**: {head['machine']}.",
        f"- **Load** (1-minute average, the benches' own processes included): {head['load']}; anything else "
        "running on the machine slows the commands measured.",
        "- **Method**: every figure is a median over the rounds of this run. Sides compared with each other "
        "run in the same rounds, back to back in a shuffled order, and a ratio is the median of the rounds' "
        "own ratios unless its table says otherwise, so the machine's drift cancels. A "
        "target not met says so with its figure. The raw samples of the last run are in "
        "`benchmarks/results/` (not committed).",
        "",
    ]
    if head.get("src_changed"):
        out += [f"**`src/` changed while {head['src_changed']} ran**: those figures may mix two versions of the "
                "code.", ""]  # fmt: skip
    rows = []
    for report in reports:
        for t in report["targets"]:
            met = "met" if t["met"] else "**not met**"
            rows.append(f"| [{t['benchmark']}](#{anchor(t['benchmark'])}) | {t['goal']} | {t['measured']} | {met} |")
    rows += [f"| {name} | - | FAILED | **not measured** |" for name in failures]
    out += ["## Targets", "", "| benchmark | goal | measured | verdict |", "|---|---|---|---|", *rows, ""]
    for report in reports:
        load = report["load"]
        for i, section in enumerate(report["sections"]):
            out += [f"## {section['title']}", ""]
            if i == 0:
                out += [f"`benchmarks/bench_{report['name']}.py`: {minutes(report['seconds'])}, load "
                        f"{load[0]:.2f} at its start and {load[1]:.2f} at its end.", ""]  # fmt: skip
            out += [section["text"], ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"fewer rounds; written to {QUICK_DOC.relative_to(ROOT)}")
    parser.add_argument("--output", type=Path, help=f"the page to write (default: {DOC.relative_to(ROOT)}, "
                        f"or {QUICK_DOC.relative_to(ROOT)} with --quick)")  # fmt: skip
    args = parser.parse_args()
    target = args.output or (QUICK_DOC if args.quick else DOC)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    order = {name: i for i, name in enumerate(FIRST)}
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (order.get(p.name, len(FIRST)), p.name))
    if not scripts:
        print(f"[run_all] no bench_*.py in {HERE}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    reports: list[dict[str, Any]] = []
    failed: list[str] = []
    changed: list[str] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        # Compiled first, as an installed package is: with $PYTHONDONTWRITEBYTECODE set every command
        # would otherwise compile what changed since its .pyc was written, and the benches would time
        # the compiler. Again before every script: others may be editing src/ meanwhile.
        compileall.compile_dir(str(SRC), quiet=1)
        before = src_state()
        code, out, tail, seconds = run(script, args.quick)
        if src_state() != before:
            changed.append(script.name)
        try:
            report = json.loads(out) if code == 0 else None
        except json.JSONDecodeError:
            report, code = None, -1
        if report is None:
            failed.append(script.name)
            print(f"[run_all] {script.name}: FAILED with exit {code} after {seconds:.0f} s", file=sys.stderr)
            (RESULTS / f"{script.stem}{'-quick' if args.quick else ''}.failed.txt").write_text(
                f"exit {code} after {seconds:.0f} s\n\nstdout:\n{out}\n\nlast lines of stderr:\n" + "\n".join(tail))
            continue
        print(f"[run_all] {script.name}: ok in {seconds:.0f} s", file=sys.stderr, flush=True)
        (RESULTS / f"{script.stem}{'-quick' if args.quick else ''}.failed.txt").unlink(missing_ok=True)
        raw = {"script": script.name, "quick": args.quick, "seconds": report["seconds"], "load": report["load"],
               "targets": report["targets"], "raw": report.pop("raw")}  # fmt: skip
        (RESULTS / f"{script.stem}{'-quick' if args.quick else ''}.json").write_text(json.dumps(raw))
        reports.append(report)

    head = {
        "command": "make bench-quick" if args.quick else "make bench",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "took": minutes(time.perf_counter() - t0),
        "machine": machine(),
        "load": f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
        "src_changed": ", ".join(changed),
    }
    text = page(reports, failed, head)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"[run_all] wrote {target} ({head['took']})", file=sys.stderr)
    if failed:
        print(f"[run_all] failed: {', '.join(failed)} (see {RESULTS.relative_to(ROOT)}/*.failed.txt)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("[run_all] interrupted; nothing written", file=sys.stderr)
        sys.exit(130)
