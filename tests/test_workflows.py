"""The CI workflow stays valid: YAML GitHub reads, with the engine-free job on Linux and macOS and
the engine job running scripts/setup.sh with CI set (so every engine is set up and tested)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CI = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "ci.yml"


def load() -> dict[str, Any]:
    data = yaml.safe_load(CI.read_text())
    assert isinstance(data, dict)
    return data


def test_the_workflow_is_triggered_and_has_its_jobs() -> None:
    data = load()
    # PyYAML reads the bare key `on` as True (YAML 1.1): GitHub reads it as "on".
    assert "push" in (data.get("on") or data.get(True) or {})
    assert set(data["jobs"]) == {"engine-free", "engines"}
    for name, job in data["jobs"].items():
        assert job["steps"], name
        assert all("uses" in step or "run" in step for step in job["steps"]), name
        assert job["steps"][0]["uses"].startswith("actions/checkout@"), name


def test_the_engine_free_part_runs_on_linux_and_macos() -> None:
    job = load()["jobs"]["engine-free"]
    assert {"ubuntu-latest", "macos-latest"} <= set(job["strategy"]["matrix"]["os"])
    assert job["runs-on"] == "${{ matrix.os }}"
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert '-m "not docker and not load"' in runs
    assert "mypy --strict src" in runs


def test_the_engine_job_sets_up_every_engine() -> None:
    job = load()["jobs"]["engines"]
    assert job["runs-on"].startswith("ubuntu")
    assert job["env"]["CI"] == "true"  # setup.sh then sets up Podman and the rootless engines too
    runs = [step.get("run", "") for step in job["steps"]]
    assert any("scripts/setup.sh" in r for r in runs)
    assert any("pytest" in r for r in runs)
