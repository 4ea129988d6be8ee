"""Compose drop-in, on a real engine: each case of issue 19 as a Compose user met it, one test each.

A Compose user types what they always type; `freeport-compose` in place of `docker compose` must
mean the same, on leased ports. The broad table is tests/test_conformance.py; these are the cases
that went wrong before, each with what it did then."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from _docker import (
    COMPOSE_STATUS,
    Footprint,
    containers,
    fpc,
    http_get,
    ok,
    parse_dotenv,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Footprint]:
    with Footprint(tmp_path, "fpc.dropin", "fpc-dropin") as footprint:
        yield footprint


def _two_services(box: Footprint, *, debug: bool = False) -> Path:
    services = box.service("web", ports=["18080:80"]) + box.service("db", ports=["18081:80"])
    if debug:
        services += box.service("debug", ports=["18082:80"], extra=["profiles: [debug]"])
    path = Path(box.compose_file("compose.yaml", services))
    return path


def test_a_typo_in_a_second_up_leaves_the_running_stack_running(box: Footprint) -> None:
    """Was: `up -p app -- --no-recreat` removed the running containers, then said the flag is unknown."""
    path = _two_services(box)
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", project)).stdout)
    typo = fpc("up", "-d", "-f", str(path), "-p", project, "--no-recreat")
    assert typo.returncode == COMPOSE_STATUS, typo.stderr
    assert "unknown flag: --no-recreat" in typo.stderr
    assert "Removed" not in typo.stderr
    assert len(containers(project, running=True)) == 2
    assert http_get(ports["FREEPORT_web_80"])[0] == 200
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == ports
    bad_down = fpc("down", "-p", project, "--bogus")  # Compose refuses it before anything is stopped
    assert bad_down.returncode == COMPOSE_STATUS
    assert len(containers(project, running=True)) == 2
    ok(fpc("down", "-p", project))


def test_down_takes_down_every_profile_and_frees_only_then(box: Footprint) -> None:
    """Was: `up --profile debug`, `up`, `down` said the ports were free while `debug` still ran on one."""
    path = _two_services(box, debug=True)
    project = box.project()
    first = parse_dotenv(ok(fpc("--profile", "debug", "up", "-d", "-f", str(path), "-p", project)).stdout)
    ok(fpc("up", "-d", "-f", str(path), "-p", project))
    assert len(containers(project, running=True)) == 3
    ok(fpc("down", "-p", project))
    assert containers(project) == []
    assert json.loads(ok(fpc("leases", "--json")).stdout)["leases"] == []
    assert "FREEPORT_debug_80" in first


def test_composes_up_options_and_services(box: Footprint) -> None:
    """Was: `up -d`, `up --build`, `up web`, `up --wait-timeout 10` were each `unrecognized arguments`."""
    path = _two_services(box)
    project = box.project()
    up = ok(fpc("-f", str(path), "-p", project, "up", "-d", "--build", "--wait", "--wait-timeout", "30", "web"))
    assert sorted(parse_dotenv(up.stdout)) == ["FREEPORT_db_80", "FREEPORT_web_80"]  # the stack's ports, all leased
    assert len(containers(project, running=True)) == 1  # only web started
    ok(fpc("-f", str(path), "-p", project, "up", "-d", "db"))
    assert len(containers(project, running=True)) == 2
    ok(fpc("-p", project, "down"))


def test_p_before_or_after_the_verb_from_anywhere(box: Footprint, tmp_path: Path) -> None:
    """Was: `-p app down` was an invalid choice, `ps -p app` from elsewhere said no stack was here."""
    path = _two_services(box)
    project = box.project()
    ok(fpc("up", "-d", "-f", str(path), "-p", project))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    services = ok(fpc("ps", "-p", project, "--services", cwd=elsewhere)).stdout.split()
    assert sorted(services) == ["db", "web"]
    assert sorted(ok(fpc("-p", project, "ps", "--services", cwd=elsewhere)).stdout.split()) == ["db", "web"]
    ok(fpc("-p", project, "down", cwd=elsewhere))
    assert containers(project) == []


def test_a_second_up_in_one_directory_is_the_same_stack(box: Footprint) -> None:
    """Was: two plain `up` in one directory made two stacks, and then `ps` and `down` refused."""
    path = _two_services(box)
    first = ok(fpc("up", "-d", cwd=box.tmp))
    second = ok(fpc("up", "-d", cwd=box.tmp))
    assert parse_dotenv(first.stdout) == parse_dotenv(second.stdout)  # same stack, same ports
    stacks = json.loads(ok(fpc("leases", "--json")).stdout)["stacks"]
    assert len(stacks) == 1
    project = stacks[0]["project"]
    box.projects.append(project)
    assert stacks[0]["files"] == [str(path)]
    assert len(containers(project)) == 2
    assert sorted(ok(fpc("ps", "--services", cwd=box.tmp)).stdout.split()) == ["db", "web"]
    ok(fpc("down", cwd=box.tmp))
    assert containers(project) == []


def test_run_service_is_composes_and_port_as_compose_has_it(box: Footprint) -> None:
    """Was: `run web echo hi` was refused; `port db` on an unmodified file and `port web 80` failed."""
    path = _two_services(box)
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", project)).stdout)
    ran = ok(fpc("-p", project, "run", "--rm", "-T", "web", "/bin/busybox", "echo", "hi"))
    assert ran.stdout.strip() == "hi"
    assert ok(fpc("port", "-p", project, "db")).stdout.strip() == str(ports["FREEPORT_db_80"])
    assert ok(fpc("-p", project, "port", "web", "80")).stdout.strip().endswith(f":{ports['FREEPORT_web_80']}")
    ok(fpc("down", "-p", project))


def test_a_file_that_publishes_no_port_runs_and_an_unknown_project_goes_down(box: Footprint) -> None:
    """Was: `nothing to lease` (exit 4), and `down -p nosuch` exited 9 where Compose exits 0."""
    path = Path(box.compose_file("compose.yaml", box.service("web")))
    project = box.project()
    up = ok(fpc("up", "-d", "-f", str(path), "-p", project))
    assert parse_dotenv(up.stdout) == {}
    assert len(containers(project, running=True)) == 1
    ok(fpc("down", "-p", project))
    gone = ok(fpc("down", "-p", f"{project}-nosuch"))
    assert "No resource found to remove" in gone.stderr


def test_run_a_host_command_sees_each_ports_host(box: Footprint) -> None:
    """`run -- CMD` (ours) gives CMD each port and the address to reach it on, as `ports` prints them."""
    path = Path(box.compose_file("compose.yaml", box.service("web", ports=["127.0.0.1:18080:80"])))
    script = "import os; print(os.environ['FREEPORT_web_80_HOST'], os.environ['FREEPORT_web_80'])"
    ran = ok(fpc("run", "-f", str(path), "-p", box.project(), "--", "python3", "-c", script))
    host, port = ran.stdout.split()
    assert host == "127.0.0.1"
    assert port.isdecimal()
    assert port != "18080"


def test_down_of_some_services_keeps_the_stack_and_its_ports(box: Footprint) -> None:
    """`down web` is Compose's partial down: db still runs on its port, which stays leased."""
    path = _two_services(box)
    project = box.project()
    ports = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", project)).stdout)
    partial = ok(fpc("down", "-p", project, "-t", "0", "web"))
    assert "is down" not in partial.stderr
    assert len(containers(project)) == 1
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == ports
    assert http_get(ports["FREEPORT_db_80"])[0] == 200
    ok(fpc("down", "-p", project))
    assert json.loads(ok(fpc("leases", "--json")).stdout)["leases"] == []
