"""Zero-edit: any Compose file, unmodified, on leased ports; and Compose's own habits in every command
(file discovery, COMPOSE_* variables, .env, pass-through verbs, exports).

Real Compose files nobody here wrote come from docker/awesome-compose (tests/data/awesome-compose,
CC0, source and commit in its README); they are only rendered and read back through `docker compose
config` (their public images are never pulled). Stacks that run are made of the local busybox image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    COMPOSE_STATUS,
    IMAGE,
    Footprint,
    assert_error,
    assert_nothing_left,
    docker,
    fpc,
    http_get,
    leases_of,
    ls_json,
    ok,
    parse_dotenv,
)
from freeport_compose._error import ExitCode

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

AWESOME = Path(__file__).parent / "data" / "awesome-compose"
SAMPLES = sorted(p.name for p in AWESOME.iterdir() if (p / "compose.yaml").is_file() and p.name != "plex")
FIELDS = ("target", "protocol", "host_ip", "mode", "name", "app_protocol")


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Footprint]:
    with Footprint(tmp_path, "fpc.zero", "fpc-zero") as footprint:
        yield footprint


def config(directory: Path, *args: str) -> dict[str, Any]:
    """Compose's model (`config --format json`) of the files in args, read from `directory`."""
    result = docker("compose", *args, "config", "--format", "json", cwd=str(directory))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def ports_of(model: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {name: svc.get("ports") or [] for name, svc in model["services"].items() if svc.get("ports")}


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# -- real files nobody here wrote --------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_awesome_compose_file_on_leased_ports(sample: str, box: Footprint, tmp_path: Path) -> None:
    source = AWESOME / sample
    work = tmp_path / sample
    shutil.copytree(source, work)  # Compose reads .env beside the file; the copy keeps the data pristine
    before = digest(work)
    project = box.project()
    rendered = ok(fpc("render", "-f", str(work / "compose.yaml"), "-p", project)).stdout.split()
    assert rendered[0] == str(work / "compose.yaml")  # the user's own file, given as it is
    assert len(rendered) == 2  # and the override after it
    assert digest(work) == before  # never written
    original = ports_of(config(work, "-p", project, "-f", "compose.yaml"))
    final = ports_of(config(work, "-p", project, *(a for f in rendered for a in ("-f", f))))
    leased = leases_of(project)
    assert set(final) == set(original)
    published = [int(p["published"]) for entries in final.values() for p in entries]
    assert set(published) <= set(leased.values())
    for service, entries in original.items():
        kept = [{k: e.get(k) for k in FIELDS} for e in final[service]]
        assert [{k: e.get(k) for k in FIELDS} for e in entries] == kept
        for old, new in zip(entries, final[service], strict=True):
            assert new["published"] != old["published"]
            name = next(n for n, port in leased.items() if port == int(new["published"]))
            assert name.startswith(f"FREEPORT_{service.replace('-', '_')}_{old['target']}"), name
    # one leased port per (service, target, host port): a TCP+UDP pair shares one, all else distinct
    distinct = {(s, e["target"], e["published"]) for s, entries in original.items() for e in entries}
    assert len(set(published)) == len(distinct)
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == leased
    ok(fpc("down", "-p", project))
    assert leases_of(project) == {}


def test_a_file_that_publishes_nothing_is_rendered_as_it_is(box: Footprint) -> None:
    """Nothing to lease is no error: Compose would run the file, and so do we (on no leased port)."""
    project = box.project()
    rendered = ok(fpc("render", "-f", str(AWESOME / "plex" / "compose.yaml"), "-p", project))
    assert rendered.stdout.strip()  # the files to give Compose
    assert json.loads(ok(fpc("ports", "-p", project, "--format", "json")).stdout) == {}
    assert ls_json()["leases"] == []
    ok(fpc("down", "-p", project))


EVERY_FORM = """\
services:
  web:
    image: {image}
    pull_policy: never
    ports:
      - "8080:80"
      - "127.0.0.1:5432:5432"
      - "[::1]:6379:6379"
      - "5353:53/udp"
      - "5353:53"
      - "1194:1194/udp"
      - "8000-8002:80-82"
      - "9000"
      - target: 443
        published: "8443"
        host_ip: 127.0.0.1
        protocol: tcp
        mode: host
        name: https
        app_protocol: https
"""


def test_every_form_of_published_port(box: Footprint) -> None:
    path = box.tmp / "compose.yaml"
    path.write_text(EVERY_FORM.format(image=IMAGE))
    project = box.project()
    rendered = ok(fpc("render", "-f", str(path), "-p", project)).stdout.split()
    leased = leases_of(project)
    assert sorted(leased) == sorted([
        "FREEPORT_web_80", "FREEPORT_web_5432", "FREEPORT_web_6379", "FREEPORT_web_53", "FREEPORT_web_1194_udp",
        "FREEPORT_web_80_2", "FREEPORT_web_81", "FREEPORT_web_82", "FREEPORT_web_9000", "FREEPORT_web_https",
    ])
    assert [leased["FREEPORT_web_80_2"] + i for i in range(3)] == [
        leased["FREEPORT_web_80_2"], leased["FREEPORT_web_81"], leased["FREEPORT_web_82"]]  # the range: a block
    final = ports_of(config(box.tmp, "-p", project, *(a for f in rendered for a in ("-f", f))))["web"]
    by = {(e["target"], e["protocol"], e.get("host_ip")): e for e in final}
    udp, tcp = int(by[(53, "udp", None)]["published"]), int(by[(53, "tcp", None)]["published"])
    assert udp == tcp == leased["FREEPORT_web_53"]
    assert int(by[(9000, "tcp", None)]["published"]) == leased["FREEPORT_web_9000"]  # container-only: now known
    https = by[(443, "tcp", "127.0.0.1")]
    assert (https["mode"], https["name"], https["app_protocol"]) == ("host", "https", "https")
    assert int(https["published"]) == leased["FREEPORT_web_https"]
    hosts = {k: v for k, v in (ln.split("=", 1) for ln in ok(fpc("ports", "-p", project)).stdout.split())}
    assert hosts["FREEPORT_web_5432_HOST"] == "127.0.0.1"
    assert hosts["FREEPORT_web_6379_HOST"] == "::1"
    assert hosts["FREEPORT_web_80_HOST"] == "127.0.0.1"
    ok(fpc("down", "-p", project))


def test_a_published_range_longer_than_the_lease_range(box: Footprint, free_block: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_block(2)
    monkeypatch.setenv("FREEPORT_RANGE", f"{first}-{first + 1}")
    path = box.tmp / "compose.yaml"
    path.write_text(f"services:\n  web:\n    image: {IMAGE}\n    ports: [\"8000-8002:80-82\"]\n")
    assert_error(fpc("up", "-d", "-f", str(path), "-p", box.project()), ExitCode.INVALID_RANGE,
                 f"cannot lease 3 ports from the 2-port range {first}-{first + 1}",
                 "FREEPORT_web_80, FREEPORT_web_81, FREEPORT_web_82")
    assert ls_json()["leases"] == []
    assert ls_json()["stacks"] == []


# -- two copies of one unmodified file, side by side --------------------------------------------------


def _httpd_file(box: Footprint, *, container_name: bool = False) -> Path:
    extra = ["container_name: fixed-" + box.token] if container_name else []
    service = box.service("db", ports=["5432:5432"], body="db",
                          command=["/bin/busybox", "sh", "-c",
                                   'echo "$$BODY $$HOSTNAME" > /index.html && exec /bin/busybox httpd -f -p 5432 -h /'],
                          extra=extra)
    path = box.tmp / "compose.yaml"
    path.write_text("services:\n" + service)
    return path


def test_two_copies_of_one_file_side_by_side(box: Footprint) -> None:
    path = _httpd_file(box)
    original = path.read_bytes()
    a, b = box.project(), box.project()
    port_a = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", a, "--wait")).stdout)["FREEPORT_db_5432"]
    port_b = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", b, "--wait")).stdout)["FREEPORT_db_5432"]
    assert port_a != port_b
    status_a, body_a = http_get(port_a)
    status_b, body_b = http_get(port_b)
    assert (status_a, status_b) == (200, 200)
    assert body_a != body_b  # two containers, each on its own port
    again = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", a)).stdout)
    assert again == {"FREEPORT_db_5432": port_a}  # `up` again keeps its ports
    assert path.read_bytes() == original
    ok(fpc("down", "-p", a))
    ok(fpc("down", "-p", b))
    assert_nothing_left(a, b, label=box.label)


def test_container_name_is_reported_and_lifted(box: Footprint) -> None:
    path = _httpd_file(box, container_name=True)
    a, b = box.project(), box.project()
    up = ok(fpc("up", "-d", "-f", str(path), "-p", a))
    assert f"{path}:6:5: service 'db' sets container_name" in up.stderr, up.stderr
    assert "--drop-container-names" in up.stderr
    second = fpc("up", "-d", "-f", str(path), "-p", b)
    assert second.returncode == COMPOSE_STATUS, second.stderr  # Compose: the name is in use
    ok(fpc("down", "-p", a))
    first = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", a, "--drop-container-names")).stdout)
    other = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", b, "--drop-container-names")).stdout)
    assert http_get(first["FREEPORT_db_5432"])[0] == http_get(other["FREEPORT_db_5432"])[0] == 200
    assert docker("ps", "-q", "--filter", f"name=^fixed-{box.token}$").stdout.split() == []
    ok(fpc("down", "-p", a))
    ok(fpc("down", "-p", b))
    assert_nothing_left(a, b, label=box.label)


# -- Compose's habits ------------------------------------------------------------------------------------


def test_file_discovery_like_compose(box: Footprint) -> None:
    path = _httpd_file(box)
    sub = box.tmp / "deep" / "er"
    sub.mkdir(parents=True)
    project = box.project()
    up = ok(fpc("up", "-d", "-p", project, cwd=sub))  # no -f: compose.yaml in the nearest parent
    assert "FREEPORT_db_5432" in parse_dotenv(up.stdout)
    assert [s["files"] for s in ls_json()["stacks"] if s["project"] == project] == [[str(path)]]
    ok(fpc("down", "-p", project))
    override = box.tmp / "compose.override.yaml"
    override.write_text("services:\n  db:\n    ports: [\"7070:7070\"]\n")
    up = ok(fpc("up", "-d", "-p", project, cwd=box.tmp))  # and its .override file beside it, as Compose does
    assert set(parse_dotenv(up.stdout)) == {"FREEPORT_db_5432", "FREEPORT_db_7070"}
    ok(fpc("down", "-p", project))
    override.unlink()
    other = box.tmp / "elsewhere.yaml"
    other.write_text(path.read_text())
    listed = f"{other}:{path}"
    up = ok(fpc("up", "-d", "-p", project, cwd=sub, env={"COMPOSE_FILE": listed}))
    assert [s["files"] for s in ls_json()["stacks"] if s["project"] == project] == [[str(other), str(path)]]
    ok(fpc("down", "-p", project))
    up = ok(fpc("up", "-d", "-p", project, cwd=sub, env={"COMPOSE_FILE": f"{other};{path}",
                                                      "COMPOSE_PATH_SEPARATOR": ";"}))
    ok(fpc("down", "-p", project))
    empty = box.tmp.parent / f"{box.tmp.name}-empty"
    empty.mkdir()
    assert_error(fpc("up", "-d", "-p", project, cwd=empty), ExitCode.TEMPLATE,
                 f"no Compose file found: looked for compose.yaml, compose.yml, docker-compose.yaml, "
                 f"docker-compose.yml in {empty} and its parents")
    assert_nothing_left(project, label=box.label)


def test_profiles_env_files_and_dot_env_like_compose(box: Footprint) -> None:
    box.compose_file(
        "compose.yaml",
        box.service("web", ports=["${WEB_PORT}:80"]),
        box.service("admin", ports=["9090:80"], extra=["profiles: [admin]"]),
        box.service("debug", ports=["${DEBUG_PORT:-9191}:80"], extra=["profiles: [debug]"]),
    )
    (box.tmp / ".env").write_text("WEB_PORT=8088\n")
    (box.tmp / "debug.env").write_text("WEB_PORT=8089\nDEBUG_PORT=9292\n")
    project = box.project()
    up = ok(fpc("up", "-d", "-p", project, cwd=box.tmp))  # .env interpolated; no profile: admin and debug off
    assert set(parse_dotenv(up.stdout)) == {"FREEPORT_web_80"}
    ok(fpc("down", "-p", project))
    up = ok(fpc("up", "-d", "-p", project, cwd=box.tmp, env={"COMPOSE_PROFILES": "admin,debug"}))
    assert set(parse_dotenv(up.stdout)) == {"FREEPORT_web_80", "FREEPORT_admin_80", "FREEPORT_debug_80"}
    ok(fpc("down", "-p", project))
    up = ok(fpc("up", "-d", "-p", project, "--profile", "debug", cwd=box.tmp,
                env={"COMPOSE_PROFILES": "admin", "COMPOSE_ENV_FILES": str(box.tmp / "debug.env")}))
    assert set(parse_dotenv(up.stdout)) == {"FREEPORT_web_80", "FREEPORT_debug_80"}  # -p... --profile wins
    ok(fpc("down", "-p", project))
    assert_nothing_left(project, label=box.label)


def test_compose_verbs_pass_through_for_the_stack(box: Footprint) -> None:
    path = _httpd_file(box)
    project = box.project()
    port = parse_dotenv(ok(fpc("up", "-d", "-f", str(path), "-p", project, "--wait")).stdout)["FREEPORT_db_5432"]
    ps = ok(fpc("-p", project, "ps", "--format", "json", cwd=box.tmp))
    [row] = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
    assert (row["Service"], row["State"]) == ("db", "running")
    assert f":{port}->5432/tcp" in row["Ports"]
    # no -p: the one stack of this directory
    served = ok(fpc("exec", "-T", "db", "/bin/busybox", "cat", "/index.html", cwd=box.tmp))
    assert served.stdout.startswith("db ")
    status = fpc("exec", "-T", "db", "/bin/busybox", "sh", "-c", "exit 7", cwd=box.tmp).returncode
    assert status == 7  # Compose's own exit status
    shown = ok(fpc("-p", project, "config", "--format", "json"))
    assert [p["published"] for p in json.loads(shown.stdout)["services"]["db"]["ports"]] == [str(port)]
    logs = ok(fpc("-p", project, "logs", "--no-color", "db"))
    assert logs.returncode == 0
    ok(fpc("-p", project, "stop"))
    assert [s["status"] for s in ls_json()["stacks"] if s["project"] == project] == ["stopped"]
    ok(fpc("-p", project, "start"))
    assert http_get(port)[0] == 200
    top = ok(fpc("-p", project, "top"))
    assert "httpd" in top.stdout
    ok(fpc("-p", project, "cp", "db:/index.html", str(box.tmp / "copied.html")))
    assert (box.tmp / "copied.html").read_text().startswith("db ")
    # Compose's own `run SERVICE` (ours is `run -- CMD`), and the same through `compose`:
    ran = fpc("-p", project, "run", "--rm", "-T", "db", "/bin/busybox", "sh", "-c", "exit 3")
    assert ran.returncode == 3, ran.stderr
    ran = fpc("-p", project, "compose", "run", "--rm", "-T", "db", "/bin/busybox", "sh", "-c", "exit 4")
    assert ran.returncode == 4, ran.stderr
    unknown = ok(fpc("-p", "fpc-zero-nosuch", "ps"))  # no stack of ours: Compose's own answer, an empty list
    assert unknown.stdout.split() == ["NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS"]
    ok(fpc("down", "-p", project))
    assert_nothing_left(project, label=box.label)


def test_exports_for_github_and_env_files(box: Footprint, tmp_path: Path) -> None:
    path = box.tmp / "compose.yaml"
    path.write_text(f"services:\n  web:\n    image: {IMAGE}\n    ports: [\"127.0.0.2:8080:80\", \"9000:90\"]\n")
    project = box.project()
    ok(fpc("render", "-f", str(path), "-p", project))
    leased = leases_of(project)
    github_env, github_output = tmp_path / "github_env", tmp_path / "github_output"
    github_env.write_text("EARLIER=1\n")
    ok(fpc("ports", "-p", project, "--format", "github",
           env={"GITHUB_ENV": str(github_env), "GITHUB_OUTPUT": str(github_output)}))
    want = [f"FREEPORT_web_80={leased['FREEPORT_web_80']}", "FREEPORT_web_80_HOST=127.0.0.2",
            f"FREEPORT_web_90={leased['FREEPORT_web_90']}", "FREEPORT_web_90_HOST=127.0.0.1"]
    assert github_env.read_text().splitlines() == ["EARLIER=1", *want]  # appended
    assert github_output.read_text().splitlines() == want
    assert_error(fpc("ports", "-p", project, "--format", "github", env={"GITHUB_ENV": "", "GITHUB_OUTPUT": ""}),
                 ExitCode.OUTPUT, "neither $GITHUB_ENV nor $GITHUB_OUTPUT is set")
    env_file = tmp_path / "ports.env"
    env_file.write_text(ok(fpc("ports", "-p", project, "--format", "env-file")).stdout)
    seen = docker("run", "--rm", "--env-file", str(env_file), IMAGE, "/bin/busybox", "env")
    assert f"FREEPORT_web_80={leased['FREEPORT_web_80']}" in seen.stdout.splitlines(), seen.stderr
    ok(fpc("down", "-p", project))
