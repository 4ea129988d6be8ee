"""Engine state through the Docker SDK: which Compose projects still have containers, and why a
service failed.

Guarantee: one engine query per call (plus one per failed container for `failures`), never a guess:
an engine that does not answer raises EngineUnreachableError naming the address tried. Imported only
where needed (`ls`, `gc`, reclaiming ports, a failed `up`): the SDK costs ~90 ms to import.

May touch: the Docker engine's API (read only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._error import EngineUnreachableError

_PROJECT_LABEL = "com.docker.compose.project"
_SERVICE_LABEL = "com.docker.compose.service"
DEFAULT_ADDRESS = "unix:///var/run/docker.sock"


def engine_address() -> str:
    """The engine the Docker SDK (and Compose) talk to: $DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS


@dataclass(frozen=True)
class Containers:
    """How many containers of one project the engine has, and how many of them run."""

    total: int = 0
    running: int = 0


@contextmanager
def _client() -> Iterator[Any]:
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=10)
    except docker.errors.DockerException as e:
        raise EngineUnreachableError(
            f"no Docker engine answers at {engine_address()}: {str(e).splitlines()[0]}"
        ) from None
    try:
        yield client
    except docker.errors.DockerException as e:
        raise EngineUnreachableError(
            f"no Docker engine answers at {engine_address()}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        client.close()


def project_containers() -> dict[str, Containers]:
    """Containers (running or not) per Compose project name, from the engine itself."""
    with _client() as client:
        found = client.api.containers(all=True, filters={"label": _PROJECT_LABEL})
    counts: dict[str, list[int]] = {}
    for c in found:
        project = (c.get("Labels") or {}).get(_PROJECT_LABEL, "")
        count = counts.setdefault(project, [0, 0])
        count[0] += 1
        count[1] += c.get("State") == "running"
    return {project: Containers(total, running) for project, (total, running) in counts.items()}


@dataclass(frozen=True)
class Failure:
    """A container of a failed stack, with what the user needs to see before it is removed."""

    service: str
    container: str
    state: str  # "exited (1)", "running (unhealthy)", "created", ...
    health: str  # the last failing healthcheck's output, "" without one
    logs: list[str]  # its last log lines


def failures(project: str, tail: int = 20) -> list[Failure]:
    """The containers of `project` that are not running, or running but unhealthy, with their last
    log lines and last failing healthcheck output; [] if all are well."""
    out = []
    with _client() as client:
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
