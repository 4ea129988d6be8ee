"""Which Compose files, profiles and env files a command means, found the way Compose finds them.

Guarantee: with no `-f`, the files are `COMPOSE_FILE` (split on `COMPOSE_PATH_SEPARATOR`), else the
first of compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml in the current directory
or its nearest parent that has one, with its `.override` file beside it if there is one; profiles
and env files come from `COMPOSE_PROFILES` and `COMPOSE_ENV_FILES` when none are given. What is
given explicitly always wins. Nothing is read but the environment handed in and the file system.

May touch: reads directory entries from the current directory up to the root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .._error import NoComposeFileError

COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def compose_files(given: Sequence[str], env: Mapping[str, str], cwd: str) -> list[str]:
    """The files a command means (see the module's guarantee); NoComposeFileError naming where it looked."""
    if given:
        return list(given)
    listed = env.get("COMPOSE_FILE", "")
    if listed:
        separator = env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [os.path.join(cwd, f) for f in listed.split(separator) if f]
    here = os.path.abspath(cwd)
    while True:
        for name in COMPOSE_NAMES:
            path = os.path.join(here, name)
            if os.path.isfile(path):
                stem, ext = os.path.splitext(name)
                candidates = [
                    os.path.join(here, f"{stem}.override{e}") for e in (ext, ".yml" if ext == ".yaml" else ".yaml")
                ]
                override = next((o for o in candidates if os.path.isfile(o)), None)
                return [path] if override is None else [path, override]
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    raise NoComposeFileError(
        f"no Compose file found: looked for {', '.join(COMPOSE_NAMES)} in {os.path.abspath(cwd)} and its "
        "parents (give -f FILE, or set COMPOSE_FILE)"
    )


def listed(given: Sequence[str], env: Mapping[str, str], variable: str) -> list[str]:
    """`given` if any, else the comma-separated items of $variable (COMPOSE_PROFILES, COMPOSE_ENV_FILES)."""
    if given:
        return list(given)
    return [item.strip() for item in env.get(variable, "").split(",") if item.strip()]
