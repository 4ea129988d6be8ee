"""Engine state, asked of the engine a stack targets: which Compose projects and Swarm stacks still
have containers or services, which ports the engine has published, and why a service failed.

Guarantee: one engine query per call (two for `published_ports` on a Swarm manager, plus one per
failed container for `failures`), never a guess: an engine that does not answer raises
EngineUnreachableError naming the address tried.

Transport: an engine on a unix socket is asked over plain HTTP/1.0 on that socket by the small client
below (standard library only, ~1 ms a query); any other (tcp with TLS, ssh) through the Docker SDK,
which knows those transports but costs ~90 ms to import (with requests and urllib3): `ports`, `ls`,
`gc` and every allocation for a stack ask the engine, and would pay that on each start. `failures`
(logs, inspect) always uses the SDK: it runs only after a failure.

May touch: the engine's API (read only).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._error import EngineUnreachableError, NotSwarmManagerError
from .target import Engine

_PROJECT_LABEL = "com.docker.compose.project"
_SERVICE_LABEL = "com.docker.compose.service"
STACK_LABEL = "com.docker.stack.namespace"  # what `docker stack deploy` labels a stack's services with
_TIMEOUT = 10.0
_MIN_API = "1.24"  # a placeholder until the engine's own version is asked


@dataclass(frozen=True)
class Containers:
    """How many containers of one project the engine has, and how many of them run."""

    total: int = 0
    running: int = 0


class _Answered(Exception):
    """The engine answered a GET with an error status (503 on a Swarm query: no manager here)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def absent(self) -> bool:
        """The engine has no such API, or none usable here: 503 (Docker, no Swarm manager here) or
        404 (an engine without that endpoint at all: Podman's Docker-compatible API has no
        /services). Either way there is nothing of that kind on this engine to count. Without the
        404, every query of Podman's Swarm endpoints failed `up` and `render` with exit 7."""
        return self.status in (404, 503)


def _unreachable(engine: Engine, why: str) -> EngineUnreachableError:
    return EngineUnreachableError(f"no Docker engine answers at {engine.address}: {why}")


def _failed(engine: Engine, path: str, e: _Answered) -> EngineUnreachableError:
    """An engine that answered, with an error: told apart from one that does not answer (`answered`)."""
    error = EngineUnreachableError(f"the Docker engine at {engine.address} answered GET {path} with {e.status}: {e}")
    error.answered = True
    return error


def _message(body: bytes) -> str:
    try:
        raw = json.loads(body)
    except ValueError:
        raw = None
    text = raw.get("message") if isinstance(raw, dict) else None
    return str(text) if text else body[:200].decode(errors="replace").strip()


if TYPE_CHECKING:  # an alias for annotations only: Any is typing's
    Get = Callable[[str, Mapping[str, str]], Any]
    """GET a path of the engine's API with query parameters; its decoded JSON, or _Answered."""


def _get_unix(engine: Engine) -> Get:
    """GETs on the engine's unix socket, one short connection each (~0.3 ms)."""
    path = engine.address.removeprefix("unix://")

    def get(api_path: str, params: Mapping[str, str]) -> Any:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        request = f"GET {api_path}{'?' + query if query else ''} HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A timeout on every call: a wedged engine must fail the command, not hang it.
        sock.settimeout(_TIMEOUT)
        chunks = []
        try:
            sock.connect(path)
            sock.sendall(request)
            # HTTP/1.0: the engine answers without chunked encoding and closes the connection after
            # the body, so reading to EOF is the whole answer (no parser needed).
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as e:
            raise _unreachable(engine, e.strerror or str(e)) from None
        finally:
            sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise _unreachable(engine, "not an HTTP answer") from None
        # A connection that dropped mid-body would otherwise read as a short, maybe still valid,
        # JSON answer (a list cut after its first complete element is not, but `[]` padding is).
        length = _content_length(head)
        if length is not None and length != len(body):
            raise _unreachable(engine, f"{api_path}: the answer was cut short ({len(body)} of {length} bytes)")
        if status != 200:
            raise _Answered(status, _message(body))
        try:
            return json.loads(body)
        except ValueError:
            raise _unreachable(engine, f"{api_path}: not JSON") from None

    return get


def _content_length(head: bytes) -> int | None:
    """The Content-Length an HTTP head declares, None where it declares none (or an unreadable one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


@contextmanager
def sdk_client(engine: Engine, *, versioned: bool = True) -> Iterator[tuple[Any, str]]:
    """A Docker SDK client for the engine (TLS files and ssh as the context says) and the API
    version it speaks; closed after use. `versioned=False`: the one client that asked the version,
    for raw GETs that name the version in the URL (one connection, one ssh process), not a second
    one set to it for the SDK's own methods. Any failure to reach it (the SDK's own errors, and the
    requests errors it lets through after connecting) is EngineUnreachableError naming the address."""
    import docker
    import docker.errors
    import docker.tls
    import requests

    def make(version: str) -> Any:
        tls: Any = False
        if engine.tls is not None:
            t = engine.tls
            cert = (t.cert, t.key) if t.cert and t.key else None
            tls = docker.tls.TLSConfig(client_cert=cert, ca_cert=t.ca, verify=t.verify)
        client = docker.DockerClient(
            base_url=engine.address,
            tls=tls,
            timeout=int(_TIMEOUT),
            use_ssh_client=engine.address.startswith("ssh://"),
            version=version,  # explicit: no request before the session is set up below
        )
        if engine.tls is not None and engine.tls.ca:
            # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE replace the session's CA on every
            # request: the context's own CA would be ignored and verification fail. The docker CLI
            # trusts the context's CA alone; so do we.
            client.api.trust_env = False
        return client

    clients: list[Any] = []
    try:
        # What version="auto" does, by public calls only: ask /version (unversioned), then speak it.
        clients.append(make(_MIN_API))
        api = clients[0].api
        version = str(api.get(f"{api.base_url}/version", timeout=_TIMEOUT).json()["ApiVersion"])
        if versioned:
            clients.append(make(version))
        yield clients[-1], version
    except docker.errors.APIError as e:
        raise _Answered(e.status_code or 0, str(e.explanation or e)) from None
    except (docker.errors.DockerException, requests.RequestException, OSError, ValueError, KeyError) as e:
        raise _unreachable(engine, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    finally:
        for client in clients:
            client.close()


@contextmanager
def _api(engine: Engine) -> Iterator[Get]:
    """GETs on one engine for one public function: over its unix socket without the SDK, else
    through one SDK client (one connection, one ssh process) for all of them."""
    if engine.address.startswith("unix://"):
        yield _get_unix(engine)
        return
    with sdk_client(engine, versioned=False) as (client, version):
        api = client.api

        def get(path: str, params: Mapping[str, str]) -> Any:
            response = api.get(f"{api.base_url}/v{version}{path}", params=dict(params), timeout=_TIMEOUT)
            if response.status_code != 200:
                raise _Answered(response.status_code, _message(response.content))
            return response.json()

        yield get


def _filters(**filters: str) -> dict[str, str]:
    import json

    return {"filters": json.dumps({k: [v] for k, v in filters.items()})}


def _ask(get: Get, engine: Engine, path: str, params: Mapping[str, str]) -> Any:
    try:
        return get(path, params)
    except _Answered as e:
        raise _failed(engine, path, e) from None


def project_containers(engine: Engine) -> dict[str, Containers]:
    """Containers (running or not) per Compose project name, from the engine itself."""
    with _api(engine) as get:
        found = _ask(get, engine, "/containers/json", {"all": "1", **_filters(label=_PROJECT_LABEL)})
    counts: dict[str, list[int]] = {}
    for c in found:
        project = (c.get("Labels") or {}).get(_PROJECT_LABEL, "")
        count = counts.setdefault(project, [0, 0])
        count[0] += 1
        count[1] += c.get("State") == "running"
    return {project: Containers(total, running) for project, (total, running) in counts.items()}


def published_ports(engine: Engine) -> frozenset[int]:
    """Every host port the engine has published: its running containers' port bindings and, on a
    Swarm manager, every service's published ports (ingress and host mode). A Swarm's ingress mesh
    binds no socket, so a bind probe is blind to it; an engine elsewhere binds on another host."""
    with _api(engine) as get:
        containers = _ask(get, engine, "/containers/json", {})
        try:
            services = get("/services", {})
        except _Answered as e:
            if not e.absent:
                raise _failed(engine, "/services", e) from None
            # No Swarm, a worker, a locked manager, an engine with no Swarm API (Podman): its
            # containers are all it can tell.
            services = []
    ports = {int(p["PublicPort"]) for c in containers for p in c.get("Ports") or [] if p.get("PublicPort")}
    for s in services:
        for p in (s.get("Endpoint") or {}).get("Ports") or []:
            if p.get("PublishedPort"):
                ports.add(int(p["PublishedPort"]))
    return frozenset(ports)


def project_ports(engine: Engine, project: str) -> frozenset[int]:
    """The host ports the running containers of one Compose project publish, from the engine itself
    (one query): what `ports` recovers a lost lease from, so that a port another container took
    since (a service of the stack stopped meanwhile) is never taken for the stack's."""
    with _api(engine) as get:
        found = _ask(get, engine, "/containers/json", _filters(label=f"{_PROJECT_LABEL}={project}"))
    return frozenset(int(p["PublicPort"]) for c in found for p in c.get("Ports") or [] if p.get("PublicPort"))


def swarm_stacks(engine: Engine) -> dict[str, int]:
    """Services per Swarm stack (as `docker stack deploy` labels them); NotSwarmManagerError on an
    engine that is not a Swarm manager, its `inactive` True only when the engine is in no Swarm at
    all (a worker or a locked manager cannot tell, but its stacks may well exist)."""
    try:
        with _api(engine) as get:
            services = get("/services", _filters(label=STACK_LABEL))
    except _Answered as e:
        if not e.absent:
            raise _failed(engine, "/services", e) from None
        error = NotSwarmManagerError(f"the engine at {engine.address} is not a Swarm manager: {e.message}")
        # "... Use \"docker swarm init\" or \"docker swarm join\" ..." (503), or an engine with no
        # Swarm API at all (404: Podman): in no Swarm, so it has no stacks. A worker or a locked
        # manager (503 without that hint) cannot tell: its stacks may well exist.
        error.inactive = e.status == 404 or "swarm init" in e.message
        raise error from None
    counts: dict[str, int] = {}
    for s in services:
        name = ((s.get("Spec") or {}).get("Labels") or {}).get(STACK_LABEL, "")
        counts[name] = counts.get(name, 0) + 1
    return counts


def stack_leftovers(engine: Engine, project: str) -> tuple[int, int]:
    """How many containers (running or not) and networks of one Swarm stack are on this engine. A
    stack's services go at once with `docker stack rm`, but their tasks' containers stop in the
    background, and its networks go only once no task holds them (see dockerstack.remove_stack)."""
    label = _filters(label=f"{STACK_LABEL}={project}")
    with _api(engine) as get:
        containers = _ask(get, engine, "/containers/json", {"all": "1", **label})
        networks = _ask(get, engine, "/networks", label)
    return len(containers), len(networks)


@dataclass(frozen=True)
class Failure:
    """A container of a failed stack, with what the user needs to see before it is removed."""

    service: str
    container: str
    state: str  # "exited (1)", "running (unhealthy)", "created", ...
    health: str  # the last failing healthcheck's output, "" without one
    logs: list[str]  # its last log lines


def failures(engine: Engine, project: str, tail: int = 20) -> list[Failure]:
    """The containers of `project` that are not running, or running but unhealthy, with their last
    log lines and last failing healthcheck output; [] if all are well."""
    out = []
    try:
        with sdk_client(engine) as (client, _):
            out = _failures(client, project, tail)
    except _Answered as e:
        raise _failed(engine, "/containers", e) from None
    return out


def _failures(client: Any, project: str, tail: int) -> list[Failure]:
    out = []
    found = client.api.containers(all=True, filters={"label": f"{_PROJECT_LABEL}={project}"})
    for c in sorted(found, key=lambda c: str((c.get("Labels") or {}).get(_SERVICE_LABEL, ""))):
        info = client.api.inspect_container(c["Id"])
        state = info.get("State") or {}
        health = state.get("Health") or {}
        status = str(state.get("Status", "?"))
        unhealthy = health.get("Status") == "unhealthy"
        if status == "running" and not unhealthy:
            continue
        if status == "exited":
            status = f"exited ({state.get('ExitCode', '?')})"
        elif unhealthy:
            status = f"{status} (unhealthy)"
        probes = [p for p in health.get("Log") or [] if p.get("ExitCode") != 0]
        last_probe = str(probes[-1].get("Output", "")).strip() if probes else ""
        raw = client.api.logs(c["Id"], stdout=True, stderr=True, tail=tail)
        logs = raw.decode(errors="replace").splitlines() if isinstance(raw, bytes) else []
        service = str((c.get("Labels") or {}).get(_SERVICE_LABEL, "?"))
        name = str((c.get("Names") or ["?"])[0]).lstrip("/")
        out.append(Failure(service, name, status, last_probe, logs))
    return out
