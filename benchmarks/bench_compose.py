"""Benchmark: `freeport-compose up` against plain `docker compose up -d` of the same stack, and
`render` of a 100-placeholder template including interpreter start. Prints a Markdown section.

Needs the engine, Compose v2 and the test image of scripts/setup.sh.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FPC = str(Path(sys.executable).with_name("freeport-compose"))
IMAGE = os.environ.get("FREEPORT_TEST_IMAGE", "freeport-test-busybox:latest")
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


def stack(ports: dict[str, str]) -> str:
    body = "".join(SERVICE.format(name=n, image=IMAGE, port=ports[n]) for n in SERVICES)
    return "services:\n" + body


RSS: dict[str, list[int]] = {}  # max RSS in KiB per command label, from GNU time (%M)


def timed(cmd: list[str], env: dict[str, str], rss_label: str | None = None) -> float:
    """Wall seconds of cmd; with rss_label, run through GNU time and keep its max RSS (the largest
    process of the command's tree, docker compose included; a child's ru_maxrss would count this
    bench's own memory, which it was forked from)."""
    measure = rss_label is not None and os.path.exists("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r") as rss_file:
        prefix = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] if measure else []
        start = time.perf_counter()
        subprocess.run([*prefix, *cmd], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took = time.perf_counter() - start
        if measure and rss_label is not None:
            RSS.setdefault(rss_label, []).append(int(rss_file.read().split()[-1]))
    return took


def quiet(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def main() -> int:
    quick = "--quick" in sys.argv
    rounds = 4 if quick else 24
    work = Path(tempfile.mkdtemp(prefix="fpc-bench-"))
    state = work / "state"
    env = {**os.environ, "FREEPORT_STATE_DIR": str(state)}
    try:
        template = work / "template.yml"
        template.write_text(stack({n: f"$<FREEPORT_{n}>" for n in SERVICES}))
        # The plain stack gets fixed ports leased for the whole run, so both sides bind free ports.
        held = subprocess.run([FPC, "get", "--owner", "bench-plain", "-n", str(len(SERVICES))],
                              env=env, capture_output=True, text=True, check=True).stdout.split()
        plain = work / "plain.yml"
        plain.write_text(stack(dict(zip(SERVICES, held, strict=True))))
        docker = ["docker", "compose", "--project-directory", str(work)]
        plain_times, fpc_times, fast_times = [], [], []
        for i in range(rounds + 1):  # round 0 warms caches and is dropped
            sides = ["plain", "fpc", "fast"]
            random.shuffle(sides)  # so that drift and warm caches favour no side
            took = {}
            for side in sides:
                if side == "plain":
                    took[side] = timed([*docker, "-p", "bench-plain", "-f", str(plain), "up", "-d"], env, side)
                    quiet([*docker, "-p", "bench-plain", "-f", str(plain), "down"], env)
                else:
                    extra = ["--no-check"] if side == "fast" else []
                    took[side] = timed([FPC, "up", "-p", "bench-fpc", "-f", str(template), *extra], env, side)
                    quiet([FPC, "down", "-p", "bench-fpc"], env)
            if i:
                plain_times.append(took["plain"])
                fpc_times.append(took["fpc"])
                fast_times.append(took["fast"])
        quiet([FPC, "release", "--owner", "bench-plain"], env)

        # ports and port, whole processes, against `python -c pass`: a rendered stack is what they read.
        quiet([FPC, "render", "-p", "bench-ports", "-f", str(template), "--no-check"], env)
        lookups = {
            "`python -c pass`": [sys.executable, "-c", "pass"],
            "`freeport-compose ports -p P`": [FPC, "ports", "-p", "bench-ports"],
            "`freeport-compose port -p P web`": [FPC, "port", "-p", "bench-ports", "web"],
        }
        lookup_times: dict[str, list[float]] = {label: [] for label in lookups}
        for i in range(rounds * 2 + 1):
            for label, cmd in lookups.items():  # interleaved: drift hits each alike
                t = timed(cmd, env)
                if i:
                    lookup_times[label].append(t)
        quiet([FPC, "down", "-p", "bench-ports"], env)

        big = work / "big.yml"
        lines = ["services:", "  app:", f"    image: {IMAGE}", "    pull_policy: never", "    ports:"]
        lines += [f'      - "127.0.0.1:$<FREEPORT_{i}>:{10000 + i}"' for i in range(1, 101)]
        big.write_text("\n".join(lines) + "\n")
        render_times: dict[str, list[float]] = {"--no-check": [], "with `compose config` check": []}
        for i in range(rounds * 2 + 1):
            for label, extra in (("--no-check", ["--no-check"]), ("with `compose config` check", [])):
                out = work / "rendered.yml"
                t = timed([FPC, "render", "-p", "bench-render", "-f", str(big), "-o", str(out), *extra], env)
                quiet([FPC, "release", "--owner", "bench-render"], env)
                if i:
                    render_times[label].append(t)
    finally:
        quiet(["docker", "compose", "-p", "bench-plain", "down"], env)
        quiet(["docker", "compose", "-p", "bench-fpc", "down"], env)
        shutil.rmtree(work, ignore_errors=True)

    med_plain = statistics.median(plain_times)
    # The verdict: the median of each round's own ratio. A round runs the three sides back to back (in
    # a shuffled order), so the engine's drift over the run (its up times spread over +-20% here)
    # cancels within a round instead of landing on whichever side's median it happens to hit.
    ratio = statistics.median(f / p for f, p in zip(fpc_times, plain_times, strict=True))
    ratio_of_medians = statistics.median(fpc_times) / med_plain
    print("## Compose\n")
    print(f"{len(SERVICES)}-service stack, {rounds} rounds, medians of wall time; {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}. Max RSS: the largest process of the command's tree (GNU time's "
          "%M; docker compose's own included), over the rounds.\n")
    print("| command | median | min | max | max RSS |")
    print("|---|---|---|---|---|")
    for label, side, times in (
            ("`docker compose up -d` (fixed ports)", "plain", plain_times),
            ("`freeport-compose up` (lease + render + up, with the config check beside it)", "fpc", fpc_times),
            ("`freeport-compose up --no-check`", "fast", fast_times)):
        rss = f"{max(RSS[side]) / 1024:.1f} MiB" if side in RSS else "-"
        print(f"| {label} | {statistics.median(times):.3f} s | {min(times):.3f} s | {max(times):.3f} s | {rss} |")
    for label, times in render_times.items():
        print(f"| `freeport-compose render` 100 placeholders, {label} | {statistics.median(times):.3f} s "
              f"| {min(times):.3f} s | {max(times):.3f} s | - |")
    render_med = statistics.median(render_times["--no-check"])
    fast = statistics.median(f / p for f, p in zip(fast_times, plain_times, strict=True))
    print(f"\n- up / plain, median of the rounds' ratios: **{ratio:.2f}x** (target <= 1.05x): "
          f"{'met' if ratio <= 1.05 else 'NOT met'}; ratio of the medians {ratio_of_medians:.2f}x; "
          f"with --no-check: {fast:.2f}x")
    print(f"- render of 100 placeholders incl. interpreter start: **{render_med:.3f} s** (target <= 0.3 s): "
          f"{'met' if render_med <= 0.3 else 'NOT met'}\n")
    base = statistics.median(lookup_times["`python -c pass`"])
    print(f"Reading a stack's ports, whole processes ({rounds * 2} each, interleaved, medians):\n")
    print("| command | ms | vs python -c pass |")
    print("|---|---:|---:|")
    for label, times in lookup_times.items():
        print(f"| {label} | {statistics.median(times) * 1e3:.1f} | {statistics.median(times) / base:.2f}x |")
    worst = max(statistics.median(t) / base for label, t in lookup_times.items() if "freeport" in label)
    print(f"\n- ports and port: at most **{worst:.2f}x** `python -c pass` (target <= 2.5x): "
          f"{'met' if worst <= 2.5 else 'NOT met'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
