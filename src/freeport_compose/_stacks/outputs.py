"""Rendered files: written into the state dir (the default) or to the user's `-o` path.

Guarantee: every file is written atomically (temporary file + rename), so a reader or a kill
half-way sees the old file or the new one, never half of one. Returns the files Compose is given,
in order: the user's plain files, the rendered ones, and the override if any.

May touch: the project's directory of rendered files in the state dir, or the `-o` path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .._error import OutputError, TemplateError
from .._leasing.statedir import state_errors, write_atomic
from .compose import Compose
from .records import StackRecords
from .templateset import TemplateSet

MIN_OVERRIDE = (2, 24, 4)  # first Compose with the !override tag


def write_outputs(
    templates: TemplateSet,
    ports: Mapping[str, int],
    stacks: StackRecords,
    project: str,
    out: str | None,
    compose: Compose | None,
) -> list[str]:
    """Render every template, into the state dir (out None) or to `out`; returns the files Compose
    must be given, in order: the user's plain files, the rendered ones, and the override if any."""
    conflicts = templates.conflicts()
    if conflicts and compose is not None and compose.version() < MIN_OVERRIDE:
        e = next(iter(conflicts.values()))[0]
        raise TemplateError(
            e.path,
            e.line,
            e.column,
            f"a base file also publishes {e.service}:{e.target}; replacing it needs Compose >= 2.24.4",
        )
    rendered = [t for t in templates.templates if t.occurrences]
    single = out is not None and len(rendered) == 1 and not conflicts and not os.path.isdir(out)
    if out is not None and not single:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output directory {out}: {e.strerror or e}") from None
    dfd = stacks.files_dir(project) if out is None else None

    def emit(name: str, text: str) -> str:
        """Write one output file atomically; its path."""
        if dfd is not None:
            with state_errors(f"cannot write {stacks.path(project, name)}"):
                write_atomic(dfd, name, text.encode(), stacks.sd.file_mode)
            return stacks.path(project, name)
        assert out is not None
        dest = os.path.abspath(out if single else os.path.join(out, name))
        try:
            write_file(dest, text)
        except OSError as e:
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from None
        return dest

    try:
        files = [
            emit(f"{i}-{os.path.basename(t.path)}", t.render(ports)) if t.occurrences else os.path.abspath(t.path)
            for i, t in enumerate(templates.templates, 1)
        ]
        if conflicts:
            files.append(emit("freeport-override.yml", templates.override_text(ports, conflicts)))
    finally:
        if dfd is not None:
            os.close(dfd)
    return files


def write_file(path: str, text: str) -> None:
    """Write `path` atomically (temporary file + rename): never half-written, even if killed."""
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomic(directory, os.path.basename(path), text.encode(), 0o644)
    finally:
        os.close(directory)
