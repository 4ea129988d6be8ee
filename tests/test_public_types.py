"""The public types are the standard library's own kinds and behave as such: ExitCode an IntEnum,
StackStatus a str Enum, LeaseRecord a typing.NamedTuple, a Stack's record a dataclass, Holder an
immutable value. Code that type-checks against them must also run: replace, asdict, pickling,
equality, hashing and frozenness work as the standard library documents them."""

from __future__ import annotations

import copy
import dataclasses
import enum
import pickle
import typing

import pytest

import freeport_compose
from freeport_compose import ExitCode, LeaseRecord
from freeport_compose._leasing.process import Holder
from freeport_compose._stacks.records import StackRecord, StackStatus


def test_exit_code_is_an_int_enum() -> None:
    assert issubclass(ExitCode, enum.IntEnum)
    assert ExitCode(3) is ExitCode.NO_FREE_PORT
    assert ExitCode(3).name == "NO_FREE_PORT"
    assert ExitCode.USAGE == 2
    assert int(ExitCode.STATE_DIR) == 8
    assert pickle.loads(pickle.dumps(ExitCode.BUSY)) is ExitCode.BUSY  # noqa: S301 (our own bytes)
    assert len({int(code) for code in ExitCode}) == len(ExitCode)  # one code per kind of failure
    with pytest.raises(ValueError, match="is not a valid ExitCode"):
        ExitCode(99)


def test_every_error_names_an_exit_code_member() -> None:
    errors = [
        getattr(freeport_compose, name)
        for name in freeport_compose.__all__
        if isinstance(getattr(freeport_compose, name), type)
        and issubclass(getattr(freeport_compose, name), freeport_compose.FreeportError)
    ]
    assert len(errors) > 10
    for error in errors:
        assert isinstance(error.exit_code, ExitCode), error


def test_stack_status_is_a_str_enum() -> None:
    assert issubclass(StackStatus, enum.Enum)
    assert StackStatus("up") is StackStatus.UP
    assert StackStatus.UP.name == "UP"
    assert StackStatus.UP == "up"
    assert copy.deepcopy(StackStatus.STOPPING) is StackStatus.STOPPING
    assert pickle.loads(pickle.dumps(StackStatus.DEPLOYED)) is StackStatus.DEPLOYED  # noqa: S301


def _holder() -> Holder:
    return Holder(4242, 123456789, "build-host")


def _lease() -> LeaseRecord:
    return LeaseRecord(port=20417, owner="nightly", holder=_holder(), created=1.5e9, token="ab", label="db")  # noqa: S106


def test_lease_record_is_a_typing_named_tuple() -> None:
    record = _lease()
    assert isinstance(record, tuple)
    assert LeaseRecord._fields[:3] == ("port", "owner", "holder")
    assert typing.get_type_hints(LeaseRecord)["port"] is int  # its annotations resolve, as typing's do
    assert record._replace(label="web").label == "web"
    assert record._asdict()["owner"] == "nightly"
    assert pickle.loads(pickle.dumps(record)) == record  # noqa: S301 (our own bytes)
    assert record == _lease()
    assert hash(record) == hash(_lease())
    assert record != record._replace(token="cd")  # noqa: S106
    with pytest.raises(AttributeError):
        record.port = 1  # type: ignore[misc]
    assert not dataclasses.is_dataclass(record)  # documented as a NamedTuple: no dataclass pretends here


def test_holder_is_an_immutable_value() -> None:
    holder = _holder()
    assert holder == _holder()
    assert hash(holder) == hash(_holder())
    assert holder != Holder(4242, 1, "build-host")  # a reused pid with another start time is someone else
    assert pickle.loads(pickle.dumps(holder)) == holder  # noqa: S301 (our own bytes)
    assert copy.copy(holder) == holder
    with pytest.raises(AttributeError):
        holder.pid = 1  # type: ignore[misc]


def test_a_stacks_record_is_a_real_dataclass() -> None:
    """What `Stack.record` returns: dataclasses' own functions work on it."""
    files, rendered = ["/src/compose.yml"], ["/state/shop/compose.yml"]
    record = StackRecord("shop", files, rendered, "/src", ports={"FREEPORT_db": 20417})
    assert dataclasses.is_dataclass(record)
    moved = dataclasses.replace(record, status=StackStatus.UP)
    assert moved.status is StackStatus.UP
    assert record.status is StackStatus.RENDERING  # replace made a new one
    assert dataclasses.asdict(record)["ports"] == {"FREEPORT_db": 20417}
    assert "project" in {f.name for f in dataclasses.fields(record)}
    assert pickle.loads(pickle.dumps(record)) == record  # noqa: S301 (our own bytes)
    assert record == copy.deepcopy(record)
    assert record != moved
    other = StackRecord("shop", [], [], "/src")
    other.ports["FREEPORT_x"] = 1
    assert StackRecord("shop", [], [], "/src").ports == {}  # a fresh default per record, never shared


def test_every_public_name_is_there_and_imported_only_when_asked() -> None:
    """`import freeport_compose` is cheap (its names come when first used) and loses nothing."""
    import subprocess
    import sys

    for name in freeport_compose.__all__:
        assert getattr(freeport_compose, name) is not None, name
    assert set(freeport_compose.__all__) <= set(dir(freeport_compose))
    code = "import sys, freeport_compose; print(sorted(m for m in sys.modules if m.startswith('freeport_compose.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = freeport_compose.nope  # type: ignore[attr-defined]
