"""Signals held back while a stack is being cleaned up.

Guarantee: a second Ctrl-C or a SIGTERM during a rollback or a `down` cannot leave a half-removed
stack: SIGINT and SIGTERM are held until the cleanup is done, then delivered.

May touch: this process's SIGINT and SIGTERM handlers (main thread only).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done, then deliver them; a no-op outside the main thread."""
    got: list[int] = []
    handler = lambda signum, frame: got.append(signum)  # noqa: E731
    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to manage
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in got:
            signal.raise_signal(signum)
