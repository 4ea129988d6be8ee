"""Placeholder names: `FREEPORT_<name>`, how a user may write one, and the order they are shown in.

Guarantee: "db" and "FREEPORT_db" name the same port everywhere (CLI, API, pytest); names sort
numbers first, numerically, then the rest, and two distinct names never sort as equal.

May touch: nothing. (Kept apart from the template reader, which imports YAML, so that commands
that only look ports up do not pay for it.)
"""

from __future__ import annotations

PREFIX = "FREEPORT_"


def placeholder_key(name: str) -> str:
    """The key of a placeholder as given by a user: "db" and "FREEPORT_db" both mean FREEPORT_db."""
    return name if name.startswith(PREFIX) else PREFIX + name


def sort_key(name: str) -> tuple[int, int, str]:
    """FREEPORT_1 < FREEPORT_2 < FREEPORT_10 < FREEPORT_api < FREEPORT_db."""
    suffix = name[len(PREFIX) :]
    return (0, int(suffix), suffix) if suffix.isdecimal() else (1, 0, suffix)  # FREEPORT_01 != FREEPORT_1
