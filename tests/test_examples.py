"""The shipped templates and examples work as their comments say, on the real engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _docker import FPC, assert_nothing_left, docker, down_projects, engine_answers, fpc, ls_json, ok
from _docker import IMAGE as DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("FREEPORT_TEST_IMAGE", DEFAULT_IMAGE)
TEMPLATES = sorted((ROOT / "templates").glob("*.yml"))
SLOW = 300.0  # seconds for a CLI call that starts containers or runs `docker compose config`

needs_docker = pytest.mark.skipif(not engine_answers(), reason="no Docker engine answers (run scripts/setup.sh)")


@pytest.mark.docker
@needs_docker
@pytest.mark.parametrize("template", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_template_renders_and_compose_accepts_it(template: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WEB_IMAGE": "example/web:dev"}
    project = f"tpl-{template.stem.replace('_', '-')}"
    out = tmp_path / "rendered.yml"
    # With the check: `docker compose config` must publish exactly the leased ports.
    result = fpc("render", "-p", project, "-f", str(template), "-o", str(out), env=env, timeout=SLOW)
    try:
        ok(result)
        assert result.stdout.strip() == str(out)
        ports = json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout)
        assert ports
        assert all(name.startswith("FREEPORT_") for name in ports)
        config = docker("compose", "-p", project, "-f", str(out), "config", "--format", "json", env=env)
        assert config.returncode == 0, config.stderr
        published = {
            int(p["published"])
            for svc in json.loads(config.stdout)["services"].values()
            for p in svc.get("ports", [])
        }
        assert published == set(ports.values())
        assert "$<" not in out.read_text()
    finally:
        fpc("release", "--owner", project)


@pytest.mark.docker
@needs_docker
def test_demo_runs_and_cleans_up() -> None:
    demo = ROOT / "examples/demo"
    result = ok(fpc("run", "-f", str(demo / "compose.yml"), "--", "sh", str(demo / "check.sh"), timeout=SLOW))
    lines = [ln for ln in result.stdout.splitlines() if " answers on leased port " in ln]
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("web ")
    assert lines[0].endswith(": web: hello from a leased port")
    assert lines[1].startswith("api ")
    assert lines[1].endswith(": api: hello from a leased port")
    assert ls_json()["leases"] == []


@pytest.mark.docker
@needs_docker
def test_makefile_example(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path / "it"
    shutil.copytree(ROOT / "examples/makefile", work)
    env = {**os.environ, "HTTP_IMAGE": IMAGE, "PULL_POLICY": "never"}
    make = ["make", "-C", str(work), f"FREEPORT={FPC}", "PROJECT=fpc-make-example"]
    one_shot = subprocess.run([*make, "integration-test"], capture_output=True, text=True, env=env, check=False)
    assert one_shot.returncode == 0, one_shot.stdout + one_shot.stderr
    assert "HTTP 404" in one_shot.stdout
    try:
        up = subprocess.run([*make, "stack-up"], capture_output=True, text=True, env=env, check=False)
        assert up.returncode == 0, up.stderr
        included = (work / ".ports.mk").read_text().splitlines()
        assert included[0].startswith("FREEPORT_api := ")
        assert included[1] == "FREEPORT_api_HOST := 127.0.0.1"  # where to reach it, for a URL
        test = subprocess.run([*make, "test-against-stack"], capture_output=True, text=True, env=env, check=False)
        assert test.returncode == 0, test.stdout + test.stderr
        assert included[0].split(":= ")[1].strip() in test.stdout
    finally:
        down = subprocess.run([*make, "stack-down"], capture_output=True, text=True, env=env, check=False)
    assert down.returncode == 0, down.stderr
    assert ls_json()["stacks"] == []


@pytest.mark.parametrize("path", sorted((ROOT / "examples/ci").glob("*.yml")), ids=lambda p: p.name)
def test_ci_examples_use_real_commands(path: Path) -> None:
    """The CI examples are valid YAML and every freeport-compose call in them parses."""
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    calls = [ln.strip().lstrip("- ").removeprefix("run: ") for ln in path.read_text().splitlines()
             if "freeport-compose " in ln and not ln.strip().startswith("#")]
    assert calls
    from freeport_compose._argv import parse

    for call in calls:
        words = call.split("freeport-compose ", 1)[1].replace('"', "").split(">>")[0].split(")")[0].split()
        parse(words)  # exits with status 2 on an unknown flag


@pytest.mark.docker
@needs_docker
def test_pytest_fixtures_in_a_user_test_suite(tmp_path: Path) -> None:
    """The plugin's fixtures as a user's conftest-free test file sees them, run by pytest itself."""
    (tmp_path / "compose.yml").write_text((ROOT / "examples/demo/compose.yml").read_text())
    (tmp_path / "test_user.py").write_text(
        """
import socket, urllib.request, urllib.error

def get(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code

def test_free_port(free_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port))

def test_factory(free_port_factory):
    ports = free_port_factory(3, contiguous=True)
    assert list(ports) == list(range(ports[0], ports[0] + 3))

def test_stack(compose_stack):
    stack = compose_stack("compose.yml")
    assert get(stack.port("web")) == 200
    assert get(stack.ports["FREEPORT_api"]) == 200
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_user.py")],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    listing = ls_json()
    assert listing["leases"] == []
    assert listing["stacks"] == []


POSTGRES_IMAGE = os.environ.get("FREEPORT_TEST_POSTGRES_IMAGE", "freeport-test-postgres:15")

# Loaded into the example's run with `-p` (the example itself stays as a user would copy it): each
# test writes one JSON line to <dir>/<worker>.jsonl saying which stack, port and database it used.
RECORDER = """
import json, os, pathlib, pytest

@pytest.fixture(autouse=True)
def _fpc_record(request, db, worker_db, worker_id):
    line = {"worker": worker_id, "project": db.project, "port": db.port("db"), "database": worker_db,
            "test": request.node.nodeid}
    with open(pathlib.Path(os.environ["FPC_EXAMPLE_RECORD"]) / f"{worker_id}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\\n")
"""


@pytest.mark.docker
@needs_docker
def test_pytest_example_shares_one_postgres_with_a_database_per_worker(tmp_path: Path) -> None:
    """examples/pytest under `pytest -n 4`: every worker on one stack, each in its own database, and
    the stack and its leases gone when the run ends."""
    pytest.importorskip("pg8000", reason="pg8000 is not installed (the `test` extra): pip install -e '.[test]'")
    if docker("image", "inspect", POSTGRES_IMAGE).returncode != 0:
        pytest.skip(f"local image {POSTGRES_IMAGE} is missing: run `bash scripts/setup.sh`")
    work, records, plugins = tmp_path / "example", tmp_path / "records", tmp_path / "plugins"
    shutil.copytree(ROOT / "examples/pytest", work)
    records.mkdir()
    plugins.mkdir()
    (plugins / "fpc_example_record.py").write_text(RECORDER)
    # Not this run's xdist worker variables (when it runs under -n): the example is a run of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env.update(POSTGRES_IMAGE=POSTGRES_IMAGE, FPC_EXAMPLE_RECORD=str(records),
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugins), env.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "4", "-p", "no:cacheprovider", "-p", "fpc_example_record"],
        capture_output=True, text=True, cwd=work, env=env, check=False, timeout=SLOW,
    )
    lines = [json.loads(ln) for f in sorted(records.glob("*.jsonl")) for ln in f.read_text().splitlines()]
    projects = sorted({ln["project"] for ln in lines})
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed, result.stdout
        assert not re.search(r"\d+ (failed|error|skipped)", result.stdout), result.stdout
        assert len(lines) == int(passed[1]) >= 8, (lines, result.stdout)
        assert len(projects) == 1, projects  # one stack for the whole run...
        assert len({ln["port"] for ln in lines}) == 1, lines
        databases = {ln["worker"]: {x["database"] for x in lines if x["worker"] == ln["worker"]} for ln in lines}
        assert sorted(databases) == ["gw0", "gw1", "gw2", "gw3"], databases
        assert databases == {w: {f"test_{w}"} for w in databases}  # ...and a database of its own per worker
        assert_nothing_left(projects[0])
        state = ls_json()
        assert (state["leases"], state["stacks"]) == ([], []), state
    except BaseException:
        if projects:
            down_projects(*projects)
        raise
