"""`run`: a stack for the lifetime of one command, and the command's exit status as ours.

Guarantees: the stack is up (and ready) before the command starts, with every FREEPORT_* in its
environment, and down when it ends, however it ends; SIGTERM and SIGHUP reach the command; the
status returned is the command's own (128+N when it died of signal N, 127/126 when it could not
be started). A `run` killed outright (SIGKILL of its process group, its terminal closed) has its
stack brought down by the stack's reaper (reaper.py) within seconds of the command's end (the
command holds the stack's users' flock too: `run` alone SIGKILLed leaves it its stack); were the
reaper killed too, by the next allocation (`reap_dead`) or gc.

May touch: what `up` and `down` touch; starts the command as a child process (argv, never a
shell), and the stack's reaper.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .._error import FreeportError
from .._leasing.statedir import STATE_ENV
from .lifecycle import Notify, Options, down, silent, up
from .reaper import watch
from .records import StackStatus, project_name
from .state import State


def _note_interrupt(signum: int, frame: Any) -> None:
    """SIGINT while the command runs: the command got it too (same process group); its status decides."""


def run(
    state: State,
    opts: Options,
    command: Sequence[str],
    *,
    keep_volumes: bool = False,
    extra: Sequence[str] = (),
    notify: Notify = silent,
) -> int:
    """up --wait, run `command` with FREEPORT_* in its environment, down; returns the command's exit status.

    Ctrl-C and SIGTERM reach the command, and the stack is brought down whatever happens.
    """
    # A name of its own (unless -p): parallel runs from one checkout never meet. Named now, not by
    # `up`: the stack is watched (below) before anything of it exists.
    opts = replace(opts, unique_name=True)
    if opts.files:
        opts = replace(opts, project=project_name(opts.project, opts.files))
    watched = None if opts.project is None else watch(state, opts.project, volumes=not keep_volumes)
    try:
        record = up(state, opts, wait=True, extra=extra, status=StackStatus.RUN, notify=notify)
    except BaseException:
        if watched is not None:
            watched.close()
        raise
    code = 1
    try:
        env = {
            **os.environ,
            **{k: str(v) for k, v in record.ports.items()},
            # and where to reach each, as `ports` prints it (its host_ip, else 127.0.0.1)
            **{f"{k}_HOST": record.hosts.get(k, "127.0.0.1") for k in record.ports},
            "COMPOSE_PROJECT_NAME": record.project,
            STATE_ENV: state.root,  # a `freeport-compose ports` in the command finds this stack
        }
        env = state.engine.child_env(env)  # ... on this engine, as a `docker compose` in it does
        child: subprocess.Popen[bytes] | None = None
        early: list[int] = []  # signals that came before the command existed

        def forward(signum: int, frame: Any) -> None:
            if child is None:
                early.append(signum)
            else:
                child.send_signal(signum)

        # Ctrl-C reaches the command from the terminal itself (it is in our process group): we only
        # wait for it. A handler, not SIG_IGN: an ignored signal stays ignored across exec, so the
        # command (pytest, a shell, sleep) would never see its Ctrl-C; a handler is reset to the
        # default in the command.
        old = {signal.SIGINT: signal.signal(signal.SIGINT, _note_interrupt)}
        old.update({s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)})
        try:
            try:
                # The command holds the stack's users' flock too: were this process SIGKILLed alone,
                # the reaper would take the stack down under a command still running. With it, the
                # stack lives as long as the command (or this process) does.
                kept = () if watched is None or watched.fd is None else (watched.fd,)
                child = subprocess.Popen(list(command), env=env, pass_fds=kept)
            except OSError as e:
                notify(f"cannot run {command[0]!r}: {e.strerror}")
                code = 127 if e.errno == errno.ENOENT else 126
            else:
                for signum in early:
                    child.send_signal(signum)
                status = child.wait()
                code = 128 - status if status < 0 else status
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    finally:
        try:
            down(state, record.project, volumes=not keep_volumes)
        except FreeportError as e:  # the command's status still stands; say what is left
            notify(str(e))
        finally:
            if watched is not None:
                watched.close()  # the reaper finds it down, and exits (or finishes a down that failed)
    return code
