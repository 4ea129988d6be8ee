"""Lease records: what a port's lock file says about its lease, and how it is written and read back.

Guarantees:
- `encode` and `is_process_record` sit side by side: a process record is recognised by the prefix
  that `encode` writes first, so the two cannot drift apart.
- `decode` never trusts a record beyond its types: an empty, corrupt, oversized or hostile file
  reads as None (no lease), never as an exception.

May touch: nothing but the descriptors it is handed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, NamedTuple

from .._error import InvalidNameError, StateDirError
from .process import Holder, holder_alive

RECORD_LIMIT = 4096  # a record is ~200 bytes; anything longer is not one of ours
LABEL_LIMIT = 256  # characters: even escaped to JSON (6 bytes each) a record stays below RECORD_LIMIT
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_name(name: object) -> bool:
    """Whether `name` is a valid owner name: [A-Za-z0-9][A-Za-z0-9_.-]{0,127}."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_owner(name: str) -> str:
    """An owner name that is safe as a file name: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 chars."""
    if not is_name(name):
        raise InvalidNameError(
            f"owner name {name!r} is invalid: use letters, digits, '_', '.', '-' (up to 128), "
            "starting with a letter or digit"
        )
    return name


def check_label(label: str) -> str:
    """A label that fits in a record: a string of at most LABEL_LIMIT characters.

    Without the limit a long label would make a record that reads back as no record at all, and
    its named lease would be lost.
    """
    if not isinstance(label, str) or len(label) > LABEL_LIMIT:
        shown = label[:40] + "..." if isinstance(label, str) else repr(label)
        raise InvalidNameError(f"label {shown!r} is invalid: use a string of at most {LABEL_LIMIT} characters")
    return label


class LeaseRecord(NamedTuple):
    """What a port's lock file says about its lease, so `ls`, `gc` and errors can name who has it."""

    port: int
    owner: str | None  # a name: the lease outlives its process; None: it dies with the holder
    holder: Holder
    created: float
    token: str  # tells this lease from a later one on the same port, so a late release cannot free that
    label: str = ""  # what the port is for, e.g. "FREEPORT_db"
    # A process lease found on a lock file of a deleted state dir, written into the new one: it
    # holds while its holder process lives (the flock it holds is on a file no one can see now).
    adopted: bool = False

    @property
    def kind(self) -> str:
        """ "named" (outlives its process), "adopted" (see `adopted`) or "process" (dies with it)."""
        return "named" if self.owner is not None else "adopted" if self.adopted else "process"

    def encode(self) -> bytes:
        # Hand-built JSON, fields in this order: is_process_record() recognises a process record by
        # the prefix `{"port":N,"owner":null,`, so `port` and `owner` must come first (and `adopted`,
        # which makes a record hold by itself, before them).
        # An owner is a name (is_name): nothing in it needs escaping.
        owner = "null" if self.owner is None else f'"{self.owner}"'
        label = json.dumps(self.label)
        adopted = '"adopted":true,' if self.adopted else ""
        return (
            f'{{"port":{self.port},{adopted}"owner":{owner},"created":{self.created!r},"token":"{self.token}",'
            f'"label":{label},"holder":{self.holder.json}}}'
        ).encode()

    def holds(self) -> bool:
        """Whether this record alone keeps its port leased, whoever holds the flock."""
        return self.owner is not None or (self.adopted and holder_alive(self.holder) is not False)

    @classmethod
    def decode(cls, data: bytes, port: int) -> LeaseRecord | None:
        """The record in `data`, or None for an empty, corrupt or hostile one (which counts as free)."""
        if not data or len(data) >= RECORD_LIMIT:
            return None
        try:
            raw: Any = json.loads(data)
            h = raw["holder"]
            owner, label, start = raw["owner"], raw.get("label", ""), h["start_time"]
            record = cls(
                port=raw["port"],
                owner=owner,
                holder=Holder(pid=h["pid"], start_time=start, host=h["host"]),
                created=float(raw["created"]),
                token=raw["token"],
                label=label,
                adopted=raw.get("adopted", False) is True,
            )
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):  # deep nesting, huge numbers
            return None
        ok = (
            type(record.port) is int
            and record.port == port
            and (owner is None or is_name(owner))
            and type(record.holder.pid) is int
            and (start is None or type(start) is int)
            and isinstance(record.holder.host, str)
            and isinstance(record.token, str)
            and isinstance(label, str)
        )
        return record if ok else None


def is_process_record(data: bytes, port: int) -> bool:
    """Whether `data` is a process lease's record of `port` (stale once its flock is free): the
    prefix `LeaseRecord.encode` writes for one, told apart without parsing on the claim path."""
    return data.startswith(b'{"port":%d,"owner":null,' % port)


def write_record(fd: int, record: LeaseRecord, old_size: int) -> None:
    """Overwrite a lock file's record in place (under its flock); StateDirError on a short write."""
    data = record.encode()
    if os.pwrite(fd, data, 0) != len(data):
        raise StateDirError("short write of a lease record (is the state dir's filesystem full?)")
    if old_size > len(data):
        os.ftruncate(fd, len(data))


def read_record(fd: int, port: int) -> LeaseRecord | None:
    return LeaseRecord.decode(os.pread(fd, RECORD_LIMIT, 0), port)
