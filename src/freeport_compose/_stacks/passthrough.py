"""Becoming Compose: a Compose command line handed over whole, as if the user had typed it to
`docker compose` (its exit status, its signals, its terminal are theirs: `logs -f`, `exec db psql`).

Kept apart from the lifecycle so that a pass-through verb loads neither the template reader (YAML)
nor the lifecycle's modules: Compose is started from the stack's record alone.

Guarantees: the process is replaced by Compose (execvpe of an argument list, never a shell string),
pointed at the engine the command targets; or a FreeportError says why not.

May touch: execs Compose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NoReturn

from .._error import ComposeNotFoundError
from .compose import Compose
from .records import StackRecord
from .state import State
from .target import Engine


def exec_compose(state: State, record: StackRecord, args: Sequence[str]) -> NoReturn:
    """Become `docker compose <the stack's recorded options> ARGS`: the files, profiles, env files,
    project directory and name recorded at up or render; a stack whose files are gone is named to
    Compose by its project name alone (Compose finds it by its containers' labels)."""
    compose = Compose.find(state.engine)
    files_there = all(os.path.exists(f) for f in record.compose_files)
    head = record.compose_project().args() if files_there else ["--project-name", record.project]
    _become([*compose.command, *head, *args], compose.env)


def exec_plain(engine: Engine, args: Sequence[str]) -> NoReturn:
    """Become `docker compose ARGS` as typed, on `engine`: no stack of ours is concerned."""
    compose = Compose.find(engine)
    _become([*compose.command, *args], compose.env)


def _become(argv: list[str], env: Mapping[str, str] | None) -> NoReturn:
    try:
        os.execvpe(argv[0], argv, env or os.environ)  # noqa: S606 (an argument list, never a shell string)
    except OSError as e:
        raise ComposeNotFoundError(f"cannot run {argv[0]!r}: {e.strerror or e}") from None
