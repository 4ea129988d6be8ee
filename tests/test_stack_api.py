"""`Stack` in Python, and the pytest plugin's session stacks shared by every pytest-xdist worker.

The plugin is tried the way users run it: a small test suite written into a temporary directory
and run by a real `pytest` process (with `-n 4` for xdist), against the real engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from _docker import (
    Footprint,
    assert_nothing_left,
    containers,
    docker,
    fpc,
    http_get,
    ls_json,
    ok,
    parse_dotenv,
)
from freeport_compose import ComposeError, Stack, StackNotReadyError, UnknownOwnerError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Footprint]:
    with Footprint(tmp_path, "fpc.api", "fpc-api") as footprint:
        yield footprint


def web_file(box: Footprint, *, zero_edit: bool = False) -> str:
    ports = ["[::1]:8080:80"] if zero_edit else ["$<FREEPORT_web>:80"]
    return box.compose_file("compose.yaml", box.service("web", ports=ports, body="hello"))


# -- Stack -------------------------------------------------------------------------------------------


def test_stack_up_ready_and_down(box: Footprint) -> None:
    path = web_file(box)
    with Stack(path, project=box.project(), wait_for={"web": "http:/"}) as stack:
        assert set(stack.ports) == {"FREEPORT_web"}
        assert stack.port("web") == stack.port("FREEPORT_web") == stack.ports["FREEPORT_web"]
        assert stack.host("web") == "127.0.0.1"
        assert stack.url("web", "/index.html") == f"http://127.0.0.1:{stack.port('web')}/index.html"
        assert http_get(stack.port("web")) == (200, "hello\n")
        project = stack.project
        assert len(containers(project, running=True)) == 1
    assert_nothing_left(project, label=box.label)


def test_zero_edit_names_and_an_ipv6_url(box: Footprint) -> None:
    with Stack(web_file(box, zero_edit=True), project=box.project(), wait_for={"web": "tcp"}) as stack:
        assert list(stack.ports) == ["FREEPORT_web_80"]
        assert stack.port("web") == stack.port("web_80") == stack.ports["FREEPORT_web_80"]  # its one port
        assert stack.host("web") == "::1"
        assert stack.url("web", "health") == f"http://[::1]:{stack.port('web')}/health"
        with pytest.raises(UnknownOwnerError, match="no port named 'db'"):
            stack.port("db")


def test_the_stack_comes_down_when_the_body_raises(box: Footprint) -> None:
    project = box.project()
    running: list[int] = []

    def body() -> None:
        with Stack(web_file(box), project=project):
            running.append(len(containers(project, running=True)))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        body()
    assert running == [1]
    assert_nothing_left(project, label=box.label)


def test_a_failed_up_leaves_nothing(box: Footprint) -> None:
    bad = box.service("db", command=["/bin/busybox", "sh", "-c", "echo api-log-marker; exit 5"])
    path = box.compose_file("compose.yaml", box.service("web", ports=["$<FREEPORT_web>:80"]), bad)
    project = box.project()
    with pytest.raises(ComposeError) as info, Stack(path, project=project):
        pytest.fail("the body must not run")
    assert any("api-log-marker" in line for line in info.value.details)
    assert_nothing_left(project, label=box.label)


def test_not_ready_says_why_and_leaves_nothing(box: Footprint) -> None:
    project = box.project()
    stack = Stack(web_file(box), project=project, wait_for={"web": "log:never-printed"}, timeout=1.5)
    with pytest.raises(StackNotReadyError) as info, stack:
        pytest.fail("the body must not run")
    message = str(info.value)
    assert f"stack {project} not ready after 1.5 s: web (log:never-printed)" in message
    assert "docker compose ps:" in message
    assert f"{project}-web-1" in message  # the ps table
    assert "no log line matches 'never-printed'" in message
    assert_nothing_left(project, label=box.label)


def test_attach_reads_a_stack_and_never_brings_it_down(box: Footprint) -> None:
    project = box.project()
    port = parse_dotenv(ok(fpc("up", "-d", "-f", web_file(box), "-p", project)).stdout)["FREEPORT_web"]
    with Stack.attach(project) as stack:
        assert stack.ports == {"FREEPORT_web": port}
    assert len(containers(project, running=True)) == 1
    with pytest.raises(UnknownOwnerError):
        Stack.attach("fpc-api-nosuch")
    ok(fpc("down", "-p", project))


# -- the pytest plugin: one session stack for every xdist worker -----------------------------------------

# Each test says which Compose projects ran while it ran (by the test's own label) and which stack it got.
SUITE = """
import json, os, subprocess, time, urllib.request

def seen(stack, tmp, name):
    out = subprocess.run(["docker", "ps", "--filter", "label={label}", "--format",
                          '{{{{.Label "com.docker.compose.project"}}}}'], capture_output=True, text=True).stdout
    body = urllib.request.urlopen(stack.url("web"), timeout=5).read().decode()
    record = {{"projects": sorted(set(out.split())), "project": stack.project, "port": stack.port("web"),
              "body": body, "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}}
    with open(os.path.join(tmp, name), "w") as f:
        json.dump(record, f)
"""


def _suite(box: Footprint, tests: str, conftest: str, ini: str = "") -> Path:
    suite = box.tmp / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "compose.yaml").write_text(Path(web_file(box)).read_text())
    (suite / "seen.py").write_text(SUITE.format(label=box.label))
    (suite / "conftest.py").write_text(textwrap.dedent(conftest))
    (suite / "test_suite.py").write_text(textwrap.dedent(tests))
    (suite / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    (box.tmp / "seen").mkdir(exist_ok=True)
    return suite


def _pytest(suite: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=suite,
                          capture_output=True, text=True, timeout=600, check=False)


def _seen(box: Footprint) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((box.tmp / "seen").iterdir())]


MANY_TESTS = """
import pytest, time
from seen import seen

@pytest.mark.parametrize("i", range(12))
def test_uses_the_stack(web, i, tmp_path_factory):
    time.sleep(0.3)
    seen(web, {seen!r}, f"t{{i}}")
"""


def test_one_stack_for_every_xdist_worker(box: Footprint) -> None:
    suite = _suite(box, MANY_TESTS.format(seen=str(box.tmp / "seen")),
                   'from freeport_compose.pytest_plugin import stack_fixture\nweb = stack_fixture("compose.yaml")\n')
    run = _pytest(suite, "-n", "4")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 passed" in run.stdout
    seen = _seen(box)
    assert len(seen) == 12
    assert len({s["worker"] for s in seen}) > 1  # really several workers
    assert len({s["project"] for s in seen}) == 1  # one stack
    assert len({s["port"] for s in seen}) == 1
    assert all(s["projects"] == [seen[0]["project"]] for s in seen)  # and only ever one project running
    assert all(s["body"] == "hello\n" for s in seen)
    project = str(seen[0]["project"])
    assert_nothing_left(project, label=box.label)  # the last worker took it down


def test_ini_options_give_freeport_stack(box: Footprint) -> None:
    tests = f"""
    from seen import seen

    def test_a(freeport_stack):
        seen(freeport_stack, {str(box.tmp / 'seen')!r}, "a")
    """
    suite = _suite(box, tests, "", "freeport_compose_files = compose.yaml\n")
    run = _pytest(suite)
    assert run.returncode == 0, run.stdout + run.stderr
    [seen] = _seen(box)
    assert seen["body"] == "hello\n"
    assert_nothing_left(str(seen["project"]), label=box.label)


KILLED_WORKER = """
import os, signal, time, pytest
from seen import seen

@pytest.mark.parametrize("i", range(8))
def test_uses_the_stack(web, i):
    if i == 0:
        seen(web, {seen!r}, "killed")
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dies outright, holding the stack
    time.sleep(1.5)  # the others outlive it
    seen(web, {seen!r}, f"t{{i}}")
"""


def test_a_worker_killed_outright_neither_downs_the_stack_nor_leaves_it(box: Footprint) -> None:
    suite = _suite(box, KILLED_WORKER.format(seen=str(box.tmp / "seen")),
                   'from freeport_compose.pytest_plugin import stack_fixture\nweb = stack_fixture("compose.yaml")\n')
    run = _pytest(suite, "-n", "3")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "7 passed" in run.stdout, run.stdout
    assert "1 failed" in run.stdout, run.stdout  # the crashed one
    seen = _seen(box)
    assert len(seen) == 8  # "killed" and the 7 others, which all still reached the stack after the kill
    assert len({s["project"] for s in seen}) == 1
    assert all(s["body"] == "hello\n" for s in seen)
    assert_nothing_left(str(seen[0]["project"]), label=box.label)
    assert ls_json()["leases"] == []


def test_keep_then_reuse(box: Footprint) -> None:
    tests = f"""
    from seen import seen

    def test_a(web):
        seen(web, {str(box.tmp / 'seen')!r}, "a")
    """
    suite = _suite(box, tests,
                   'from freeport_compose.pytest_plugin import stack_fixture\nweb = stack_fixture("compose.yaml")\n')
    kept = _pytest(suite, "--freeport-keep")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    [first] = _seen(box)
    project = str(first["project"])
    box.projects.append(project)  # cleaned up whatever happens
    assert f"freeport-compose: kept stack {project}" in kept.stdout
    assert f"freeport-compose down -p {project}" in kept.stdout
    [container] = containers(project, running=True)
    reused = _pytest(suite, "--freeport-reuse")
    assert reused.returncode == 0, reused.stdout + reused.stderr
    [second] = _seen(box)
    assert (second["project"], second["port"]) == (project, first["port"])
    assert containers(project, running=True) == [container]  # the very same container, not a new stack
    (suite / "compose.yaml").write_text((suite / "compose.yaml").read_text().replace("hello", "changed"))
    fresh = _pytest(suite, "--freeport-reuse")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    [third] = _seen(box)
    assert third["project"] != project  # a changed file: a fresh stack
    assert third["body"] == "changed\n"
    box.projects.append(str(third["project"]))
    for name in (project, str(third["project"])):
        ok(fpc("down", "-p", name))
    assert docker("ps", "-q", "--filter", f"label={box.label}").stdout.split() == []
