"""The state both halves share, as one object passed down explicitly from the CLI and the API.

One State per engine: the default engine (this machine's socket) keeps its leases and stack records
in the state dir itself, shared with plain FreePort() (both publish on this machine); any other
engine in engines/<key>/ below it, a state dir of its own, so a lease for one engine never blocks
another. `engines/<key>/engine.json` says which engine a directory is for (`ls` shows it).

Guarantee: every stack operation works on the state dir and engine it is handed (its lease store,
its stack records, its engine), never on one found through a global or an environment variable
written on the way.

May touch: nothing by itself; opening it verifies (and creates) the state directory.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from typing import TYPE_CHECKING, NamedTuple

from .._error import FreeportError, StateDirError, UnknownContextError
from .._leasing.locks import open_locks
from .._leasing.ranges import PortRange
from .._leasing.statedir import default_state_path, read_small, state_errors, write_atomic
from .._leasing.store import LeaseStore, Reclaimed
from .records import StackRecords
from .target import DEFAULT_ADDRESS, Engine, TLSFiles, resolve

if TYPE_CHECKING:
    from collections.abc import Mapping

ENGINES = "engines"
_META = "engine.json"


class State(NamedTuple):
    """A state directory's leases and stack records for one engine, opened once and handed to every verb."""

    leases: LeaseStore
    stacks: StackRecords
    engine: Engine
    root: str  # the state dir the user named (the default engine's; others' are below it)

    @property
    def path(self) -> str:
        """This engine's directory: the state dir itself, or engines/<key> below it."""
        return self.leases.path

    @classmethod
    def open(cls, path: str | None = None, engine: Engine | None = None) -> State:
        """The state dir at `path` (default: $FREEPORT_STATE_DIR, else the user's private one),
        verified, for `engine` (default: the one Compose would use here).

        Its lease store reclaims: an allocation that finds its range exhausted first frees the
        leases of stacks that are gone (see reclaim.py).
        """
        engine = engine if engine is not None else resolve(None, os.environ)
        root = path if path else default_state_path()
        if engine.is_default:
            return cls._at(root, engine, root)
        where = _engine_dir(root, engine.key)
        state = cls._at(where, engine, root)
        state._describe()
        return state

    @classmethod
    def _at(cls, path: str, engine: Engine, root: str) -> State:
        locks = open_locks(path)
        stacks = StackRecords(locks.sd)

        def reclaim(ports: PortRange) -> Reclaimed:
            # Imported here: only an exhausted range reclaims, and `get` must not pay for the engine
            # client at every start.
            from .reclaim import reclaim_gone

            return reclaim_gone(stacks, leases, engine, ports)

        leases = LeaseStore(locks, reclaim)
        return cls(leases, stacks, engine, root)

    def _describe(self) -> None:
        """engine.json: which engine this directory is for, and its TLS files (rewritten when they
        change), so `ls` and `gc` reach it as this command did."""
        sd = self.stacks.sd
        tls = self.engine.tls
        meta = {"address": self.engine.address, "context": self.engine.context, "tls": tls and tls._asdict()}
        import json  # written once per engine: reading is what every command does

        text = json.dumps(meta).encode()
        with state_errors(f"cannot write {os.path.join(sd.path, _META)}"):
            if read_small(sd.fd, _META) != text:
                write_atomic(sd.fd, _META, text, sd.file_mode)

    @classmethod
    def every(cls, path: str | None = None, engine: Engine | None = None) -> list[State]:
        """The State of every engine that has a directory below the state dir, the default engine
        first (`ls` and `gc` go through all of them). An engine's directory whose engine.json is
        missing or unreadable is skipped; one that is not a verified directory of ours is refused."""
        root = path if path else default_state_path()
        engine = engine if engine is not None else resolve(None, os.environ)
        states = [cls._at(root, engine if engine.is_default else Engine(DEFAULT_ADDRESS), root)]
        sd = states[0].stacks.sd
        try:
            os.stat(ENGINES, dir_fd=sd.fd, follow_symlinks=False)
        except FileNotFoundError:
            return states  # no other engine was ever targeted (and nothing is created for asking)
        efd = sd.subdir(sd.fd, ENGINES, os.path.join(root, ENGINES))  # refused if not a verified dir of ours
        try:
            keys = sorted(k for k in os.listdir(efd) if _is_key(k))
            for key in keys:
                try:
                    kfd = sd.subdir(efd, key, os.path.join(root, ENGINES, key))
                except StateDirError:
                    continue  # not a directory of ours (planted, or a stray file): never followed, skipped
                try:
                    found = _decode(read_small(kfd, _META))
                finally:
                    os.close(kfd)
                if found is None or found.key != key:
                    continue
                states.append(cls._at(os.path.join(root, ENGINES, key), _as_targeted(found, engine), root))
        finally:
            os.close(efd)
        return states


def _as_targeted(found: Engine, engine: Engine) -> Engine:
    """The engine of a directory, as this command can reach it: the one it targets (its context and
    TLS files as resolved), else the context engine.json names if that still names the same engine,
    else the bare address (a context since removed or pointed elsewhere)."""
    if found.canonical == engine.canonical:
        return engine
    if found.context:
        with suppress(UnknownContextError):
            named = resolve(found.context, os.environ)
            if named.canonical == found.canonical:
                return named
        return Engine(found.address, None, found.tls)
    return found


def elsewhere(state: State, project: str) -> str:
    """ "" or, for a project this State's engine has no stack of but another engine has, how to
    target that one (for the error that says the project is unknown)."""
    try:
        for other in State.every(state.root, state.engine):
            if other.engine.canonical != state.engine.canonical and other.stacks.load(project) is not None:
                e = other.engine
                how = f"--context {e.context}" if e.context else f"DOCKER_HOST={e.address}"
                return f"; a stack {project!r} is on the engine at {e.address}: give {how}"
    except FreeportError:
        pass  # a hint only: the error it adds to is the one to say
    return ""


def _is_key(name: str) -> bool:
    return len(name) == 20 and all(c in "0123456789abcdef" for c in name)


def _decode(raw: bytes | None) -> Engine | None:
    try:
        meta: Mapping[str, object] = json.loads(raw or b"")
        address, context, tls = meta["address"], meta.get("context"), meta.get("tls")
        files = None
        if isinstance(tls, dict):
            ca, cert, key, verify = (tls[k] for k in ("ca", "cert", "key", "verify"))
            if all(f is None or isinstance(f, str) for f in (ca, cert, key)) and type(verify) is bool:
                files = TLSFiles(ca, cert, key, verify)
    except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
        return None
    if not isinstance(address, str) or not (context is None or isinstance(context, str)):
        return None
    return Engine(address, context, files)


def _engine_dir(root: str, key: str) -> str:
    """engines/<key> below a verified root, each level created or opened without following a
    symlink and checked like the root itself (ours, not writable by others): a planted engines/ or
    engines/<key> link must not send our leases elsewhere. Opened by path afterwards, it cannot have
    been swapped: only we (or, in a shared sticky dir, the owner of the entry) may rename it."""
    sd = open_locks(root).sd
    efd = sd.subdir(sd.fd, ENGINES, os.path.join(root, ENGINES))
    try:
        os.close(sd.subdir(efd, key, os.path.join(root, ENGINES, key)))
    finally:
        os.close(efd)
    return os.path.join(root, ENGINES, key)
