"""`doctor`: what freeport-compose would use here, and whether it works, as a list of findings.

Guarantees: nothing is changed, created or started (the state dir is not even created: only looked
at); the engine is asked one cheap question (`/_ping`, or `/version` through the SDK for a remote
one); every finding is returned, none printed, and none raises: a failure is a finding with
`ok=False`, so one broken part never hides the others.

May touch: the docker CLI's config dir and the state dir (read); the engine's API (one read).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, NamedTuple

from .._error import FreeportError
from .._leasing.statedir import default_state_path
from .target import Engine, resolve

if TYPE_CHECKING:
    from collections.abc import Mapping


class Finding(NamedTuple):
    """One thing `doctor` checked: what, what it found, and whether that is as it should be."""

    what: str  # "engine", "local", "lease store", "stack records", "compose", "engine answers"
    found: str
    ok: bool = True


def doctor(
    state_dir: str | None = None, context: str | None = None, env: Mapping[str, str] | None = None
) -> list[Finding]:
    """The findings for the engine `context` (or $DOCKER_HOST, ...) names and the state dir
    `state_dir` (default: $FREEPORT_STATE_DIR, else the user's own), in a fixed order: the
    engine and its address, whether it publishes on this machine, the lease store it uses, its
    stack records, the Compose plugin, whether the engine answers."""
    env = os.environ if env is None else env
    try:
        engine = resolve(context, env)
    except FreeportError as e:
        return [Finding("engine", str(e), ok=False)]
    root = os.path.abspath(state_dir) if state_dir else default_state_path()
    local = engine.on_this_machine
    records = root if engine.is_default else os.path.join(root, "engines", engine.key)
    leases = root if local else records
    how = f"context {engine.context}" if engine.context else "$DOCKER_HOST" if env.get("DOCKER_HOST") else "default"
    findings = [
        Finding("engine", f"{engine.address} ({how})"),
        Finding(
            "local",
            "yes: its ports publish on this machine, and it shares this machine's lease store"
            if local
            else "no: its ports publish on its own host; it has a lease store of its own",
        ),
        Finding("lease store", f"{leases}/ports" + ("" if os.path.isdir(leases) else " (not made yet)")),
        Finding("stack records", f"{records}/stacks"),
        _compose(),
        _answers(engine),
    ]
    return findings


def _compose() -> Finding:
    from .compose import find_plugin

    try:
        found = find_plugin()
    except (OSError, FreeportError) as e:
        return Finding("compose", f"cannot look for the Compose plugin: {e}", ok=False)
    if found is None:
        return Finding("compose", "no Compose v2 plugin (docker-compose) in the docker CLI's plugin dirs", ok=False)
    return Finding("compose", found)


def _answers(engine: Engine) -> Finding:
    """Whether the engine answers: a `GET /_ping` on its unix socket, else the SDK's `/version`."""
    if engine.address.startswith("unix://"):
        path = engine.address.removeprefix("unix://")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)  # a wedged engine must not hang `doctor`
                sock.connect(path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                head = sock.recv(64)
        except OSError as e:
            return Finding("engine answers", f"no: {path}: {e.strerror or e}", ok=False)
        fine = head.startswith(b"HTTP/") and b" 200 " in head.split(b"\r\n", 1)[0] + b" "
        return Finding("engine answers", "yes" if fine else f"no: {head[:40]!r}", ok=fine)
    from .engine import sdk_client

    try:
        with sdk_client(engine, versioned=False) as (_, version):
            return Finding("engine answers", f"yes (API {version})")
    except Exception as e:  # any failure to reach it is this finding, never a crash of doctor
        return Finding("engine answers", f"no: {e}", ok=False)
