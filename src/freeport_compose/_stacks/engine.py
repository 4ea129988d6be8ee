"""Engine state through the Docker SDK: which Compose projects still have containers.

Guarantee: one query per call, never a guess: an engine that does not answer raises
EngineUnreachableError. Imported only where needed (`ls`, `gc`, a failed `up`): the SDK costs ~90 ms
to import.

May touch: the Docker engine's API (read only).
"""

from __future__ import annotations

from collections import Counter

from .._error import EngineUnreachableError

_PROJECT_LABEL = "com.docker.compose.project"


def project_containers() -> Counter[str]:
    """Number of containers (running or not) per Compose project name, from the engine itself."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=10)
        try:
            containers = client.api.containers(all=True, filters={"label": _PROJECT_LABEL})
        finally:
            client.close()
    except docker.errors.DockerException as e:
        raise EngineUnreachableError(f"no Docker engine answers: {str(e).splitlines()[0]}") from None
    return Counter(c.get("Labels", {}).get(_PROJECT_LABEL, "") for c in containers)
