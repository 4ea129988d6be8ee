"""The command line's one grammar (`_argv`): what each command line is read as, what is refused and
how, what --help and --version print, and that only the command being run has its parser made."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from freeport_compose import _argv
from freeport_compose._argv import COMMANDS, COMPOSE_VERBS, command_parser, parse
from freeport_compose._cli import HANDLERS
from freeport_compose._error import ExitCode, InvalidRangeError

SRC = Path(_argv.__file__).parent


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a usage error prints (exit code 2, nothing on stdout)."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == ExitCode.USAGE
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(r"freeport-compose(?: [a-z]+)?: .+ \(see --help\)\n", err), err
    return err


# -- our commands ---------------------------------------------------------------------------------------


def test_get_with_its_defaults() -> None:
    args = parse(["get", "--owner", "ci"])
    assert vars(args) == {
        "state_dir": None,
        "context": None,
        "project": None,
        "command": "get",
        "owner": "ci",
        "n": 1,
        "range": None,
        "contiguous": False,
        "host": [],
        "exclude": [],
        "timeout": "30",
        "format": "lines",
        "files": [],
        "profiles": [],
        "env_files": [],
        "project_directory": None,
        "compose_globals": [],
        "compose_args": None,
        "compose_extra": [],
        "after": [],
    }


def test_every_option_of_get() -> None:
    args = parse(
        ["--state-dir=/s", "get", "--owner=ci", "-n", "3", "--contiguous", "--range", "20000-20100", "--host", "::1",
         "--host", "0.0.0.0", "--exclude", "1,2", "--timeout", "none", "--format", "json"]
    )  # fmt: skip
    assert (args.state_dir, args.owner, args.n, args.contiguous, args.range) == ("/s", "ci", 3, True, "20000-20100")
    assert (args.host, args.exclude, args.timeout, args.format) == (["::1", "0.0.0.0"], ["1,2"], "none", "json")


def test_stack_options() -> None:
    args = parse(
        ["up", "-f", "a.yml", "--file=b.yml", "-p", "demo", "--no-check", "--wait", "--profile", "x", "--env-file",
         "e", "--project-directory", "/w", "--lease-all", "--drop-container-names", "--lease-timeout", "5"]
    )  # fmt: skip
    assert (args.files, args.project, args.check, args.compose_extra, args.profiles) == (
        ["a.yml", "b.yml"],
        "demo",
        False,
        ["--wait"],  # Compose's
        ["x"],
    )
    assert (args.env_files, args.project_directory, args.lease_all, args.drop_container_names) == (
        ["e"],
        "/w",
        True,
        True,
    )
    assert args.lease_timeout == "5"
    render = parse(["render", "-o", "out", "--ttl", "2h", "-f", "t.yml"])
    assert (render.output, render.ttl, render.files, render.check) == ("out", "2h", ["t.yml"], True)
    assert parse(["run", "-f", "t.yml", "--keep-volumes", "--", "true"]).keep_volumes
    down = parse(["down", "--volumes", "--project-name=demo"])
    assert (down.volumes, down.project) == (True, "demo")
    port = parse(["port", "FREEPORT_db", "-p", "demo"])
    assert (port.name, port.project) == ("FREEPORT_db", "demo")
    assert parse(["ports", "--format", "make"]).format == "make"
    assert parse(["leases", "--json"]).json
    assert parse(["gc"]).command == "gc"


@pytest.mark.parametrize("option", ["--context", "-p"])
def test_context_and_project_before_or_after_the_command(option: str) -> None:
    """As `docker compose` users type them: before the command or after it; after wins."""
    dest = "context" if option == "--context" else "project"
    assert getattr(parse([option, "far", "ports"]), dest) == "far"
    assert getattr(parse(["ports", option, "near"]), dest) == "near"
    assert getattr(parse([option, "far", "ports", option, "near"]), dest) == "near"
    assert getattr(parse(["ports"]), dest) is None


def test_no_abbreviations_and_attached_values() -> None:
    """As in Compose, an option is written whole: `--state` is no `--state-dir`, and a word like
    `--pro` after a Compose verb is Compose's, never an ambiguous abbreviation of ours."""
    args = parse(["--state-dir", "d", "get", "--owner=a", "-n3", "--contiguous"])
    assert (args.state_dir, args.owner, args.n, args.contiguous) == ("d", "a", 3, True)
    assert parse(["ports", "-pdemo"]).project == "demo"
    assert parse(["logs", "--pro", "--a", "--c"]).compose_args == ["logs", "--pro", "--a", "--c"]


def test_what_follows_dashdash() -> None:
    up = parse(["up", "-f", "x.yml", "--", "--scale", "web=2", "--", "-h"])
    assert (up.files, up.after) == (["x.yml"], [])
    assert up.compose_extra == ["--", "--scale", "web=2", "--", "-h"]  # Compose's own `--`, to Compose as it is
    run = parse(["run", "-f", "t.yml", "--", "sh", "-c", "exit 3"])
    assert run.after == ["sh", "-c", "exit 3"]
    assert parse(["deploy", "--", "--prune"]).after == ["--prune"]


def test_a_dashdash_that_ends_the_line_is_only_the_end_of_options() -> None:
    assert parse(["leases", "--"]).after == []
    assert parse(["up", "--"]).after == []


def test_composes_global_options_before_the_command() -> None:
    """`docker compose -f a.yml --profile x -p shop up -d web` means the same with us in its place:
    the files, profiles, env files and project directory choose the stack; the others go to Compose."""
    args = parse(["-f", "a.yml", "--profile", "x", "--env-file", "e", "--project-directory", "/w", "-p", "shop",
                  "--ansi", "never", "--dry-run", "up", "-d", "-f", "b.yml", "web"])  # fmt: skip
    assert (args.files, args.profiles, args.env_files, args.project_directory) == (
        ["a.yml", "b.yml"],
        ["x"],
        ["e"],
        "/w",
    )
    assert (args.project, args.compose_globals, args.compose_extra) == ("shop", ["--ansi", "never", "--dry-run"],
                                                                         ["-d", "web"])  # fmt: skip
    ps = parse(["-f", "a.yml", "--progress", "plain", "ps", "-a"])
    assert (ps.files, ps.compose_globals, ps.compose_args) == (["a.yml"], ["--progress", "plain"], ["ps", "-a"])


def test_up_and_down_take_composes_options_and_services() -> None:
    up = parse(["up", "-d", "--build", "--wait-timeout", "10", "--no-deps", "web", "db", "-p", "app"])
    assert (up.command, up.project, up.compose_extra) == ("up", "app", ["-d", "--build", "--wait-timeout", "10",
                                                                          "--no-deps", "web", "db"])  # fmt: skip
    assert parse(["up", "--no-recreat"]).compose_extra == ["--no-recreat"]  # Compose says what is wrong with it
    down = parse(["down", "--rmi", "all", "-v", "web", "-t", "0"])
    assert (down.volumes, down.compose_extra) == (True, ["--rmi", "all", "web", "-t", "0"])


def test_a_command_that_is_none_of_ours_is_composes() -> None:
    """Compose says what it makes of it (`unknown docker command`, its own status), as to `docker compose`."""
    assert parse(["frobnicate", "-x"]).compose_args == ["frobnicate", "-x"]
    assert parse(["volumes"]).compose_args == ["volumes"]


def test_our_run_without_its_dashdash_is_a_usage_error_not_composes(capsys: pytest.CaptureFixture[str]) -> None:
    """An option Compose's `run` has not (-f) makes the line ours: its missing `--` is said as ours."""
    assert "run needs a command after `--`" in usage_error(["run", "-f", "t.yml", "-p", "x"], capsys)


def test_run_and_port_in_composes_form_are_composes() -> None:
    ours = parse(["run", "-f", "t.yml", "--", "pytest", "-x"])
    assert (ours.compose_args, ours.after, ours.files) == (None, ["pytest", "-x"], ["t.yml"])
    theirs = parse(["-p", "app", "run", "--rm", "-p", "8080:80", "web", "echo", "-p"])
    assert (theirs.project, theirs.compose_args) == ("app", ["run", "--rm", "-p", "8080:80", "web", "echo", "-p"])
    assert parse(["run", "web", "--", "ls"]).compose_args == ["run", "web", "--", "ls"]
    assert parse(["port", "db"]).compose_args is None
    assert parse(["port", "web", "80"]).compose_args == ["port", "web", "80"]
    assert parse(["port", "--protocol", "udp", "web", "53"]).compose_args == ["port", "--protocol", "udp", "web", "53"]


def test_detached_is_read_as_compose_reads_it() -> None:
    for words in (["-d"], ["--detach"], ["--wait"], ["-dV"], ["--build", "-d", "web"], ["--wait=true"]):
        assert _argv._detached(words), words
    for words in ([], ["web"], ["--build"], ["-V"], ["--", "-d"], ["--abort-on-container-exit"]):
        assert not _argv._detached(words), words


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required: COMMAND"),
        (["--bogus", "leases"], "unrecognized arguments: --bogus"),
        (["get"], "freeport-compose get: the following arguments are required: --owner"),
        (["get", "--owner", "a", "-n", "x"], "invalid int value: 'x'"),
        (["get", "--owner", "a", "extra"], "unrecognized arguments: extra"),
        (["get", "--owner", "a", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["get", "--owner", "a", "--state-dir", "d"], "unrecognized arguments: --state-dir d"),
        (["ports", "--format", "xml"], "invalid choice: 'xml'"),
        (["port"], "required: name"),
        (["up", "--no-check=1"], "ignored explicit argument '1'"),
        (["leases", "--", "x"], "`--` is only for `up`"),
        (["get", "--owner", "x", "--", "-n", "2"], "not `get`"),
        (["run", "-f", "t.yml", "--"], "run needs a command after `--`"),
        (["--state", "leases"], "unrecognized arguments: --state"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert fragment in usage_error(argv, capsys)


# -- Compose's verbs --------------------------------------------------------------------------------------


def test_a_verb_and_every_word_after_it_are_composes() -> None:
    """Words after a verb that look like our options, help, `--`: untouched; but for our -p and
    --context before the verb's first other word (Compose has none there: it refuses them)."""
    tail = ["web", "-f", "--context", "x", "-p", "y", "--state-dir", "z", "-h", "--help", "--version", "-n3", "", "-"]
    args = parse(["--state-dir", "/s", "--context", "far", "-p", "shop", "logs", *tail, "--", "a", "--", "-h"])
    assert args.compose_args == ["logs", *tail, "--", "a", "--", "-h"]
    assert (args.state_dir, args.context, args.project, args.after) == ("/s", "far", "shop", [])
    near = parse(["-p", "far", "logs", "-f", "-p", "near", "--context=c", "web", "-p", "x"])
    assert (near.project, near.context, near.compose_args) == ("near", "c", ["logs", "-f", "web", "-p", "x"])
    assert parse(["commit", "-p", "web"]).compose_args == ["commit", "-p", "web"]  # Compose's own -p: --pause
    assert parse(["exec", "web", "sh", "-c", "echo $X"]).compose_args == ["exec", "web", "sh", "-c", "echo $X"]
    assert parse(["ps"]).compose_args == ["ps"]


def test_compose_reaches_composes_own_verbs() -> None:
    assert parse(["-p", "shop", "compose", "run", "--rm", "web", "-p", "8080:80"]).compose_args == [
        "run", "--rm", "web", "-p", "8080:80"]  # fmt: skip
    assert parse(["compose", "rm", "-p", "x"]).compose_args == ["rm", "-p", "x"]  # Compose's rm, untouched
    assert parse(["compose"]).compose_args == []


def test_rm_takes_our_options_out_and_keeps_the_rest_in_order() -> None:
    args = parse(["rm", "-f", "-p", "shop", "--stop", "--context=far", "web", "-v", "--", "x"])
    assert (args.project, args.context) == ("shop", "far")
    assert args.compose_args == ["rm", "-f", "--stop", "web", "-v", "--", "x"]
    assert parse(["rm", "-h"]).compose_args == ["rm", "-h"]  # Compose's help
    assert parse(["rm", "--proj", "x"]).compose_args == ["rm", "--proj", "x"]  # no abbreviations of ours there
    assert parse(["rm", "-p"]).compose_args == ["rm", "-p"]  # no value: Compose says what is wrong


# -- help and version -------------------------------------------------------------------------------------


def test_help_lists_every_command_and_every_verb(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(command.help)}$", out, re.MULTILINE), name
    listed = re.search(r"VERB is one of\n((?:    .+\n)+)", out)
    assert listed is not None
    assert [v.strip() for v in listed.group(1).replace(",", " ").split()] == list(COMPOSE_VERBS)
    assert max(map(len, out.splitlines())) <= 80  # the tables are laid out by hand: within 80 columns


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse([name, "--help"])  # ours also for `run` and `port`, which name Compose's forms
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: freeport-compose {name} [-h] [--context NAME]")
    assert COMMANDS[name].help in out
    assert command_parser(name).format_help() == out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"freeport-compose {importlib.metadata.version('freeport-compose')}\n"


def test_version_from_the_installed_command() -> None:
    out = subprocess.run([sys.executable, "-m", "freeport_compose", "--version"], capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (
        0,
        f"freeport-compose {importlib.metadata.version('freeport-compose')}\n",
        "",
    )


# -- one grammar, made lazily -------------------------------------------------------------------------------


def test_every_command_has_a_handler() -> None:
    assert list(HANDLERS) == list(COMMANDS)
    assert not set(COMMANDS) & set(COMPOSE_VERBS)


def test_only_the_command_being_run_is_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    declared: list[str] = []
    for name, command in COMMANDS.items():
        monkeypatch.setattr(
            command, "declare", lambda p, name=name, declare=command.declare: (declared.append(name), declare(p))
        )
    parse(["--context", "c", "get", "--owner", "x"])
    parse(["logs", "-f"])
    assert declared == ["get"]


def test_no_private_name_of_argparse() -> None:
    """The parser uses argparse's documented interface only (a subclass's `error` is documented)."""
    for path in (SRC / "_argv.py", SRC / "_cli.py"):
        text = path.read_text()
        assert not re.search(r"argparse\._|\b_get_formatter|\._actions\b|\._print_message|_signal\b", text), path


def test_the_version_is_looked_up_only_when_asked(tmp_path: Path) -> None:
    """importlib.metadata costs a start ~5 ms: a command that does not print the version does not import it."""
    code = (
        "import sys\n"
        "from freeport_compose._cli import main\n"
        "main(sys.argv[1:])\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    env = {**os.environ, "FREEPORT_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-c", code, "get", "--owner", "t"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False"


# -- option values ------------------------------------------------------------------------------------------


def test_option_values() -> None:
    assert _argv.duration_arg("90") == 90
    assert _argv.duration_arg("2h") == 7200
    assert _argv.timeout_arg("none") is None
    assert _argv.timeout_arg("1.5") == 1.5
    assert _argv.range_arg("20000-20100") == (20000, 20100)
    assert _argv.ports_arg("5,6,") == [5, 6]
    for bad in ("0", "-1s", "x", "nanm", "infh"):
        with pytest.raises(InvalidRangeError):
            _argv.duration_arg(bad)
    for bad in ("-1", "nan", "x"):
        with pytest.raises(InvalidRangeError):
            _argv.timeout_arg(bad)
