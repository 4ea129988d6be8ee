"""The project name a command means when `-p` is not given: Compose's own rule, so that
`freeport-compose up` and `docker compose up` in one directory name the same project (and a second
`up` there is the same stack, not a second one).

Compose's rule (docs.docker.com/compose/how-tos/project-name): `-p`, else `$COMPOSE_PROJECT_NAME`
(the environment first, then the project's `.env` file or the `--env-file` files), else the
top-level `name:` of the files (the last that sets it; interpolated), else the project directory's
base name, lowercased, less every character not in [a-z0-9_-], with leading `_` and `-` trimmed.

Guarantee: the name returned is a valid Compose project name, or InvalidNameError says where the
invalid one came from. What Compose reads for the name is read here only as far as the name needs:
the dotenv files' `KEY=VALUE` lines and `${VAR}`-style interpolation of the one `name:` value
(`${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `$$`).

May touch: reads the env files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from .._error import InvalidNameError
from .records import check_project

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-+?])(?P<arg>[^}]*))?\})"
)


def normalize(name: str) -> str:
    """A directory's base name as Compose makes a project name of it (compose-go's NormalizeProjectName)."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-")


def dotenv(path: str) -> dict[str, str]:
    """The `KEY=VALUE` lines of a dotenv file (`export` allowed, quotes removed, `#` comments
    skipped); {} if it cannot be read. Only what a project name can come from: no interpolation
    inside it, no multi-line values."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value.find(value[0], 1) > 0:
            value = value[1 : value.find(value[0], 1)]
        else:
            value = value.split(" #", 1)[0].strip()
        out[key.strip()] = value
    return out


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with Compose's `${VAR}`-style references replaced from `env` (unset and no default: empty)."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["named"] or m["braced"]
        value, op, arg = env.get(name), m["op"] or "", m["arg"] or ""
        is_set = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("-"):
            return value if is_set and value is not None else arg
        if op.endswith("+"):
            return arg if is_set else ""
        return value or ""

    return _VARIABLE.sub(one, text)


def project_directory(given: str | None, files: Sequence[str]) -> str:
    """Compose's project directory: `--project-directory`, else the first Compose file's directory."""
    return given or os.path.dirname(os.path.abspath(files[0]))


def compose_project_name(
    given: str | None,
    declared: str | None,
    project_directory: str,
    env_files: Sequence[str],
    environ: Mapping[str, str],
) -> str:
    """The project name by Compose's rule (see the module's docstring): `given` (-p), the
    environment's or env files' COMPOSE_PROJECT_NAME, `declared` (the files' `name:` as written),
    the project directory's name."""
    if given:
        return check_project(given)
    files = list(env_files) or [os.path.join(project_directory, ".env")]
    env: dict[str, str] = {}
    for path in files:
        env.update(dotenv(path))
    env.update(environ)  # the environment wins over the env files, as in Compose
    if env.get("COMPOSE_PROJECT_NAME"):
        return check_project(env["COMPOSE_PROJECT_NAME"])
    if declared:
        name = interpolate(declared, env)
        if name:
            return check_project(name)
    name = normalize(os.path.basename(os.path.abspath(project_directory)))
    if not name:
        raise InvalidNameError(
            f"no project name: the directory {project_directory!r} gives none Compose accepts; give -p PROJECT"
        )
    return check_project(name)
