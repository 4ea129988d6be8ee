"""Swarm stacks: `deploy` a template (or an unmodified file) on leased ports, and `rm` it.

What `docker stack deploy` is given is one file made from Compose's own model of the stack
(`docker compose config`: files merged, variables interpolated, relative paths made absolute),
reshaped for the stack loader of the docker CLI, which knows neither `!override` nor some of the
model's newer forms (`stack_file`). The same leases, rendering and check as `up` come first.

Guarantees: ports are leased against the Swarm's own allocator too (every service's published
ports, ingress and host mode, are avoided), and a port the Swarm refuses ("already in use by
service ... as an ingress port") is leased anew and the deploy retried, as `up` does. A failed
deploy removes what it created and frees its leases. The ports stay leased until `rm` (or `down`),
or until the Swarm stack is gone however it went (`docker stack rm`, a Swarm left): gc and an
exhausted allocation free them then.

May touch: the State's leases and stack records; runs `docker stack` and `docker compose config`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from .._error import ComposeError, FreeportError, UnknownOwnerError
from .compose import Compose, Result
from .dockerstack import Swarm, remove_locked, remove_stack
from .lifecycle import Attempt, Notify, Options, attempt, name_of, silent, start_leased
from .plan import Plan
from .records import StackRecord, StackStatus, check_project
from .state import State

STACK_FILE = "freeport-stack.json"  # what `docker stack deploy` is given (JSON is YAML too)


# The service keys of the stack loader's schema (docker CLI, compose file 3.x): any other key of
# Compose's model (pull_policy, platform, runtime, cpus, ...) fails the whole deploy with
# "Additional property ... is not allowed", so it is left out, and said.
_STACK_KEYS = frozenset(
    [
        "build",
        "cap_add",
        "cap_drop",
        "cgroup_parent",
        "command",
        "configs",
        "container_name",
        "credential_spec",
        "depends_on",
        "deploy",
        "devices",
        "dns",
        "dns_search",
        "domainname",
        "entrypoint",
        "env_file",
        "environment",
        "expose",
        "external_links",
        "extra_hosts",
        "healthcheck",
        "hostname",
        "image",
        "init",
        "ipc",
        "isolation",
        "labels",
        "links",
        "logging",
        "mac_address",
        "network_mode",
        "networks",
        "pid",
        "ports",
        "privileged",
        "read_only",
        "restart",
        "secrets",
        "security_opt",
        "shm_size",
        "stdin_open",
        "stop_grace_period",
        "stop_signal",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "user",
        "userns_mode",
        "volumes",
        "working_dir",
    ]
)


def stack_file(model: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Compose's model of a project (`config --format json`) as the stack loader accepts it, and
    what had to be left out ("service.key"), for the user to hear of.

    Each change names what the loader rejects without it: `name` (not in its schema); null values
    ("must be a string"); a map of names to null (`networks: {default: null}`, "must be an array");
    `published` as a string ("must be a integer"); `depends_on` with conditions (a list there: a
    Swarm does not order services); `bind.create_host_path` and Compose-only service keys (not
    in its schema).
    """
    out: dict[str, Any] = _nulls_out({k: v for k, v in model.items() if k != "name"})
    dropped = []
    for name, service in sorted((out.get("services") or {}).items()):
        for key in sorted(service):
            if key not in _STACK_KEYS and not key.startswith("x-"):
                del service[key]
                dropped.append(f"{name}.{key}")
        for port in service.get("ports") or []:
            published = str(port.get("published", "")) if isinstance(port, dict) else ""
            first, _, last = published.partition("-")
            if first.isdigit() and last in ("", first):
                port["published"] = int(first)
            elif published:
                raise ComposeError(
                    f"service {name} publishes the range {published}: docker stack deploy publishes single ports"
                )
        if isinstance(service.get("depends_on"), dict):
            service["depends_on"] = sorted(service["depends_on"])
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict) and isinstance(volume.get("bind"), dict):
                volume["bind"].pop("create_host_path", None)
                if not volume["bind"]:
                    del volume["bind"]
    return out, dropped


def _nulls_out(value: Any) -> Any:
    if isinstance(value, dict):
        if value and all(v is None for v in value.values()):
            return sorted(value)
        return {k: _nulls_out(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_nulls_out(v) for v in value]
    return value


def _write_stack_file(state: State, project: str, model: dict[str, Any], notify: Notify) -> str:
    converted, dropped = stack_file(model)
    if dropped:
        notify(f"warning: docker stack deploy does not know {', '.join(dropped)}: left out")
    return state.stacks.write_file(project, STACK_FILE, json.dumps(converted, indent=1).encode())


def deploy(state: State, opts: Options, *, extra: Sequence[str] = (), notify: Notify = silent) -> StackRecord:
    """Lease and write as `up` does, then `docker stack deploy` on the State's engine (a Swarm
    manager: NotSwarmManagerError before anything is leased otherwise). The leases stay until `rm`,
    or until the Swarm stack is gone. On failure the stack is removed and nothing is left."""
    from .engine import swarm_stacks

    plan = Plan.read(opts.files, lease_all=opts.lease_all, drop_container_names=opts.drop_container_names)
    project = name_of(opts, plan)
    from .reaper import reap_dead

    reap_dead(state, spare=(project,), notify=notify)  # before leasing, as up does
    compose = Compose.find(state.engine)
    swarm = Swarm(state.engine)
    swarm_stacks(state.engine)  # not a manager, or not answering: said before anything is leased
    for w in plan.warnings():
        notify(f"warning: {w}")

    def take_down(record: StackRecord) -> None:
        # gone before its leases go (a task that started may bind its port until it has stopped)
        with suppress(FreeportError):
            remove_stack(state.engine, record.project)

    def start(current: Attempt) -> Result:
        record = current.record
        if opts.check:
            plan.verify(compose, record.compose_project(), record.ports)
        path = _write_stack_file(state, project, compose.config(record.compose_project()), notify)
        current.started = True
        return swarm.deploy(project, path, extra)

    def failed(result: Result) -> ComposeError:
        return ComposeError(f"docker stack deploy failed: {result.last_line()}", result.returncode)

    with attempt(state, opts, project, StackStatus.STARTING, take_down, swarm=True) as current:
        start_leased(state, opts, plan, compose, current, (start, failed), "in the Swarm", notify)
        current.record.status = StackStatus.DEPLOYED
        state.stacks.save(current.record)
    return current.record


def remove(state: State, project: str) -> StackRecord:
    """`docker stack rm` of a stack deployed by `deploy`, then its leases freed; UnknownOwnerError
    for a project that is no Swarm stack of ours."""
    check_project(project)
    with state.stacks.locked(project):
        record = state.stacks.load(project)
        if record is None or not record.swarm:
            raise UnknownOwnerError(f"no Swarm stack named {project!r} (see `freeport-compose leases`)")
        remove_locked(state, record)
    return record
