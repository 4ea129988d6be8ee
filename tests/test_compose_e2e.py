"""End-to-end tests of the `freeport-compose` CLI on a real Docker engine with real Compose v2.

Every stack runs the local image freeport-test-busybox:latest (built by scripts/setup.sh; nothing
is pulled) as `busybox httpd`, serving a body that names the port the stack was rendered with, so
an HTTP answer on a leased port proves that this very stack is bound there. Effects are checked
from outside: `docker ps`/`docker inspect`, HTTP requests to 127.0.0.1 and `freeport-compose ls
--json`. Each test uses its own projects (fpc-e2e-<random>) and its own state dir (conftest), and
removes whatever it started in a finally block, even when freeport-compose itself misbehaved.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    CLI_TIMEOUT,
    COMPOSE_STATUS,
    FPC,
    IMAGE,
    SLEEPER,
    Footprint,
    assert_error,
    assert_nothing_left,
    containers,
    docker,
    exits,
    fpc,
    http_get,
    leases_of,
    ls_json,
    ok,
    parse_dotenv,
    pid_gone,
    refused,
    spawn_cli,
    wait_for,
)
from freeport_compose._error import ExitCode

pytestmark = pytest.mark.usefixtures("docker_engine")  # conftest: skips the module without Docker

# One test's footprint (_docker.Footprint): every container it starts is labelled fpc.e2e=<its token>,
# every project it names is fpc-e2e-<random>; its services serve $BODY (_docker.HTTPD), so the
# environment value reaches the container and HTTP shows it.
E2E = Footprint


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def inspect(container: str) -> dict[str, Any]:
    result = docker("inspect", container)
    assert result.returncode == 0, result.stderr
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data[0]


def service_container(project: str, service: str) -> dict[str, Any]:
    found = [c for c in map(inspect, containers(project))
             if c["Config"]["Labels"].get("com.docker.compose.service") == service]
    assert len(found) == 1, f"{project}: {len(found)} containers of service {service}"
    return found[0]


def published(container: dict[str, Any], port: str) -> set[int]:
    """Host ports the engine actually bound for container port `port` ("80/tcp")."""
    bindings = container["NetworkSettings"]["Ports"].get(port) or []
    return {int(b["HostPort"]) for b in bindings}


def free_fixed_ports(n: int) -> list[int]:
    """n ports free right now inside the kernel's ephemeral range, which the allocator never hands
    out, so a base file's fixed ports cannot collide with a leased one."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(lo, hi)
        if port in found:
            continue
        try:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        found.append(port)
    return found


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    with Footprint(tmp_path, "fpc.e2e", "fpc-e2e") as footprint:  # cleanup() at the end, whatever happened
        yield footprint


def web_template(e2e: E2E, name: str = "compose.yml") -> str:
    """Test 1's template: FREEPORT_1 in `ports:` and in an environment value, FREEPORT_web in a label."""
    return e2e.compose_file(name, e2e.service(
        "web",
        ports=["$<FREEPORT_1>:80"],
        body="web $<FREEPORT_1>",
        env={"FPC_URL": "http://127.0.0.1:$<FREEPORT_1>/"},
        labels={"fpc.e2e.web": "$<FREEPORT_web>"},
    ))


# --------------------------------------------------------------------------------------------
# 1. up / ports / port / down
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_up_ports_port_down(e2e: E2E) -> None:
    template = web_template(e2e)
    project = e2e.project()
    up = ok(fpc("up", "-d", "-f", template, "-p", project))
    printed = parse_dotenv(up.stdout)
    assert list(printed) == ["FREEPORT_1", "FREEPORT_web"]
    n, m = printed["FREEPORT_1"], printed["FREEPORT_web"]
    assert n != m

    web = service_container(project, "web")
    assert web["State"]["Running"]
    assert published(web, "80/tcp") == {n}
    assert f"FPC_URL=http://127.0.0.1:{n}/" in web["Config"]["Env"]
    assert web["Config"]["Labels"]["fpc.e2e.web"] == str(m)
    assert http_get(n) == (200, f"web {n}\n")

    ports = ok(fpc("ports", "-p", project, "--format", "json"))
    assert json.loads(ports.stdout) == {"FREEPORT_1": n, "FREEPORT_web": m}
    assert ports.stdout == f'{{"FREEPORT_1": {n}, "FREEPORT_web": {m}}}\n'
    assert ok(fpc("port", "-p", project, "web")).stdout == f"{m}\n"
    assert ok(fpc("port", "-p", project, "FREEPORT_1")).stdout == f"{n}\n"
    assert leases_of(project) == {"FREEPORT_1": n, "FREEPORT_web": m}
    [stack] = ls_json()["stacks"]
    assert (stack["project"], stack["status"], stack["ports"], stack["containers"]) == (
        project, "up", {"FREEPORT_1": n, "FREEPORT_web": m}, 1)

    down = ok(fpc("down", "-p", project))
    assert down.stderr.splitlines()[-1] == f"freeport-compose: project {project} is down; its ports are free"
    assert_nothing_left(project)
    assert ls_json()["leases"] == []
    assert ls_json()["stacks"] == []
    assert refused(n)


# --------------------------------------------------------------------------------------------
# 2. two stacks from one template, started at the same moment
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_two_stacks_from_one_template_concurrently(e2e: E2E) -> None:
    template = web_template(e2e)
    projects = [e2e.project(), e2e.project()]
    start_at = time.time() + 0.5  # both exec the CLI at this instant, whatever Popen's own latency
    gate = ("import os, sys, time; time.sleep(max(0.0, float(sys.argv[1]) - time.time())); "
            "os.execv(sys.argv[2], sys.argv[2:])")
    procs = [
        subprocess.Popen([sys.executable, "-c", gate, str(start_at), FPC, "up", "-d", "-f", template, "-p", p],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for p in projects
    ]
    outputs = [proc.communicate(timeout=CLI_TIMEOUT) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    leased = [parse_dotenv(out) for out, _ in outputs]
    every_port = [port for ports in leased for port in ports.values()]
    assert len(set(every_port)) == 4, leased

    for project, ports in zip(projects, leased, strict=True):
        assert leases_of(project) == ports
        web = service_container(project, "web")
        assert web["State"]["Running"]
        assert published(web, "80/tcp") == {ports["FREEPORT_1"]}
        assert http_get(ports["FREEPORT_1"]) == (200, f"web {ports['FREEPORT_1']}\n")

    for project in projects:
        ok(fpc("down", "-p", project))
    assert_nothing_left(*projects)
    assert ls_json()["leases"] == []


# --------------------------------------------------------------------------------------------
# 3. a base file's fixed binding of the same container port is replaced (!override)
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_base_binding_replaced_by_leased_one(e2e: E2E) -> None:
    fixed, other = free_fixed_ports(2)
    base = e2e.compose_file("base.yml", e2e.service("web", ports=[f"{fixed}:80", f"{other}:81"], body="base"))
    overlay = e2e.tmp / "leased.yml"
    overlay.write_text('services:\n  web:\n    environment:\n      BODY: "leased $<FREEPORT_web>"\n'
                       '    ports:\n      - "$<FREEPORT_web>:80"\n')
    project = e2e.project()
    try:
        up = ok(fpc("up", "-d", "-f", base, "-f", str(overlay), "-p", project))
        port = parse_dotenv(up.stdout)["FREEPORT_web"]
        web = service_container(project, "web")
        assert published(web, "80/tcp") == {port}  # the base's fixed port is gone, not added beside
        assert published(web, "81/tcp") == {other}  # the base's other binding stays
        bound = {k: {int(b["HostPort"]) for b in v} for k, v in web["HostConfig"]["PortBindings"].items()}
        assert bound == {"80/tcp": {port}, "81/tcp": {other}}
        docker_port = docker("port", web["Id"], "80/tcp").stdout
        assert f":{port}" in docker_port
        assert f":{fixed}" not in docker_port
        assert http_get(port) == (200, f"leased {port}\n")
        assert refused(fixed)
    finally:
        ok(fpc("down", "-p", project))
    assert_nothing_left(project)


# --------------------------------------------------------------------------------------------
# 4. run: FREEPORT_* reach the command, its exit code is ours, nothing is left; SIGTERM
# --------------------------------------------------------------------------------------------

RUN_PROBE = r"""
import http.client, json, os, sys, time, urllib.error, urllib.request
port = os.environ["FREEPORT_web"]
status, body = None, ""
for _ in range(60):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            status, body = r.status, r.read().decode()
        break
    except urllib.error.HTTPError as e:
        status = e.code
        break
    except (OSError, http.client.HTTPException):
        time.sleep(0.1)
env = {k: v for k, v in os.environ.items() if k.startswith("FREEPORT_") and k != "FREEPORT_STATE_DIR"}
env["COMPOSE_PROJECT_NAME"] = os.environ.get("COMPOSE_PROJECT_NAME")
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "body": body, "env": env}, f)
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.docker
@pytest.mark.parametrize("code", [0, 7])
def test_run_passes_ports_and_exit_code(e2e: E2E, code: int) -> None:
    template = e2e.compose_file("compose.yml", e2e.service("web", ports=["$<FREEPORT_web>:80"],
                                                            body="run $<FREEPORT_web>"))
    project = e2e.project()
    report = e2e.tmp / "report.json"
    exits(fpc("run", "-f", template, "-p", project, "--", sys.executable, "-c", RUN_PROBE, str(report), str(code)),
          code)
    seen = json.loads(report.read_text())
    port = int(seen["env"]["FREEPORT_web"])
    assert seen["env"] == {"FREEPORT_web": str(port), "FREEPORT_web_HOST": "127.0.0.1", "COMPOSE_PROJECT_NAME": project}
    assert (seen["status"], seen["body"]) == (200, f"run {port}\n")
    assert_nothing_left(project)
    assert ls_json() == {"state_dir": ls_json()["state_dir"], "leases": [], "stacks": []}
    assert refused(port)


@pytest.mark.docker
def test_run_sigterm_brings_stack_down(e2e: E2E) -> None:
    template = e2e.compose_file("compose.yml", e2e.service("web", ports=["$<FREEPORT_web>:80"],
                                                            body="run $<FREEPORT_web>"))
    project = e2e.project()
    marker = e2e.tmp / "started"
    proc = spawn_cli("run", "-f", template, "-p", project, "--", sys.executable, "-c", SLEEPER, str(marker))
    try:
        wait_for("the command to start", marker.exists, proc)  # fails with run's stderr if run exits first
        child = int(marker.read_text())
        [port] = leases_of(project).values()
        assert len(containers(project, running=True)) == 1
        assert http_get(port)[0] == 200

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # the command dies at once; down takes about a second
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, err
    assert proc.returncode == 128 + signal.SIGTERM, err  # the command died of SIGTERM: 143
    assert "Traceback" not in err
    assert pid_gone(child), "the command outlived run"
    assert_nothing_left(project)
    assert ls_json()["leases"] == []


# --------------------------------------------------------------------------------------------
# 5. a failing `up` leaves nothing behind
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize("broken", ["missing-image", "bad-command"])
def test_failing_up_leaves_nothing(e2e: E2E, broken: str) -> None:
    web = e2e.service("web", ports=["$<FREEPORT_1>:80"])
    if broken == "missing-image":
        bad = e2e.service("bad", ports=["$<FREEPORT_2>:80"], image=f"freeport-test-nosuch-{e2e.token}:latest")
    else:
        bad = e2e.service("bad", ports=["$<FREEPORT_2>:80"], command=["/no/such/binary"])
    # Healthy services beside the broken one: when it fails, Compose gives up while the engine may
    # still be creating theirs, and those containers must not outlive the failed `up` either.
    sidecars = [e2e.service(f"side{i}") for i in range(6)]
    template = e2e.compose_file("compose.yml", web, *sidecars, bad)
    project = e2e.project()
    line = assert_error(fpc("up", "-d", "-f", template, "-p", project), COMPOSE_STATUS, "docker compose up failed: ")
    assert ("No such image" in line) if broken == "missing-image" else ("/no/such/binary" in line)
    assert_nothing_left(project, label=e2e.label)  # containers (also by the test's label) and networks
    assert ls_json()["leases"] == []
    assert ls_json()["stacks"] == []


# --------------------------------------------------------------------------------------------
# 6. a leased port taken outside freeport-compose: re-leased and retried
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_port_clash_is_retried_on_new_port(e2e: E2E) -> None:
    template = e2e.compose_file("compose.yml", e2e.service("web", ports=["$<FREEPORT_1>:80"],
                                                            body="web $<FREEPORT_1>"))
    project = e2e.project()
    ok(fpc("render", "-f", template, "-p", project))
    taken = leases_of(project)["FREEPORT_1"]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("0.0.0.0", taken))
        squatter.listen(1)
        up = ok(fpc("up", "-d", "-f", template, "-p", project))
        assert f"port(s) {taken} taken outside freeport-compose" in up.stderr
        port = parse_dotenv(up.stdout)["FREEPORT_1"]
        assert port != taken
        assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == {"FREEPORT_1": port}
        assert leases_of(project) == {"FREEPORT_1": port}  # the clashed lease was given back
        web = service_container(project, "web")
        assert web["State"]["Running"]
        assert published(web, "80/tcp") == {port}
        assert http_get(port) == (200, f"web {port}\n")
        assert squatter.getsockname()[1] == taken  # ours still: Compose never took it over
    finally:
        squatter.close()
    ok(fpc("down", "-p", project))
    assert_nothing_left(project)


# --------------------------------------------------------------------------------------------
# 7. gc after a plain `docker compose down`
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_gc_frees_stack_downed_by_plain_compose(e2e: E2E) -> None:
    template = web_template(e2e)
    gone, alive = e2e.project(), e2e.project()
    ok(fpc("up", "-d", "-f", template, "-p", gone))
    alive_ports = parse_dotenv(ok(fpc("up", "-d", "-f", template, "-p", alive)).stdout)

    nothing = ok(fpc("gc"))  # both stacks up: nothing to free
    assert nothing.stderr.strip().splitlines()[-1] == "freeport-compose: nothing to free"
    assert {s["project"] for s in ls_json()["stacks"]} == {gone, alive}

    with tempfile.TemporaryDirectory(prefix="fpc-e2e-") as empty:
        down = docker("compose", "-p", gone, "down", "--remove-orphans", cwd=empty)
    assert down.returncode == 0, down.stderr
    assert containers(gone) == []
    assert leases_of(gone) != {}  # freeport-compose does not know yet

    result = ok(fpc("gc"))
    assert f"freeport-compose: freed stack {gone}: no container left" in result.stderr.splitlines()
    assert alive not in result.stderr
    state = ls_json()
    assert [s["project"] for s in state["stacks"]] == [alive]
    assert {lease["owner"] for lease in state["leases"]} == {alive}
    assert leases_of(alive) == alive_ports
    assert len(containers(alive, running=True)) == 1
    assert http_get(alive_ports["FREEPORT_1"])[0] == 200

    ok(fpc("down", "-p", alive))
    assert_nothing_left(gone, alive)


# --------------------------------------------------------------------------------------------
# 8. bad input: one error line, the right exit code, nothing leased or started
# --------------------------------------------------------------------------------------------

BAD_CASES: dict[str, tuple[list[str], dict[str, str], ExitCode, str]] = {
    # case: (CLI arguments, environment, exit code, text of the error line)
    "ports-unknown": (["ports", "-p", "nosuch"], {}, ExitCode.UNKNOWN_OWNER, "nosuch"),
    "port-unknown": (["port", "-p", "nosuch", "web"], {}, ExitCode.UNKNOWN_OWNER, "nosuch"),
    "no-compose": (["up", "-d", "-f", "{template}", "-p", "{project}"], {"FREEPORT_COMPOSE": "/nonexistent/compose"},
                   ExitCode.COMPOSE_MISSING, "/nonexistent/compose"),
    "compose-not-executable": (["up", "-d", "-f", "{template}", "-p", "{project}"], {"FREEPORT_COMPOSE": "{template}"},
                               ExitCode.COMPOSE_MISSING, "compose.yml"),
    "compose-env-unparsable": (["up", "-d", "-f", "{template}", "-p", "{project}"],
                               {"FREEPORT_COMPOSE": 'docker "compose'},
                               ExitCode.COMPOSE_MISSING, "$FREEPORT_COMPOSE is not a valid command line"),
    "no-engine": (["up", "-d", "-f", "{template}", "-p", "{project}"],
                  {"DOCKER_HOST": "unix:///tmp/nonexistent.sock"}, ExitCode.ENGINE_UNREACHABLE,
                  "no Docker engine answers"),
    "bad-name-up": (["up", "-d", "-f", "{template}", "-p", "Bad Name"], {}, ExitCode.INVALID_NAME, "'Bad Name'"),
    "bad-name-down": (["down", "-p", "Bad Name"], {}, ExitCode.INVALID_NAME, "'Bad Name'"),
    "template-error": (["up", "-d", "-f", "{broken}", "-p", "{project}"], {}, ExitCode.TEMPLATE,
                       "broken.yml:16:10: placeholder '$<freeport_1>' must be upper case"),
    "render-template-error": (["render", "-f", "{broken}", "-p", "{project}"], {}, ExitCode.TEMPLATE,
                              "broken.yml:16:10:"),
    "missing-file": (["up", "-d", "-f", "{tmp}/nope.yml", "-p", "{project}"], {}, ExitCode.TEMPLATE, "no such file"),
}


@pytest.mark.docker
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input(e2e: E2E, case: str) -> None:
    argv, env, code, fragment = BAD_CASES[case]
    project = e2e.project()
    template = web_template(e2e)
    broken = e2e.compose_file("broken.yml", e2e.service("web", ports=["$<freeport_1>:80"]))
    os.chmod(template, 0o644)  # not executable: as FREEPORT_COMPOSE it cannot be run
    values = {"template": template, "broken": broken, "project": project, "tmp": str(e2e.tmp)}
    result = fpc(*(a.format(**values) for a in argv), env={k: v.format(**values) for k, v in env.items()})
    assert_error(result, code, fragment)
    assert_nothing_left(project, label=e2e.label)
    state = ls_json()
    assert (state["leases"], state["stacks"]) == ([], [])


# --------------------------------------------------------------------------------------------
# 9. --profile and --env-file are replayed at down
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_profile_and_env_file_replayed_at_down(e2e: E2E) -> None:
    image = "${FPC_IMAGE:?set FPC_IMAGE in the env file}"  # down fails unless the env file is replayed
    e2e.compose_file(
        "compose.yml",
        e2e.service("web", ports=["$<FREEPORT_1>:80"], body="web $<FREEPORT_1>", image=image),
        e2e.service("extra", ports=["$<FREEPORT_extra>:80"], body="extra $<FREEPORT_extra>", image=image,
                    extra=['profiles: ["extra"]']),
    )
    (e2e.tmp / "images.env").write_text(f"FPC_IMAGE={IMAGE}\n")
    project = e2e.project()
    # Relative paths from the test's directory; down runs from elsewhere and repeats nothing.
    up = ok(fpc("up", "-d", "-f", "compose.yml", "-p", project, "--profile", "extra", "--env-file", "images.env",
                cwd=e2e.tmp))
    ports = parse_dotenv(up.stdout)
    assert list(ports) == ["FREEPORT_1", "FREEPORT_extra"]
    assert published(service_container(project, "web"), "80/tcp") == {ports["FREEPORT_1"]}
    assert published(service_container(project, "extra"), "80/tcp") == {ports["FREEPORT_extra"]}
    assert http_get(ports["FREEPORT_1"]) == (200, f"web {ports['FREEPORT_1']}\n")
    assert http_get(ports["FREEPORT_extra"]) == (200, f"extra {ports['FREEPORT_extra']}\n")
    assert len(containers(project, running=True)) == 2

    down = ok(fpc("down", "-p", project, cwd="/"))
    assert "required variable" not in down.stderr
    assert_nothing_left(project)  # networks too


# --------------------------------------------------------------------------------------------
# 10. container_name warns
# --------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_container_name_warns(e2e: E2E) -> None:
    template = e2e.compose_file("compose.yml", e2e.service(
        "web", ports=["$<FREEPORT_1>:80"], extra=[f"container_name: fpc-e2e-{e2e.token}"]))
    project = e2e.project()
    result = ok(fpc("render", "-f", template, "-p", project))
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("freeport-compose: warning:")]
    assert len(warnings) == 1, result.stderr
    assert f"{template}:6:5: service 'web' sets container_name" in warnings[0]
    assert "warning" not in result.stdout
    ok(fpc("down", "-p", project))
    plain = e2e.project()
    clean = ok(fpc("render", "-f", web_template(e2e, "plain.yml"), "-p", plain))
    assert "sets container_name" not in clean.stderr
    ok(fpc("down", "-p", plain))
    assert_nothing_left(project, plain)


@pytest.mark.docker
def test_up_failing_before_compose_keeps_the_stack_that_was_there(e2e: E2E) -> None:
    """A second `up` of a running stack that cannot lease its new placeholder leaves the stack alone."""
    project = e2e.project()
    first = e2e.compose_file("one.yml", e2e.service("web", ports=["127.0.0.1:$<FREEPORT_web>:80"]))
    up = ok(fpc("up", "-d", "-p", project, "-f", first))
    web = parse_dotenv(up.stdout)["FREEPORT_web"]
    second = e2e.compose_file("two.yml", e2e.service("web", ports=["127.0.0.1:$<FREEPORT_web>:80",
                                                                   "127.0.0.1:$<FREEPORT_more>:81"]))
    ok(fpc("get", "--owner", f"{project}-blocker", "--range", f"{web + 1}-{web + 1}"))
    try:
        exits(fpc("up", "-d", "-p", project, "-f", second, "--lease-timeout", "0",
                  env={"FREEPORT_RANGE": f"{web + 1}-{web + 1}"}),
              ExitCode.NO_FREE_PORT)
        assert containers(project), "the running stack was taken down"
        assert json.loads(fpc("ports", "-p", project, "--format", "json").stdout) == {"FREEPORT_web": web}
        assert http_get(web)[0] == 200
    finally:
        fpc("release", "--owner", f"{project}-blocker")
    ok(fpc("down", "-p", project))
    assert containers(project) == []
