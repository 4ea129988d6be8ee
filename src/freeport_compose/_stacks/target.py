"""Which Docker engine a stack targets: the one Compose would use, found the way the docker CLI finds it.

Order (docker CLI's own): `--context`, else $DOCKER_HOST, else $DOCKER_CONTEXT, else the current
context of the CLI's config ($DOCKER_CONFIG/config.json), else the default socket. A context is
read from $DOCKER_CONFIG/contexts/meta/<sha256 of its name>/meta.json, with its TLS files beside it.

Guarantees: resolving reads files only (no engine is asked, nothing is imported beyond the standard
library); a context that does not exist, or a meta file that cannot be read, is one clear error
naming it; the Compose and docker children of a stack are pointed at the same engine (`child_env`)
without writing our own environment.

May touch: reads the docker CLI's config directory.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from .._error import EngineUnreachableError, FreeportError, UnknownContextError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from urllib.parse import SplitResult

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "")


class TLSFiles(NamedTuple):
    """A context's client certificates, so the SDK talks TLS to the same engine the docker CLI does."""

    ca: str | None
    cert: str | None
    key: str | None
    verify: bool


class Engine(NamedTuple):
    """The engine a stack targets, so leases, queries and Compose children all agree on it."""

    address: str  # unix:///..., tcp://host:port, ssh://user@host, npipe://...
    context: str | None = None  # the context that named it (None: $DOCKER_HOST or the default)
    tls: TLSFiles | None = None

    @property
    def name(self) -> str:
        """How `ls` names it: the context, else the address."""
        return self.context if self.context and self.context != "default" else self.address

    @property
    def canonical(self) -> str:
        """The address as one engine has one: a unix socket by its real path (/var/run is /run),
        a loopback TCP host as 127.0.0.1, the host in lower case. Leases are kept by it."""
        if self.address.startswith("unix://"):
            # What follows unix:// is the path the client connects to (a relative one from the cwd).
            return "unix://" + os.path.realpath(self.address.removeprefix("unix://"))
        parts = _split(self.address)
        try:
            port = parts.port
        except ValueError:  # not a port number: not one we could canonicalise (it reaches no engine)
            return self.address
        host = (parts.hostname or "").lower()
        host = "127.0.0.1" if host in _LOOPBACK else host
        return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"

    @property
    def is_default(self) -> bool:
        """The machine's own engine at the default socket: its stack records are the state dir's own
        (any other engine's are in engines/<key>/), and its projects own their leases by their bare
        names. Its leases are the machine's store, as those of every engine `on_this_machine` are."""
        return self.address == DEFAULT_ADDRESS or self.canonical == Engine(DEFAULT_ADDRESS).canonical

    @property
    def on_this_machine(self) -> bool:
        """Whether its published ports bind here (a unix socket or loopback TCP), so the local bind
        probe means something for it, and its leases are the machine's lease store (the state dir's
        own, shared with plain FreePort() and every other engine on this machine: they all publish
        in one port space). For an engine elsewhere a port busy here may be free there, and the
        reverse: only the engine's own published ports count, and its leases are its own.

        Told from the address alone (resolving reads no engine): a unix socket is this machine's
        wherever it lives (Docker's, rootless Docker's, Podman's, Docker Desktop's, Colima's: they
        all publish on this machine, Desktop and Colima through their port forwarding). A unix
        socket forwarded from another host (`ssh -L`) would be taken as local: name such an engine
        by its ssh:// or tcp:// address instead."""
        if self.address.startswith(("unix://", "npipe://", "fd://")):
            return True
        parts = _split(self.address)
        return parts.scheme in ("tcp", "http", "https") and (parts.hostname or "") in _LOOPBACK

    @property
    def host(self) -> str:
        """The address to reach its published ports on: the engine's host, or 127.0.0.1 here."""
        if self.on_this_machine:
            return "127.0.0.1"
        return _split(self.address).hostname or "127.0.0.1"

    @property
    def key(self) -> str:
        """The directory name of its stack records below the state dir, engines/<key> ("" for the
        default engine: the state dir itself), one per address. For an engine elsewhere that
        directory holds its leases too, so a lease for it does not block this machine's ports; an
        engine on this machine leases from the machine's store (see `on_this_machine`)."""
        if self.is_default:
            return ""
        return _sha256(self.canonical)[:20]

    def child_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` for a docker or Compose child, pinned to this engine whatever `env` itself names
        (a gc run from a shell aimed at another engine must still reach this one): `env` as it is
        when it names this engine already (podman compose, say, reads $DOCKER_HOST: it is left
        unset where it was); else its context ($DOCKER_HOST removed: it beats $DOCKER_CONTEXT), or
        its address with its own TLS settings ($DOCKER_CONTEXT removed, the shell's TLS variables
        replaced: they belong to the engine the shell names). The default context is its address
        (the docker CLI's default context is $DOCKER_HOST)."""
        try:
            if resolve(None, env) == self:
                return dict(env)
        except FreeportError:
            pass  # the shell names no engine that exists: pin this one
        out = dict(env)
        if self.context and self.context != "default":
            out.pop("DOCKER_HOST", None)
            out["DOCKER_CONTEXT"] = self.context
            return out
        for name in ("DOCKER_CONTEXT", "DOCKER_TLS", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            out.pop(name, None)
        out["DOCKER_HOST"] = self.address
        t = self.tls
        if t is not None:
            out["DOCKER_TLS_VERIFY" if t.verify else "DOCKER_TLS"] = "1"
            found = next((f for f in (t.ca, t.cert, t.key) if f), None)
            if found:
                out["DOCKER_CERT_PATH"] = os.path.dirname(found)
        return out


# hashlib and urllib.parse are imported where used: every command imports this module, few need them
# (~8 ms of OpenSSL bindings and parsing at each start otherwise).
def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _split(address: str) -> SplitResult:
    from urllib.parse import urlsplit

    return urlsplit(address)


def config_dir(env: Mapping[str, str]) -> str:
    return env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def resolve(context: str | None, env: Mapping[str, str]) -> Engine:
    """The engine Compose would use given `--context` (or None) and this environment."""
    if context:
        return _context(context, env)
    host = env.get("DOCKER_HOST")
    if host:
        return Engine(_valid(host, "$DOCKER_HOST"), tls=_env_tls(env))
    name = env.get("DOCKER_CONTEXT") or _current_context(env)
    if name:
        return _context(name, env)
    return Engine(DEFAULT_ADDRESS)


def _current_context(env: Mapping[str, str]) -> str | None:
    path = os.path.join(config_dir(env), "config.json")
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except (OSError, ValueError):
        return None  # no config (or one the docker CLI could not read either): the default engine
    current = raw.get("currentContext") if isinstance(raw, dict) else None
    return current if isinstance(current, str) and current else None


def _context(name: str, env: Mapping[str, str]) -> Engine:
    if name == "default":
        return Engine(env.get("DOCKER_HOST") or DEFAULT_ADDRESS, "default", _env_tls(env))
    digest = _sha256(name)
    base = os.path.join(config_dir(env), "contexts")
    meta = os.path.join(base, "meta", digest, "meta.json")
    try:
        with open(meta, "rb") as f:
            raw: Any = json.loads(f.read())
        endpoint = raw["Endpoints"]["docker"]
        address = endpoint["Host"]
        skip_verify = bool(endpoint.get("SkipTLSVerify", False))
        if not isinstance(address, str) or not address:
            raise TypeError
        _valid(address, f"docker context {name!r}")
    except FileNotFoundError:
        raise UnknownContextError(f"docker context {name!r} does not exist (looked for {meta})") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UnknownContextError(f"docker context {name!r} cannot be read: {meta} has no docker endpoint") from None
    tls_dir = os.path.join(base, "tls", digest, "docker")
    files = {n: os.path.join(tls_dir, f"{n}.pem") for n in ("ca", "cert", "key")}
    found = {n: p if os.path.isfile(p) else None for n, p in files.items()}
    tls = TLSFiles(found["ca"], found["cert"], found["key"], not skip_verify) if any(found.values()) else None
    return Engine(address, name, tls)


def _valid(address: str, where: str) -> str:
    """The address, if a client could connect to it; one clear error naming it and `where` it came
    from otherwise (a port that is no number fails every later step with a traceback)."""
    try:
        _ = _split(address).port  # a ValueError for a port that is no number
    except ValueError:
        raise EngineUnreachableError(f"no Docker engine answers at {address}: not a valid address ({where})") from None
    return address


def _env_tls(env: Mapping[str, str]) -> TLSFiles | None:
    """$DOCKER_TLS, $DOCKER_TLS_VERIFY and $DOCKER_CERT_PATH, as the docker CLI reads them: TLS when
    either of the first two is set at all (any value, "0" too), verified when $DOCKER_TLS_VERIFY is;
    $DOCKER_CERT_PATH alone changes nothing."""
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not verify and not env.get("DOCKER_TLS"):
        return None
    d = env.get("DOCKER_CERT_PATH") or config_dir(env)
    ca, cert, key = (p if os.path.isfile(p := os.path.join(d, f"{n}.pem")) else None for n in ("ca", "cert", "key"))
    return TLSFiles(ca, cert, key, verify)
