"""Host ports that no other thread, process or Compose stack on the machine gets at the same time."""

from typing import TYPE_CHECKING

from ._error import (
    ComposeError,
    ComposeNotFoundError,
    EmptyRangeError,
    EngineUnreachableError,
    ExitCode,
    FreeportError,
    InvalidNameError,
    InvalidRangeError,
    NoComposeFileError,
    NoFreePortError,
    NotSwarmManagerError,
    OutputError,
    ProjectBusyError,
    StackNotReadyError,
    StateDirError,
    TemplateError,
    UnknownContextError,
    UnknownOwnerError,
)
from ._leasing.allocator import DEFAULT_TIMEOUT, FreePort, FreePorts, get_free_port, release_owner, release_port
from ._leasing.ranges import PortRange
from ._leasing.records import LeaseRecord
from ._leasing.store import LeaseStore, store

if TYPE_CHECKING:
    from ._stacks.stack import Stack


def __getattr__(name: str) -> object:
    """`Stack` is imported when first asked for: leasing a port needs none of the stacks half."""
    if name == "Stack":
        from ._stacks.stack import Stack

        return Stack
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TIMEOUT",
    "ComposeError",
    "ComposeNotFoundError",
    "EmptyRangeError",
    "EngineUnreachableError",
    "ExitCode",
    "FreePort",
    "FreePorts",
    "FreeportError",
    "InvalidNameError",
    "InvalidRangeError",
    "LeaseRecord",
    "LeaseStore",
    "NoComposeFileError",
    "NoFreePortError",
    "NotSwarmManagerError",
    "OutputError",
    "PortRange",
    "ProjectBusyError",
    "Stack",
    "StackNotReadyError",
    "StateDirError",
    "TemplateError",
    "UnknownContextError",
    "UnknownOwnerError",
    "get_free_port",
    "release_owner",
    "release_port",
    "store",
]
