"""The fast reader of the hot commands (`_argv.fast_args`) against the argparse parser (`_parser`).

The fast reader exists so that `get`, `release`, `port` and `ports` start without argparse, typing,
re and json; its promise is to read argv exactly as argparse does, or to decline. These tests hold it
to that over hand-picked and random command lines, check its option tables against the parser's own,
and check, in a fresh interpreter, that the hot commands really import none of what it avoids.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from freeport_compose._argv import (
    _FAST_DEFAULTS,
    _FAST_OPTIONS,
    _FAST_POSITIONAL,
    _FAST_REQUIRED,
    command_word,
    fast_args,
)
from freeport_compose._parser import build_parser


def argparse_reads(argv: list[str]) -> dict[str, object] | None:
    """What argparse makes of argv, or None when it refuses it (usage error or help: SystemExit)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(build_parser(command_word(argv)).parse_args(argv))
    except SystemExit:
        return None


HAND_PICKED = [
    ["get", "--owner", "ci"],
    ["get", "--owner=ci", "-n", "3", "--contiguous", "--range", "20000-20100", "--format", "json"],
    ["--state-dir", "/tmp/s", "get", "--owner", "ci", "--host", "::1", "--host", "0.0.0.0", "--exclude", "1,2"],
    ["--state-dir=/tmp/s", "--context", "far", "get", "--owner", "x", "--context", "near"],
    ["--context=far", "release", "--owner", "x"],
    ["get", "--owner", "a", "--owner", "b", "-n", "2", "-n", " 4 "],
    ["get", "--owner", "a", "-n", "+3"],
    ["get", "--owner", "a", "-n", "3_000"],
    ["get", "--owner", "a", "-n", "-3"],
    ["get", "--owner", "a", "-n3"],
    ["get", "--owner", "a", "-n=3"],
    ["get", "--owner", "a", "-n", "x"],
    ["get", "--own", "a"],
    ["get", "--owner"],
    ["get", "--owner", ""],
    ["get", "--owner="],
    ["get", "--owner", "-x"],
    ["get", "--owner", "a", "--format", "yaml"],
    ["get", "--owner", "a", "--contiguous=yes"],
    ["get", "--owner", "a", "--state-dir", "d"],
    ["get"],
    ["get", "-h"],
    ["get", "--owner", "a", "extra"],
    ["release"],
    ["release", "--owner", "a", "--owner=b"],
    ["ports"],
    ["ports", "-p", "demo", "--format", "make"],
    ["ports", "--project-name=demo", "--format=github", "--context", "c"],
    ["ports", "-p=demo"],
    ["ports", "-pdemo"],
    ["ports", "--format", "xml"],
    ["port", "db"],
    ["port", "-p", "demo", "FREEPORT_db"],
    ["port", "FREEPORT_db", "-p", "demo"],
    ["port"],
    ["port", "a", "b"],
    ["port", "-p", "demo"],
    ["ls"],
    ["ls", "--json", "--context", "c"],
    ["gc", "--json"],
    ["up", "-f", "x.yml"],
    ["up", "-f", "a.yml", "--file=b.yml", "-p", "demo", "--no-check", "--wait", "--profile", "x", "--env-file", "e"],
    ["up", "--no-check=1"],
    ["up", "-fx.yml"],
    ["up", "--project-directory", "/w", "--lease-all", "--drop-container-names", "--timeout", "none"],
    ["render", "-o", "out", "--ttl", "2h", "-f", "t.yml"],
    ["run", "-f", "t.yml", "--keep-volumes"],
    ["deploy", "-f", "t.yml", "--wait"],
    ["down", "-p", "demo", "-v"],
    ["down", "--volumes", "--project-name=demo"],
    ["down", "-pv"],
    ["--state", "d", "get", "--owner", "a"],
    ["--state-dir", "d"],
    [],
    ["-h"],
]

TOKENS = [
    "get", "release", "ports", "port", "ls", "--owner", "--owner=o", "o", "-n", "2", "-n2", "x", "--range",
    "1-2", "--contiguous", "--host", "::1", "--exclude", "5", "--timeout", "none", "--format", "json", "lines",
    "make", "--format=json", "-p", "proj", "--project-name", "--context", "--context=c", "--state-dir", "/d",
    "--state-dir=/d", "-h", "--help", "", "-", "-1", "=", "--", "db", "--own", "--cont", "-f", "--no-check",
    "--wait", "-v", "--json", "--ttl", "-o", "--fi",
]  # fmt: skip


VALUES = {"str": ["o", "x y", "1-2", "none", "=", "é"], "int": ["2", " 3", "+1", "0x1"], "append": ["::1", "5,6"]}


def random_argv(rng: random.Random) -> list[str]:
    """A command line of one hot command: mostly its own options with plausible values, sometimes
    a stray token from TOKENS (an error, an abbreviation, a value that looks like an option)."""
    command = rng.choice(sorted(_FAST_OPTIONS))
    head = rng.choice([[], ["--state-dir", "/d"], ["--context=c"]])
    argv = [*head, command]
    options = _FAST_OPTIONS[command]
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.15:
            argv.append(rng.choice(TOKENS))
            continue
        option = rng.choice(sorted(options))
        how = options[option][1]
        if how in ("flag", "false"):
            argv.append(option)
            continue
        value = rng.choice(list(how) if isinstance(how, tuple) else VALUES[how])
        argv += [f"{option}={value}"] if option.startswith("--") and rng.random() < 0.3 else [option, value]
    if command in _FAST_POSITIONAL and rng.random() < 0.8:
        argv.insert(rng.randint(len(head) + 1, len(argv)), "db")
    if command in ("get", "release") and rng.random() < 0.8:
        argv += ["--owner", "o"]
    return argv


@pytest.mark.parametrize("argv", HAND_PICKED, ids=lambda a: " ".join(a) or "(empty)")
def test_fast_reader_reads_as_argparse_or_declines(argv: list[str]) -> None:
    fast = fast_args(argv)
    if fast is not None:
        assert vars(fast) == argparse_reads(argv)


def test_fast_reader_agrees_on_random_command_lines() -> None:
    rng = random.Random(20261201)
    read = declined = 0
    for _ in range(4000):
        argv = random_argv(rng)
        if "--" in argv:
            continue
        fast = fast_args(argv)
        if fast is None:
            declined += 1
            continue
        read += 1
        assert vars(fast) == argparse_reads(argv), argv
    assert read > 400  # both sides of the promise were exercised
    assert declined > 400


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "--owner", "ci"],
        ["get", "--owner", "ci", "-n", "6", "--format", "json"],
        ["--state-dir", "/s", "release", "--owner", "ci"],
        ["ports", "-p", "demo", "--format", "make"],
        ["port", "-p", "demo", "db"],
        ["--context", "far", "ports"],
        ["up", "-f", "compose.yml", "-p", "demo", "--wait"],
        ["down", "-p", "demo", "-v"],
        ["run", "-f", "t.yml", "--no-check"],
        ["ls", "--json"],
        ["gc"],
    ],
)
def test_fast_reader_takes_the_usual_forms(argv: list[str]) -> None:
    assert fast_args(argv) is not None


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", sorted(_FAST_OPTIONS))
def test_fast_tables_match_the_parser(command: str) -> None:
    """Every option of the argparse form is in the fast reader's tables, with its dest, default and
    whether it is required: an option added to one only would make the two read argv differently."""
    options: dict[str, str] = {}
    defaults: dict[str, object] = {}
    required: set[str] = set()
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            assert _FAST_POSITIONAL.get(command) == action.dest
            required.add(action.dest)
            continue
        for option in action.option_strings:
            options[option] = action.dest
        if action.required:
            required.add(action.dest)
        elif action.default is not argparse.SUPPRESS and not isinstance(action.default, list):
            defaults[action.dest] = action.default
        if action.choices is not None:
            assert all(_FAST_OPTIONS[command][o][1] == tuple(action.choices) for o in action.option_strings)
    assert {o: dest for o, (dest, _) in _FAST_OPTIONS[command].items()} == options
    assert _FAST_DEFAULTS[command] == defaults
    assert set(_FAST_REQUIRED.get(command, ())) == required


AVOIDED = ("argparse", "typing", "re", "json", "enum", "gettext", "dataclasses")


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["get", "--owner", "t"], ()),
        (["release", "--owner", "t"], ()),
        (["ports", "-p", "nope"], ()),
        (["port", "-p", "nope", "db"], ()),
    ],
)
def test_hot_commands_import_none_of_the_costly_modules(
    argv: list[str], allowed: tuple[str, ...], tmp_path: Path
) -> None:
    """What each hot command imports, in a fresh interpreter: none of AVOIDED (each costs a start
    1-3 ms, with what it pulls in), also when the command fails (`ports` of no such project)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"  # what the interpreter starts with (site and its .pth files)
        "from freeport_compose._cli import main\n"
        "main(sys.argv[1:])\n"
        f"print(' '.join(sorted(m for m in {[m for m in AVOIDED if m not in allowed]!r} "
        "if m in sys.modules and m not in before)))\n"
    )
    env = {**os.environ, "FREEPORT_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1:] in ([], [""])
    before = subprocess.run(
        [sys.executable, "-c", "import sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not set(AVOIDED) & set(before)  # else the check above could not see them
