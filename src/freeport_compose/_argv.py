"""The command line's grammar: what argv says, before anything runs.

The word that names the command, a fast reader of our commands as they are usually typed, the
values of options (ranges, ports, durations, timeouts) read into Python values or an
InvalidRangeError, and the pass-through form (`[-p P] VERB ...` for Compose's verbs). The argparse
form (help, usage errors, whatever the fast reader declines) is _parser.py's.

Guarantees: nothing here runs a command, touches the state dir or prints; the fast reader reads argv
exactly as the argparse parser would, or declines (None) and leaves it to argparse: it never accepts
what argparse would refuse, and never reads anything otherwise (tests/test_argv.py holds them to it).
Nothing here imports `typing`, `re`, `json` or `argparse` (with what they pull in, ~10 ms a start).
"""

from __future__ import annotations

from ._error import InvalidRangeError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms, with re); mypy knows the idiom
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

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


class Args:
    """Parsed arguments, one attribute each: what argparse.Namespace is, for the fast reader too
    (argparse fills one as its namespace), so every handler reads one type."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# Our commands' own options as _parser.py defines them: option -> (dest, how its value is read):
# "str", "int", "flag" (store_true), "false" (store_false), "append", or the tuple of its choices. Defaults and required
# options are below. tests/test_argv.py checks these tables against the argparse parser.
Option = tuple[str, "str | tuple[str, ...]"]  # (dest, how its value is read)
_CONTEXT: dict[str, Option] = {"--context": ("context", "str")}
_PROJECT = {"-p": ("project", "str"), "--project-name": ("project", "str")}
_STACK: dict[str, Option] = {  # _parser._stack_options
    "-f": ("files", "append"),
    "--file": ("files", "append"),
    **_PROJECT,
    "--project-directory": ("project_directory", "str"),
    "--profile": ("profiles", "append"),
    "--env-file": ("env_files", "append"),
    "--timeout": ("timeout", "str"),
    "--no-check": ("check", "false"),
    "--lease-all": ("lease_all", "flag"),
    "--drop-container-names": ("drop_container_names", "flag"),
    **_CONTEXT,
}
_STACK_DEFAULTS: dict[str, object] = {
    "project": None,
    "project_directory": None,
    "timeout": "30",
    "check": True,
    "lease_all": False,
    "drop_container_names": False,
}
_FAST_OPTIONS: dict[str, dict[str, Option]] = {
    "get": {
        "--owner": ("owner", "str"),
        "-n": ("n", "int"),
        "--range": ("range", "str"),
        "--contiguous": ("contiguous", "flag"),
        "--host": ("host", "append"),
        "--exclude": ("exclude", "append"),
        "--timeout": ("timeout", "str"),
        "--format": ("format", ("lines", "json")),
        **_CONTEXT,
    },
    "release": {"--owner": ("owner", "str"), **_CONTEXT},
    "ports": {**_PROJECT, "--format": ("format", FORMATS), **_CONTEXT},
    "port": {**_PROJECT, **_CONTEXT},
    "down": {**_PROJECT, "-v": ("volumes", "flag"), "--volumes": ("volumes", "flag"), **_CONTEXT},
    "up": {**_STACK, "--wait": ("wait", "flag")},
    "render": {**_STACK, "-o": ("output", "str"), "--output": ("output", "str"), "--ttl": ("ttl", "str")},
    "run": {**_STACK, "--keep-volumes": ("keep_volumes", "flag")},
    "deploy": _STACK,
    "ls": {"--json": ("json", "flag"), **_CONTEXT},
    "gc": _CONTEXT,
}
_FAST_DEFAULTS: dict[str, dict[str, object]] = {
    "get": {"n": 1, "range": None, "contiguous": False, "timeout": "30", "format": "lines"},
    "release": {},
    "ports": {"project": None, "format": "dotenv"},
    "port": {"project": None},
    "down": {"project": None, "volumes": False},
    "up": {**_STACK_DEFAULTS, "wait": False},
    "render": {**_STACK_DEFAULTS, "output": None, "ttl": None},
    "run": {**_STACK_DEFAULTS, "keep_volumes": False},
    "deploy": _STACK_DEFAULTS,
    "ls": {"json": False},
    "gc": {},
}
_FAST_REQUIRED = {"get": ("owner",), "release": ("owner",), "port": ("name",)}
_FAST_POSITIONAL = {"port": "name"}  # the one positional argument, if the command has one
_FAST_GLOBALS = {"--state-dir": ("state_dir", "str"), **_CONTEXT}


def fast_args(argv: Sequence[str]) -> Args | None:
    """argv of one of our commands read as argparse would read it, or None: for anything unusual (help,
    a usage error, an abbreviated or attached option such as `--own X` or `-n3`, a value that
    starts with `-`, `--`), which argparse then reads, with its own messages."""
    values: dict[str, object] = {"state_dir": None, "context": None}
    i, command = 0, None
    while i < len(argv):
        word = argv[i]
        if command is None and not word.startswith("-"):
            command = word
            if command not in _FAST_OPTIONS:
                return None
            values["command"] = command
            values.update(_FAST_DEFAULTS[command])
            values.update({dest: [] for dest, how in _FAST_OPTIONS[command].values() if how == "append"})
            i += 1
            continue
        options = _FAST_GLOBALS if command is None else _FAST_OPTIONS[command]
        name, eq, attached = word.partition("=")
        if word in options:
            dest, how = options[word]
            if how in ("flag", "false"):
                values[dest] = how == "flag"  # store_true, or store_false (--no-check)
                i += 1
                continue
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 2
        elif eq and name in options and name.startswith("--") and options[name][1] not in ("flag", "false"):
            (dest, how), value, i = options[name], attached, i + 1
        elif command is not None and not word.startswith("-") and command in _FAST_POSITIONAL:
            dest = _FAST_POSITIONAL[command]
            if dest in values:
                return None  # a second positional: argparse's "unrecognized arguments"
            values[dest] = word
            i += 1
            continue
        else:
            return None
        if value.startswith("-") or (not value and not eq):
            return None  # argparse: "expected one argument", or a negative number: its rules, its message
        if how == "int":
            try:
                values[dest] = int(value)  # argparse's type=int, exactly
            except ValueError:
                return None
        elif how == "append":
            values[dest].append(value)  # type: ignore[attr-defined]
        elif isinstance(how, tuple) and value not in how:
            return None
        else:
            values[dest] = value
    if command is None or any(dest not in values for dest in _FAST_REQUIRED.get(command, ())):
        return None
    return Args(**values)


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
