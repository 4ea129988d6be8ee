"""Zero-edit: the host ports an unmodified Compose file publishes, read from Compose's own model,
named, grouped for leasing, and put back on leased ports by an override file.

Guarantees:
- The ports are those of `docker compose config --format json` of the user's files, so `include:`,
  `extends:`, profiles, `.env` and `${VAR}` interpolation, `!reset`/`!override` and several `-f`
  files mean exactly what Compose makes of them. The user's files are never written.
- Every published port (short or long syntax, with or without a host address, TCP or UDP) and every
  container-only port (`"80"`, which Docker would publish on a random port) gets a leased port;
  every other field of the entry (`host_ip`, `protocol`, `mode`, `name`, `app_protocol`) is kept.
- A service on the host's network (`network_mode: host`) publishes nothing (Docker discards its
  `ports:`): nothing of it is leased, and `host_network` names it so the user is told.
- Names: `FREEPORT_<service>_<name>` for a long-syntax entry with a `name:`, else
  `FREEPORT_<service>_<target>`, `_udp` for a UDP-only entry (a TCP+UDP pair on one target
  shares one port), `_2`, `_3`... when one target is published on several host ports; characters
  outside [A-Za-z0-9_] become `_`. Entries that a range made (`8000-8002:80-82`: consecutive host and
  container ports) are leased as one block of consecutive ports.

May touch: nothing (it works on the model it is given and returns text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .names import PREFIX

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Binding:
    """One entry of a service's `ports:` in Compose's model, and the name its leased port goes by."""

    service: str
    index: int  # its place in the service's ports list
    entry: Mapping[str, Any]  # as the model has it
    name: str

    @property
    def target(self) -> int:
        return int(self.entry["target"])

    @property
    def protocol(self) -> str:
        return str(self.entry.get("protocol") or "tcp")

    @property
    def host_ip(self) -> str:
        return str(self.entry.get("host_ip") or "")

    @property
    def published(self) -> str:
        return str(self.entry.get("published") or "")


def services_ports(model: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """{service: its ports entries} of a model (`config --format json`), services without ports left out."""
    services = model.get("services")
    if not isinstance(services, dict):
        return {}
    out: dict[str, list[Mapping[str, Any]]] = {}
    for service, spec in services.items():
        ports = spec.get("ports") if isinstance(spec, dict) else None
        if isinstance(ports, list) and ports and not _on_host_network(spec):
            out[str(service)] = [p for p in ports if isinstance(p, dict) and "target" in p]
    return out


def _on_host_network(spec: Mapping[str, Any]) -> bool:
    return spec.get("network_mode") == "host"


def host_network(model: Mapping[str, Any]) -> list[str]:
    """The services that list `ports:` but run on the host's network, where Docker publishes none of
    them (the service binds its ports on the host itself)."""
    services = model.get("services")
    if not isinstance(services, dict):
        return []
    return sorted(
        str(s)
        for s, spec in services.items()
        if isinstance(spec, dict) and spec.get("ports") and _on_host_network(spec)
    )


def bindings(model: Mapping[str, Any], keep: Callable[[str, Mapping[str, Any]], bool]) -> list[Binding]:
    """Every port entry of the model that is to be leased (those `keep(service, entry)` is False for),
    each with its name."""
    found: list[tuple[str, int, Mapping[str, Any]]] = [
        (service, i, entry)
        for service, entries in services_ports(model).items()
        for i, entry in enumerate(entries)
        if not keep(service, entry)
    ]
    # One name per (service, target, host port as written): the addresses and protocols a port is
    # published on share it; a second host port for one target gets a name of its own.
    protocols: dict[tuple[str, int, str], set[str]] = {}
    for service, _, entry in found:
        key = (service, int(entry["target"]), str(entry.get("published") or ""))
        protocols.setdefault(key, set()).add(str(entry.get("protocol") or "tcp"))
    names: dict[tuple[str, int, str], str] = {}
    taken: set[str] = set()
    out = []
    for service, i, entry in found:
        key = (service, int(entry["target"]), str(entry.get("published") or ""))
        if key not in names:
            label = entry.get("name") or key[1]  # long syntax's `name:` names the port where given
            base = f"{PREFIX}{_UNSAFE.sub('_', service)}_{_UNSAFE.sub('_', str(label))}"
            if protocols[key] == {"udp"}:
                base += "_udp"
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            names[key] = name
        out.append(Binding(service, i, entry, names[key]))
    return out


def blocks(found: Sequence[Binding]) -> list[list[str]]:
    """The names to lease, grouped: a run of entries whose host and container ports both go up by one
    (what a range like `8000-8002:80-82` becomes in the model) is one block of consecutive ports;
    every other name is a block of its own."""
    groups: list[list[Binding]] = []
    for b in found:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and last.service == b.service
            and b.index == last.index + 1
            and b.published
            and last.published.isdecimal()
            and b.published.isdecimal()
            and int(b.published) == int(last.published) + 1
            and b.target == last.target + 1
            and (b.protocol, b.host_ip, b.entry.get("mode")) == (last.protocol, last.host_ip, last.entry.get("mode"))
        ):
            groups[-1].append(b)
        else:
            groups.append([b])
    out: list[list[str]] = []
    seen: set[str] = set()
    for group in groups:
        names = [b.name for b in group if b.name not in seen]
        seen.update(names)
        if names:
            out.append(names)
    return out


def hosts(found: Sequence[Binding]) -> dict[str, list[str]]:
    """{name: the specific addresses it is published on} (the wildcards are always probed)."""
    out: dict[str, set[str]] = {}
    for b in found:
        addresses = out.setdefault(b.name, set())
        if b.host_ip not in _WILDCARDS:
            addresses.add(b.host_ip)
    return {name: sorted(a) for name, a in out.items()}


def override_text(
    model: Mapping[str, Any], found: Sequence[Binding], ports: Mapping[str, int], drop_container_names: Sequence[str]
) -> str:
    """A Compose file giving each service with a leased entry its whole ports list again (`!override`),
    with the leased host ports in place and every other field as the model has it; and, for the
    services in `drop_container_names`, `container_name: !reset null`."""
    leased = {(b.service, b.index): ports[b.name] for b in found}
    services = sorted({b.service for b in found} | set(drop_container_names))
    lines = [
        "# Written by freeport-compose: the published ports of these services, on leased ports.",
        "services:" if services else "services: {}",  # Compose refuses a `services:` with nothing in it
    ]
    entries_of = services_ports(model)
    for service in services:
        lines.append(f"  {json.dumps(service)}:")
        if service in drop_container_names:
            lines.append("    container_name: !reset null")
        if any(s == service for s, _ in leased):
            lines.append("    ports: !override")
            for i, entry in enumerate(entries_of.get(service, [])):
                item = dict(entry)
                if (service, i) in leased:
                    item["published"] = str(leased[service, i])
                lines.append(f"      - {json.dumps(item)}")
    return "\n".join(lines) + "\n"


def expected(model: Mapping[str, Any], found: Sequence[Binding], ports: Mapping[str, int]) -> dict[str, list[str]]:
    """What `config` of the final files must publish: {service: sorted "target/protocol@host_ip:published"}."""
    leased = {(b.service, b.index): ports[b.name] for b in found}
    return {
        service: sorted(
            _key(entry, str(leased.get((service, i), entry.get("published") or ""))) for i, entry in enumerate(entries)
        )
        for service, entries in services_ports(model).items()
        if any(s == service for s, _ in leased)
    }


def check(config: Mapping[str, Any], want: Mapping[str, list[str]]) -> list[str]:
    """Problems: services whose ports in the final model differ from `want`."""
    got = services_ports(config)
    problems = []
    for service, keys in want.items():
        have = sorted(_key(e, str(e.get("published") or "")) for e in got.get(service, []))
        if have != keys:
            problems.append(f"Compose publishes {service} as {', '.join(have) or 'nothing'}, not {', '.join(keys)}")
    return problems


def _key(entry: Mapping[str, Any], published: str) -> str:
    return f"{entry.get('target')}/{entry.get('protocol') or 'tcp'}@{entry.get('host_ip') or ''}:{published}"
