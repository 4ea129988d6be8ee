"""Run every benchmarks/bench_*.py (sorted) with this interpreter and collect their Markdown sections.

Each bench script prints one Markdown section on stdout (progress on stderr, passed through). The
sections are printed together and written to benchmarks/results/RESULTS.md. `--quick` is passed on
to every script. Exits non-zero if any script fails; the sections that did succeed are still written.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "RESULTS.md"


def run(script: Path, quick: bool) -> tuple[int, str, float]:
    """(exit code, stdout, seconds) of one bench script."""
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    print(f"[run_all] {script.name}{' --quick' if quick else ''}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=HERE.parent, stdout=subprocess.PIPE, text=True, check=False)
    return done.returncode, done.stdout, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions in every bench script")
    args = parser.parse_args()

    scripts = sorted(HERE.glob("bench_*.py"))
    # Compiled first, as an installed package is: with $PYTHONDONTWRITEBYTECODE set (as on this
    # project's CI machine) every command of the benches would otherwise recompile whatever changed
    # since its .pyc was written, and the start-up rows would time the compiler (~10 ms a command).
    compileall.compile_dir(str(HERE.parent / "src"), quiet=1)
    if not scripts:
        print(f"[run_all] no bench_*.py in {HERE}", file=sys.stderr)
        return 1
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = " --quick" if args.quick else ""
    sections = ["# Benchmarks", "", f"`benchmarks/run_all.py{mode}`, {now}.", ""]
    failed: list[str] = []
    for script in scripts:
        code, out, seconds = run(script, args.quick)
        if code == 0:
            sections += [out.strip(), ""]
            print(f"[run_all] {script.name}: ok in {seconds:.0f} s", file=sys.stderr, flush=True)
        else:
            failed.append(script.name)
            sections += [f"## {script.name}: FAILED (exit {code} after {seconds:.0f} s)", ""]
            if out.strip():
                sections += ["Its output before it failed:", "", "```", out.strip(), "```", ""]
            print(f"[run_all] {script.name}: FAILED with exit {code}", file=sys.stderr, flush=True)

    text = "\n".join(sections)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"[run_all] wrote {RESULTS}", file=sys.stderr)
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
