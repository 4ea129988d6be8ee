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


def timeout_arg(text: str, option: str = "--timeout") -> float | None:
    """Seconds >= 0, or None (wait forever) for `none`, `inf` or `forever`; else an InvalidRangeError."""
    if text.lower() in ("none", "inf", "forever"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRangeError(f"{option} must be seconds or 'none', not {text!r}") from None
    if not value >= 0:  # also NaN
        raise InvalidRangeError(f"{option} must be >= 0, not {text!r}")
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


def _files(p: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """Compose's own options that choose a stack's files, as Compose has them (before the command, and
    for our commands after it too). SUPPRESS after the command: what is given there adds to what was
    given before it (parse() joins them)."""
    p.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=default,
        metavar="FILE",
        help="Compose file or template (repeatable, merged in order like `docker compose -f`; default: "
        "$COMPOSE_FILE, else compose.yaml and its kin here or in a parent directory)",
    )
    p.add_argument(
        "--project-directory",
        default=None if default is not argparse.SUPPRESS else argparse.SUPPRESS,
        metavar="DIR",
        help="Compose's working directory (default: the directory of the first -f file)",
    )
    p.add_argument(
        "--profile",
        dest="profiles",
        action="append",
        default=default,
        metavar="NAME",
        help="Compose profile to enable (repeatable)",
    )
    p.add_argument(
        "--env-file",
        dest="env_files",
        action="append",
        default=default,
        metavar="FILE",
        help="Compose's env file (repeatable; default: .env in the project directory)",
    )


# Compose's global options that choose nothing of ours: given to Compose as they were typed.
COMPOSE_GLOBALS: dict[str, str] = {  # option -> "value" (takes one) or "flag"
    "--ansi": "value",
    "--progress": "value",
    "--parallel": "value",
    "--compatibility": "flag",
    "--dry-run": "flag",
    "--all-resources": "flag",
}


class _Forward(argparse.Action):
    """One of COMPOSE_GLOBALS: kept, as typed, in `compose_globals` for Compose's command line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *given: Any) -> None:
        values, option = given[0], given[1]
        words = [option] if self.nargs == 0 else [option, values]
        namespace.compose_globals = [*getattr(namespace, "compose_globals", []), *words]


def _stack_options(p: argparse.ArgumentParser) -> None:
    """The options of the commands that make a stack (render, up, run, deploy)."""
    _files(p)
    _project(p, "Compose project name (default: Compose's: $COMPOSE_PROJECT_NAME, the files' name:, the directory)")
    p.add_argument(
        "--lease-timeout",
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


def _leases(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _gc(p: argparse.ArgumentParser) -> None:
    pass  # --context only


def _doctor(p: argparse.ArgumentParser) -> None:
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
    _stack_options(p)  # every other option and every service name is Compose's `up`'s


def _down(p: argparse.ArgumentParser) -> None:
    _project(p)
    p.add_argument("-v", "--volumes", action="store_true", help="remove volumes too")
    # every other option (--rmi, -t, --remove-orphans) and service name is Compose's `down`'s


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
    p.add_argument(
        "name",
        help="FREEPORT_1, 1, FREEPORT_db, db, or a service with one port (`port SERVICE PRIVATE_PORT` is Compose's)",
    )


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
    "leases": Command("list leases and stacks", _leases),
    "gc": Command("free leases whose holder is gone and stacks that no longer exist", _gc),
    "doctor": Command("which engine, lease store and Compose are used; what is missing", _doctor),
    "render": Command("lease ports and write the concrete Compose file(s)", _render),
    "up": Command(
        "Compose's `up` on leased ports (its options, services); until `down`",
        _up,
        after="given to Compose's `up` after its `--`; every option not listed above is Compose's `up`'s",
    ),
    "down": Command("Compose's `down` of every profile's services, then free the leases", _down),
    "ports": Command("print a stack's ports, each with the address to reach it on", _ports),
    "port": Command("print one port (`port SERVICE PRIVATE_PORT`: Compose's)", _port),
    "run": Command(
        "-- CMD: up --wait, CMD with the ports, down (run SERVICE: Compose's)",
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


COMPOSE_VERBS: tuple[str, ...] = (
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
    "ls",
    "pause",
    "ps",
    "publish",
    "pull",
    "push",
    "restart",
    "rm",  # of a Swarm stack of ours: `docker stack rm`
    "scale",
    "start",
    "stats",
    "stop",
    "top",
    "unpause",
    "version",
    "volumes",
    "wait",
    "watch",
)
"""Compose's own verbs, passed through for a stack: `freeport-compose [-p P] VERB ...` is `docker
compose <the stack's files and project> VERB ...`. `up`, `down`, `port` and `run` are ours and
Compose's at once: ours add to Compose's meaning (see COMMANDS); `run SERVICE ...` and `port SERVICE
PRIVATE_PORT` are Compose's, on the stack's leased ports."""

# Compose's verbs whose own `-p` is something else (`run -p`: --publish, `commit -p`: --pause):
# there `-p` after the verb stays Compose's.
_OWN_P = frozenset(("run", "commit"))
# Compose's verbs that need no project at all: always given to Compose as typed.
PROJECTLESS = frozenset(("ls", "version"))


def _verb_options(verb: str, words: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Our `-p PROJECT` and `--context NAME` given after a Compose verb, before its first other word
    (Compose itself has no `-p` there: `ps -p app` is refused by Compose, so taking it changes no
    line Compose accepts); (what was taken, the verb's words without it). Taken only up to the first
    word that is not an option: after `exec SERVICE` or `run SERVICE` every word is the command's."""
    names = (
        {"--context": "context"}
        if verb in _OWN_P
        else {"-p": "project", "--project-name": "project", "--context": "context"}
    )
    taken: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word == "--":
            rest += words[i:]
            break
        name, eq, value = word.partition("=")
        if word in names and i + 1 < len(words):
            taken[names[word]] = words[i + 1]
            i += 2
            continue
        if eq and name in names and name.startswith("--"):
            taken[names[name]] = value
        else:
            rest.append(word)
        i += 1
    return taken, rest


def _detached(words: Sequence[str]) -> bool:
    """Whether Compose's `up` arguments run it in the background: -d/--detach (also in a cluster of
    its one-letter flags, `-dV`), or --wait, which implies it."""
    for word in words:
        if word == "--":
            return False
        if word in ("-d", "--detach", "--wait") or word.startswith(("--detach=true", "--wait=true")):
            return True
        if word.startswith("-") and not word.startswith("--") and "d" in word and set(word[1:]) <= set("dVwy"):
            return True
    return False


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
    """The top level: its options (ours, and Compose's global options as Compose's users type them
    before the command), then COMMAND (one of COMMANDS, COMPOSE_VERBS or `compose`) and the words after
    it, unread (the command's parser, or Compose, reads them). Its --help lists every command from the
    tables, with its help line."""
    # Raw: the commands' table below is laid out here, not re-flowed into one paragraph
    # Not abbreviated, as Compose's own options are not: with abbreviations argparse would read (or
    # refuse as ambiguous) a word like `--pro` anywhere on the line, a Compose verb's words included
    parser = _Parser(
        prog=PROG,
        description="Leased host ports for Compose stacks; `docker compose`'s command lines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
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
        help="the stack a command is for (also after the command, where Compose's command has no -p of its own)",
    )
    _files(parser, default=[])
    for option, kind in COMPOSE_GLOBALS.items():
        parser.add_argument(
            option,
            action=_Forward,
            nargs=0 if kind == "flag" else None,
            default=argparse.SUPPRESS,  # nothing of its own in the Namespace: `compose_globals` has it
            help="given to Compose as it is",
        )
    # No `choices`: a word that is none of ours is Compose's to accept or refuse, as it would be
    # typed to `docker compose` (which then says "unknown command" with its own status)
    parser.add_argument("command", metavar="COMMAND", help="see below")
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
        f"{PROG} [OPTIONS] VERB ARGS... is `docker compose VERB ARGS...`\n"
        "with the stack's files, profiles, env files and project name, on its\n"
        "leased ports; every word after VERB is Compose's. VERB is one of\n"
        f"{rows}\n"
        "`rm -p PROJECT` of a Swarm stack of ours is `docker stack rm`;\n"
        "`compose VERB ARGS...` reaches any of Compose's commands as they are.",
    )
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command of ours (COMMANDS), with its arguments declared. Only the command
    being run is built. Not abbreviated: a Compose option of `up` or `down` (`--no-deps`) must never
    be read as a prefix of one of ours."""
    command = COMMANDS[name]
    epilog = f"-- ARGS...: {command.after}" if command.after else None
    parser = _Parser(prog=f"{PROG} {name}", description=command.help, epilog=epilog, allow_abbrev=False)
    _context(parser)
    command.declare(parser)
    return parser


_JOINED = ("files", "profiles", "env_files")  # given before and after the command: both count, in order


def _merge(args: argparse.Namespace, own: argparse.Namespace) -> None:
    for key, value in vars(own).items():
        if key in _JOINED:
            setattr(args, key, [*getattr(args, key, []), *value])
        else:
            setattr(args, key, value)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """argv read by the parsers above, or SystemExit: 0 after --help or --version, 2 after a usage
    error (one line).

    The Namespace has `command`, the top level's options and the command's (-f, --profile and
    --env-file given before and after the command joined; any other given after it overriding the
    same before it); `compose_globals`, Compose's own global options as typed; `after`, the words
    after the first `--`; `compose_args`: None for a command of ours, else the words to give
    `docker compose` after the stack's options: the verb and its words, untouched but for our `-p`
    and `--context` taken from before its first other word. `up` and `down` have `compose_extra`:
    what of their words is Compose's (options and services), to give Compose's own `up` or `down`.
    `run SERVICE ...` and `port SERVICE PRIVATE_PORT` are Compose's (command `run`/`port`,
    `compose_args` set).
    """
    words = list(argv)
    # `--` ends what our parsers read: what follows is another program's. (argparse's own reading
    # of `--` has changed between Python versions; a word it never sees cannot be misread.)
    cut = words.index("--") if "--" in words else len(words)
    top = top_parser()
    args = top.parse_args(words[:cut])
    if not hasattr(args, "compose_globals"):
        args.compose_globals = []
    rest: list[str] = args.words
    del args.words
    name = args.command
    args.after = []
    if name in COMMANDS and not _composes(name, rest, cut < len(words)):
        own, compose = command_parser(name).parse_known_args(rest)
        if compose and name not in ("up", "down"):
            top.error(f"{name}: unrecognized arguments: {' '.join(compose)}")
        _merge(args, own)
        args.compose_args = None
        args.compose_extra = compose
        args.after = words[cut + 1 :]
        if name == "up" and cut < len(words):  # Compose's own `--`: what follows is its services
            args.compose_extra = [*compose, *words[cut:]]
            args.after = []
        elif args.after and COMMANDS[name].after is None:
            takes = ", ".join(f"`{n}` ({c.after})" for n, c in COMMANDS.items() if c.after)
            top.error(f"`--` is only for {takes}, not `{name}`")
        if name == "run" and not args.after:
            top.error(f"run needs a command after `--`: {PROG} run -f FILE -- CMD ARGS...")
        return args
    # A Compose verb, or `run`/`port` in Compose's form: our -p and --context taken, the rest Compose's
    taken, verb_words = _verb_options(name, rest)
    vars(args).update(taken)
    # what a stack leased for Compose's `run SERVICE` or `create` is made with: the defaults of ours
    vars(args).update(lease_timeout="30", check=True, lease_all=False, drop_container_names=False)
    verb = [] if name == "compose" else [name]
    args.compose_args = [*verb, *verb_words, *words[cut:]]  # the `--` and what follows, untouched
    return args


# Options of our `run` that Compose's `run` has not (its `-p` is --publish): a line with one of them is ours.
_OURS_ONLY = frozenset(
    ("-f", "--file", "--profile", "--env-file", "--project-directory", "--project-name", "--lease-timeout",
     "--no-check", "--lease-all", "--drop-container-names", "--keep-volumes")
)  # fmt: skip


def _options_before_a_service(words: Sequence[str]) -> list[str]:
    """The words before the first that is no option (Compose's `run SERVICE`: its service)."""
    out = []
    for word in words:
        if not word.startswith("-") or word == "--":
            break
        out.append(word)
    return out


def _composes(name: str, words: Sequence[str], dashdash: bool) -> bool:
    """Whether `run` or `port` is given in Compose's form: `run [OPTIONS] SERVICE [COMMAND]` (ours is
    `run [OPTIONS] -- CMD`), `port [OPTIONS] SERVICE PRIVATE_PORT` (ours: `port NAME`)."""
    if any(w in ("-h", "--help") for w in words):
        return False  # our help, which names Compose's form too
    if name == "run":
        ours = _OURS_ONLY & {w.partition("=")[0] for w in _options_before_a_service(words)}
        if not dashdash:
            return not ours  # ours needs its `--`: without it, an option only ours has is its usage error
        _, unknown = command_parser(name).parse_known_args(list(words))
        return bool(unknown)  # a service, or an option of Compose's run, before the `--`
    if name == "port":
        _, unknown = command_parser(name).parse_known_args(list(words))
        return bool(unknown)
    return False
