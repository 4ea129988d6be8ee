"""The argparse form of the command line: help, usage errors (exit code 2, `... (see --help)`) and
every command that _argv.py's fast reader leaves to it.

Imported only when needed: argparse, with the gettext, locale and re it imports, costs a start ~3 ms,
and `get`, `release`, `port` and `ports` as they are usually typed do not need it.

Guarantee: nothing here runs a command, touches the state dir or prints but argparse's own help and
usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from ._argv import FORMATS, Args
from ._error import ExitCode


def parse(argv: list[str], command: str | None) -> Args:
    """argv read by argparse (built for `command` only), or SystemExit with its usage error."""
    return build_parser(command).parse_args(argv, namespace=Args())


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
