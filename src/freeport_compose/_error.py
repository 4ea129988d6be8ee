"""Every error freeport-compose raises on purpose, each with the CLI exit code that names its kind.

Guarantee: the bottom of the package (it imports nothing of ours); `str()` of each error is the one
line the CLI prints, and each kind has its own exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The CLI's exit codes: one per kind of failure, so scripts can tell them apart."""

    OK = 0
    FAILURE = 1  # an unexpected error (a bug): the only code that comes with a traceback
    USAGE = 2  # bad command line (argparse's own code)
    NO_FREE_PORT = 3  # the range stayed exhausted until the timeout
    TEMPLATE = 4  # a template is malformed, not YAML, or not a Compose mapping
    COMPOSE_FAILED = 5  # `docker compose` ran and failed
    COMPOSE_MISSING = 6  # no Compose v2 found
    ENGINE_UNREACHABLE = 7  # Compose found, but no Docker engine answers
    STATE_DIR = 8  # the state directory is unsafe, unwritable or full
    UNKNOWN_OWNER = 9  # no lease, stack or port by that name
    INVALID_RANGE = 10  # start > stop, a port outside 1-65535, not an integer, a bad host
    EMPTY_RANGE = 11  # nothing left in the range after exclusions
    INVALID_NAME = 12  # an owner or project name that cannot be used
    BUSY = 13  # another freeport-compose kept working on the same project for too long
    OUTPUT = 14  # the output file or directory given with -o cannot be written
    NOT_READY = 15  # a stack's readiness checks (Stack(wait_for=...)) did not pass in time
    UNKNOWN_CONTEXT = 16  # --context (or $DOCKER_CONTEXT, the current context) names no docker context
    NOT_SWARM_MANAGER = 17  # `deploy` or `rm` of a Swarm stack on an engine that is not a Swarm manager


class FreeportError(Exception):
    """Base of all deliberate errors; `str()` is the one line the CLI prints."""

    exit_code: ExitCode = ExitCode.FAILURE


class InvalidRangeError(FreeportError, ValueError):
    """A port, range or host that can never be satisfied, raised before any lease is taken."""

    exit_code = ExitCode.INVALID_RANGE


class EmptyRangeError(InvalidRangeError):
    """The range holds no candidate once exclusions are applied, so waiting would be pointless."""

    exit_code = ExitCode.EMPTY_RANGE


class NoFreePortError(FreeportError):
    """Every candidate stayed taken until the timeout; the message says by whom."""

    exit_code = ExitCode.NO_FREE_PORT


class StateDirError(FreeportError, OSError):
    """The state directory cannot be trusted or written, so no lease can be recorded safely."""

    exit_code = ExitCode.STATE_DIR


class UnknownOwnerError(FreeportError, LookupError):
    """A release, `down` or `ports` named an owner, project or port that holds nothing."""

    exit_code = ExitCode.UNKNOWN_OWNER


class InvalidNameError(FreeportError, ValueError):
    """An owner or project name that is unsafe as a file name or invalid for Compose."""

    exit_code = ExitCode.INVALID_NAME


class TemplateError(FreeportError):
    """A template problem, located as file:line:column so an editor can jump to it."""

    exit_code = ExitCode.TEMPLATE

    def __init__(self, path: str, line: int, column: int, problem: str) -> None:
        self.path, self.line, self.column, self.problem = path, line, column, problem
        super().__init__(f"{path}:{line}:{column}: {problem}")


class NoComposeFileError(FreeportError):
    """No -f given, no COMPOSE_FILE, and no compose.yaml (or its kin) here or in a parent directory."""

    exit_code = ExitCode.TEMPLATE


class ComposeError(FreeportError):
    """`docker compose` exited non-zero; `returncode` is its status, `details` what the user needs to
    see to know why (the failed services' states, healthchecks and last log lines), shown before the
    one error line."""

    exit_code = ExitCode.COMPOSE_FAILED

    def __init__(self, message: str, returncode: int = 1, details: tuple[str, ...] = ()) -> None:
        self.returncode = returncode
        self.details = details
        super().__init__(message)


class ComposeNotFoundError(FreeportError):
    """Neither `docker compose`, `docker-compose` (v2) nor `podman compose` is installed."""

    exit_code = ExitCode.COMPOSE_MISSING


class EngineUnreachableError(FreeportError):
    """Compose is installed but no container engine answers on its socket (or it answered with an
    error: `answered`, so a caller can tell a refusal from silence)."""

    exit_code = ExitCode.ENGINE_UNREACHABLE
    answered: bool = False


class UnknownContextError(FreeportError, LookupError):
    """A docker context that does not exist or cannot be read, so no engine can be chosen."""

    exit_code = ExitCode.UNKNOWN_CONTEXT


class NotSwarmManagerError(FreeportError):
    """Swarm stacks are deployed, listed and removed through a manager; this engine is not one
    (`inactive`: it is in no Swarm at all, so it has no Swarm stack either)."""

    exit_code = ExitCode.NOT_SWARM_MANAGER
    inactive: bool = False


class ProjectBusyError(FreeportError):
    """Another freeport-compose held the project (an up, down or gc of it) longer than we waited."""

    exit_code = ExitCode.BUSY


class OutputError(FreeportError, OSError):
    """The user's own output path cannot be written; the state dir is not to blame."""

    exit_code = ExitCode.OUTPUT


class StackNotReadyError(FreeportError):
    """A Stack's `wait_for` checks did not all pass in time; the message shows `ps`, the last log lines
    of each unready service and its failing healthcheck output."""

    exit_code = ExitCode.NOT_READY
