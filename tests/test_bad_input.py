"""Bad input through the `freeport-compose` command line, one table row per case.

Every case runs the installed CLI in a subprocess and checks the whole contract of an error
(README, "Exit codes"): the documented exit code (ExitCode), nothing on stdout, exactly one final
stderr line `freeport-compose: ...` (argparse's usage errors: exit 2 and its own
`freeport-compose COMMAND: ... (see --help)` line), no traceback, no lease or stack record left,
no temporary file left in the state dir, no container or network left for the cases that reach
Docker, and for `render -o OUT` an untouched OUT: a file that existed is byte-identical, one that
did not is not created, and OUT's directory holds no stray temporary file.

The security section checks that no shell ever sees input: file and directory names, extra
Compose arguments, profiles, env files and `run`'s command hold `$(touch MARK)`, backticks, `;`
and `|`, and the marker file never appears.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from _docker import (
    COMPOSE_STATUS,
    FPC,
    IMAGE,
    NOBODY,
    assert_compose_error,
    assert_engine_clean,
    assert_error,
    assert_no_traceback,
    docker_missing,
    down_projects,
    exits,
    fpc,
    ls_json,
    nobody_cli,
    ok,
    require_docker,
)
from freeport_compose._error import ExitCode

VALID = (
    "services:\n"
    "  web:\n"
    f"    image: {IMAGE}\n"
    "    pull_policy: never\n"
    "    stop_signal: SIGKILL\n"
    '    command: ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/"]\n'
    "    ports:\n"
    '      - "$<FREEPORT_web>:80"\n'
)




def with_port(published: str) -> str:
    """VALID with another `ports:` item: how each malformed placeholder is written."""
    return VALID.replace('"$<FREEPORT_web>:80"', json.dumps(published))


NO_IMAGE = 'services:\n  web:\n    ports:\n      - "$<FREEPORT_web>:80"\n'  # Compose's config rejects it
HUGE = VALID + ("# padding to make the file larger than 4 MiB\n" * ((4 << 20) // 45 + 1))


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad invocation. argv items are formatted with {work} (the case's directory), {project}
    (a fresh project name), {out} (render's -o target) and {mark}."""

    argv: tuple[str, ...]
    code: int
    fragment: str = ""  # in the error line
    files: Mapping[str, str | bytes | None] = field(default_factory=dict)  # under {work}; None: a directory
    env: Mapping[str, str] = field(default_factory=dict)  # formatted like argv
    out: str = ""  # "file": OUT exists before; "new": it does not; "dir"/"newdir": a directory OUT
    state: str = "ok"  # ok | symlink | other-uid | world-writable | unwritable | nobody
    unreadable: str = ""  # this file is made root-only 0600 (the case runs as nobody)
    usage: bool = False  # an argparse error: its own `prog: message (see --help)` line
    compose: bool = False  # Compose's own refusal (we became Compose): its status, its message
    docker: bool = False  # reaches Compose/the engine: needs them; containers are checked
    cwd_work: bool = False  # run in {work} instead of the test's directory


def render(name: str = "t.yml", out: str = "file", **kw: Any) -> Case:
    """`render -f {work}/name -p {project} -o {out}` with the given expectations."""
    return Case(("render", "-f", f"{{work}}/{name}", "-p", "{project}", "-o", "{out}"), out=out, **kw)


T = ExitCode.TEMPLATE
CASES: dict[str, Case] = {
    # --- malformed YAML and files that are not Compose files --------------------------------
    "yaml-unclosed-flow": render(code=T, fragment="t.yml:3:1: not valid YAML",
                                 files={"t.yml": "services:\n  web: [\n"}),
    "yaml-tab-indent": render(code=T, fragment="t.yml:2:1: not valid YAML", out="new",
                              files={"t.yml": "services:\n\tweb:\n"}),
    "yaml-mapping-in-scalar": render(code=T, fragment="t.yml:1:12: not valid YAML: mapping values are not allowed",
                                     files={"t.yml": "services: a: b\n"}),
    "yaml-unclosed-quote": render(code=T, fragment="not valid YAML", out="new",
                                  files={"t.yml": 'services:\n  web:\n    image: "abc\n    ports: []\n'}),
    "yaml-undefined-alias": render(code=T, fragment="t.yml:2:8: not valid YAML: found undefined alias",
                                   files={"t.yml": "services:\n  web: *nope\n"}),
    "yaml-bad-indent": render(code=T, fragment="t.yml:9:4: not valid YAML", out="new",
                              files={"t.yml": VALID + "   extra: 1\n"}),
    "not-utf8": render(code=T, fragment="t.yml:3:15: not UTF-8 text",
                       files={"t.yml": VALID.encode().replace(b"image: ", b"image: caf\xe9")}),
    "binary": render(code=T, fragment="t.yml:1:5: binary data (a NUL byte)", out="new",
                     files={"t.yml": b"\x7fELF\x00\x01\x02services:\n" + os.urandom(64)}),
    "huge": render(code=T, fragment="t.yml:1:1: larger than 4 MiB", files={"t.yml": HUGE}),
    # --- malformed placeholders, and placeholders where they cannot be -----------------------
    "placeholder-no-name": render(code=T, fragment="t.yml:8:10: placeholder '$<FREEPORT_>' has no name",
                                  files={"t.yml": with_port("$<FREEPORT_>:80")}),
    "placeholder-lower-case": render(code=T, out="new",
                                     fragment="t.yml:8:10: placeholder '$<freeport_1>' must be upper",
                                     files={"t.yml": with_port("$<freeport_1>:80")}),
    "placeholder-other-prefix": render(code=T, fragment="t.yml:8:10: '$<FOO_1>' is not a placeholder",
                                       files={"t.yml": with_port("$<FOO_1>:80")}),
    "placeholder-unclosed": render(code=T, out="new", fragment="t.yml:8:10: unclosed placeholder '$<FREEPORT_1:80'",
                                   files={"t.yml": with_port("$<FREEPORT_1:80")}),
    "placeholder-bad-name": render(code=T, fragment="t.yml:8:10: placeholder '$<FREEPORT_a-b>': a name holds only",
                                   files={"t.yml": with_port("$<FREEPORT_a-b>:80")}),
    "placeholder-in-key": render(code=T, out="new", fragment="t.yml:10:8: placeholder $<FREEPORT_1> in a mapping key",
                                 files={"t.yml": VALID + '    labels:\n      "$<FREEPORT_1>": x\n'}),
    "placeholder-in-second-file": Case(("up", "-d", "-f", "{work}/t.yml", "-f", "{work}/u.yml", "-p", "{project}"), T,
                                       "u.yml:1:27: unclosed placeholder",
                                       files={"t.yml": VALID, "u.yml": 'services: {web: {ports: ["$<FREEPORT_x"]}}\n'}),
    # --- empty and shapeless templates ---------------------------------------------------------
    "empty": render(code=T, fragment="t.yml:1:1: empty file", files={"t.yml": ""}),
    "whitespace-only": render(code=T, out="new", fragment="t.yml:1:1: empty file", files={"t.yml": "\n  \n\n"}),
    "comments-only": render(code=T, fragment="t.yml:1:1: empty file", files={"t.yml": "# a comment\n  # another\n"}),
    "placeholder-published-twice": render(
        code=T, out="new",
        fragment="t.yml:9:9: $<FREEPORT_1> is published here (api:8080/tcp) and at {work}/t.yml:5:9 (web:8080/tcp)",
        files={"t.yml": "services:\n  web:\n    image: x\n    ports:\n      - \"$<FREEPORT_1>:8080\"\n"
                        "  api:\n    image: x\n    ports:\n      - \"$<FREEPORT_1>:8080\"\n"}),
    "no-compose-file": Case(("up", "-d", "-p", "{project}"), T, "no Compose file found: looked for compose.yaml",
                            cwd_work=True),
    "compose-rejects-the-file": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}"), COMPOSE_STATUS,
                                     "docker compose config failed: ", docker=True,
                                     files={"t.yml": VALID.replace('"$<FREEPORT_web>:80"', '"8080:80"').replace(
                                         "    pull_policy: never\n", "    pull_policy: sometimes-maybe\n")}),
    "top-level-list": render(code=T, fragment="t.yml:1:1: not a Compose file: the top level is a list",
                             files={"t.yml": "- services\n- $<FREEPORT_1>\n"}),
    "top-level-scalar": render(code=T, out="new", fragment="t.yml:1:1: not a Compose file: the top level is a single",
                               files={"t.yml": "$<FREEPORT_1>\n"}),
    "services-a-list": render(code=T, fragment="t.yml:2:3: `services:` must be a mapping",
                              files={"t.yml": "services:\n  - web\n  - $<FREEPORT_1>\n"}),
    "service-a-scalar": render(code=T, out="new", fragment="t.yml:2:8: service 'web' must be a mapping",
                               files={"t.yml": "services:\n  web: $<FREEPORT_1>\n"}),
    "ports-a-scalar": render(code=T, fragment="t.yml:3:12: `ports:` of service 'web' must be a list",
                             files={"t.yml": 'services:\n  web:\n    ports: "$<FREEPORT_1>:80"\n'}),
    # --- files that cannot be read ---------------------------------------------------------------
    "missing-file": render("nope.yml", code=T, out="new", fragment="nope.yml:1:1: no such file"),
    "missing-file-up": Case(("up", "-d", "-f", "{work}/nope.yml", "-p", "{project}"), T, "nope.yml:1:1: no such file"),
    "directory-as-file": render("adir", code=T, fragment="adir:1:1: is a directory", files={"adir": None}),
    "unreadable-file": render(code=T, out="new", fragment="t.yml:1:1: cannot read: Permission denied",
                              files={"t.yml": VALID}, unreadable="t.yml", state="nobody"),
    # --- ranges, counts, exclusions, hosts, timeouts -----------------------------------------------
    "range-reversed": Case(("get", "--owner", "x", "--range", "5-3"), ExitCode.INVALID_RANGE,
                           "start 5 is above stop 3"),
    "range-zero": Case(("get", "--owner", "x", "--range", "0-10"), ExitCode.INVALID_RANGE,
                       "start 0 is outside 1-65535"),
    "range-too-high": Case(("get", "--owner", "x", "--range", "1-70000"), ExitCode.INVALID_RANGE,
                           "stop 70000 is outside 1-65535"),
    "range-not-a-number": Case(("get", "--owner", "x", "--range", "abc"), ExitCode.INVALID_RANGE,
                               "must be an integer, not 'abc'"),
    "range-open-ended": Case(("get", "--owner", "x", "--range", "10-"), ExitCode.INVALID_RANGE,
                             "must be an integer, not ''"),
    "range-from-env": Case(("get", "--owner", "x"), ExitCode.INVALID_RANGE, "FREEPORT_RANGE",
                           env={"FREEPORT_RANGE": "20000-10"}),
    "count-zero": Case(("get", "--owner", "x", "-n", "0"), ExitCode.INVALID_RANGE, "positive integer, not 0"),
    "count-not-a-number": Case(("get", "--owner", "x", "-n", "abc"), ExitCode.USAGE, "invalid int value: 'abc'",
                               usage=True),
    "count-above-range": Case(("get", "--owner", "x", "--range", "20000-20009", "-n", "11", "--contiguous"),
                              ExitCode.INVALID_RANGE, "11"),
    "exclude-empties-range": Case(("get", "--owner", "x", "--range", "20000-20002", "--exclude", "20000,20001",
                                   "--exclude", "20002"), ExitCode.EMPTY_RANGE, "no port left in 20000-20002"),
    "exclude-port-zero": Case(("get", "--owner", "x", "--exclude", "0"), ExitCode.INVALID_RANGE, "outside 1-65535"),
    "exclude-not-a-port": Case(("get", "--owner", "x", "--exclude", "80,http"), ExitCode.INVALID_RANGE, "'http'"),
    "host-not-an-address": Case(("get", "--owner", "x", "--host", "999.1.1.1"), ExitCode.INVALID_RANGE,
                                "'999.1.1.1' is not an IPv4 or IPv6 address"),
    "timeout-not-a-number": Case(("get", "--owner", "x", "--timeout", "soon"), ExitCode.INVALID_RANGE, "'soon'"),
    "timeout-negative": Case(
        ("render", "-f", "{work}/t.yml", "-p", "{project}", "-o", "{out}", "--lease-timeout", "-1"),
        ExitCode.INVALID_RANGE, "--lease-timeout must be >= 0", files={"t.yml": VALID}, out="file",
    ),
    "output-parent-missing": Case(
        ("render", "-f", "{work}/t.yml", "-p", "{project}", "-o", "{work}/no/such/dir/out.yml"),
        ExitCode.OUTPUT, "cannot write", files={"t.yml": VALID},
    ),
    # --- unknown owners, projects and placeholders ---------------------------------------------
    "down-nothing-here": Case(("down",), ExitCode.UNKNOWN_OWNER, "no stack here: give -p PROJECT", cwd_work=True),
    "ports-unknown-project": Case(("ports", "-p", "{project}", "--format", "json"), ExitCode.UNKNOWN_OWNER,
                                  "no stack named"),
    "port-unknown-project": Case(("port", "-p", "{project}", "web"), ExitCode.UNKNOWN_OWNER, "no stack named"),
    "release-unknown-owner": Case(("release", "--owner", "nobody-has-this"), ExitCode.UNKNOWN_OWNER,
                                  "owner 'nobody-has-this' holds no lease"),
    # --- invalid names ---------------------------------------------------------------------------
    "project-upper-case": Case(("render", "-f", "{work}/t.yml", "-p", "MyStack", "-o", "{out}"), ExitCode.INVALID_NAME,
                               "project name 'MyStack' is invalid", files={"t.yml": VALID}, out="file"),
    "project-space": Case(("down", "-p", "my stack"), ExitCode.INVALID_NAME, "project name 'my stack' is invalid"),
    "project-dash-first": Case(("ports", "--project-name=-rf"), ExitCode.INVALID_NAME, "project name '-rf'"),
    "project-path": Case(("port", "-p", "../x", "web"), ExitCode.INVALID_NAME, "project name '../x'"),
    "project-too-long": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "a" * 112), ExitCode.INVALID_NAME, "is invalid",
                             files={"t.yml": VALID}),
    "project-from-env": Case(("up", "-d", "-f", "{work}/t.yml"), ExitCode.INVALID_NAME, "project name 'Bad;Name'",
                             files={"t.yml": VALID}, env={"COMPOSE_PROJECT_NAME": "Bad;Name"}),
    "owner-space": Case(("get", "--owner", "my owner"), ExitCode.INVALID_NAME, "owner name 'my owner' is invalid"),
    "owner-path": Case(("release", "--owner", "../etc"), ExitCode.INVALID_NAME, "owner name '../etc'"),
    "owner-empty": Case(("get", "--owner", ""), ExitCode.INVALID_NAME, "owner name '' is invalid"),
    "owner-hidden": Case(("get", "--owner", ".x"), ExitCode.INVALID_NAME, "owner name '.x'"),
    "owner-too-long": Case(("get", "--owner", "o" * 129), ExitCode.INVALID_NAME, "is invalid"),
    # --- Compose and the engine --------------------------------------------------------------------
    "no-compose": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}"), ExitCode.COMPOSE_MISSING,
                       "/nonexistent/compose", files={"t.yml": VALID},
                       env={"FREEPORT_COMPOSE": "/nonexistent/compose"}),
    "compose-not-executable": Case(("run", "-f", "{work}/t.yml", "-p", "{project}", "--", "true"),
                                   ExitCode.COMPOSE_MISSING, "t.yml", files={"t.yml": VALID},
                                   env={"FREEPORT_COMPOSE": "{work}/t.yml"}),
    "engine-unreachable-up": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}"), ExitCode.ENGINE_UNREACHABLE,
                                  "no Docker engine answers", files={"t.yml": VALID},
                                  env={"DOCKER_HOST": "unix:///tmp/nonexistent.sock"}, docker=True),
    "engine-unreachable-run": Case(("run", "-f", "{work}/t.yml", "-p", "{project}", "--", "true"),
                                   ExitCode.ENGINE_UNREACHABLE, "no Docker engine answers", files={"t.yml": VALID},
                                   env={"DOCKER_HOST": "unix:///tmp/nonexistent.sock"}, docker=True),
    "unknown-context-up": Case(("--context", "fpc-nosuch", "up", "-d", "-f", "{work}/t.yml", "-p", "{project}"),
                               ExitCode.UNKNOWN_CONTEXT, "docker context 'fpc-nosuch' does not exist",
                               files={"t.yml": VALID}, env={"DOCKER_CONFIG": "{work}"}),
    "unknown-context-env-ports": Case(("ports", "-p", "{project}"), ExitCode.UNKNOWN_CONTEXT,
                                      "docker context 'fpc-nosuch' does not exist",
                                      env={"DOCKER_CONFIG": "{work}", "DOCKER_CONTEXT": "fpc-nosuch"}),
    "unknown-context-after-command": Case(("render", "-f", "{work}/t.yml", "--context", "fpc-nosuch"),
                                          ExitCode.UNKNOWN_CONTEXT, "does not exist", files={"t.yml": VALID},
                                          env={"DOCKER_CONFIG": "{work}"}),
    "deploy-not-a-swarm-manager": Case(("deploy", "-f", "{work}/t.yml", "-p", "{project}"),
                                       ExitCode.NOT_SWARM_MANAGER, "is not a Swarm manager",
                                       files={"t.yml": VALID}, docker=True),
    "compose-rejects-render-file": render(code=COMPOSE_STATUS, fragment="docker compose config failed",
                                          files={"t.yml": NO_IMAGE}, docker=True),
    "compose-rejects-render-new": render(code=COMPOSE_STATUS, out="new", fragment="neither an image",
                                         files={"t.yml": NO_IMAGE}, docker=True),
    "compose-rejects-render-dir": Case(("render", "-f", "{work}/t.yml", "-f", "{work}/u.yml", "-p", "{project}",
                                        "-o", "{out}"), COMPOSE_STATUS, "docker compose config failed",
                                       files={"t.yml": VALID, "u.yml": NO_IMAGE.replace("web", "api")}, out="dir",
                                       docker=True),
    "compose-rejects-render-newdir": Case(("render", "-f", "{work}/t.yml", "-f", "{work}/u.yml", "-p", "{project}",
                                           "-o", "{out}"), COMPOSE_STATUS, "docker compose config failed",
                                          files={"t.yml": VALID, "u.yml": NO_IMAGE.replace("web", "api")},
                                          out="newdir", docker=True),
    "missing-env-file": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}", "--env-file", "{work}/nope.env"),
                             COMPOSE_STATUS, "nope.env", files={"t.yml": VALID}, docker=True),
    "bad-extra-compose-arg": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}", "--", "--no-such-flag"),
                                  COMPOSE_STATUS, "docker compose up failed", files={"t.yml": VALID},
                                  docker=True),
    # --- the state directory -------------------------------------------------------------------------
    "state-dir-symlink": Case(("get", "--owner", "x"), ExitCode.STATE_DIR, "is a symlink", state="symlink"),
    "state-dir-symlink-render": render(code=ExitCode.STATE_DIR, fragment="is a symlink", files={"t.yml": VALID},
                                       state="symlink"),
    "state-dir-other-uid": Case(("leases",), ExitCode.STATE_DIR, f"belongs to uid {NOBODY}", state="other-uid"),
    "state-dir-other-uid-up": Case(("up", "-d", "-f", "{work}/t.yml", "-p", "{project}"), ExitCode.STATE_DIR,
                                   f"belongs to uid {NOBODY}", files={"t.yml": VALID}, state="other-uid"),
    "state-dir-world-writable": Case(("get", "--owner", "x"), ExitCode.STATE_DIR,
                                     "world-writable without the sticky bit", state="world-writable"),
    "state-dir-world-writable-gc": Case(("gc",), ExitCode.STATE_DIR, "world-writable", state="world-writable"),
    "state-dir-unwritable": Case(("get", "--owner", "x"), ExitCode.STATE_DIR, "cannot create state dir",
                                 state="unwritable"),
    "state-dir-unwritable-render": render(code=ExitCode.STATE_DIR, out="new", fragment="cannot create state dir",
                                          files={"t.yml": VALID}, state="unwritable"),
    # --- usage -------------------------------------------------------------------------------------------
    "run-without-command": Case(("run", "-f", "{work}/t.yml", "-p", "{project}"), ExitCode.USAGE,
                                "run needs a command after `--`", files={"t.yml": VALID}),
    "run-empty-command": Case(("run", "-f", "{work}/t.yml", "-p", "{project}", "--"), ExitCode.USAGE,
                              "run needs a command", files={"t.yml": VALID}),
    "dashdash-for-ls": Case(("leases", "--", "x"), ExitCode.USAGE, "`--` is only for `up`"),
    "dashdash-for-get": Case(("get", "--owner", "x", "--", "-n", "2"), ExitCode.USAGE, "not `get`"),
    "dashdash-for-render": Case(("render", "-f", "{work}/t.yml", "-p", "{project}", "-o", "{out}", "--", "x"),
                                ExitCode.USAGE, "not `render`", files={"t.yml": VALID}, out="file"),
    "dashdash-for-down": Case(("down", "-p", "{project}", "--", "-v"), ExitCode.USAGE, "not `down`"),
    # (`start`, `logs`, `exec`...: Compose's verbs, passed through for a stack; see test_zero_edit.py)
    # An unknown command is Compose's to refuse, as `docker compose frobnicate` is
    "unknown-command": Case(("frobnicate",), COMPOSE_STATUS, "unknown docker command", compose=True, docker=True),
    # No stack of ours and no Compose file: Compose's own answer, as to `docker compose start`
    "compose-verb-without-stack": Case(("start",), COMPOSE_STATUS, "no configuration file provided",
                                       cwd_work=True, compose=True, docker=True),
    "no-command": Case((), ExitCode.USAGE, "required: COMMAND", usage=True),
    "get-without-owner": Case(("get", "-n", "2"), ExitCode.USAGE, "required: --owner", usage=True),
    "render-without-file": Case(("render", "-p", "{project}", "-o", "{out}"), T,
                                "no Compose file found: looked for compose.yaml", out="new", cwd_work=True),
    "ports-bad-format": Case(("ports", "-p", "{project}", "--format", "xml"), ExitCode.USAGE, "invalid choice: 'xml'",
                             usage=True),
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry below path: file contents, None for directories."""
    return {str(p.relative_to(path)): None if p.is_dir() else p.read_bytes() for p in sorted(path.rglob("*"))}


@pytest.fixture
def work() -> Iterator[Path]:
    """A world-traversable directory (uid 65534 must reach its files), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fpc-bad-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The table, run
# --------------------------------------------------------------------------------------------


def _params() -> list[Any]:
    return [pytest.param(name, marks=[pytest.mark.docker] if case.docker else [], id=name)
            for name, case in CASES.items()]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    # NO_FREE_PORT and BUSY need another process holding on: tests/test_allocator.py and test_project_busy below.
    # NOT_READY: the Python API's readiness checks only (tests/test_stack_api.py).
    # COMPOSE_FAILED: the library's; the CLI exits with Compose's own status (COMPOSE_STATUS) as Compose would.
    untabled = {ExitCode.OK, ExitCode.FAILURE, ExitCode.NO_FREE_PORT, ExitCode.BUSY, ExitCode.NOT_READY,
                ExitCode.COMPOSE_FAILED}
    codes = {value for name, value in vars(ExitCode).items() if name.isupper()}
    assert len(codes) == 18  # one per kind, none shared
    assert {c.code for c in CASES.values()} >= codes - untabled | {COMPOSE_STATUS}


def test_project_busy(work: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """A project another freeport-compose keeps busy: exit 13 after the wait, one line, nothing leased."""
    import fcntl

    from freeport_compose._cli import main
    from freeport_compose._stacks import records
    from freeport_compose._stacks.state import State

    (work / "t.yml").write_text(VALID)
    fd = State.open().stacks.lock_file("busy-one", "lock")  # the project's lock, as another freeport-compose holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        monkeypatch.setattr(records, "BUSY_WAIT", 0.3)
        code = main(["render", "--no-check", "-f", str(work / "t.yml"), "-p", "busy-one", "-o", str(work / "o.yml")])
    finally:
        os.close(fd)
    assert code == ExitCode.BUSY
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("freeport-compose: project 'busy-one' is busy"), err
    assert not (work / "o.yml").exists()
    from freeport_compose import store

    assert [r for r in store().records() if store().is_held(r)] == []


@pytest.mark.parametrize("name", _params())
def test_bad_input(name: str, work: Path, state_dir: Path) -> None:
    case = CASES[name]
    if case.docker:
        require_docker()
    as_nobody = case.state in ("nobody", "unwritable")
    if (as_nobody or case.state == "other-uid" or case.unreadable) and os.geteuid() != 0:
        pytest.skip("needs root to chown files and to run the CLI as another uid")
    if as_nobody and not nobody_cli()[0]:
        pytest.skip(f"uid {NOBODY} can run neither {FPC} nor a system Python with this package")
    project = f"fpc-bad-{secrets.token_hex(4)}"

    for rel, content in case.files.items():
        path = work / rel
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if case.unreadable:
        (work / case.unreadable).chmod(0o600)  # owned by root: unreadable for uid 65534

    # OUT and its directory, as they are before the command.
    out_parent = work / "out"
    out_parent.mkdir()
    out = out_parent / ("rendered" if case.out in ("dir", "newdir") else "rendered.yml")
    if case.out == "file":
        out.write_bytes(b"# the user's own file: must survive a failed render\n")
    elif case.out == "dir":
        out.mkdir()
        (out / "keep.yml").write_bytes(b"# must survive\n")
    out_before = tree(out_parent)

    # The state dir the case runs with, and what must be checked afterwards.
    state: Path = state_dir  # conftest's: ls --json must show nothing in it afterwards
    if case.state == "symlink":
        target = work / "real-state"
        target.mkdir(mode=0o700)
        state = work / "state-link"
        state.symlink_to(target)
    elif case.state in ("other-uid", "nobody"):
        state = work / "state-nobody"
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)
    elif case.state == "world-writable":
        state = work / "state-ww"
        state.mkdir()
        state.chmod(0o777)
    elif case.state == "unwritable":
        parent = work / "root-only"
        parent.mkdir()
        parent.chmod(0o755)
        state = parent / "state"
    work_before = tree(work)

    values = {"work": str(work), "project": project, "out": str(out)}
    argv = [a.format(**values) for a in case.argv]
    env = {k: v.format(**values) for k, v in case.env.items()} | {"FREEPORT_STATE_DIR": str(state)}
    try:
        result = fpc(*argv, env=env, cwd=work if case.cwd_work else None, user=NOBODY if as_nobody else None)
        if case.compose:
            assert_compose_error(result, case.code, case.fragment.format(**values))
        else:
            assert_error(result, case.code, case.fragment.format(**values), usage=case.usage)

        # No half-written or stray output: OUT's directory is exactly as it was.
        assert tree(out_parent) == out_before
        # Nothing leased, recorded or left half-written in the state dir.
        if case.state in ("ok", "nobody"):
            listing = ls_json(state, user=NOBODY if as_nobody else None)
            assert (listing["leases"], listing["stacks"]) == ([], [])
            if state.exists():
                # engine.json only names the engine a directory below engines/ is for: no lease, no record
                left = [p for p in state.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".json"]
                assert [p for p in left if p.name != "engine.json"] == []
        else:  # a refused state dir is left exactly as it was (nothing created through it)
            assert tree(work) == work_before
            if case.state == "unwritable":
                assert not state.exists()
        if case.docker:
            assert_engine_clean(project)
    finally:
        if case.docker and not docker_missing():
            down_projects(project)


# --------------------------------------------------------------------------------------------
# Security: no shell string is ever built from input
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mark() -> Iterator[Path]:
    """A marker path that a shell evaluating any of our inputs would create."""
    path = Path(f"/tmp/pwned-{secrets.token_hex(6)}")
    try:
        yield path
    finally:
        if path.exists():
            path.unlink()


def hostile(mark: Path) -> list[str]:
    """Strings that run `touch MARK` if a shell ever reads them (as an argument or inside a word)."""
    return [f"$(touch {mark})", f"`touch {mark}`", f"x; touch {mark}", f"x | touch {mark}", f"x && touch {mark} #"]


def hostile_name(mark: Path) -> str:
    """The same, as one file or directory name (no '/': $FPC_MARK, set for the CLI, names the marker)."""
    return "a$(touch $FPC_MARK)b`touch $FPC_MARK`c;touch $FPC_MARK|touch $FPC_MARK&& touch $FPC_MARK #"


@pytest.mark.docker
def test_hostile_file_and_directory_names(work: Path, state_dir: Path, mark: Path) -> None:
    require_docker()
    env = {"FPC_MARK": str(mark)}
    directory = work / hostile_name(mark)
    directory.mkdir()
    template = directory / (hostile_name(mark) + ".yml")
    template.write_text(VALID)
    env_file = directory / (hostile_name(mark) + ".env")
    env_file.write_text("FPC_UNUSED=1\n")
    projects = [f"fpc-bad-{secrets.token_hex(4)}" for _ in range(3)]
    try:
        # render with the `docker compose config` check, to a hostile OUT name
        out = directory / ("out-" + hostile_name(mark) + ".yml")
        rendered = ok(fpc("render", "-f", str(template), "-p", projects[0], "--env-file", str(env_file),
                          "-o", str(out), env=env))
        assert rendered.stdout == f"{out}\n"
        assert "$<FREEPORT_web>" not in out.read_text()
        ok(fpc("down", "-p", projects[0], env=env))

        # up and down, named by -p; then up without -p: the project name comes from the directory
        ok(fpc("up", "-d", "-f", str(template), "-p", projects[1], "--env-file", str(env_file),
               "--project-directory", str(directory), env=env))
        ok(fpc("down", "-p", projects[1], env=env))
        unnamed = ok(fpc("up", "-d", "-f", str(template), env=env, cwd=directory))
        found = re.search(r"project (\S+) is up", unnamed.stderr)
        assert found, unnamed.stderr
        projects[2] = found.group(1)
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", projects[2])
        ok(fpc("down", env=env, cwd=directory))  # found from the (hostile) current directory
        assert not mark.exists(), "a shell ran on a file or directory name"
        assert_engine_clean(*projects)
        assert ls_json(state_dir)["leases"] == []
    finally:
        down_projects(*projects)
    assert not mark.exists()


@pytest.mark.docker
def test_hostile_compose_arguments(work: Path, state_dir: Path, mark: Path) -> None:
    require_docker()
    template = work / "compose.yml"
    template.write_text(VALID)
    project = f"fpc-bad-{secrets.token_hex(4)}"
    env = {"FPC_MARK": str(mark)}
    try:
        # extra `docker compose up` arguments: service names that do not exist, so Compose fails
        exits(fpc("up", "-d", "-f", str(template), "-p", project, "--", *hostile(mark), env=env), COMPOSE_STATUS)
        # as an option's value
        exits(fpc("up", "-d", "-f", str(template), "-p", project, "--", "--scale", f"web=1;touch {mark}", env=env),
              COMPOSE_STATUS)
        # profiles, env files and project directories
        for option in ("--profile", "--env-file", "--project-directory"):
            for value in hostile(mark):
                result = fpc("up", "-d", "-f", str(template), "-p", project, option, value, env=env)
                assert_no_traceback(result)
                if result.returncode == 0:
                    ok(fpc("down", "-p", project, env=env))
        # $FREEPORT_COMPOSE is split like a command line, never given to a shell
        for value in (f"docker compose; touch {mark}", f"docker compose $(touch {mark})", f"docker `touch {mark}`"):
            result = fpc("up", "-d", "-f", str(template), "-p", project, env={**env, "FREEPORT_COMPOSE": value})
            assert result.returncode != 0, result.stderr
            assert_no_traceback(result)
        assert not mark.exists(), "a shell ran on a Compose argument"
        assert_engine_clean(project)
        listing = ls_json(state_dir)
        assert (listing["leases"], listing["stacks"]) == ([], [])
    finally:
        down_projects(project)
    assert not mark.exists()


@pytest.mark.docker
def test_run_passes_literal_argv(work: Path, state_dir: Path, mark: Path) -> None:
    require_docker()
    template = work / "compose.yml"
    template.write_text(VALID)
    project = f"fpc-bad-{secrets.token_hex(4)}"
    try:
        # The command's own shell (sh -c) expands $FREEPORT_web: run gave it the literal script.
        shell = ok(fpc("run", "-f", str(template), "-p", project, "--", "sh", "-c",
                       'printf %s "$FREEPORT_web"; printf " %s" "$COMPOSE_PROJECT_NAME"'))
        port, name = shell.stdout.split(" ")
        assert 1 <= int(port) <= 65535
        assert name == project

        # Without a shell of the command's own, every word arrives as written.
        words = [*hostile(mark), "$FREEPORT_web", "${FREEPORT_web}", "a b", "", "*", "'\"", "-", "--"]
        echo = ok(fpc("run", "-f", str(template), "-p", project, "--", sys.executable, "-c",
                      "import json, sys; print(json.dumps(sys.argv[1:]))", *words))
        assert json.loads(echo.stdout) == words
        assert not mark.exists(), "a shell ran on run's command"
        assert_engine_clean(project)
        listing = ls_json(state_dir)
        assert (listing["leases"], listing["stacks"]) == ([], [])
    finally:
        down_projects(project)
    assert not mark.exists()
