"""Is a port really free? Asked of the kernel with the binds a server (or docker-proxy) will make.

Guarantee: `port_is_free` says True only if TCP bind+listen and UDP bind succeed on both wildcards
and on every host asked for, so a port in use by any program on this machine is never handed out.
It sees only this machine's sockets.

May touch: short-lived sockets, closed before it returns.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from socket import AF_INET, AF_INET6, IPPROTO_IPV6, IPV6_V6ONLY, SOCK_DGRAM, SOCK_STREAM, socket

from .._error import InvalidRangeError

# The wildcards every probe covers: a server on either one blocks a later publish of the port.
_WILDCARDS: tuple[tuple[int, str], ...] = (
    (AF_INET, "0.0.0.0"),
    (AF_INET6, "::"),
)
# Errors that mean "this address family or address does not exist here": skipped, not "busy".
_ABSENT = {errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL}


_COMMON = {
    "127.0.0.1": (AF_INET, "127.0.0.1"),
    "0.0.0.0": (AF_INET, "0.0.0.0"),
    "::1": (AF_INET6, "::1"),
    "::": (AF_INET6, "::"),
}


def normalize_host(host: str) -> tuple[int, str]:
    """A numeric IPv4/IPv6 address (brackets allowed) as (family, text); InvalidRangeError otherwise."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text in _COMMON:  # as ipaddress would read them: the hosts nearly every stack names
        return _COMMON[text]
    import ipaddress  # only requests naming another host pay for it (~1.5 ms)

    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRangeError(f"host {host!r} is not an IPv4 or IPv6 address") from None
    family = AF_INET6 if addr.version == 6 else AF_INET
    return family, str(addr)


def check_hosts(hosts: Iterable[str]) -> list[tuple[int, str]]:
    """The hosts to probe besides the wildcards, each checked to be an address of this machine."""
    out = []
    for host in hosts:
        family, text = normalize_host(host)
        if text in ("0.0.0.0", "::"):
            continue  # the wildcards are always probed
        s = socket(family, SOCK_DGRAM)
        try:
            s.bind((text, 0))
        except OSError as e:
            raise InvalidRangeError(f"host {host!r} is not an address of this machine ({e.strerror})") from None
        finally:
            s.close()
        out.append((family, text))
    return out


def _bind_fails(family: int, kind: int, address: str, port: int) -> bool:
    try:
        s = socket(family, kind)
    except OSError as e:
        if e.errno in _ABSENT:
            return False
        raise
    try:
        # No SO_REUSEADDR/SO_REUSEPORT: with them a socket bound but not yet listening, or a UDP
        # holder, would let our bind succeed and the port would look free.
        if family == AF_INET6:
            # v6-only: the v6 probe answers for the v6 space alone, whatever net.ipv6.bindv6only says;
            # the IPv4 wildcard has its own probe.
            s.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)
        try:
            s.bind((address, port))
            if kind == SOCK_STREAM:
                # listen too: bind+listen is the claim a server makes, and on kernels where a peer
                # bound with SO_REUSEADDR lets our bind pass, listen is where the clash shows.
                s.listen(1)
        except OSError as e:
            if e.errno in _ABSENT and address in ("0.0.0.0", "::"):
                return False  # no such family here (IPv6 disabled): nothing can hold the port there
            return True  # EADDRINUSE, EACCES (privileged), or anything we cannot rule out
    finally:
        s.close()
    return False


def port_is_free(port: int, hosts: Sequence[tuple[int, str]] = ()) -> bool:
    """True only if TCP bind+listen and UDP bind succeed on both wildcards and on every host."""
    targets = (*_WILDCARDS, *hosts) if hosts else _WILDCARDS
    for kind in (SOCK_STREAM, SOCK_DGRAM):
        for family, address in targets:
            if _bind_fails(family, kind, address, port):
                return False
    return True
