"""A plan: what one render or up of a file set leases, writes and checks.

Two ways to lease, one plan:
- placeholders (`$<FREEPORT_name>` in the files): one port per name, the files rendered;
- zero-edit (no placeholder, or `--lease-all`): every port Compose's own model publishes gets a
  leased one, through an override file given to Compose after the user's files (published.py).

Guarantees: the user's files are never written; what Compose is given publishes exactly the leased
ports (checked against `docker compose config`); a stack leased before keeps its ports.

May touch: the State's leases and the project's files in the state dir (or `-o`); runs
`docker compose config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._error import ComposeError, OutputError
from .check import check_published
from .compose import Compose, ComposeProject
from .leases import held_ports, lease, lease_groups, port_check
from .names import sort_key
from .outputs import write_file, write_outputs
from .published import Binding, bindings, blocks, check, expected, host_network, hosts, override_text
from .records import StackRecord
from .state import State
from .templateset import TemplateSet, read_set

OVERRIDE = "freeport-ports.yml"  # the zero-edit override, after every other file


@dataclass
class Plan:
    """The files of a stack, how their ports are leased, and what Compose must then publish."""

    templates: TemplateSet
    zero_edit: bool  # lease what Compose's model publishes (no placeholder, or --lease-all)
    drop_container_names: bool = False
    model: dict[str, Any] | None = None  # Compose's model of the user's files (zero-edit)
    found: list[Binding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what leasing found the user should know

    @classmethod
    def read(cls, files: Sequence[str], *, lease_all: bool = False, drop_container_names: bool = False) -> Plan:
        templates = read_set(files)
        return cls(templates, zero_edit=lease_all or not templates.names, drop_container_names=drop_container_names)

    def warnings(self) -> list[str]:
        """What stops two copies of this stack from running side by side, less what the plan lifts."""
        names = self.templates.container_name_warnings()
        others = [w for w in self.templates.warnings() if w not in names]
        lifted = [] if self.drop_container_names else [w + " (or give --drop-container-names)" for w in names]
        return lifted + others

    def hosts_of(self, name: str) -> list[str]:
        """The addresses besides the wildcards that `name`'s port must be free on."""
        return self.templates.hosts(name) or hosts(self.found).get(name, [])

    def reach(self, name: str) -> str:
        """The address to reach `name`'s port on: the one it is published on, else 127.0.0.1."""
        specific = self.hosts_of(name)
        return specific[0] if specific else "127.0.0.1"

    def lease(
        self, state: State, record: StackRecord, compose: Compose | None, *, reuse: bool, timeout: float | None
    ) -> dict[str, int]:
        """Lease every port of the plan under the project's name (reusing what it holds when `reuse`)."""
        project = record.project
        check = port_check(state.engine)  # the engine's published ports, asked once for all of them
        ports = lease(state.leases, check, self.templates, project, reuse=reuse, timeout=timeout)
        if not self.zero_edit:
            return ports
        if compose is None:
            compose = Compose.find(state.engine)  # zero-edit reads Compose's own model: it cannot do without Compose
        files = write_outputs(self.templates, ports, state.stacks, project, None, None)
        target = ComposeProject(
            project, tuple(files), record.project_directory, tuple(record.profiles), tuple(record.env_files)
        )
        self.model = compose.config(target)
        ours = {str(p) for p in ports.values()}
        self.found = bindings(self.model, keep=lambda service, entry: str(entry.get("published") or "") in ours)
        self.notes = [
            f"service {s!r} runs on the host's network (network_mode: host): Docker publishes none of its "
            "`ports:`, so none is leased; it binds its ports on the host itself"
            for s in host_network(self.model)
        ]
        held = held_ports(state.leases, project) if reuse else {}
        ports.update(lease_groups(state.leases, check, project, blocks(self.found), hosts(self.found), held, timeout))
        return dict(sorted(ports.items(), key=lambda kv: sort_key(kv[0])))

    def write(
        self, state: State, project: str, ports: Mapping[str, int], out: str | None, compose: Compose | None
    ) -> list[str]:
        """Write what Compose is given (state dir, or `out`); returns those files, in order."""
        if self.zero_edit and out is not None and not self.templates.names:
            files = [os.path.abspath(p) for p in self.templates.paths]  # the user's files, as they are
        else:
            files = write_outputs(self.templates, ports, state.stacks, project, out, compose)
        if not self.zero_edit:
            return files
        assert self.model is not None
        names = [svc for svc, _, _, _ in self.templates.container_names()] if self.drop_container_names else []
        text = override_text(self.model, self.found, ports, names)
        if out is None:
            return [*files, state.stacks.write_file(project, OVERRIDE, text.encode())]
        dest = os.path.abspath(os.path.join(out, OVERRIDE) if os.path.isdir(out) else out)
        try:
            write_file(dest, text)
        except OSError as e:
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from None
        return [*files, dest]

    def verify(
        self, compose: Compose, project: ComposeProject, ports: Mapping[str, int], *, beside: bool = False
    ) -> None:
        """Raise ComposeError unless `docker compose config` of what Compose is given publishes exactly
        the leased ports (and keeps every other binding as written). `beside`: made while another
        Compose command runs, to which it yields the CPU."""
        config = compose.config(project, yielding=beside)
        problems = check_published(config, self.templates, ports)
        if self.zero_edit and self.model is not None:
            problems += check(config, expected(self.model, self.found, ports))
        if problems:
            raise ComposeError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
