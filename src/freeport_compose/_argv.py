"""The command line's grammar: the only place a command or an option is declared.

Two tables: COMMANDS, ours, each with its help line and the function that declares its arguments;
COMPOSE_VERBS, Compose's own, passed through for a stack (`freeport-compose [-p P] VERB ...` is
`docker compose <the stack's options> VERB ...`). The top level's parser (`top_parser`) recognises
the command word against both and lists both in `--help`; the command's words go to that command's
parser (`command_parser`), made only for the command being run (all eleven would cost each start
~5 ms on a slow machine where `get`'s costs ~0.5 ms). `parse(argv)` does both. `range_arg`, `ports_arg`,
`duration_arg` and `timeout_arg` read option values into Python values, or an InvalidRangeError (the
CLI's exit code for a bad range, not a usage error).

Guarantees: nothing here runs a command or touches the state dir; it prints nothing but argparse's
help, `--version`'s one line and a usage error (one line, `... (see --help)`, exit code 2); it uses
no private name of argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ._error import ExitCode, InvalidRangeError

PROG = "freeport-compose"
FORMATS = ("json", "dotenv", "make", "shell", "env-file", "github")


def range_arg(text: str) -> tuple[int, int]:
    """`A-B` as (A, B), valid ports with A <= B, or an InvalidRangeError."""
    from ._leasing.ranges import parse_range

    return parse_range(text, "--range")


def ports_arg(text: str) -> list[int]:
    """`P[,P...]` as valid ports (empty items skipped), or an InvalidRangeError."""
    from ._leasing.ranges import parse_port

    return [parse_port(p, "--exclude port") for p in text.split(",") if p.strip()]


def duration_arg(text: str) -> float:
    """`90`, `90s`, `30m`, `2h` or `1d` as a positive, finite number of seconds, or an InvalidRangeError."""
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
    """Seconds >= 0, or None (wait forever) for `none`, `inf` or `forever`; else an InvalidRangeError."""
    if text.lower() in ("none", "inf", "forever"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRangeError(f"--timeout must be seconds or 'none', not {text!r}") from None
    if not value >= 0:  # also NaN
        raise InvalidRangeError(f"--timeout must be >= 0, not {text!r}")
    return value


# -- each command's arguments -----------------------------------------------------------------------

Declare = Callable[[argparse.ArgumentParser], None]
"""A function that adds one command's arguments to its parser."""

_CONTEXT_HELP = (
    "docker context of the engine to target (default: $DOCKER_HOST, else $DOCKER_CONTEXT, else the current "
    "context); `get` and `release` use the machine's own leases unless given"
)


def _context(p: argparse.ArgumentParser) -> None:
    # Also after the command, as `docker compose` users type it. SUPPRESS: no value unless given
    # here, so that one given before the command (the top level's) is kept
    p.add_argument("--context", metavar="NAME", default=argparse.SUPPRESS, help=_CONTEXT_HELP)


def _project(p: argparse.ArgumentParser, help: str = "the stack (default: the one stack made from here)") -> None:
    # SUPPRESS, as for --context: `-p P COMMAND` keeps P unless the command is given its own
    p.add_argument("-p", "--project-name", dest="project", metavar="PROJECT", default=argparse.SUPPRESS, help=help)


def _stack_options(p: argparse.ArgumentParser) -> None:
    """The options of the commands that make a stack (render, up, run, deploy)."""
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
    _project(p, "Compose project name (default: $COMPOSE_PROJECT_NAME, else a unique one)")
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


def _get(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", required=True, help="name the leases are held under until `release --owner`")
    p.add_argument("-n", type=int, default=1, help="how many ports (all or nothing; default 1)")
    p.add_argument(
        "--range",
        metavar="A-B",
        help="inclusive port range (default: $FREEPORT_RANGE, else outside the kernel's ephemeral range)",
    )
    p.add_argument("--contiguous", action="store_true", help="one block of consecutive ports")
    p.add_argument(
        "--host", action="append", default=[], help="also check the port is free on this address (repeatable)"
    )
    p.add_argument("--exclude", action="append", default=[], metavar="P[,P...]", help="ports never to hand out")
    p.add_argument(
        "--timeout", default="30", metavar="SECONDS", help="wait this long while the range is exhausted (default 30)"
    )
    p.add_argument(
        "--format", choices=("lines", "json"), default="lines", help="one port per line (default) or a JSON list"
    )


def _release(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", required=True, help="the name given to `get --owner`")


def _ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _gc(p: argparse.ArgumentParser) -> None:
    pass  # --context only


def _render(p: argparse.ArgumentParser) -> None:
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


def _up(p: argparse.ArgumentParser) -> None:
    _stack_options(p)
    p.add_argument("--wait", action="store_true", help="wait until services are running/healthy")


def _down(p: argparse.ArgumentParser) -> None:
    _project(p)
    p.add_argument("-v", "--volumes", action="store_true", help="remove volumes too")


def _ports(p: argparse.ArgumentParser) -> None:
    _project(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="dotenv",
        help="json ({NAME: port}), dotenv, env-file (docker run --env-file), make, shell (export ...), "
        "github (appended to $GITHUB_ENV and $GITHUB_OUTPUT)",
    )


def _port(p: argparse.ArgumentParser) -> None:
    _project(p)
    p.add_argument("name", help="FREEPORT_1, 1, FREEPORT_db or db")


def _run(p: argparse.ArgumentParser) -> None:
    _stack_options(p)
    p.add_argument("--keep-volumes", action="store_true", help="do not remove the stack's volumes at the end")


def _deploy(p: argparse.ArgumentParser) -> None:
    _stack_options(p)


class Command:
    """One command of ours: its help line, what declares its arguments, and what follows its `--`
    (None: it takes no `--`)."""

    __slots__ = ("after", "declare", "help")

    def __init__(self, help: str, declare: Declare, after: str | None = None) -> None:
        self.help, self.declare, self.after = help, declare, after


COMMANDS: dict[str, Command] = {
    "get": Command("lease ports under an owner name and print them", _get),
    "release": Command("free every lease held under an owner name", _release),
    "ls": Command("list leases and stacks", _ls),
    "gc": Command("free leases whose holder is gone and stacks that no longer exist", _gc),
    "render": Command("lease ports and write the concrete Compose file(s)", _render),
    "up": Command(
        "render and `docker compose up -d`; leases kept until `down`",
        _up,
        after="arguments for `docker compose up`",
    ),
    "down": Command("`docker compose down` as recorded at `up`, and free the leases", _down),
    "ports": Command("print a stack's ports, each with the address to reach it on", _ports),
    "port": Command("print one placeholder's port", _port),
    "run": Command(
        "up --wait, run the command after `--`, down; exits with its status",
        _run,
        after="the command to run",
    ),
    "deploy": Command(
        "render and `docker stack deploy` (Swarm); leases kept until `rm`",
        _deploy,
        after="arguments for `docker stack deploy`",
    ),
}
"""Our commands, in the order --help lists them."""


def _rm(p: argparse.ArgumentParser) -> None:
    # `rm -p NAME`: the project may follow the verb, as `docker stack rm NAME` users type it; the rest is Compose's
    _project(p)
    _context(p)


COMPOSE_VERBS: dict[str, Declare | None] = {
    "attach": None,
    "build": None,
    "commit": None,
    "config": None,
    "cp": None,
    "create": None,
    "events": None,
    "exec": None,
    "export": None,
    "images": None,
    "kill": None,
    "logs": None,
    "pause": None,
    "ps": None,
    "pull": None,
    "push": None,
    "restart": None,
    "rm": _rm,  # ours for a Swarm stack of ours (`docker stack rm`), else Compose's
    "scale": None,
    "start": None,
    "stats": None,
    "stop": None,
    "top": None,
    "unpause": None,
    "version": None,
    "wait": None,
    "watch": None,
}
"""Compose's own verbs, passed through for a stack, each with what declares the options we take out
of its arguments (None: every word after the verb is Compose's). `up`, `down`, `run`, `port` and `ls`
are ours: `freeport-compose compose VERB ...` reaches any of Compose's."""


# -- the parser ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """The top level's parser, or one command's: a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        # argparse's documented hook: one line instead of the usage and `prog: error: message`
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see --help)\n")


class _Version(argparse.Action):
    """`--version`: `freeport-compose <version>` on stdout, exit 0. argparse's own "version" action
    wants the text when the parser is made, and importlib.metadata would cost every start ~5 ms."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("freeport-compose")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "(not installed)"
        print(f"{PROG} {text}")  # stdout, as argparse's own --help and --version
        parser.exit()


def top_parser() -> argparse.ArgumentParser:
    """The top level: its options, then COMMAND (one of COMMANDS, COMPOSE_VERBS or `compose`) and
    the words after it, unread (the command's parser, or Compose, reads them). Its --help lists
    every command from the tables, with its help line."""
    # Raw: the commands' table below is laid out here, not re-flowed into one paragraph
    parser = _Parser(
        prog=PROG,
        description="Leased host ports for Compose stacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Each long option starts with its own letter: argparse refuses an ambiguous abbreviation
    # (`--s` of two options) wherever it stands, also among a Compose verb's words
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default: $FREEPORT_STATE_DIR, else a private per-user one)"
    )
    parser.add_argument("--context", metavar="NAME", help=_CONTEXT_HELP)
    parser.add_argument(
        "-p",
        "--project-name",
        dest="project",
        metavar="PROJECT",
        help="the stack a command is for (also after our commands' name; Compose's commands take it here only)",
    )
    parser.add_argument("command", metavar="COMMAND", choices=[*COMMANDS, *COMPOSE_VERBS, "compose"], help="see below")
    # REMAINDER after the command word: every word that follows, those that look like the top
    # level's options included, is the command's (the use argparse's documentation gives it:
    # a final positional after a command name, the outer parser's options before that command)
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="ARGS", help=f"the command's: {PROG} COMMAND -h")
    width = max(map(len, COMMANDS))
    parser.add_argument_group("commands", "\n".join(f"{n:<{width}}  {c.help}" for n, c in COMMANDS.items()))
    verbs = list(COMPOSE_VERBS)
    rows = "\n".join(f"  {', '.join(verbs[i : i + 9])}," for i in range(0, len(verbs), 9))[:-1]  # 9 a line: 80 columns
    parser.add_argument_group(
        "Compose's commands, for a stack of ours",
        f"{PROG} [-p PROJECT] VERB ARGS... is `docker compose VERB ARGS...`\n"
        "with the stack's files, profiles, env files and project name; every word\n"
        "after VERB is Compose's. VERB is one of\n"
        f"{rows}\n"
        "`rm -p PROJECT` of a Swarm stack of ours is `docker stack rm`;\n"
        "`compose VERB ARGS...` reaches any of Compose's commands (also run, port, ls).",
    )
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command of ours (COMMANDS), or of the options taken out of a Compose verb's
    words (COMPOSE_VERBS), with its arguments declared. Only the command being run is built."""
    command = COMMANDS.get(name)
    if command is None:  # a Compose verb: its help is Compose's, and only the options we declare are ours
        parser = _Parser(prog=f"{PROG} {name}", add_help=False, allow_abbrev=False)
        declare = COMPOSE_VERBS[name]
        if declare is not None:
            declare(parser)
        return parser
    epilog = f"-- ARGS...: {command.after}" if command.after else None
    parser = _Parser(prog=f"{PROG} {name}", description=command.help, epilog=epilog)
    _context(parser)
    command.declare(parser)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """argv read by the parsers above, or SystemExit: 0 after --help or --version, 2 after a usage
    error (one line).

    The Namespace has `command`, the top level's options and the command's, each given after the
    command overriding the same given before it; `after`, the words after the first `--` (`up`,
    `deploy`: extra arguments; `run`: the command; a usage error for the other commands of ours);
    `compose_args`, None for our commands, else the arguments to give `docker compose` for a
    pass-through command: the words typed after `[-p P]`, in order and untouched (the verb and
    everything after it, a `--` included; `compose` itself left out; `rm`'s -p and --context taken
    out).
    """
    words = list(argv)
    # `--` ends what our parsers read: what follows is another program's. (argparse's own reading
    # of `--` has changed between Python versions; a word it never sees cannot be misread.)
    cut = words.index("--") if "--" in words else len(words)
    top = top_parser()
    args = top.parse_args(words[:cut])
    rest: list[str] = args.words
    del args.words
    name = args.command
    # The command's own options update the top level's: -p and --context only where given after
    # the command (their default is SUPPRESS)
    if name not in COMMANDS:
        unknown = rest
        if COMPOSE_VERBS.get(name) is not None:  # rm: its -p and --context are ours, the rest Compose's
            own, unknown = command_parser(name).parse_known_args(rest)
            vars(args).update(vars(own))
        verb = [] if name == "compose" else [name]
        args.compose_args = [*verb, *unknown, *words[cut:]]  # the `--` and what follows, untouched
        args.after = []
        return args
    vars(args).update(vars(command_parser(name).parse_args(rest)))
    args.compose_args = None
    args.after = words[cut + 1 :]
    if args.after and COMMANDS[name].after is None:  # a `--` that ends the line is only the end of options
        takes = ", ".join(f"`{n}` ({c.after})" for n, c in COMMANDS.items() if c.after)
        top.error(f"`--` is only for {takes}, not `{name}`")
    if name == "run" and not args.after:
        top.error(f"run needs a command after `--`: {PROG} run -f FILE -- CMD ARGS...")
    return args
