"""Compose drop-in, without an engine: what a Compose file means is what we lease and say.

A misspelled placeholder is pointed out (file:line and the nearest name), a service on the host's
network has nothing leased, and a long-syntax port's `name:` names its lease."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freeport_compose._stacks.published import bindings, host_network, services_ports
from freeport_compose._stacks.templateset import read_set


def _set(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    return str(path), read_set([str(path)]).warnings()


def test_a_placeholder_written_once_and_published_nowhere_is_pointed_out(tmp_path: Path) -> None:
    path, warnings = _set(
        tmp_path,
        "services:\n"
        "  web:\n"
        "    ports: ['$<FREEPORT_web>:80']\n"
        "    environment:\n"
        "      SELF: http://127.0.0.1:$<FREEPORT_wbe>/\n",
    )
    assert warnings == [
        f"{path}:5:30: placeholder $<FREEPORT_wbe> is written only here and published nowhere, so it gets "
        "a port nothing listens on; did you mean $<FREEPORT_web>?"
    ]


def test_a_placeholder_used_twice_or_published_is_no_misspelling(tmp_path: Path) -> None:
    _, warnings = _set(
        tmp_path,
        "services:\n"
        "  web:\n"
        "    ports: ['$<FREEPORT_web>:80']\n"
        "    environment: {A: '$<FREEPORT_api>', B: '$<FREEPORT_api>'}\n",
    )
    assert warnings == []
    _, warnings = _set(tmp_path, "services:\n  web:\n    environment: {A: '$<FREEPORT_zzzqqq>'}\n")
    assert len(warnings) == 1
    assert warnings[0].endswith("no `ports:` entry publishes it")


def _model(**services: dict[str, Any]) -> dict[str, Any]:
    return {"name": "p", "services": services}


def test_a_service_on_the_hosts_network_has_nothing_leased() -> None:
    model = _model(
        web={"ports": [{"target": 80, "published": "8080", "protocol": "tcp"}]},
        sniffer={"network_mode": "host", "ports": [{"target": 9000, "published": "9000", "protocol": "tcp"}]},
    )
    assert host_network(model) == ["sniffer"]
    assert list(services_ports(model)) == ["web"]
    assert [b.name for b in bindings(model, keep=lambda s, e: False)] == ["FREEPORT_web_80"]


def test_a_long_syntax_name_names_the_port() -> None:
    model = _model(
        web={
            "ports": [
                {"target": 80, "published": "8080", "protocol": "tcp", "name": "http"},
                {"target": 80, "published": "8081", "protocol": "tcp", "name": "http-alt"},
                {"target": 443, "published": "8443", "protocol": "tcp"},
            ]
        }
    )
    names = [b.name for b in bindings(model, keep=lambda s, e: False)]
    assert names == ["FREEPORT_web_http", "FREEPORT_web_http_alt", "FREEPORT_web_443"]
