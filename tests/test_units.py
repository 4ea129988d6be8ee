"""Fast unit tests of the pure parts: port ranges, the Compose driver's argv, the port-clash matcher,
the lease and stack record codecs, and the template helpers.

No Docker engine: Compose is replaced by a small executable script (written into tmp_path) that
records the argv and working directory it was run with, and exits with a chosen status and output.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import re
import stat
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from freeport_compose import FreePort, NoFreePortError
from freeport_compose._error import (
    ComposeError,
    ComposeNotFoundError,
    EmptyRangeError,
    EngineUnreachableError,
    ExitCode,
    InvalidNameError,
    InvalidRangeError,
)
from freeport_compose._leasing import ranges
from freeport_compose._leasing.process import Holder
from freeport_compose._leasing.ranges import (
    PortRange,
    kernel_ephemeral_range,
    kernel_reserved_ports,
    parse_port,
    parse_range,
)
from freeport_compose._leasing.records import RECORD_LIMIT, LeaseRecord, is_process_record
from freeport_compose._stacks.compose import COMPOSE_ENV, Compose, ComposeProject, Result
from freeport_compose._stacks.names import placeholder_key, sort_key
from freeport_compose._stacks.records import StackRecord, StackStatus, check_project, project_name
from freeport_compose._stacks.template import load, substitute

# --------------------------------------------------------------------------------------------------------
# ranges: parse_port / parse_range


@pytest.mark.parametrize(
    ("value", "want"),
    [(1, 1), (65535, 65535), (8080, 8080), ("80", 80), (" 80 ", 80), ("0080", 80), ("65535", 65535), ("\t7\n", 7)],
)
def test_parse_port_accepts_ints_and_decimal_strings(value: object, want: int) -> None:
    assert parse_port(value) == want


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "port 0 is outside 1-65535"),
        (65536, "port 65536 is outside 1-65535"),
        (-1, "port -1 is outside 1-65535"),
        ("0", "port 0 is outside 1-65535"),
        ("65536", "port 65536 is outside 1-65535"),
        ("99999999999999999999", "port 99999999999999999999 is outside 1-65535"),
        ("", "port must be an integer, not ''"),
        ("   ", "port must be an integer, not '   '"),
        ("-1", "port must be an integer, not '-1'"),
        ("+80", "port must be an integer, not '+80'"),
        ("8o", "port must be an integer, not '8o'"),
        ("80.0", "port must be an integer, not '80.0'"),
        ("1e3", "port must be an integer, not '1e3'"),
        ("0x50", "port must be an integer, not '0x50'"),
        ("8 0", "port must be an integer, not '8 0'"),
        (80.0, "port must be an integer, not 80.0"),
        (None, "port must be an integer, not None"),
        (True, "port must be an integer, not True"),
        (False, "port must be an integer, not False"),
        ([80], "port must be an integer, not [80]"),
        (b"80", "port must be an integer, not b'80'"),
    ],
)
def test_parse_port_rejects_with_a_message(value: object, message: str) -> None:
    with pytest.raises(InvalidRangeError) as info:
        parse_port(value)
    assert str(info.value) == message
    assert type(info.value) is InvalidRangeError
    assert info.value.exit_code == ExitCode.INVALID_RANGE
    assert isinstance(info.value, ValueError)  # callers catching ValueError see it too


def test_parse_port_names_what_it_parses() -> None:
    with pytest.raises(InvalidRangeError, match=r"^excluded port 70000 is outside 1-65535$"):
        parse_port(70000, "excluded port")
    with pytest.raises(InvalidRangeError, match=r"^stop must be an integer, not 'x'$"):
        parse_port("x", "stop")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10000-20000", (10000, 20000)),
        ("7", (7, 7)),
        ("7-7", (7, 7)),
        (" 10 - 20 ", (10, 20)),
        ("1-65535", (1, 65535)),
        ("\t30000-30010\n", (30000, 30010)),
    ],
)
def test_parse_range_valid_forms(text: str, want: tuple[int, int]) -> None:
    assert parse_range(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20-10", "range '20-10': start 20 is above stop 10"),
        (" 20-10 ", "range '20-10': start 20 is above stop 10"),
        ("", "range start must be an integer, not ''"),
        ("-", "range start must be an integer, not ''"),
        ("-5", "range start must be an integer, not ''"),
        ("5-", "range stop must be an integer, not ''"),
        ("1-2-3", "range stop must be an integer, not '2-3'"),
        ("a-5", "range start must be an integer, not 'a'"),
        ("5-b", "range stop must be an integer, not 'b'"),
        ("0-5", "range start 0 is outside 1-65535"),
        ("5-65536", "range stop 65536 is outside 1-65535"),
        ("10:20", "range start must be an integer, not '10:20'"),
        ("10,20", "range start must be an integer, not '10,20'"),
    ],
)
def test_parse_range_rejects_with_a_message(text: str, message: str) -> None:
    with pytest.raises(InvalidRangeError) as info:
        parse_range(text)
    assert str(info.value) == message


def test_parse_range_names_what_it_parses() -> None:
    with pytest.raises(InvalidRangeError, match=r"^FREEPORT_RANGE start must be an integer, not 'abc'$"):
        parse_range("abc", "FREEPORT_RANGE")
    with pytest.raises(InvalidRangeError, match=r"^--range '9-8': start 9 is above stop 8$"):
        parse_range("9-8", "--range")


# --------------------------------------------------------------------------------------------------------
# ranges: PortRange


def test_between_is_inclusive_and_validated() -> None:
    r = PortRange.between(20000, 20009)
    assert r.intervals == ((20000, 20009),)
    assert len(r) == 10
    assert 20000 in r
    assert 20009 in r
    assert 19999 not in r
    assert 20010 not in r
    assert PortRange.between("20000", " 20009 ") == r  # strings are parsed like parse_port
    assert PortRange.between(5, 5).intervals == ((5, 5),)
    assert len(PortRange.between(1, 65535)) == 65535


@pytest.mark.parametrize(
    ("start", "stop", "message"),
    [
        (20, 10, "start 20 is above stop 10"),
        (0, 10, "start 0 is outside 1-65535"),
        (10, 65536, "stop 65536 is outside 1-65535"),
        ("x", 10, "start must be an integer, not 'x'"),
        (10, None, "stop must be an integer, not None"),
        (1.0, 10, "start must be an integer, not 1.0"),
        (True, 10, "start must be an integer, not True"),
    ],
)
def test_between_rejects(start: object, stop: object, message: str) -> None:
    with pytest.raises(InvalidRangeError) as info:
        PortRange.between(start, stop)
    assert str(info.value) == message


def test_between_cache_never_hands_a_bool_the_range_of_an_int() -> None:
    # (True, 5) == (1, 5) as dict keys: the validated (1, 5) must not be returned for True.
    assert PortRange.between(1, 5).intervals == ((1, 5),)
    with pytest.raises(InvalidRangeError, match="not True"):
        PortRange.between(True, 5)
    with pytest.raises(InvalidRangeError, match="not False"):
        PortRange.between(1, False)


def test_without_removes_ports_and_splits_intervals() -> None:
    r = PortRange.between(100, 110)
    rest = r.without([100, 105, 110, 105, 200])  # ends, a middle, a duplicate, one outside
    assert rest.intervals == ((101, 104), (106, 109))
    assert len(rest) == 8
    assert 105 not in rest
    assert 100 not in rest
    assert 110 not in rest
    assert 104 in rest
    assert r.intervals == ((100, 110),)  # ranges are immutable
    assert r.without([]) is r
    assert r.without(["103"]).intervals == ((100, 102), (104, 110))


def test_without_everything_is_an_empty_range_error() -> None:
    with pytest.raises(EmptyRangeError) as info:
        PortRange.between(5, 6).without([5, 6, 6])
    assert str(info.value) == "no port left in 5-6 after excluding 2 port(s)"
    assert info.value.exit_code == ExitCode.EMPTY_RANGE
    assert isinstance(info.value, InvalidRangeError)


def test_without_rejects_invalid_ports() -> None:
    with pytest.raises(InvalidRangeError, match=r"^excluded port must be an integer, not 'x'$"):
        PortRange.between(5, 6).without(["x"])
    with pytest.raises(InvalidRangeError, match=r"^excluded port 0 is outside 1-65535$"):
        PortRange.between(5, 6).without([0])


def test_len_contains_str_repr_eq() -> None:
    r = PortRange(((1, 3), (10, 10), (20, 22)))
    assert len(r) == 7
    assert [p for p in range(0, 30) if p in r] == [1, 2, 3, 10, 20, 21, 22]
    assert "2" not in r
    assert 2.0 not in r
    assert None not in r
    assert str(r) == "1-3,10,20-22"
    assert repr(r) == "PortRange('1-3,10,20-22')"
    assert r == PortRange([(1, 3), (10, 10), (20, 22)])
    assert hash(r) == hash(PortRange([(1, 3), (10, 10), (20, 22)]))
    assert r != PortRange(((1, 3),))
    assert len(PortRange(())) == 0
    assert str(PortRange(())) == ""


def test_nth_walks_ascending_across_intervals() -> None:
    r = PortRange(((1, 3), (10, 10), (20, 22), (65535, 65535)))
    assert [r.nth(i) for i in range(len(r))] == [1, 2, 3, 10, 20, 21, 22, 65535]
    single = PortRange.between(40000, 40999)
    assert single.nth(0) == 40000
    assert single.nth(999) == 40999
    assert single.nth(500) == 40500


SHUFFLE_RANGES = [
    PortRange.between(30000, 30000),  # 1
    PortRange.between(30000, 30001),  # 2
    PortRange.between(30000, 30006),  # 7: prime
    PortRange.between(30000, 30011),  # 12: composite
    PortRange.between(30000, 30000 + 1008),  # 1009: prime
    PortRange.between(30000, 30000 + 1023),  # 1024: a power of two
    PortRange(((5, 5), (9, 9))),  # 2, two intervals
    PortRange(((100, 101), (200, 202), (300, 301))),  # 7: prime, three intervals
    PortRange(((100, 103), (200, 201), (300, 305))),  # 12: composite, three intervals
    PortRange(((1, 1), (3, 3), (5, 5), (65535, 65535))),  # 4: singletons at both ends of the port space
]


@pytest.mark.parametrize("prange", SHUFFLE_RANGES, ids=str)
def test_shuffled_visits_every_candidate_exactly_once(prange: PortRange) -> None:
    everything = [prange.nth(i) for i in range(len(prange))]
    for _ in range(40):  # random offsets and strides
        walk = list(prange.shuffled())
        assert len(walk) == len(prange)
        assert sorted(walk) == everything


@pytest.mark.parametrize("prange", SHUFFLE_RANGES, ids=str)
def test_shuffled_is_a_permutation_for_every_stride_and_offset(
    prange: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: each stride shuffled() can pick, from the first, a middle and the last offset."""
    everything = sorted(prange.nth(i) for i in range(len(prange)))
    for stride in ranges._STRIDES:
        for fraction in (0.0, 0.5, 0.999999):
            fake = types.SimpleNamespace(random=lambda f=fraction: f, choice=lambda seq, s=stride: s)
            monkeypatch.setattr(ranges, "random", fake)
            walk = list(prange.shuffled())
            assert sorted(walk) == everything, (stride, fraction)
            assert walk[0] == prange.nth(int(fraction * len(prange)))


def test_shuffled_spreads_callers() -> None:
    prange = PortRange.between(30000, 30099)
    firsts = {next(prange.shuffled()) for _ in range(200)}
    steps = {(w[1] - w[0]) % 100 for w in (list(prange.shuffled()) for _ in range(200))}
    assert len(firsts) > 10  # starts at a random point
    assert len(steps) > 1  # with a stride that varies
    assert 1 not in steps  # never a +1 walk through runs of taken ports


@pytest.mark.parametrize(
    ("intervals", "size", "want"),
    [
        (((10, 14),), 1, {10, 11, 12, 13, 14}),
        (((10, 14),), 2, {10, 11, 12, 13}),
        (((10, 14),), 5, {10}),
        (((10, 14),), 6, set()),
        (((10, 14), (20, 21), (30, 30)), 2, {10, 11, 12, 13, 20}),
        (((10, 14), (20, 21), (30, 30)), 3, {10, 11, 12}),
        (((10, 14), (20, 21), (30, 30)), 1, {10, 11, 12, 13, 14, 20, 21, 30}),
        (((65533, 65535),), 3, {65533}),
    ],
)
def test_blocks_are_the_first_ports_of_runs(intervals: tuple[tuple[int, int], ...], size: int, want: set[int]) -> None:
    prange = PortRange(intervals)
    firsts = list(prange.blocks(size))
    assert len(firsts) == len(set(firsts))  # each run once
    assert set(firsts) == want
    for first in firsts:  # every port of every run is a candidate
        assert all(p in prange for p in range(first, first + size))


def test_blocks_come_in_random_order() -> None:
    prange = PortRange.between(30000, 30099)
    orders = {tuple(prange.blocks(3)) for _ in range(20)}
    assert len(orders) > 1
    assert all(sorted(o) == list(range(30000, 30098)) for o in orders)


# --------------------------------------------------------------------------------------------------------
# ranges: the default range and the kernel's settings


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None, str | None], None]:
    """Point the /proc readers at files of ours; None: the file does not exist. Clears the default's cache."""
    monkeypatch.setattr(ranges, "_DEFAULT_CACHE", None)

    count = itertools.count()

    def set_files(ephemeral: str | None, reserved: str | None) -> None:
        for attr, text in (("_PROC_EPHEMERAL", ephemeral), ("_PROC_RESERVED", reserved)):
            path = tmp_path / f"proc-{next(count)}"
            if text is not None:
                path.write_text(text)
            monkeypatch.setattr(ranges, attr, str(path))

    return set_files


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("32768\t60999\n", (32768, 60999)),
        ("49152 65535", (49152, 65535)),
        (None, (32768, 60999)),  # no /proc: Linux's default
        ("", (32768, 60999)),
        ("garbage", (32768, 60999)),
        ("1 2 3", (32768, 60999)),
    ],
)
def test_kernel_ephemeral_range(kernel: Callable[[str | None, str | None], None], text: str | None, want: Any) -> None:
    kernel(text, None)
    assert kernel_ephemeral_range() == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (None, []),
        ("", []),
        ("\n", []),
        ("8080\n", [(8080, 8080)]),
        ("8080,9000-9010\n", [(8080, 8080), (9000, 9010)]),
        ("8080,abc,70000,9010-9000,,9000-9010", [(8080, 8080), (9000, 9010)]),  # bad parts are skipped
    ],
)
def test_kernel_reserved_ports(kernel: Callable[[str | None, str | None], None], text: str | None, want: Any) -> None:
    kernel(None, text)
    assert kernel_reserved_ports() == want


def test_default_is_the_floor_up_less_ephemeral_and_reserved(kernel: Callable[[str | None, str | None], None]) -> None:
    kernel("32768 60999\n", "20000-20010,62000,40000-40100,5000\n")
    r = PortRange.default()
    assert r.intervals == ((10000, 19999), (20011, 32767), (61000, 61999), (62001, 65535))
    assert 5000 not in r
    assert 9999 not in r
    assert 10000 in r
    assert 40000 not in r
    assert 62000 not in r


def test_default_falls_back_to_1024_when_ephemeral_reaches_the_floor(
    kernel: Callable[[str | None, str | None], None],
) -> None:
    kernel("9000 65535\n", "2000-2999\n")
    assert PortRange.default().intervals == ((1024, 1999), (3000, 8999))


def test_default_reads_the_kernel_at_most_once_a_second(
    kernel: Callable[[str | None, str | None], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(ranges, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    kernel("32768 60999", "")
    first = PortRange.default()
    kernel("20000 65535", "")
    clock[0] += 0.5
    assert PortRange.default() is first  # cached
    clock[0] += 0.6
    assert PortRange.default().intervals == ((10000, 19999),)  # re-read


@pytest.mark.parametrize(
    ("env", "want"),
    [("20000-20010", ((20000, 20010),)), (" 30000 ", ((30000, 30000),)), ("1-65535", ((1, 65535),))],
)
def test_default_honours_freeport_range(
    kernel: Callable[[str | None, str | None], None], monkeypatch: pytest.MonkeyPatch, env: str, want: Any
) -> None:
    kernel("32768 60999", "")
    PortRange.default()  # a cached kernel default must not hide the variable
    monkeypatch.setenv("FREEPORT_RANGE", env)
    assert PortRange.default().intervals == want


def test_default_blank_freeport_range_means_unset(
    kernel: Callable[[str | None, str | None], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel("32768 60999", "")
    monkeypatch.setenv("FREEPORT_RANGE", "  ")
    assert PortRange.default().intervals == ((10000, 32767), (61000, 65535))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("abc", "FREEPORT_RANGE start must be an integer, not 'abc'"),
        ("20010-20000", "FREEPORT_RANGE '20010-20000': start 20010 is above stop 20000"),
        ("0-10", "FREEPORT_RANGE start 0 is outside 1-65535"),
        ("100-70000", "FREEPORT_RANGE stop 70000 is outside 1-65535"),
    ],
)
def test_default_rejects_a_bad_freeport_range(monkeypatch: pytest.MonkeyPatch, env: str, message: str) -> None:
    monkeypatch.setenv("FREEPORT_RANGE", env)
    with pytest.raises(InvalidRangeError) as info:
        PortRange.default()
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------------
# compose: ComposeProject.args and what Compose runs


def test_project_args_order_and_repetition() -> None:
    project = ComposeProject(
        "demo", ("a.yml", "b.yml"), "/src", profiles=("dev", "debug"), env_files=(".env", "ci.env")
    )
    assert project.args() == [
        "--project-name", "demo",
        "--project-directory", "/src",
        "--file", "a.yml",
        "--file", "b.yml",
        "--profile", "dev",
        "--profile", "debug",
        "--env-file", ".env",
        "--env-file", "ci.env",
    ]  # fmt: skip
    assert ComposeProject("p", (), "/d").args() == ["--project-name", "p", "--project-directory", "/d"]


AWKWARD = ("--file=evil.yml", "-f", "with space.yml", "; rm -rf / #", "$(id)", "née\u2028.yml", "'q\"")


def test_project_args_keep_awkward_names_as_single_items() -> None:
    project = ComposeProject("p", AWKWARD, "/dir with space/-x", profiles=AWKWARD[:2], env_files=AWKWARD[2:4])
    args = project.args()
    assert len(args) == 4 + 2 * (len(AWKWARD) + 2 + 2)
    assert args[3] == "/dir with space/-x"
    assert args[5:18:2] == list(AWKWARD)  # each file right after its own --file
    assert args[4:18:2] == ["--file"] * len(AWKWARD)
    assert args[18:] == [
        "--profile", AWKWARD[0], "--profile", AWKWARD[1], "--env-file", AWKWARD[2], "--env-file", AWKWARD[3]
    ]  # fmt: skip


@dataclass
class FakeCompose:
    """An executable standing in for `docker compose`: logs each run's argv, cwd and cwd listing."""

    script: Path
    log: Path

    @property
    def compose(self) -> Compose:
        return Compose([str(self.script)])

    @property
    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    @property
    def argv(self) -> list[str]:
        (call,) = self.calls
        return list(call["argv"])


MakeFake = Callable[..., FakeCompose]


@pytest.fixture
def fake_compose(tmp_path: Path) -> MakeFake:
    count = [0]

    def make(status: int = 0, stdout: str = "", stderr: str = "") -> FakeCompose:
        count[0] += 1
        d = tmp_path / f"fake-{count[0]}"
        d.mkdir()
        script, log = d / "compose", d / "calls.jsonl"
        script.write_text(
            f"#!{sys.executable} -S\n"
            "import json, os, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    call = {'argv': sys.argv[1:], 'cwd': os.getcwd(), 'listing': sorted(os.listdir('.'))}\n"
            "    f.write(json.dumps(call) + '\\n')\n"
            f"sys.stdout.write({stdout!r})\n"
            f"sys.stderr.write({stderr!r})\n"
            f"sys.exit({status})\n"
        )
        script.chmod(0o755)
        return FakeCompose(script, log)

    return make


PROJECT = ComposeProject("demo", ("/x/compose.yml", "/y/over ride.yml"), "/x", ("dev",), ("/x/.env",))


def test_up_argv(fake_compose: MakeFake) -> None:
    fake = fake_compose()
    result = fake.compose.up(PROJECT)
    assert result.ok
    assert result.returncode == 0
    assert result.stderr == ""
    assert fake.argv == [*PROJECT.args(), "up", "--detach"]


def test_up_argv_with_wait_and_extra(fake_compose: MakeFake) -> None:
    fake = fake_compose()
    extra = ["--build", "--scale", "web=2", "; echo pwned", "web"]
    fake.compose.up(PROJECT, wait=True, extra=extra)
    assert fake.argv == [*PROJECT.args(), "up", "--detach", "--wait", *extra]


def test_up_passes_awkward_names_through_unchanged(fake_compose: MakeFake) -> None:
    fake = fake_compose()
    project = ComposeProject("p", AWKWARD, "/dir with space", AWKWARD, AWKWARD)
    fake.compose.up(project)
    assert fake.argv == [*project.args(), "up", "--detach"]
    assert fake.argv.count("; rm -rf / #") == 3


def test_up_failure_is_a_result_with_stderr_teed(fake_compose: MakeFake, capsys: pytest.CaptureFixture[str]) -> None:
    err = "Error response from daemon: Bind for 0.0.0.0:20417 failed: port is already allocated\n"
    fake = fake_compose(status=1, stderr="Container demo-web-1  Starting\n" + err)
    result = fake.compose.up(PROJECT)
    assert not result.ok
    assert result.returncode == 1
    assert result.stderr == "Container demo-web-1  Starting\n" + err
    assert result.port_clashes() == {20417}
    assert result.last_line() == err.strip()
    assert capsys.readouterr().err == result.stderr  # the user sees Compose's progress and errors


def test_down_with_a_project_runs_in_the_callers_directory(
    fake_compose: MakeFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake = fake_compose()
    fake.compose.down(PROJECT)
    fake.compose.down(PROJECT, volumes=True)
    first, second = fake.calls
    every_profile = dataclasses.replace(PROJECT, profiles=("*",)).args()  # a service of any profile goes too
    assert "dev" in PROJECT.profiles
    assert first["argv"] == [*every_profile, "down", "--remove-orphans"]
    assert second["argv"] == [*every_profile, "down", "--remove-orphans", "--volumes"]
    assert first["cwd"] == str(tmp_path)


def test_down_by_name_runs_in_an_empty_temporary_directory(
    fake_compose: MakeFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "compose.yml").write_text("services: {}\n")  # must not be seen by Compose
    monkeypatch.chdir(tmp_path)
    fake = fake_compose(status=0)
    result = fake.compose.down("demo")
    fake.compose.down("-demo with space", volumes=True)
    first, second = fake.calls
    assert result.ok
    assert first["argv"] == ["--project-name", "demo", "down", "--remove-orphans"]
    assert second["argv"] == ["--project-name", "-demo with space", "down", "--remove-orphans", "--volumes"]
    for call in (first, second):
        assert call["listing"] == []
        assert os.path.realpath(call["cwd"]) != os.path.realpath(tmp_path)
        assert os.path.basename(call["cwd"]).startswith("freeport-")
        assert not os.path.exists(call["cwd"])  # removed afterwards
    assert first["cwd"] != second["cwd"]


def test_config_beside_another_command_runs_at_a_lower_priority(fake_compose: MakeFake) -> None:
    """config(yielding=True), the check made beside `up`, runs under `nice -n 10`: the fake Compose
    reports the niceness it was given, and the same argv as without."""
    fake = fake_compose(stdout='{"services": {}}')
    text = fake.script.read_text()  # also log the niceness it runs at
    fake.script.write_text(text.replace("'argv': sys.argv[1:]", "'argv': sys.argv[1:], 'nice': os.nice(0)"))
    base = os.nice(0)
    fake.compose.config(PROJECT, yielding=True)
    fake.compose.config(PROJECT)
    assert [c["argv"] for c in fake.calls] == [[*PROJECT.args(), "config", "--format", "json"]] * 2
    assert [c["nice"] for c in fake.calls] == [min(base + 10, 19), base]


def test_config_parses_json_stdout(fake_compose: MakeFake, capsys: pytest.CaptureFixture[str]) -> None:
    model = {"name": "demo", "services": {"web": {"ports": [{"target": 80, "published": "20417"}]}}}
    fake = fake_compose(stdout=json.dumps(model), stderr="a warning\n")
    assert fake.compose.config(PROJECT) == model
    assert fake.argv == [*PROJECT.args(), "config", "--format", "json"]
    assert capsys.readouterr().err == ""  # config's stderr is kept, not teed


def test_config_of_a_json_non_mapping_is_empty(fake_compose: MakeFake) -> None:
    assert fake_compose(stdout="[1, 2]").compose.config(PROJECT) == {}


@pytest.mark.parametrize("stdout", ["", "not json", "name: demo\nservices: {}\n", '{"name": '])
def test_config_without_json_is_a_compose_error(fake_compose: MakeFake, stdout: str) -> None:
    with pytest.raises(ComposeError, match=r"^docker compose config printed no JSON$"):
        fake_compose(stdout=stdout).compose.config(PROJECT)


def test_config_failure_is_a_compose_error_with_its_status(fake_compose: MakeFake) -> None:
    fake = fake_compose(status=15, stdout="{}", stderr="validating compose.yml: services.web.ports must be a list\n\n")
    with pytest.raises(ComposeError) as info:
        fake.compose.config(PROJECT)
    assert str(info.value) == "docker compose config failed: validating compose.yml: services.web.ports must be a list"
    assert info.value.returncode == 15
    assert info.value.exit_code == ExitCode.COMPOSE_FAILED


@pytest.mark.parametrize(
    ("stdout", "want"),
    [("v2.40.3\n", (2, 40, 3)), ("2.24.6-desktop.1\n", (2, 24, 6)), ("2.29.1+ds1-1\n", (2, 29, 1)), ("", ())],
)
def test_version(fake_compose: MakeFake, stdout: str, want: tuple[int, ...]) -> None:
    fake = fake_compose(stdout=stdout)
    assert fake.compose.version() == want
    assert fake.argv == ["version", "--short"]


def test_version_of_a_failing_compose_is_empty(fake_compose: MakeFake) -> None:
    assert fake_compose(status=1, stdout="2.40.3\n", stderr="unknown command\n").compose.version() == ()


UNREACHABLE = [
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
    "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
    'Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/containers/json": dial unix /var/run/docker.sock: connect: '
    "permission denied",
    'error during connect: Get "http://docker.example:2375/v1.24/version": '
    "dial tcp: lookup docker.example: no such host",
]


@pytest.mark.parametrize("line", UNREACHABLE)
@pytest.mark.parametrize("verb", ["up", "down", "down-by-name", "config"])
def test_unreachable_engine_is_its_own_error(fake_compose: MakeFake, line: str, verb: str) -> None:
    fake = fake_compose(status=1, stderr=f"time=x level=warning msg=noise\n{line}\nmore noise\n")
    run: Callable[[Compose], object] = {
        "up": lambda c: c.up(PROJECT),
        "down": lambda c: c.down(PROJECT),
        "down-by-name": lambda c: c.down("demo"),
        "config": lambda c: c.config(PROJECT),
    }[verb]
    with pytest.raises(EngineUnreachableError) as info:
        run(fake.compose)
    assert str(info.value) == f"no Docker engine answers: {line}"  # the telling line, not the last one
    assert info.value.exit_code == ExitCode.ENGINE_UNREACHABLE


def test_unreachable_text_from_a_successful_run_is_no_error(fake_compose: MakeFake) -> None:
    result = fake_compose(status=0, stderr=UNREACHABLE[0] + "\n").compose.up(PROJECT)
    assert result.ok


def test_an_ordinary_failure_is_not_an_unreachable_engine(fake_compose: MakeFake) -> None:
    stderr = "Error response from daemon: pull access denied for nosuchimage, repository does not exist\n"
    result = fake_compose(status=18, stderr=stderr).compose.up(PROJECT)
    assert result.returncode == 18
    assert result.stderr == stderr


def test_missing_compose_executable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-compose")
    for call in (
        lambda c: c.up(PROJECT),
        lambda c: c.down("demo"),
        lambda c: c.config(PROJECT),
        lambda c: c.version(),
    ):
        with pytest.raises(ComposeNotFoundError) as info:
            call(Compose([missing, "compose"]))
        assert str(info.value) == f"cannot run {missing!r}: not installed"
        assert info.value.exit_code == ExitCode.COMPOSE_MISSING


def test_unrunnable_compose_executable(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(ComposeNotFoundError, match=r"^cannot run '.*not-executable': Permission denied$"):
        Compose([str(plain)]).up(PROJECT)
    with pytest.raises(ComposeNotFoundError, match=r"^cannot run '.*': "):
        Compose([str(tmp_path)]).up(PROJECT)  # a directory


def test_compose_closes_its_pipes(fake_compose: MakeFake) -> None:
    fake = fake_compose(stdout="{}", stderr="warning\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        fake.compose.config(PROJECT)
        fake.compose.up(PROJECT)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_find_honours_freeport_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPOSE_ENV, "'/opt/my tools/docker' compose --ansi never")
    assert Compose.find().command == ["/opt/my tools/docker", "compose", "--ansi", "never"]
    monkeypatch.setenv(COMPOSE_ENV, "'/opt/unbalanced")
    with pytest.raises(ComposeNotFoundError, match=r"^\$FREEPORT_COMPOSE is not a valid command line"):
        Compose.find()


def _plugin(directory: Path, *, mode: int = 0o755) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker-compose"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return str(path)


def test_find_runs_the_plugin_the_docker_cli_would_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker CLI's order (docker/cli getPluginDirs): cliPluginsExtraDirs, then the config dir's
    cli-plugins, then the system dirs; the first `docker-compose` found is the plugin, and if it is
    no file we can run there is none (the docker CLI refuses it rather than look further)."""
    import freeport_compose._stacks.compose as compose_module
    from freeport_compose._stacks.compose import find_plugin

    config, extra, system = tmp_path / "config", tmp_path / "extra", tmp_path / "system"
    monkeypatch.delenv(COMPOSE_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setattr(compose_module, "_SYSTEM_PLUGIN_DIRS", (str(system),))
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"cliPluginsExtraDirs": [str(extra)]}))
    in_system = _plugin(system)
    assert Compose.find().command == [in_system]
    in_config = _plugin(config / "cli-plugins")
    assert Compose.find().command == [in_config]
    in_extra = _plugin(extra)
    assert Compose.find().command == [in_extra]
    Path(in_extra).chmod(0o644)  # the first one found cannot be run: no plugin, as for the docker CLI
    assert find_plugin() is None
    Path(in_extra).unlink()
    (extra / "docker-compose").mkdir()  # nor can a directory
    assert find_plugin() is None
    (extra / "docker-compose").rmdir()
    (config / "config.json").write_text('{"cliPluginsExtraDirs": ')  # unreadable: the other dirs still count
    assert Compose.find().command == [in_config]
    Path(in_config).unlink()
    assert Compose.find().command == [in_system]


def test_find_falls_back_to_docker_compose_without_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No plugin in the dirs we search (a docker CLI may know others): `docker compose`, if it is v2;
    else docker-compose v2 on the PATH; else nothing, said in one line."""
    import freeport_compose._stacks.compose as compose_module

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.delenv(COMPOSE_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(compose_module, "_SYSTEM_PLUGIN_DIRS", (str(tmp_path / "system"),))
    docker = bin_dir / "docker"
    docker.write_text('#!/bin/sh\n[ "$1 $2 $3" = "compose version --short" ] && echo 2.30.1 && exit 0\nexit 1\n')
    docker.chmod(0o755)
    assert Compose.find().command == ["docker", "compose"]
    docker.write_text("#!/bin/sh\nexit 1\n")  # a docker CLI without Compose v2
    with pytest.raises(ComposeNotFoundError, match="Docker Compose v2 not found"):
        Compose.find()
    legacy = bin_dir / "docker-compose"
    legacy.write_text("#!/bin/sh\necho v2.30.1\n")
    legacy.chmod(0o755)
    assert Compose.find().command == [str(legacy)]


def test_the_plugin_run_on_its_own_reads_our_arguments_as_docker_compose_does(tmp_path: Path) -> None:
    """Run on its own, Compose rewrites docker-compose v1 style arguments (and drops a leading
    `compose`): a project named `compose`, and values that look like verbs, must still mean what
    they mean to `docker compose`. Asked of the real plugin, with `config` (no engine needed)."""
    from freeport_compose._stacks.compose import find_plugin

    plugin = find_plugin()
    assert plugin is not None, "the compose plugin of scripts/setup.sh"
    work = tmp_path / "up"
    work.mkdir()
    (work / "compose.yml").write_text("services:\n  web:\n    image: x\n    profiles: [up]\n")
    for name in ("compose", "up", "config"):
        project = ComposeProject(name, (str(work / "compose.yml"),), str(work), ("up",), ())
        model = Compose([plugin]).config(project)
        assert model["name"] == name
        assert list(model["services"]) == ["web"]


def test_a_plugin_run_on_its_own_does_not_inherit_the_docker_clis_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run by the docker CLI, a plugin finds $DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND set and expects
    `compose` as its first word; freeport-compose run from a docker CLI plugin must not pass it on."""
    import freeport_compose._stacks.compose as compose_module

    monkeypatch.delenv(COMPOSE_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "config"))
    monkeypatch.setattr(compose_module, "_SYSTEM_PLUGIN_DIRS", (str(tmp_path / "system"),))
    plugin = _plugin(tmp_path / "system")
    monkeypatch.delenv("DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND", raising=False)
    assert Compose.find().env is None  # nothing to take out: our environment, as it is when Compose runs
    monkeypatch.setenv("DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND", "/usr/bin/docker")
    found = Compose.find()
    assert found.command == [plugin]
    assert found.env is not None
    assert "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND" not in found.env
    assert found.env["DOCKER_CONFIG"] == str(tmp_path / "config")


# --------------------------------------------------------------------------------------------------------
# compose: the port-clash matcher and last_line


def clashes(stderr: str) -> set[int]:
    return Result(1, stderr).port_clashes()


@pytest.mark.parametrize(
    ("stderr", "want"),
    [
        (
            "Error response from daemon: driver failed programming external connectivity on endpoint demo-web-1 "
            "(3e1c39bc8475): Bind for 0.0.0.0:20417 failed: port is already allocated",
            {20417},
        ),
        ("Bind for [::]:20417 failed: port is already allocated", {20417}),
        ("Bind for [::1]:20418 failed: port is already allocated", {20418}),
        ("Bind for 127.0.0.1:20419 failed: port is already allocated", {20419}),
        ("Bind for :::20420 failed: port is already allocated", {20420}),
        ("Bind for [fe80::1ff:fe23:4567:890a]:1 failed: port is already allocated", {1}),
        (
            "Error response from daemon: driver failed programming external connectivity on endpoint demo-db-1 "
            "(77cf82e5): Error starting userland proxy: listen tcp4 0.0.0.0:20417: bind: address already in use",
            {20417},
        ),
        ("Error starting userland proxy: listen tcp6 [::]:20417: bind: address already in use", {20417}),
        (
            "Ports are not available: exposing port TCP 0.0.0.0:20417 -> 0.0.0.0:0: "
            "listen tcp 0.0.0.0:20417: bind: address already in use",
            {20417},
        ),
        ("listen tcp 127.0.0.1:65535: bind: address already in use", {65535}),
        ("Error starting userland proxy: listen udp4 0.0.0.0:20417: bind: address already in use", {20417}),
        ("listen udp [::]:5353: bind: address already in use", {5353}),
    ],
)
def test_port_clash_forms(stderr: str, want: set[int]) -> None:
    assert clashes(stderr) == want
    assert clashes(f"Container demo-web-1  Starting\n{stderr}\nError: failed to start containers: web\n") == want


def test_several_port_clashes_in_one_stderr() -> None:
    stderr = "\n".join(
        [
            " Container demo-a-1  Error response from daemon: Bind for 0.0.0.0:20001 failed: port is already allocated",
            " Container demo-b-1  Error starting userland proxy: "
            "listen tcp4 0.0.0.0:20002: bind: address already in use",
            " Container demo-c-1  Bind for [::]:20001 failed: port is already allocated",  # the same port twice
            " Container demo-d-1  listen udp4 0.0.0.0:20003: bind: address already in use",
            "Error response from daemon: Bind for 0.0.0.0:20004 failed: port is already allocated; "
            "listen tcp6 [::]:20005: bind: address already in use",
        ]
    )
    assert clashes(stderr) == {20001, 20002, 20003, 20004, 20005}


@pytest.mark.parametrize(
    "stderr",
    [
        "",
        "port is already allocated",
        "bind: address already in use",
        "Bind for 0.0.0.0:20417 failed: permission denied",
        "Bind for 0.0.0.0: failed: port is already allocated",
        "listen tcp 0.0.0.0:20417: bind: permission denied",
        "listen tcp 0.0.0.0:20417: bind: cannot assign requested address",
        "listen unix /var/run/demo.sock: bind: address already in use",
        "dial tcp 10.0.0.1:20417: connect: connection refused",
        'Error response from daemon: Conflict. The container name "/demo-web-1" is already in use by container',
        "Error response from daemon: network with name demo_default already exists",
        "services.web.ports contains an invalid type, it should be a number, or an object: 20417",
        "web  | 2024/01/01 nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)",
    ],
)
def test_texts_that_are_not_port_clashes(stderr: str) -> None:
    assert clashes(stderr) == set()


# Docker Engine >= 28 binds host ports itself and words a foreign socket its own way (source:
# moby's daemon/libnetwork/portallocator/osallocator_linux.go); `up`'s retry must know it too.


@pytest.mark.parametrize(
    ("stderr", "want"),
    [
        (
            "Error response from daemon: failed to set up container networking: driver failed programming external "
            "connectivity on endpoint demo-db-1 (0438e0c2): failed to bind host port 0.0.0.0:20417/tcp: "
            "address already in use",
            {20417},
        ),
        ("failed to bind host port [::]:20417/tcp: address already in use", {20417}),
        ("failed to bind host port 0.0.0.0:20418/udp: address already in use", {20418}),
        (
            "Error response from daemon: failed to set up container networking: driver failed programming external "
            "connectivity on endpoint demo-db-1 (77cf82e5): failed to bind host port for "
            "0.0.0.0:20417:172.18.0.2:5432/tcp: address already in use",
            {20417},
        ),
    ],
)
def test_port_clash_forms_of_docker_28(stderr: str, want: set[int]) -> None:
    assert clashes(stderr) == want


@pytest.mark.parametrize(
    ("returncode", "stderr", "want"),
    [
        (1, "first\nsecond\n", "second"),
        (1, "first\n  last one  \n\n   \n", "last one"),
        (1, "only", "only"),
        (1, "a\r\nb\r\n", "b"),
        (3, "", "exit status 3"),
        (137, " \n\t\n", "exit status 137"),
    ],
)
def test_last_line(returncode: int, stderr: str, want: str) -> None:
    assert Result(returncode, stderr).last_line() == want


# --------------------------------------------------------------------------------------------------------
# lease records


HOLDER = Holder(4242, 123456789, "build-host")
LEASE_ID = f"{0xC0FFEE:016x}"  # what a named lease's token looks like


def lease(**changes: Any) -> LeaseRecord:
    base = LeaseRecord(port=20417, owner=None, holder=HOLDER, created=1712345678.123456, token="", label="FREEPORT_db")
    return base._replace(**changes)


ROUND_TRIP = {
    "process": lease(),
    "process-no-label": lease(label=""),
    "named": lease(owner="ci-job_7.a-b", token=LEASE_ID),
    "adopted": lease(adopted=True, token=LEASE_ID, label=""),
    "named-and-adopted": lease(owner="x", adopted=True, token=LEASE_ID),
    "quotes": lease(owner="o", token=LEASE_ID, label='say "hi" \\ {"port":1} \n\t'),
    "unicode": lease(owner="o", token=LEASE_ID, label="Datenbank ✓ 数据库 \U0001f600 \u2028 é"),
    "holder-unknown-start": lease(holder=Holder(1, None, 'höst "quoted"')),
    "port-1": lease(port=1),
    "port-65535": lease(port=65535, created=0.0),
}


@pytest.mark.parametrize("record", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_lease_record_round_trip(record: LeaseRecord) -> None:
    data = record.encode()
    assert isinstance(data, bytes)
    assert len(data) < RECORD_LIMIT
    decoded = LeaseRecord.decode(data, record.port)
    assert decoded == record
    assert decoded is not None
    assert decoded.holder.json == record.holder.json
    raw = json.loads(data)  # real JSON, not only something decode() accepts
    assert raw["port"] == record.port
    assert raw["label"] == record.label
    assert raw["owner"] == record.owner


def test_lease_record_kind() -> None:
    assert ROUND_TRIP["process"].kind == "process"
    assert ROUND_TRIP["named"].kind == "named"
    assert ROUND_TRIP["adopted"].kind == "adopted"
    assert ROUND_TRIP["named-and-adopted"].kind == "named"  # an owner outlives any process


def test_lease_record_of_another_port_is_no_record() -> None:
    data = lease(port=80).encode()
    assert LeaseRecord.decode(data, 80) is not None
    assert LeaseRecord.decode(data, 8080) is None
    assert LeaseRecord.decode(data, 8) is None


def test_is_process_record_exactly_for_process_records_of_that_port() -> None:
    for port in (1, 8, 80, 8080, 20417, 65535):
        assert is_process_record(lease(port=port).encode(), port)
        assert is_process_record(lease(port=port, label="").encode(), port)
        assert not is_process_record(lease(port=port, owner="ci", token=LEASE_ID).encode(), port)
        assert not is_process_record(lease(port=port, adopted=True, token=LEASE_ID).encode(), port)
    assert not is_process_record(lease(port=80).encode(), 8080)  # neither prefix of the other
    assert not is_process_record(lease(port=8080).encode(), 80)
    assert not is_process_record(lease(port=8080).encode(), 808)
    for garbage in (b"", b"{", b"null", b"\x00" * 64, b'{"port":80}', b'{"port": 80, "owner": null, "x": 1}'):
        assert not is_process_record(garbage, 80)


def _valid_raw() -> dict[str, Any]:
    return json.loads(lease(owner="ci", token=LEASE_ID).encode())


def _with(path: tuple[str, ...], value: Any) -> bytes:
    raw = _valid_raw()
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(raw).encode()


_DELETE = object()

HOSTILE_LEASES = {
    "empty": b"",
    "null": b"null",
    "list": b"[]",
    "string": b'"x"',
    "number": b"20417",
    "empty object": b"{}",
    "truncated": lease(owner="ci", token=LEASE_ID).encode()[:-1],
    "not utf-8": b'{"port":20417,"owner":"\xff"}',
    "nul bytes": b"\x00" * 100,
    "deep nesting": b"[" * 2000 + b"]" * 2000,
    "deep nesting in a field": _with(("owner",), "@@").replace(b'"@@"', b"[" * 1900 + b"]" * 1900),
    "port as string": _with(("port",), "20417"),
    "port as float": _with(("port",), 20417.0),
    "port as bool": _with(("port",), True),
    "port missing": _with(("port",), _DELETE),
    "owner as number": _with(("owner",), 5),
    "owner empty": _with(("owner",), ""),
    "owner path": _with(("owner",), "../../etc/passwd"),
    "owner with newline": _with(("owner",), "ci\n"),
    "owner too long": _with(("owner",), "a" * 129),
    "owner missing": _with(("owner",), _DELETE),
    "holder missing": _with(("holder",), _DELETE),
    "holder as list": _with(("holder",), [1, 2, 3]),
    "holder as string": _with(("holder",), "pid 1"),
    "pid as string": _with(("holder", "pid"), "4242"),
    "pid as bool": _with(("holder", "pid"), True),
    "pid as float": _with(("holder", "pid"), 4242.0),
    "start_time as string": _with(("holder", "start_time"), "123"),
    "start_time as float": _with(("holder", "start_time"), 1.5),
    "host as number": _with(("holder", "host"), 7),
    "host missing": _with(("holder", "host"), _DELETE),
    "token as number": _with(("token",), 7),
    "token missing": _with(("token",), _DELETE),
    "label as list": _with(("label",), ["x"]),
    "created as text": _with(("created",), "yesterday"),
    "created as null": _with(("created",), None),
    "created as list": _with(("created",), [1]),
    "created missing": _with(("created",), _DELETE),
    "huge port": _with(("port",), "@@").replace(b'"@@"', b"2" * 3000),
}


@pytest.mark.parametrize("data", HOSTILE_LEASES.values(), ids=HOSTILE_LEASES.keys())
def test_lease_record_decode_rejects_hostile_data(data: bytes) -> None:
    assert LeaseRecord.decode(data, 20417) is None


def test_lease_record_hostile_fixtures_are_one_change_from_valid() -> None:
    assert LeaseRecord.decode(json.dumps(_valid_raw()).encode(), 20417) == lease(owner="ci", token=LEASE_ID)


def test_lease_record_size_limit() -> None:
    data = lease(owner="ci", token=LEASE_ID).encode()
    assert LeaseRecord.decode(data.ljust(RECORD_LIMIT - 1), 20417) is not None  # whitespace is still JSON
    assert LeaseRecord.decode(data.ljust(RECORD_LIMIT), 20417) is None  # oversized: not one of ours


def test_lease_record_optional_fields() -> None:
    raw = _valid_raw()
    del raw["label"]
    record = LeaseRecord.decode(json.dumps(raw).encode(), 20417)
    assert record is not None
    assert record.label == ""
    assert record.adopted is False
    raw["adopted"] = "yes"  # only a real `true` makes a record hold by itself
    record = LeaseRecord.decode(json.dumps(raw).encode(), 20417)
    assert record is not None
    assert record.adopted is False
    raw["adopted"] = True
    record = LeaseRecord.decode(json.dumps(raw).encode(), 20417)
    assert record is not None
    assert record.adopted is True


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
LEASE_FIELDS = [("port",), ("owner",), ("created",), ("token",), ("label",), ("adopted",), ("holder",)]
LEASE_FIELDS += [("holder", "pid"), ("holder", "start_time"), ("holder", "host")]


def _check_lease_types(record: LeaseRecord | None) -> None:
    if record is None:
        return
    assert type(record.port) is int
    assert record.port == 20417
    assert record.owner is None or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", record.owner)
    assert type(record.holder.pid) is int
    assert record.holder.start_time is None or type(record.holder.start_time) is int
    assert isinstance(record.holder.host, str)
    assert isinstance(record.token, str)
    assert isinstance(record.label, str)
    assert isinstance(record.created, float)
    assert record.adopted in (True, False)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(LEASE_FIELDS), value=JSON)
def test_lease_record_decode_of_any_field_value_never_raises(field: tuple[str, ...], value: Any) -> None:
    _check_lease_types(LeaseRecord.decode(_with(field, value), 20417))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_lease_record_decode_of_any_bytes_never_raises(data: bytes) -> None:
    _check_lease_types(LeaseRecord.decode(data, 20417))


def test_named_lease_with_a_long_label_keeps_its_port() -> None:
    """A label too long for a record is refused up front (it used to make a record that read back as
    none, so its named lease was lost); the longest allowed one, escaped to JSON, still holds its port."""
    port = 29417  # never bound: the probe below says every port is free

    def free(_port: int) -> bool:
        return True

    with pytest.raises(InvalidNameError, match=r"at most 256 characters"):
        FreePort(port, port, owner="first", label="x" * 257, probe=free, timeout=0)
    first = FreePort(port, port, owner="first", label="\u00e9" * 256, probe=free, timeout=0)
    try:
        with pytest.raises(NoFreePortError):
            FreePort(port, port, owner="second", probe=free, timeout=0)
    finally:
        first.release()


# --------------------------------------------------------------------------------------------------------
# stack records


def stack(**changes: Any) -> StackRecord:
    base: dict[str, Any] = {
        "project": "demo-1a2b3c",
        "files": ["/src/app/compose.yml", "/src/app/compose.dev.yml"],
        "compose_files": ["/state/stacks/demo-1a2b3c/compose.yml", "/src/app/compose.dev.yml"],
        "project_directory": "/src/app",
        "profiles": ["dev"],
        "env_files": ["/src/app/.env"],
        "ports": {"FREEPORT_1": 20001, "FREEPORT_db": 20002},
        "status": StackStatus.UP,
        "driver": Holder(4242, 987654321, "build-host"),
        "created": 1712345678.5,
    }
    return StackRecord(**{**base, **changes})


STACKS = {
    "full": stack(),
    "fresh": stack(profiles=[], env_files=[], ports={}, status=StackStatus.RENDERING),
    "unicode paths": stack(files=['/src/ünï cödé/"q"/compose.yml'], project_directory="/src/ünï cödé"),
    "unknown start time": stack(driver=Holder(1, None, "other-host"), status=StackStatus.STOPPING),
    "integer created": stack(created=1712345678),
}


@pytest.mark.parametrize("record", STACKS.values(), ids=STACKS.keys())
def test_stack_record_round_trip(record: StackRecord) -> None:
    data = record.encode()
    assert StackRecord.decode(data) == record
    assert json.loads(data)["status"] == record.status.value


@pytest.mark.parametrize("status", list(StackStatus))
def test_stack_record_round_trip_of_every_status(status: StackStatus) -> None:
    decoded = StackRecord.decode(stack(status=status).encode())
    assert decoded is not None
    assert decoded.status is status


def test_stack_record_compose_project() -> None:
    record = stack()
    assert record.compose_project() == ComposeProject(
        "demo-1a2b3c", tuple(record.compose_files), "/src/app", ("dev",), ("/src/app/.env",)
    )
    args = record.compose_project().args()
    assert args[:4] == ["--project-name", "demo-1a2b3c", "--project-directory", "/src/app"]
    assert "/src/app/compose.yml" not in args  # Compose gets the rendered copy, not the template


def test_stack_status_is_a_str_enum() -> None:
    """StackStatus is a real `str` Enum: its members are their values as strings, in JSON, records and f-strings."""
    import copy
    import enum
    import pickle

    values = ["rendering", "rendered", "starting", "up", "run", "stopping", "deployed"]
    assert issubclass(StackStatus, enum.Enum)
    assert issubclass(StackStatus, str)
    assert [s.value for s in StackStatus] == values
    assert StackStatus("up") is StackStatus.UP
    assert StackStatus["UP"] is StackStatus.UP
    assert StackStatus.UP == "up"
    assert str(StackStatus.UP) == f"{StackStatus.UP}" == "up"
    assert json.dumps(StackStatus.UP) == '"up"'
    assert copy.deepcopy(StackStatus.UP) is StackStatus.UP
    assert pickle.loads(pickle.dumps(StackStatus.RUN)) is StackStatus.RUN  # noqa: S301 (our own bytes)
    assert repr(StackStatus.UP) == "<StackStatus.UP: 'up'>"
    assert {s for s in StackStatus if s.driven} == {StackStatus.RENDERING, StackStatus.STARTING, StackStatus.RUN}
    for bad in ("running", "UP", ["up"], None):
        with pytest.raises(ValueError, match="is not a valid StackStatus"):
            StackStatus(bad)


def _stack_with(key: str, value: Any, sub: str | None = None) -> bytes:
    raw = json.loads(stack().encode())
    target = raw[key] if sub is not None else raw
    name = sub if sub is not None else key
    if value is _DELETE:
        del target[name]
    else:
        target[name] = value
    return json.dumps(raw).encode()


HOSTILE_STACKS = {
    "none": None,
    "empty": b"",
    "not json": b"project: demo",
    "truncated": stack().encode()[:-2],
    "null": b"null",
    "list": b"[]",
    "number": b"7",
    "string": b'"demo"',
    "empty object": b"{}",
    "not utf-8": b'{"project": "\xff"}',
    "deep nesting": b"[" * 100000 + b"]" * 100000,
    "unknown key": _stack_with("surprise", 1),
    "unknown status": _stack_with("status", "running"),
    "status as number": _stack_with("status", 1),
    "status missing": _stack_with("status", _DELETE),
    "project invalid": _stack_with("project", "Demo Project"),
    "project path": _stack_with("project", "../../etc"),
    "project as number": _stack_with("project", 7),
    "project missing": _stack_with("project", _DELETE),
    "files as string": _stack_with("files", "/src/app/compose.yml"),
    "files with number": _stack_with("files", ["/a.yml", 7]),
    "compose_files null": _stack_with("compose_files", None),
    "profiles as dict": _stack_with("profiles", {"dev": True}),
    "env_files with null": _stack_with("env_files", [None]),
    "project_directory as list": _stack_with("project_directory", ["/src"]),
    "ports as list": _stack_with("ports", [20001]),
    "port as string": _stack_with("ports", {"FREEPORT_1": "20001"}),
    "port as bool": _stack_with("ports", {"FREEPORT_1": True}),
    "port as float": _stack_with("ports", {"FREEPORT_1": 20001.0}),
    "driver missing": _stack_with("driver", _DELETE),
    "driver as list": _stack_with("driver", [1, None, "h"]),
    "driver extra key": _stack_with("driver", "{}", "json"),
    "driver pid as string": _stack_with("driver", "1", "pid"),
    "driver pid as bool": _stack_with("driver", True, "pid"),
    "driver start_time as float": _stack_with("driver", 1.5, "start_time"),
    "driver host as null": _stack_with("driver", None, "host"),
    "created as string": _stack_with("created", "now"),
}


@pytest.mark.parametrize("data", HOSTILE_STACKS.values(), ids=HOSTILE_STACKS.keys())
def test_stack_record_decode_rejects_hostile_data(data: bytes | None) -> None:
    assert StackRecord.decode(data) is None


def test_stack_record_missing_optional_fields_take_defaults() -> None:
    raw = json.loads(stack().encode())
    for key in ("profiles", "env_files", "ports"):
        del raw[key]
    record = StackRecord.decode(json.dumps(raw).encode())
    assert record is not None
    assert (record.profiles, record.env_files, record.ports) == ([], [], {})


STACK_FIELDS = ["project", "files", "compose_files", "project_directory", "profiles", "env_files", "ports"]
STACK_FIELDS += ["status", "driver", "created"]


def _check_stack_types(record: StackRecord | None) -> None:
    if record is None:
        return
    check_project(record.project)
    assert isinstance(record.project_directory, str)
    for items in (record.files, record.compose_files, record.profiles, record.env_files):
        assert isinstance(items, list)
        assert all(isinstance(i, str) for i in items)
    assert isinstance(record.ports, dict)
    assert all(type(p) is int for p in record.ports.values())
    assert isinstance(record.status, StackStatus)
    assert type(record.driver.pid) is int
    assert isinstance(record.driver.host, str)
    assert isinstance(record.created, (int, float))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(STACK_FIELDS), value=JSON)
def test_stack_record_decode_of_any_field_value_never_raises(key: str, value: Any) -> None:
    _check_stack_types(StackRecord.decode(_stack_with(key, value)))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["pid", "start_time", "host", "json", "other"]), value=JSON)
def test_stack_record_decode_of_any_driver_value_never_raises(key: str, value: Any) -> None:
    _check_stack_types(StackRecord.decode(_stack_with("driver", value, key)))


# --------------------------------------------------------------------------------------------------------
# stack records: project names


@pytest.mark.parametrize("name", ["a", "0", "demo", "my_app-2", "a" * 63, "9lives", "x-", "x_"])
def test_check_project_accepts(name: str) -> None:
    assert check_project(name) == name


@pytest.mark.parametrize(
    "name", ["", "Demo", "-demo", "_demo", "a" * 112, "my app", "my.app", "demo\n", "démo", "a/b", "../x", "a:b"]
)
def test_check_project_rejects(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_project(name)
    assert str(info.value).startswith(f"project name {name!r} is invalid for Compose")
    assert info.value.exit_code == ExitCode.INVALID_NAME


def test_project_name_given_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "from-env")
    assert project_name("given", ["/src/app/compose.yml"]) == "given"
    with pytest.raises(InvalidNameError):
        project_name("Given", ["/src/app/compose.yml"])


def test_project_name_from_compose_project_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "from-env")
    assert project_name(None, ["/src/app/compose.yml"]) == "from-env"
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "Not Valid")
    with pytest.raises(InvalidNameError, match="'Not Valid'"):
        project_name(None, ["/src/app/compose.yml"])


@pytest.mark.parametrize(
    ("file", "base"),
    [
        ("/src/app/compose.yml", "app"),
        ("/src/My App/compose.yml", "my-app"),
        ("/src/__app__/compose.yml", "app"),
        ("/src/--app--/compose.yml", "app"),
        ("/src/.hidden/compose.yml", "hidden"),
        ("/src/ünïcode dir/compose.yml", "n-code-dir"),
        ("/src/数据库/compose.yml", "stack"),
        ("/src/___/compose.yml", "stack"),
        ("/compose.yml", "stack"),
        ("/src/" + "a" * 100 + "/compose.yml", "a" * 40),
    ],
)
def test_project_name_derived_from_the_first_file(file: str, base: str) -> None:
    name = project_name(None, [file, "/elsewhere/other.yml"])
    assert re.fullmatch(re.escape(base) + r"-[0-9a-f]{6}", name), name
    assert check_project(name) == name


def test_project_name_derived_from_a_relative_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Shop Front").mkdir()
    monkeypatch.chdir(tmp_path / "Shop Front")
    assert re.fullmatch(r"shop-front-[0-9a-f]{6}", project_name(None, ["compose.yml"]))
    assert re.fullmatch(r"shop-front-[0-9a-f]{6}", project_name("", ["compose.yml"]))  # "" is not a name


def test_project_names_derived_twice_differ() -> None:
    names = {project_name(None, ["/src/app/compose.yml"]) for _ in range(20)}
    assert len(names) == 20  # two `up` from one checkout must not share a project


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_characters="/\x00"), min_size=1, max_size=80))
def test_project_name_derived_from_any_directory_is_valid(directory: str) -> None:
    check_project(project_name(None, [f"/src/{directory}/compose.yml"]))


# --------------------------------------------------------------------------------------------------------
# template helpers


@pytest.mark.parametrize(
    ("text", "ports", "want"),
    [
        ("$<FREEPORT_1>:80", {"FREEPORT_1": 20001}, "20001:80"),
        ("127.0.0.1:$<FREEPORT_db>:5432/udp", {"FREEPORT_db": 20002}, "127.0.0.1:20002:5432/udp"),
        ("$<FREEPORT_a>-$<FREEPORT_b>:80-81", {"FREEPORT_a": 20001, "FREEPORT_b": 20002}, "20001-20002:80-81"),
        ("$<FREEPORT_1>$<FREEPORT_1>", {"FREEPORT_1": 7}, "77"),
        ("${HOST_IP:-0.0.0.0}:$<FREEPORT_x>:80", {"FREEPORT_x": 20003}, "${HOST_IP:-0.0.0.0}:20003:80"),
        ("8080:80", {}, "8080:80"),
        ("$<freeport_1>:80", {"FREEPORT_1": 1}, "$<freeport_1>:80"),  # not a placeholder: lower case
        ("$<FREEPORT_>:80", {"FREEPORT_": 1}, "$<FREEPORT_>:80"),  # not a placeholder: no name
        ("$<FREEPORT_a-b>:80", {"FREEPORT_a": 1}, "$<FREEPORT_a-b>:80"),  # not a placeholder: '-'
        ('{"published": "$<FREEPORT_9>", "target": "80"}', {"FREEPORT_9": 9}, '{"published": "9", "target": "80"}'),
    ],
)
def test_substitute(text: str, ports: dict[str, int], want: str) -> None:
    assert substitute(text, ports) == want


def test_substitute_needs_every_port() -> None:
    with pytest.raises(KeyError, match="FREEPORT_2"):
        substitute("$<FREEPORT_1>-$<FREEPORT_2>:80-81", {"FREEPORT_1": 1})


def _rendered_port_items(tmp_path: Path, items: list[str], ports: dict[str, int]) -> tuple[list[str], list[str]]:
    """(the ports: items of Template.render, substitute() of the same entries) for one service."""
    path = tmp_path / "compose.yml"
    lines = ["services:", "  web:", "    image: nginx", "    ports:", *(f"      - {json.dumps(i)}" for i in items)]
    path.write_text("\n".join(lines) + "\n")
    template = load(str(path))
    rendered = yaml.safe_load(template.render(ports))["services"]["web"]["ports"]
    return rendered, [substitute(e.value, ports) for e in template.entries]


def test_substitute_agrees_with_render(tmp_path: Path) -> None:
    items = ["$<FREEPORT_1>:80", "127.0.0.1:$<FREEPORT_db>:5432", "9000:9000", "${IP:-::1}:$<FREEPORT_1>:81/udp"]
    rendered, substituted = _rendered_port_items(tmp_path, items, {"FREEPORT_1": 20001, "FREEPORT_db": 20002})
    assert rendered == ["20001:80", "127.0.0.1:20002:5432", "9000:9000", "${IP:-::1}:20001:81/udp"]
    assert substituted == rendered


def test_substitute_leaves_an_escaped_placeholder_alone_like_render(tmp_path: Path) -> None:
    items = ["$<FREEPORT_1>:80", "$$<FREEPORT_1>:81"]
    rendered, substituted = _rendered_port_items(tmp_path, items, {"FREEPORT_1": 20001})
    assert rendered == ["20001:80", "$$<FREEPORT_1>:81"]
    assert substituted == rendered


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("db", "FREEPORT_db"),
        ("FREEPORT_db", "FREEPORT_db"),
        ("1", "FREEPORT_1"),
        ("FREEPORT_1", "FREEPORT_1"),
        ("freeport_db", "FREEPORT_freeport_db"),  # the prefix is upper case, like every placeholder
        ("FREEPORT_FREEPORT_x", "FREEPORT_FREEPORT_x"),
    ],
)
def test_placeholder_key(given: str, key: str) -> None:
    assert placeholder_key(given) == key
    assert placeholder_key(placeholder_key(given)) == key  # idempotent


def test_sort_key_orders_numbers_numerically_then_names() -> None:
    names = ["FREEPORT_db", "FREEPORT_10", "FREEPORT_api", "FREEPORT_2", "FREEPORT_1", "FREEPORT_Z", "FREEPORT_100"]
    want = ["FREEPORT_1", "FREEPORT_2", "FREEPORT_10", "FREEPORT_100", "FREEPORT_Z", "FREEPORT_api", "FREEPORT_db"]
    assert sorted(names, key=sort_key) == want
    assert sort_key("FREEPORT_9") < sort_key("FREEPORT_10") < sort_key("FREEPORT_a")
    assert sort_key("FREEPORT_999999999999999999999") < sort_key("FREEPORT_0a")  # any number before any name


def test_sort_key_never_ties_distinct_names() -> None:
    names = ["FREEPORT_1", "FREEPORT_01", "FREEPORT_001", "FREEPORT_a", "FREEPORT_A", "FREEPORT_a1", "FREEPORT_1a"]
    assert len({sort_key(n) for n in names}) == len(names)
    assert sorted(names, key=sort_key) == sorted(reversed(names), key=sort_key)  # a total order
    assert sort_key("FREEPORT_01") < sort_key("FREEPORT_2")  # 01 is one, not "01" as text


def test_fixed_network_and_volume_names_are_reported(tmp_path: Path) -> None:
    from freeport_compose._stacks.templateset import read_set

    path = tmp_path / "compose.yaml"
    path.write_text(
        "services:\n"
        "  web:\n"
        "    image: x\n"
        "    container_name: web\n"
        "networks:\n"
        "  front:\n"
        "    name: shared-net\n"
        "  outside:\n"
        "    name: theirs\n"
        "    external: true\n"
        "volumes:\n"
        "  data:\n"
        "    name: shared-data\n"
        "  own: {}\n"
    )
    warnings = read_set([str(path)]).warnings()
    assert [w.split(": ", 1)[0] for w in warnings] == [f"{path}:4:5", f"{path}:7:11", f"{path}:13:11"]
    assert "service 'web' sets container_name" in warnings[0]
    assert "network 'front' has a fixed name" in warnings[1]
    assert "volume 'data' has a fixed name, so every stack from this file shares it (and its data)" in warnings[2]


def test_a_zombie_holds_nothing() -> None:
    """A process that exited but was not waited for (a zombie) is no live holder: its flocks are gone."""
    import os
    import subprocess
    import time

    from freeport_compose._leasing.process import holder_alive, process_start_time

    child = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start_time(child.pid)
        assert started is not None
        holder = Holder(child.pid, started, os.uname().nodename)
        assert holder_alive(holder) is True
        child.kill()
        deadline = time.monotonic() + 10
        while process_start_time(child.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(f"/proc/{child.pid}")  # not waited for yet: a zombie
        assert holder_alive(holder) is False
    finally:
        child.kill()
        child.wait()
