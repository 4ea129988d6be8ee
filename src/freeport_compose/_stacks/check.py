"""The check that Compose publishes exactly the leased ports, read from `docker compose config`.

Guarantee: for every service and container port that a placeholder publishes, Compose's own model
publishes exactly the leased host ports; a base binding left beside them, or an interpolation that
replaced a placeholder, is reported as file:line:column.

May touch: nothing (it reads the model it is given); BackgroundCheck runs a check in a thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping

from .template import PortEntry, substitute
from .templateset import TemplateSet

_DEFAULT_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^${}]*)\}")  # ${VAR:-default}, ${VAR-default}


def _unset(text: str) -> str:
    """text with each `${VAR:-default}` read as its default, as Compose does while VAR is unset."""
    while (done := _DEFAULT_RE.sub(r"\1", text)) != text:
        text = done
    return text


def check_published(config: Mapping[str, object], templates: TemplateSet, ports: Mapping[str, int]) -> list[str]:
    """Problems in `docker compose config --format json` output: leased ports not published as leased.

    For every service and container port that a placeholder publishes, Compose must publish exactly
    the leased host ports: a base binding left beside them, or an interpolation that replaced the
    placeholder, is reported.
    """
    services = config.get("services")
    if not isinstance(services, dict):
        return ["`docker compose config` printed no services"]
    expected: dict[tuple[str, str, str], tuple[set[str], PortEntry]] = {}
    for t in templates.templates:
        for e in t.entries:
            if e.names and e.service in services and e.target.isdecimal():  # else: disabled by a profile
                published = substitute(e.published, ports)
                expected.setdefault((e.service, e.target, e.protocol), (set(), e))[0].add(_unset(published))
    entries = [e for t in templates.templates for e in t.entries]
    leased_in = {(e.service, e.target, e.protocol, e.path) for e in entries if e.names}
    for e in entries:  # a fixed binding written beside a leased one in its own file stays
        key = (e.service, e.target, e.protocol)
        if not e.names and key in expected and (*key, e.path) in leased_in:
            expected[key][0].add(_unset(e.published))
    problems = []
    for (service, target, protocol), (want, e) in expected.items():
        got = {
            str(p.get("published"))
            for p in services[service].get("ports") or []
            if str(p.get("target")) == target and (p.get("protocol") or "tcp") == protocol
        }
        if got != want:
            problems.append(
                f"{e.path}:{e.line}:{e.column}: Compose publishes {service}'s container port {target}/{protocol} "
                f"on {', '.join(sorted(got)) or 'nothing'}, expected only the leased {', '.join(sorted(want))}"
            )
    return problems


class BackgroundCheck(threading.Thread):
    """A check run beside `docker compose up`: the ~60 ms of `compose config` need not add to up's time."""

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.check = check
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.check()
        except BaseException as e:  # handed to the main thread by result()
            self.error = e

    def result(self) -> None:
        """Wait for the check; raise what it raised."""
        self.join()
        if self.error is not None:
            raise self.error
