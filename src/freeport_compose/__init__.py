"""Host ports that no other thread, process or Compose stack on the machine gets at the same time."""

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
    OutputError,
    ProjectBusyError,
    StateDirError,
    TemplateError,
    UnknownOwnerError,
)
from ._leasing.allocator import DEFAULT_TIMEOUT, FreePort, FreePorts, get_free_port, release_owner, release_port
from ._leasing.ranges import PortRange
from ._leasing.records import LeaseRecord
from ._leasing.store import LeaseStore, store

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
