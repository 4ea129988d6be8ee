"""Engine state, asked of the engine a stack targets: which Compose projects and Swarm stacks still
have containers or services, which ports the engine has published, and why a service failed.

Guarantee: one engine query per call (two for `published_ports` on a Swarm manager, plus one per
failed container for `failures`), never a guess: an engine that does not answer raises
EngineUnreachableError naming the address tried.

Transport: an engine on a unix socket is asked over plain HTTP/1.0 on that socket (~1 ms, standard
library only); any other (tcp with TLS, ssh) through the Docker SDK, which knows those transports but
costs ~90 ms to import. `failures` (logs, inspect) always uses the SDK: it runs only after a failure.

May touch: the engine's API (read only).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

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


class _NotManager(Exception):
    """The engine answered 503 to a Swarm query: it is not a Swarm manager."""


def _unreachable(engine: Engine, why: str) -> EngineUnreachableError:
    return EngineUnreachableError(f"no Docker engine answers at {engine.address}: {why}")


def _get_unix(engine: Engine, path: str, params: Mapping[str, str]) -> Any:
    """GET `path` on the engine's unix socket; the decoded JSON body."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    request = f"GET {path}{'?' + query if query else ''} HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A timeout on every call: a wedged engine must fail the command, not hang it.
    sock.settimeout(_TIMEOUT)
    chunks = []
    try:
        sock.connect(urlsplit(engine.address).path)
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
    if status == 503 and path.startswith(("/services", "/swarm")):
        raise _NotManager
    if status != 200:
        raise _unreachable(engine, f"{path}: HTTP {status} {body[:200].decode(errors='replace').strip()}")
    try:
        return json.loads(body)
    except ValueError:
        raise _unreachable(engine, f"{path}: not JSON") from None


@contextmanager
def sdk_client(engine: Engine) -> Iterator[Any]:
    """A Docker SDK client for the engine (TLS files and ssh as the context says); closed after use."""
    import docker
    import docker.errors

    try:
        tls: Any = False
        if engine.tls is not None:
            import docker.tls

            t = engine.tls
            cert = (t.cert, t.key) if t.cert and t.key else None
            tls = docker.tls.TLSConfig(client_cert=cert, ca_cert=t.ca, verify=t.ca if t.verify and t.ca else t.verify)
        # No request yet (an explicit version): the session must be set up before the first one.
        client = docker.DockerClient(
            base_url=engine.address,
            tls=tls,
            timeout=int(_TIMEOUT),
            use_ssh_client=engine.address.startswith("ssh://"),
            version=_MIN_API,
        )
        if engine.tls is not None and engine.tls.ca:
            # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE replace the session's CA on every
            # request: the context's own CA would be ignored and verification fail. The docker CLI
            # trusts the context's CA alone; so do we.
            client.api.trust_env = False
        api: Any = client.api  # the SDK's own step of version="auto", taken after the session is set
        api._version = api._retrieve_server_version()
    except docker.errors.DockerException as e:
        raise _unreachable(engine, str(e).splitlines()[0]) from None
    try:
        yield client
    except docker.errors.APIError as e:
        if e.status_code == 503:
            raise _NotManager from None
        raise _unreachable(engine, str(e).splitlines()[0]) from None
    except docker.errors.DockerException as e:
        raise _unreachable(engine, str(e).splitlines()[0]) from None
    finally:
        client.close()


def _get(engine: Engine, path: str, params: Mapping[str, str] | None = None) -> Any:
    params = params or {}
    if urlsplit(engine.address).scheme == "unix":
        return _get_unix(engine, path, params)
    with sdk_client(engine) as client:
        api = client.api
        return api._result(api._get(api._url(path), params=dict(params)), json=True)


def _filters(**filters: str) -> dict[str, str]:
    return {"filters": json.dumps({k: [v] for k, v in filters.items()})}


def project_containers(engine: Engine) -> dict[str, Containers]:
    """Containers (running or not) per Compose project name, from the engine itself."""
    found = _get(engine, "/containers/json", {"all": "1", **_filters(label=_PROJECT_LABEL)})
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
    ports = {
        int(p["PublicPort"])
        for c in _get(engine, "/containers/json")
        for p in c.get("Ports") or []
        if p.get("PublicPort")
    }
    try:
        services = _get(engine, "/services")
    except _NotManager:
        services = []  # no Swarm here (or a worker): containers are all there is
    for s in services:
        for p in (s.get("Endpoint") or {}).get("Ports") or []:
            if p.get("PublishedPort"):
                ports.add(int(p["PublishedPort"]))
    return frozenset(ports)


def swarm_stacks(engine: Engine) -> dict[str, int]:
    """Services per Swarm stack (as `docker stack deploy` labels them); NotSwarmManagerError on an
    engine that is not a Swarm manager."""
    try:
        services = _get(engine, "/services", _filters(label=STACK_LABEL))
    except _NotManager:
        raise NotSwarmManagerError(
            f"the engine at {engine.address} is not a Swarm manager "
            "(`docker swarm init` makes one; a worker cannot deploy or list stacks)"
        ) from None
    counts: dict[str, int] = {}
    for s in services:
        name = ((s.get("Spec") or {}).get("Labels") or {}).get(STACK_LABEL, "")
        counts[name] = counts.get(name, 0) + 1
    return counts


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
    with sdk_client(engine) as client:
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
