"""A template set: every -f file of a stack, read and checked together.

Guarantees: one port per placeholder name across all files; a service whose base file publishes a
container port that a placeholder publishes too is found (`conflicts`), and the override that makes
the leased binding replace the base one is written for it, in the order Compose merges files.

May touch: reads the files it is given; writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .._error import TemplateError
from .names import sort_key
from .template import PortEntry, Template, load, substitute


@dataclass
class TemplateSet:
    """All -f files of a stack, read and checked together: one port per placeholder name across them."""

    templates: list[Template]
    names: list[str] = field(default_factory=list)  # every placeholder name, in allocation order

    def __post_init__(self) -> None:
        self.names = sorted(set().union(*(t.names for t in self.templates)), key=sort_key)

    @property
    def project_name(self) -> str | None:
        """The top-level `name:` as the last file that sets it writes it (Compose's merge: last wins)."""
        return next((t.project_name for t in reversed(self.templates) if t.project_name), None)

    def hosts(self, name: str) -> list[str]:
        """Host addresses a placeholder is published on (besides the wildcards): each must be free there."""
        return sorted({e.host_ip for t in self.templates for e in t.entries if name in e.names and e.host_ip})

    def protocols(self, name: str) -> list[str]:
        return sorted({e.protocol for t in self.templates for e in t.entries if name in e.names})

    @property
    def paths(self) -> list[str]:
        return [t.path for t in self.templates]

    def container_names(self) -> list[tuple[str, str, int, int]]:
        """(service, file, line, column) of every `container_name:`."""
        return [(svc, t.path, line, column) for t in self.templates for svc, line, column in t.container_names]

    def warnings(self) -> list[str]:
        """What stops two stacks from these files from running side by side, and placeholders that
        look misspelled; file:line first."""
        return (
            self.container_name_warnings()
            + [
                f"{t.path}:{line}:{column}: {kind} {key!r} has a fixed name, so every stack from this file "
                f"shares it{' (and its data)' if kind == 'volume' else ''}; remove `name:` to give each its own"
                for t in self.templates
                for kind, key, line, column in t.fixed_names
            ]
            + self.lone_placeholder_warnings()
        )

    def lone_placeholder_warnings(self) -> list[str]:
        """A placeholder written once and published nowhere is most likely a misspelling of another
        (`$<FREEPORT_wbe>` for `$<FREEPORT_web>`): it would get a port of its own that nothing uses."""
        import difflib

        occurrences = [(t, o) for t in self.templates for o in t.occurrences]
        published = {n for t in self.templates for e in t.entries for n in e.names}
        out = []
        for t, o in occurrences:
            if o.name in published or sum(1 for _, other in occurrences if other.name == o.name) != 1:
                continue
            near = difflib.get_close_matches(o.name, [n for n in self.names if n != o.name], n=1, cutoff=0.6)
            hint = f"did you mean $<{near[0]}>?" if near else "no `ports:` entry publishes it"
            out.append(
                f"{t.path}:{o.line}:{o.column}: placeholder $<{o.name}> is written only here and published "
                f"nowhere, so it gets a port nothing listens on; {hint}"
            )
        return out

    def container_name_warnings(self) -> list[str]:
        return [
            f"{t.path}:{line}:{column}: service {svc!r} sets container_name, so two stacks from this file "
            f"cannot run at once; remove it to run stacks side by side"
            for t in self.templates
            for svc, line, column in t.container_names
        ]

    def check_twice(self) -> None:
        """TemplateError if one placeholder is published by two different services or container ports
        on an address and protocol in common: Compose would start one and fail the other with "port
        is already allocated". (One service's container port published by a base file and again by
        an override is one binding, merged by Compose: that is `conflicts`' business.)"""
        first: dict[tuple[str, str], PortEntry] = {}
        for t in self.templates:
            for e in t.entries:
                for name in e.names:
                    key = (name, e.protocol)
                    seen = first.setdefault(key, e)
                    if seen is e or (seen.service, seen.target) == (e.service, e.target):
                        continue
                    if seen.host_ip and e.host_ip and seen.host_ip != e.host_ip:
                        continue  # two addresses, each its own binding: no clash
                    raise TemplateError(
                        e.path,
                        e.line,
                        e.column,
                        f"$<{name}> is published here ({e.service}:{e.target}/{e.protocol}) and at "
                        f"{seen.path}:{seen.line}:{seen.column} ({seen.service}:{seen.target}/{seen.protocol}) "
                        "on the same address: Compose could start only one of them",
                    )

    def conflicts(self) -> dict[str, list[PortEntry]]:
        """Services whose base files publish a container port that a placeholder publishes too.

        Compose appends `ports:` lists across files, so both bindings would be made (and the base's
        fixed port clash). For each such service: its whole merged ports list, base bindings of those
        container ports removed, in the order Compose would merge them.
        """
        merged: dict[str, list[PortEntry]] = {}
        for t in self.templates:
            for service in t.resets:  # even when the reset list is empty: earlier entries are dropped
                merged[service] = []
            for e in t.entries:
                merged.setdefault(e.service, []).append(e)
        out = {}
        for service, entries in merged.items():
            leased = {(e.target, e.protocol, e.path) for e in entries if e.names}
            # a fixed binding beside a leased one in the same file is the author's choice, not a clash
            clash = [
                e
                for e in entries
                if not e.names and any(k[:2] == (e.target, e.protocol) and k[2] != e.path for k in leased)
            ]
            if clash:
                out[service] = [e for e in entries if e not in clash]
        return out

    def override_text(self, ports: Mapping[str, int], conflicts: Mapping[str, list[PortEntry]]) -> str:
        """A Compose file replacing the `ports:` of conflicting services (needs Compose >= 2.24.4)."""
        lines = [
            "# Written by freeport-compose: these services publish a container port that a base file",
            "# publishes too; !override makes the leased binding replace the base one instead of adding to it.",
            "services:",
        ]
        for service, entries in conflicts.items():
            lines += [f"  {json.dumps(service)}:", "    ports: !override"]
            for e in entries:
                rendered = substitute(e.value, ports)
                lines.append(f"      - {rendered if e.is_mapping else json.dumps(rendered)}")
        return "\n".join(lines) + "\n"


def read_set(paths: Sequence[str]) -> TemplateSet:
    """Read every file of a stack, placeholders or not; TemplateError if any is bad, or if one
    placeholder is published twice on one address and protocol (see `TemplateSet.check_twice`)."""
    templates = TemplateSet([load(p) for p in paths])
    templates.check_twice()
    return templates


def load_set(paths: Sequence[str]) -> TemplateSet:
    """Read every file of a stack; TemplateError if any is bad or none holds a placeholder."""
    templates = [load(p) for p in paths]
    templates_set = TemplateSet(templates)
    if not templates_set.names:
        shown = ", ".join(paths)
        raise TemplateError(paths[0], 1, 1, f"no $<FREEPORT_name> placeholder in {shown}: nothing to lease")
    return templates_set
