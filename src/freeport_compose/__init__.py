"""Host ports that no other thread, process or Compose stack on the machine gets at the same time."""

from ._allocator import DEFAULT_TIMEOUT, FreePort, FreePorts, get_free_port, release_owner, release_port, store
from ._error import (
    ComposeError,
    ComposeNotFoundError,
    EmptyRangeError,
    EngineUnreachableError,
    ExitCode,
    FreeportError,
    InvalidNameError,
    InvalidRangeError,
    NoFreePortError,
    OutputError,
    ProjectBusyError,
    StateDirError,
    TemplateError,
    UnknownOwnerError,
)
from ._lease import LeaseRecord
from ._range import PortRange

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
    "NoFreePortError",
    "OutputError",
    "PortRange",
    "ProjectBusyError",
    "StateDirError",
    "TemplateError",
    "UnknownOwnerError",
    "get_free_port",
    "release_owner",
    "release_port",
    "store",
]
