"""The state both halves share, as one object passed down explicitly from the CLI and the API.

One lease store per machine: every engine that publishes on this machine (`Engine.on_this_machine`:
a unix socket wherever it lives, Docker's default one, rootless Docker's, Podman's rootful or
rootless one, a Docker Desktop context; loopback TCP) takes its leases from the state dir's own
ports/, the store plain FreePort() uses too, because they all bind in the one port space of this
machine: two such engines never get the same port. Only an engine whose ports are published
elsewhere (a remote tcp/ssh host) keeps a lease store of its own, in engines/<key>/, where a port
busy here may be free.

Stack records stay per engine: the default engine's in the state dir itself, any other's in
engines/<key>/ (a state dir of its own, same checks, with `engine.json` naming the engine, so `ls`
and `gc` reach it). A stack's leases are owned by its project; in the machine's store, a project of
an engine other than the default one owns them as `<project>.<16 hex digits of the engine's key>`
(see `EngineLocks`), so a project named alike on two local engines never shares, reuses or
releases the other's leases.

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

from .._error import FreeportError, StateDirError, UnknownContextError, UnknownOwnerError
from .._leasing.locks import Claim, PortLocks, Taken, open_locks
from .._leasing.ranges import PortRange
from .._leasing.records import LeaseRecord
from .._leasing.statedir import default_state_path, read_small, state_errors, write_atomic
from .._leasing.store import LeaseStore, Reclaimed
from .records import StackRecords
from .target import DEFAULT_ADDRESS, Engine, TLSFiles, resolve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

ENGINES = "engines"
_META = "engine.json"
_HEX = frozenset("0123456789abcdef")


def _is_scoped(owner: str) -> bool:
    """Whether `owner` ends as an owner scoped to a non-default engine does: ".<16 hex digits>". A
    Compose project name has no "." in it, so no project of the default engine looks scoped. (Not a
    regular expression: every command imports this module, and `re` costs its start.)"""
    return len(owner) > 17 and owner[-17] == "." and _HEX.issuperset(owner[-16:])


def owner_scope(engine: Engine) -> str:
    """What this engine's stacks' owner names end with in the lease store: "" for the default
    engine (its owners are the projects, as before engines shared a store) and for an engine
    elsewhere (its store is its own), `.<16 hex digits of its key>` for any other engine on this
    machine (it shares the machine's store with the default engine and with every other local one)."""
    if engine.is_default or not engine.on_this_machine:
        return ""
    return "." + engine.key[:16]


class EngineLocks(PortLocks):
    """One engine's view of a lease store: the machine's `PortLocks`, its owners scoped to the engine.

    Every call goes to the machine's own PortLocks (the same descriptors, slots and owner index,
    so claims by any engine's view exclude each other exactly as two FreePort() calls do), with
    owner names scoped on the way in and unscoped on the way out. `records` lists only this
    engine's leases (the default engine's view: every lease but those scoped to another engine),
    so `ls` shows each lease once, under its engine.

    Delegation, not inheritance of behaviour: the base class's methods call each other with the
    owner they were given (`release_owner` calls `release_named`), so an override that scopes
    would scope twice. The attributes are the machine's own, for any method not delegated here.
    """

    def __init__(self, machine: PortLocks, scope: str, engine: str) -> None:
        # No super().__init__: it would open the directory's slots a second time. Everything the
        # base class reads is the machine's.
        self.sd, self.owners, self.slots = machine.sd, machine.owners, machine.slots
        self.machine, self.scope, self._engine = machine, scope, engine

    def _in(self, owner: str) -> str:
        return owner + self.scope if self.scope and not _is_scoped(owner) else owner

    def _mine(self, record: LeaseRecord) -> bool:
        if record.owner is None:
            return not self.scope  # a process lease is plain FreePort()'s: the default engine's view
        return record.owner.endswith(self.scope) if self.scope else not _is_scoped(record.owner)

    def _out(self, record: LeaseRecord) -> LeaseRecord:
        if self.scope and record.owner is not None and record.owner.endswith(self.scope):
            return record._replace(owner=record.owner.removesuffix(self.scope))
        return record

    def likely_leased(self, port: int) -> bool:
        return self.machine.likely_leased(port)

    def try_claim(
        self,
        port: int,
        owner: str | None,
        label: str,
        is_free: Callable[[int], bool],
        explain: bool = False,
        create: bool = True,
    ) -> Claim | Taken:
        scoped = None if owner is None else self._in(owner)
        return self.machine.try_claim(port, scoped, label, is_free, explain, create)

    def release(self, claim: Claim) -> None:
        self.machine.release(claim)  # the claim carries the owner as it was claimed: scoped

    def release_named(self, port: int, owner: str, token: str | None) -> bool | None:
        return self.machine.release_named(port, self._in(owner), token)

    def owner_ports(self, owner: str) -> list[LeaseRecord] | None:
        found = self.machine.owner_ports(self._in(owner))
        return None if found is None else [self._out(r) for r in found]

    def release_owner(self, owner: str) -> list[int]:
        try:
            return self.machine.release_owner(self._in(owner))
        except UnknownOwnerError:
            if not self.scope:
                raise
            raise UnknownOwnerError(
                f"owner {owner!r} holds no lease for the engine at {self._engine} (in {self.sd.path})"
            ) from None

    def read(self, port: int) -> LeaseRecord | None:
        record = self.machine.read(port)
        return None if record is None else self._out(record)

    def records(self) -> Iterator[LeaseRecord]:
        return (self._out(r) for r in self.machine.records() if self._mine(r))

    def is_held(self, record: LeaseRecord) -> bool:
        owner = record.owner
        return self.machine.is_held(record if owner is None else record._replace(owner=self._in(owner)))

    def collect_dead(self) -> list[LeaseRecord]:
        return self.machine.collect_dead()  # process leases: no engine's own


class State(NamedTuple):
    """A state directory's leases and stack records for one engine, opened once and handed to every verb."""

    leases: LeaseStore
    stacks: StackRecords
    engine: Engine
    root: str  # the state dir the user named (the default engine's; others' are below it)

    @property
    def path(self) -> str:
        """This engine's directory (its stack records): the state dir itself, or engines/<key> below
        it. Its leases are in `leases.path`: the state dir itself for every engine on this machine."""
        return self.stacks.sd.path

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
        """The State of `engine` whose stack records are at `path`: its leases in the machine's
        store (the root's) when it publishes on this machine, else in `path`'s own. Without the
        machine's store, two local engines (Docker and Podman, say) each leased from their own
        and handed out the same port: the second stack's `up` failed on it."""
        records = open_locks(path)
        machine = open_locks(root) if engine.on_this_machine else records
        locks = EngineLocks(machine, owner_scope(engine), engine.address)
        stacks = StackRecords(records.sd)

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
