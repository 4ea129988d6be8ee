"""The command line's grammar: what argv says, before anything runs.

The argparse parser of our own commands (built for the one command being run), the word that
names that command, the values of options (ranges, ports, durations, timeouts) read into Python
values or an InvalidRangeError, and the pass-through form (`[-p P] VERB ...` for Compose's verbs).

Guarantee: nothing here runs a command, touches the state dir or prints but argparse's own usage
error (exit code 2, `... (see --help)`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ._error import ExitCode, InvalidRangeError

FORMATS = ("json", "dotenv", "make", "shell", "env-file", "github")


def range_arg(text: str) -> tuple[int, int]:
    from ._leasing.ranges import parse_range

    return parse_range(text, "--range")


def ports_arg(text: str) -> list[int]:
    from ._leasing.ranges import parse_port

    return [parse_port(p, "--exclude port") for p in text.split(",") if p.strip()]


def duration_arg(text: str) -> float:
    """`90`, `90s`, `30m`, `2h` or `1d` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise InvalidRangeError(f"--ttl must be a duration like 90s, 30m, 2h or 1d, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise InvalidRangeError(f"--ttl must be positive, not {text!r}")
    return value


def timeout_arg(text: str) -> float | None:
    if text.lower() in ("none", "inf", "forever"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRangeError(f"--timeout must be seconds or 'none', not {text!r}") from None
    if not value >= 0:
        raise InvalidRangeError(f"--timeout must be >= 0, not {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    width: int | None = 100  # None while help is printed: the terminal's width

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see --help)\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter at every add_argument (to check metavars); without a width it
        # imports shutil to ask the terminal's: ~2 ms on every start, for help rarely printed.
        return argparse.HelpFormatter(prog=self.prog, width=self.width)  # the default formatter_class

    def format_help(self) -> str:
        self.width = None
        try:
            return super().format_help()
        finally:
            self.width = _Parser.width


def _stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="Compose file or template (repeatable, merged in order like `docker compose -f`; default: "
        "$COMPOSE_FILE, else compose.yaml and its kin here or in a parent directory)",
    )
    p.add_argument(
        "-p",
        "--project-name",
        dest="project",
        metavar="PROJECT",
        help="Compose project name (default: $COMPOSE_PROJECT_NAME, else a unique one)",
    )
    p.add_argument(
        "--project-directory", metavar="DIR", help="passed to Compose (default: the directory of the first -f file)"
    )
    p.add_argument(
        "--profile",
        dest="profiles",
        action="append",
        default=[],
        metavar="NAME",
        help="Compose profile to enable (repeatable)",
    )
    p.add_argument(
        "--env-file",
        dest="env_files",
        action="append",
        default=[],
        metavar="FILE",
        help="passed to Compose (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=str,
        default="30",
        metavar="SECONDS",
        help="how long to wait for free ports while the range is exhausted (default 30; 'none': forever)",
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip checking with `docker compose config` that exactly the leased ports are published",
    )
    p.add_argument(
        "--lease-all",
        action="store_true",
        help="with placeholders, lease the fixed host ports too (a file without any is always leased whole)",
    )
    p.add_argument(
        "--drop-container-names",
        action="store_true",
        help="reset every `container_name:` (`!reset null` in the override), so copies can run side by side",
    )


_CONTEXT_HELP = (
    "docker context of the engine to target (default: $DOCKER_HOST, else $DOCKER_CONTEXT, else the current "
    "context); `get` and `release` use the machine's own leases unless given"
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; given `only`, the other commands are named (for the help and the
    usage error) but get no arguments: building every command's costs ~2.5 ms on each start."""
    parser = _Parser(prog="freeport-compose", description=__doc__ and "Leased host ports for Compose stacks.")
    parser.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default: $FREEPORT_STATE_DIR, else a private per-user one)"
    )
    parser.add_argument("--context", metavar="NAME", help=_CONTEXT_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        if only not in (None, name):
            return _Unbuilt()
        # Also after the command, as `docker compose` users type it; SUPPRESS keeps a value given
        # before the command from being reset by the subcommand's default.
        p.add_argument("--context", metavar="NAME", default=argparse.SUPPRESS, help=_CONTEXT_HELP)
        return p

    _build_commands(command)
    return parser


class _Unbuilt(argparse.ArgumentParser):
    """A command that is not the one being run: its arguments are not built."""

    def __init__(self) -> None:
        pass

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        return None


def command_word(argv: Sequence[str]) -> str | None:
    """The command of argv (`get` in `--state-dir D get ...`), None before any."""
    words = iter(argv)
    for word in words:
        # argparse takes any unique prefix of an option (`--state` for `--state-dir`): so do we
        if len(word) > 2 and "=" not in word and any(o.startswith(word) for o in ("--state-dir", "--context")):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _build_commands(command: Callable[..., argparse.ArgumentParser]) -> None:

    p = command("get", help="lease ports under an owner name and print them")
    p.add_argument("--owner", required=True, help="name the leases are held under until `release --owner`")
    p.add_argument("-n", type=int, default=1, help="how many ports (all or nothing; default 1)")
    p.add_argument(
        "--range",
        type=str,
        metavar="A-B",
        help="inclusive port range (default: $FREEPORT_RANGE, else outside the kernel's ephemeral range)",
    )
    p.add_argument("--contiguous", action="store_true", help="one block of consecutive ports")
    p.add_argument(
        "--host", action="append", default=[], help="also check the port is free on this address (repeatable)"
    )
    p.add_argument("--exclude", action="append", default=[], metavar="P[,P...]", help="ports never to hand out")
    p.add_argument(
        "--timeout",
        type=str,
        default="30",
        metavar="SECONDS",
        help="wait this long while the range is exhausted (default 30)",
    )
    p.add_argument(
        "--format", choices=("lines", "json"), default="lines", help="one port per line (default) or a JSON list"
    )

    p = command("release", help="free every lease held under an owner name")
    p.add_argument("--owner", required=True)

    p = command("ls", help="list leases and stacks")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    command("gc", help="free leases whose holder is gone and stacks that no longer exist")

    p = command("render", help="lease ports and write the concrete Compose file(s)")
    _stack_options(p)
    p.add_argument(
        "-o", "--output", metavar="OUT", help="output file (one template) or directory (default: the state dir)"
    )
    p.add_argument(
        "--ttl",
        metavar="DURATION",
        help="free the ports after this long (90s, 30m, 2h, 1d) once no container of the stack is left "
        "(default: held until `down`)",
    )

    p = command("up", help="render and `docker compose up -d`; leases kept until `down`")
    _stack_options(p)
    p.add_argument("--wait", action="store_true", help="wait until services are running/healthy")

    p = command("down", help="`docker compose down` as recorded at `up`, and free the leases")
    p.add_argument("-p", "--project-name", dest="project", metavar="PROJECT")
    p.add_argument("-v", "--volumes", action="store_true", help="remove volumes too")

    p = command("ports", help="print a stack's ports, each with the address to reach it on")
    p.add_argument("-p", "--project-name", dest="project", metavar="PROJECT")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="dotenv",
        help="json ({NAME: port}), dotenv, env-file (docker run --env-file), make, shell (export ...), "
        "github (appended to $GITHUB_ENV and $GITHUB_OUTPUT)",
    )

    p = command("port", help="print one placeholder's port")
    p.add_argument("-p", "--project-name", dest="project", metavar="PROJECT")
    p.add_argument("name", help="FREEPORT_1, 1, FREEPORT_db or db")

    p = command("run", help="up --wait, run a command with FREEPORT_* set, down; exits with its status")
    _stack_options(p)
    p.add_argument("--keep-volumes", action="store_true", help="do not remove the stack's volumes at the end")

    p = command(
        "deploy",
        help="render and `docker stack deploy` on a Swarm manager; leases kept until `rm` or the stack is gone "
        "(extra `docker stack deploy` arguments after --)",
    )
    _stack_options(p)


def split_dashdash(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


# Compose's own verbs that freeport-compose passes through for a stack (`up`, `down`, `run`, `port`
# and `ls` are ours: `freeport-compose compose run ...` reaches Compose's).
COMPOSE_VERBS = frozenset(
    (
        "attach",
        "build",
        "commit",
        "config",
        "cp",
        "create",
        "events",
        "exec",
        "export",
        "images",
        "kill",
        "logs",
        "pause",
        "ps",
        "pull",
        "push",
        "restart",
        "rm",  # ours for a Swarm stack of ours (`docker stack rm`), else Compose's
        "scale",
        "start",
        "stats",
        "stop",
        "top",
        "unpause",
        "version",
        "wait",
        "watch",
    )
)


_GLOBALS = {"--state-dir": "state_dir", "-p": "project", "--project-name": "project", "--context": "context"}


def passthrough(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """({state_dir, project, context} as given, Compose arguments) when argv is `[--state-dir D]
    [--context C] [-p P] VERB ...` with a Compose verb of ours to pass through (or `compose
    ANYTHING`); None for our own commands."""
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        option = _global(argv, i, _GLOBALS)
        if option is not None:
            key, value, used = option
            given[key] = value
            i += used
        elif word == "compose":
            return given, argv[i + 1 :]
        elif word in COMPOSE_VERBS:
            return given, argv[i:]
        else:
            return None
    return None


def _global(argv: Sequence[str], i: int, options: Mapping[str, str]) -> tuple[str, str, int] | None:
    """(its key, its value, words used) if argv[i] is one of `options`, as `--name VALUE` or
    `--name=VALUE` (not `-p=`: argparse reads that as the value "=..."); None otherwise."""
    word = argv[i]
    name, eq, value = word.partition("=")
    if word in options and i + 1 < len(argv):
        return options[word], argv[i + 1], 2
    if eq and name in options and name != "-p":
        return options[name], value, 1
    return None


def rm_globals(given: dict[str, str], args: list[str]) -> tuple[dict[str, str], list[str]]:
    """-p/--project-name/--context (also as --name=value) taken out of what follows `rm`."""
    options = {k: v for k, v in _GLOBALS.items() if k != "--state-dir"}
    given, rest, i = dict(given), ["rm"], 1
    while i < len(args):
        option = _global(args, i, options)
        if option is None:
            rest.append(args[i])
            i += 1
        else:
            given[option[0]] = option[1]
            i += option[2]
    return given, rest
