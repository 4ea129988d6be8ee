"""Host ports that no other thread, process or Compose stack on the machine gets at the same time.

The names below are imported when first used (PEP 562): `freeport-compose ports` or `logs` need
neither the allocator (sockets, threads) nor the stacks half, and `import freeport_compose` costs
next to nothing until a name is asked for.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from ._stacks.stack import Stack

_WHERE = {
    **dict.fromkeys(
        (
            "ComposeError",
            "ComposeNotFoundError",
            "EmptyRangeError",
            "EngineUnreachableError",
            "ExitCode",
            "FreeportError",
            "InvalidNameError",
            "InvalidRangeError",
            "NoComposeFileError",
            "NoFreePortError",
            "NotSwarmManagerError",
            "OutputError",
            "ProjectBusyError",
            "StackNotReadyError",
            "StateDirError",
            "TemplateError",
            "UnknownContextError",
            "UnknownOwnerError",
        ),
        "._error",
    ),
    **dict.fromkeys(
        ("DEFAULT_TIMEOUT", "FreePort", "FreePorts", "get_free_port", "release_owner", "release_port"),
        "._leasing.allocator",
    ),
    "PortRange": "._leasing.ranges",
    "LeaseRecord": "._leasing.records",
    "LeaseStore": "._leasing.store",
    "store": "._leasing.store",
    "Stack": "._stacks.stack",
}


def __getattr__(name: str) -> object:
    """A public name, imported from its module when first asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # asked once: later lookups find it here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
