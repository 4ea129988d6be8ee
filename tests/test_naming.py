"""Compose's project-name rule, as `up` without -p follows it (naming.py), checked against what
`docker compose config` itself names the project where an engine's Compose is installed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from freeport_compose import InvalidNameError
from freeport_compose._stacks.naming import compose_project_name, dotenv, interpolate, normalize

SERVICE = "services:\n  web:\n    image: x\n"


def name_in(directory: Path, declared: str | None = None, env: dict[str, str] | None = None) -> str:
    return compose_project_name(None, declared, str(directory), (), env or {})


def test_the_directory_name_normalized_as_compose_does(tmp_path: Path) -> None:
    d = tmp_path / "My App.v2"
    d.mkdir()
    assert name_in(d) == "myappv2"
    assert normalize("__-Web_Shop-") == "web_shop-"
    empty = tmp_path / "..."
    empty.mkdir()
    with pytest.raises(InvalidNameError, match="give -p PROJECT"):
        name_in(empty)


def test_the_order_p_environment_env_file_name_directory(tmp_path: Path) -> None:
    assert compose_project_name("given", "declared", str(tmp_path), (), {"COMPOSE_PROJECT_NAME": "env"}) == "given"
    assert name_in(tmp_path, "declared", {"COMPOSE_PROJECT_NAME": "env"}) == "env"
    (tmp_path / ".env").write_text("# a comment\nexport COMPOSE_PROJECT_NAME='from-dotenv'  \n")
    assert name_in(tmp_path, "declared") == "from-dotenv"
    assert name_in(tmp_path, "declared", {"COMPOSE_PROJECT_NAME": "env"}) == "env"  # the environment wins
    other = tmp_path / "other.env"
    other.write_text("COMPOSE_PROJECT_NAME=from-env-file # trailing comment\n")
    assert compose_project_name(None, "declared", str(tmp_path), (str(other),), {}) == "from-env-file"
    (tmp_path / ".env").write_text("UNRELATED=1\n")
    assert name_in(tmp_path, "declared") == "declared"
    assert name_in(tmp_path, None) == normalize(tmp_path.name)


def test_a_declared_name_is_interpolated(tmp_path: Path) -> None:
    assert name_in(tmp_path, "${APP:-shop}-dev") == "shop-dev"
    assert name_in(tmp_path, "${APP:-shop}-dev", {"APP": "cart"}) == "cart-dev"
    assert interpolate("$APP-${EMPTY:-d1}-${EMPTY-d2}-${SET:+alt}-$$", {"APP": "a", "EMPTY": "", "SET": "x"}) == (
        "a-d1--alt-$"
    )
    (tmp_path / ".env").write_text('APP="from env file"\n')
    assert dotenv(str(tmp_path / ".env")) == {"APP": "from env file"}
    with pytest.raises(InvalidNameError, match="'Shop'"):
        name_in(tmp_path, "Shop")  # Compose refuses it too


def _compose() -> list[str] | None:
    from freeport_compose._stacks.compose import find_plugin

    plugin = find_plugin()
    return [plugin] if plugin else None


@pytest.mark.parametrize(
    ("dirname", "declared", "dotenv_text", "env"),
    [
        ("Plain_Dir", None, None, {}),
        ("with.dots and spaces", None, None, {}),
        ("d", "${APP:-shop}", None, {}),
        ("d", "${APP:-shop}", "APP=cart\n", {}),
        ("d", "named", "COMPOSE_PROJECT_NAME=dotenv-wins\n", {}),
        ("d", "named", "COMPOSE_PROJECT_NAME=dotenv\n", {"COMPOSE_PROJECT_NAME": "environment-wins"}),
    ],
)
def test_the_same_name_as_compose_itself(
    tmp_path: Path, dirname: str, declared: str | None, dotenv_text: str | None, env: dict[str, str]
) -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("no Compose plugin installed: run `bash scripts/setup.sh`")
    d = tmp_path / dirname
    d.mkdir()
    (d / "compose.yaml").write_text((f"name: {declared}\n" if declared else "") + SERVICE)
    if dotenv_text is not None:
        (d / ".env").write_text(dotenv_text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")} | env
    out = subprocess.run(
        [*compose, "config", "--format", "json"], cwd=d, env=environ, capture_output=True, text=True, check=True
    )
    assert name_in(d, declared, env) == json.loads(out.stdout)["name"]
