"""Real services on leased ports: templates/postgres-redis.yml with PostgreSQL 15 and Redis 7.

The stacks run the local images freeport-test-postgres:15 and freeport-test-redis:7 (built by
scripts/setup.sh from Debian packages, scripts/images/; nothing is pulled), chosen through the
template's POSTGRES_IMAGE and REDIS_IMAGE. psql and redis-cli run in throwaway containers of the
local PostgreSQL image (the two images share one rootfs, so it has both) on the host's network,
against 127.0.0.1 and the leased ports: every answer crosses the port binding that freeport-compose
leased, and nothing but loopback and the tests' own containers is reached. Each test cleans up its
projects and its client containers (labelled with its token) in a finally block.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    Footprint,
    assert_nothing_left,
    containers,
    docker,
    fpc,
    leases_of,
    ls_json,
    ok,
    parse_dotenv,
    refused,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = str(ROOT / "templates/postgres-redis.yml")
POSTGRES_IMAGE = os.environ.get("FREEPORT_TEST_POSTGRES_IMAGE", "freeport-test-postgres:15")
REDIS_IMAGE = os.environ.get("FREEPORT_TEST_REDIS_IMAGE", "freeport-test-redis:7")
IMAGES = {"POSTGRES_IMAGE": POSTGRES_IMAGE, "REDIS_IMAGE": REDIS_IMAGE}
EPHEMERAL = range(32768, 61000)  # the kernel's default ephemeral range: never leased here
# (service, the process that must be its PID 1, container port) in the template
SERVERS = (("db", "postgres", "5432/tcp"), ("redis", "redis-server", "6379/tcp"))

# Shell functions for the client container's script: `pg` is psql on the stack's PostgreSQL as
# app/app (unaligned, tuples only, stopping at the first error), `rc` is redis-cli on its Redis.
CLIENT_PRELUDE = """set -eu
pg() { psql -h 127.0.0.1 -p "$FREEPORT_db" -U app -d app -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
rc() { redis-cli -h 127.0.0.1 -p "$FREEPORT_redis" "$@"; }
"""


@pytest.fixture(scope="module", autouse=True)
def service_images(docker_engine: None) -> None:
    """Skip the module, saying why, when setup.sh has not built the local service images."""
    missing = [image for image in IMAGES.values() if docker("image", "inspect", image).returncode != 0]
    if missing:
        pytest.skip(f"local service images missing ({', '.join(missing)}): run `bash scripts/setup.sh`")


@pytest.fixture
def fp(tmp_path: Path) -> Iterator[Footprint]:
    box = Footprint(tmp_path, prefix="fpc-svc")
    try:
        yield box
    finally:
        box.cleanup()


def client(fp: Footprint, script: str) -> list[str]:
    """`docker run` of `script` (sh, after CLIENT_PRELUDE) in a throwaway container of the local
    PostgreSQL image on the host's network, labelled with the test's token. FREEPORT_db and
    FREEPORT_redis are passed on from the environment of whoever runs it."""
    return ["docker", "run", "--rm", "--network", "host", "--label", fp.label,
            "-e", "PGPASSWORD=app", "-e", "FREEPORT_db", "-e", "FREEPORT_redis",
            POSTGRES_IMAGE, "sh", "-c", CLIENT_PRELUDE + script]


def session(fp: Footprint, ports: Mapping[str, int], script: str) -> dict[str, str]:
    """Run `script` in a client container against the stack on `ports`; its `key: value` lines."""
    env = {**os.environ, **{name: str(port) for name, port in ports.items()}}
    result = subprocess.run(client(fp, script), capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, f"client exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return answers(result.stdout)


def answers(stdout: str) -> dict[str, str]:
    """The `key: value` lines of a client script's output."""
    pairs = (line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    return {k: v for k, v in pairs}


def service_containers(project: str) -> dict[str, dict[str, Any]]:
    """The project's containers, service name: `docker inspect` data."""
    ids = containers(project)
    assert ids, f"no container of {project}"
    result = docker("inspect", *ids)
    assert result.returncode == 0, result.stderr
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in json.loads(result.stdout)}


# --------------------------------------------------------------------------------------------
# a) `run` with real services: SQL and Redis commands get real answers on the leased ports
# --------------------------------------------------------------------------------------------

RUN_SCRIPT = """
echo "ports: $FREEPORT_db $FREEPORT_redis"
one=$(pg -c 'SELECT 1')
echo "select: $one"
who=$(pg -c "SELECT current_user || '/' || current_database()")
echo "who: $who"
server=$(pg -c 'SELECT version()')
echo "server: $server"
pg -c 'CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)' -c "INSERT INTO notes VALUES (1, 'one'), (2, 'two')"
pg -c "UPDATE notes SET body = body || '!' WHERE id = 2"
notes=$(pg -c "SELECT string_agg(id || '=' || body, ',' ORDER BY id) FROM notes")
echo "notes: $notes"
denied=$(PGPASSWORD=wrong pg -c 'SELECT 1' 2>&1 || echo "(exit $?)")
echo "wrong password: $denied"
stored=$(rc SET greeting hello)
echo "set: $stored"
got=$(rc GET greeting)
echo "get: $got"
incr=$(rc INCR hits; rc INCR hits)
echo "incr:" $incr
"""


def test_run_gives_real_postgres_and_redis_on_leased_ports(fp: Footprint) -> None:
    project = fp.project()
    result = ok(fpc("run", "-f", TEMPLATE, "-p", project, "--", *client(fp, RUN_SCRIPT), env=IMAGES))
    seen = answers(result.stdout)
    db, redis = (int(p) for p in seen["ports"].split())
    assert db != redis
    assert db not in EPHEMERAL
    assert redis not in EPHEMERAL
    assert seen["select"] == "1"
    assert seen["who"] == "app/app"  # POSTGRES_USER and POSTGRES_DB of the template
    assert seen["server"].startswith("PostgreSQL "), seen
    assert seen["notes"] == "1=one,2=two!"  # a table round trip: created, written, updated, read
    assert 'password authentication failed for user "app"' in seen["wrong password"], seen
    assert (seen["set"], seen["get"], seen["incr"]) == ("OK", "hello", "1 2")

    # c) Down, and nothing left: no container, network, lease or stack record; nothing listens.
    assert_nothing_left(project, label=fp.label)
    assert ls_json()["leases"] == []
    assert refused(db)
    assert refused(redis)


# --------------------------------------------------------------------------------------------
# b) Two copies of the template side by side: each on its own ports, each with its own data
# --------------------------------------------------------------------------------------------

WRITE_A = """
pg -c "CREATE TABLE owner (name text)" -c "INSERT INTO owner VALUES ('a')" -c "CREATE TABLE only_a (x int)"
echo "set: $(rc SET owner a) $(rc SET only_a 1)"
"""

# In B: A's writes are not there; then B writes its own under the same names and reads them back.
WRITE_B = """
tables=$(pg -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
echo "tables: $tables"
echo "keys: $(rc DBSIZE)"
pg -c "CREATE TABLE owner (name text)" -c "INSERT INTO owner VALUES ('b')"
echo "set: $(rc SET owner b)"
owner=$(pg -c "SELECT name FROM owner")
echo "owner: $owner $(rc GET owner)"
"""

# Back in each stack: its own writes, untouched by the other's.
READ = """
owner=$(pg -c "SELECT string_agg(name, ',') FROM owner")
echo "owner: $owner $(rc GET owner)"
tables=$(pg -c "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
echo "tables: $tables"
echo "keys: $(rc DBSIZE)"
"""


def test_two_stacks_side_by_side_keep_their_own_data(fp: Footprint) -> None:
    a, b = fp.project(), fp.project()

    def up(project: str) -> dict[str, int]:
        return parse_dotenv(ok(fpc("up", "-d", "-f", TEMPLATE, "-p", project, "--wait", env=IMAGES)).stdout)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ports_a, ports_b = pool.map(up, (a, b))
    assert set(ports_a) == set(ports_b) == {"FREEPORT_db", "FREEPORT_redis"}
    assert not set(ports_a.values()) & set(ports_b.values()), (ports_a, ports_b)
    assert (leases_of(a), leases_of(b)) == (
        {"FREEPORT_db": ports_a["FREEPORT_db"], "FREEPORT_redis": ports_a["FREEPORT_redis"]},
        {"FREEPORT_db": ports_b["FREEPORT_db"], "FREEPORT_redis": ports_b["FREEPORT_redis"]},
    )

    # Each stack: both services healthy (the template's healthchecks work in these images), the
    # server itself is PID 1 (so Compose's stop signal reaches it), published on its own ports.
    for project, ports in ((a, ports_a), (b, ports_b)):
        services = service_containers(project)
        assert set(services) == {"db", "redis"}
        for service, process, container_port in SERVERS:
            container = services[service]
            assert container["State"]["Health"]["Status"] == "healthy", (project, service, container["State"])
            comm = docker("exec", container["Id"], "cat", "/proc/1/comm")
            assert comm.stdout.strip() == process, (project, service, comm.stdout, comm.stderr)
            bindings = container["NetworkSettings"]["Ports"][container_port]
            assert [(x["HostIp"], int(x["HostPort"])) for x in bindings] == [
                ("127.0.0.1", ports[f"FREEPORT_{service}"])
            ]

    assert session(fp, ports_a, WRITE_A) == {"set": "OK OK"}
    assert session(fp, ports_b, WRITE_B) == {"tables": "0", "keys": "0", "set": "OK", "owner": "b b"}
    assert session(fp, ports_a, READ) == {"owner": "a a", "tables": "only_a,owner", "keys": "2"}
    assert session(fp, ports_b, READ) == {"owner": "b b", "tables": "owner", "keys": "1"}

    # c) Both down at once; the servers stop on Compose's signal (a server that ignored it would
    # be killed only after Compose's 10 s timeout); then nothing is left and nothing listens.
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for result in pool.map(lambda p: fpc("down", "-p", p, "-v"), (a, b)):
            ok(result)
    assert time.monotonic() - started < 8, "down waited for Compose's stop timeout"
    assert_nothing_left(a, b, label=fp.label)
    assert ls_json()["leases"] == []
    assert all(refused(port) for port in (*ports_a.values(), *ports_b.values()))


# --------------------------------------------------------------------------------------------
# The local PostgreSQL image honours the official image's variables
# --------------------------------------------------------------------------------------------

VARIABLES_SCRIPT = """
q() { PGPASSWORD=$1 psql -h 127.0.0.1 -p "$FREEPORT_db" -U alice -d "$2" -X -q -A -t -v ON_ERROR_STOP=1 -c "$3"; }
sql="SELECT current_user || '/' || current_database() || '/' || rolsuper FROM pg_roles WHERE rolname = current_user"
who=$(q 's3cret pass' shop "$sql")
echo "who: $who"
echo "databases: $(q 's3cret pass' postgres "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")"
denied=$(q app shop 'SELECT 1' 2>&1 || true)
echo "wrong password: $denied"
"""


def test_postgres_image_honours_user_password_and_db(fp: Footprint) -> None:
    env = {"POSTGRES_USER": "alice", "POSTGRES_PASSWORD": "s3cret pass", "POSTGRES_DB": "shop"}
    healthcheck = 'healthcheck: {test: ["CMD", "pg_isready", "-U", "alice", "-d", "shop"], interval: 1s, retries: 60}'
    template = fp.compose_file("compose.yml", fp.service(
        "db", image=POSTGRES_IMAGE, command=["postgres"], env=env, ports=["127.0.0.1:$<FREEPORT_db>:5432"],
        extra=["tmpfs: [/var/lib/postgresql/data]", healthcheck],
    ))
    project = fp.project()
    seen = answers(ok(fpc("run", "-f", template, "-p", project, "--", *client(fp, VARIABLES_SCRIPT))).stdout)
    assert seen["who"] == "alice/shop/true", seen  # POSTGRES_USER is the superuser; POSTGRES_DB is made
    assert seen["databases"] == "postgres,shop,template0,template1", seen
    assert 'password authentication failed for user "alice"' in seen["wrong password"], seen
    assert_nothing_left(project, label=fp.label)

    # Without a password (and no POSTGRES_HOST_AUTH_METHOD=trust) it refuses to initialize, as the official image does.
    bare = docker("run", "--rm", "--label", fp.label, POSTGRES_IMAGE)
    assert bare.returncode == 1, bare.stderr
    assert "POSTGRES_PASSWORD is not set" in bare.stderr
