"""The Compose template renderer: fidelity, placeholder errors with positions, port analysis, and the
`render` command end to end.

No Docker and no network: `docker compose config` output is built by hand, and the CLI is run with --no-check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freeport_compose._error import ExitCode, TemplateError
from freeport_compose._stacks.check import check_published
from freeport_compose._stacks.names import sort_key
from freeport_compose._stacks.outputs import write_file
from freeport_compose._stacks.template import MAX_TEMPLATE_BYTES, PLACEHOLDER_RE, load
from freeport_compose._stacks.templateset import TemplateSet, load_set

CLI = Path(sys.executable).with_name("freeport-compose")
BOM = "\ufeff"


# --------------------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class P:
    """A placeholder in a template built from segments: `$<FREEPORT_name>` in the template."""

    name: str

    @property
    def text(self) -> str:
        return f"$<FREEPORT_{self.name}>"


Segment = str | P


MARK_RE = re.compile(r"⟪([A-Za-z0-9_]+)⟫")


def segments_of(text: str) -> list[Segment]:
    """A template written with ⟪name⟫ where a placeholder goes, as segments (a mark is never YAML)."""
    return [P(part) if i % 2 else part for i, part in enumerate(MARK_RE.split(text))]


def template_text(segments: Sequence[Segment]) -> str:
    return "".join(s.text if isinstance(s, P) else s for s in segments)


def expected_text(segments: Sequence[Segment], ports: Mapping[str, int]) -> str:
    """The render computed independently of the renderer: each known placeholder segment replaced."""
    return "".join(str(ports[f"FREEPORT_{s.name}"]) if isinstance(s, P) else s for s in segments)


def placeholder_offsets(segments: Sequence[Segment]) -> list[tuple[str, int]]:
    """(FREEPORT_name, offset in the template text) of every placeholder segment, in order."""
    out, pos = [], 0
    for s in segments:
        if isinstance(s, P):
            out.append((f"FREEPORT_{s.name}", pos))
            pos += len(s.text)
        else:
            pos += len(s)
    return out


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset as an editor shows them (a BOM is not a column)."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    column = offset - start + 1
    if start == 0 and text.startswith(BOM) and offset > 0:
        column -= 1
    return line, column


def crlf(segments: Sequence[Segment]) -> list[Segment]:
    return [s if isinstance(s, P) else s.replace("\n", "\r\n") for s in segments]


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def ports_for(names: Sequence[str], first: int = 20001) -> dict[str, int]:
    return {n: first + i for i, n in enumerate(sorted(set(names), key=sort_key))}


def template_error(path: str) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        load(path)
    return info.value


class OverrideLoader(yaml.SafeLoader):
    """A loader that knows Compose's `!override` and `!reset` tags."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> list[Any]:
    assert isinstance(node, yaml.SequenceNode)
    return loader.construct_sequence(node, deep=True)


OverrideLoader.add_constructor("!override", _override)
OverrideLoader.add_constructor("!reset", lambda loader, node: None)


def load_override(text: str) -> Any:
    return yaml.load(text, Loader=OverrideLoader)  # noqa: S506 - a SafeLoader subclass with two extra tags


# --------------------------------------------------------------------------------------------------------
# fidelity

REALISTIC = segments_of(
    "# Shop stack — the ports are leased; $<FREEPORT_9> in a comment stays as written\n"
    "x-defaults: &defaults\n"
    "  restart: unless-stopped\n"
    "  environment: &env\n"
    '    GREETING: "héllo wörld ✓"\n'
    "    DB_URL: 'postgres://db:5432/app?x=''y'''\n"
    "    LITERAL: $$<FREEPORT_1> stays literal   # and so does $$\n"
    '    PRICE: "$$5"\n'
    "    TZ: ${TZ:-Europe/Berlin}\n"
    "\n"
    "x-web-ports: &web-ports\n"
    '  - "127.0.0.1:⟪1⟫:80"\n'
    '  - "[::1]:⟪1⟫:80"   # IPv6 loopback\n'
    "\n"
    "services:\n"
    "  web:\n"
    "    <<: *defaults\n"
    '    image: "nginx:${NGINX_TAG:-1.27}"\n'
    "    ports: *web-ports\n"
    "    command: |\n"
    "      sh -c 'echo \"Grüße 😀 on ⟪1⟫\" &&\n"
    "      exec nginx -g \"daemon off;\"'\n"
    "  api:\n"
    "    <<: *defaults\n"
    "    image: ghcr.io/acme/api:latest   # $<FREEPORT_api> is not leased here\n"
    "    environment:\n"
    "      <<: *env\n"
    '      SELF_URL: "😀 http://localhost:⟪2⟫/v1"   # seen from the host\n'
    "      NAME: ñandú-⟪api⟫\n"
    "      ESCAPED: $$$$<FREEPORT_2>\n"
    "    ports: [\"⟪2⟫:8000\", '⟪api⟫:9000', 2222:22]\n"
    "  dns:\n"
    "    image: coredns/coredns\n"
    "    ports:\n"
    "      - target: 53\n"
    "        published: ⟪dns⟫\n"
    "        protocol: udp\n"
    '        host_ip: "::1"\n'
    "      - '⟪dns⟫:53/tcp'\n"
    "      - 127.0.0.1:⟪10⟫:8053/udp\n"
    "    healthcheck:\n"
    '      test: ["CMD", "dig", "@127.0.0.1", "-p", "53", "example.org"]\n'
    "volumes:\n"
    "  data: {}\n"
)
REALISTIC_NAMES = ["FREEPORT_1", "FREEPORT_2", "FREEPORT_10", "FREEPORT_api", "FREEPORT_dns"]

VARIANTS: dict[str, Callable[[list[Segment]], list[Segment]]] = {
    "lf": lambda s: s,
    "crlf": crlf,
    "bom": lambda s: [BOM, *s],
    "bom-crlf": lambda s: [BOM, *crlf(s)],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_render_changes_only_the_placeholders(tmp_path: Path, variant: str) -> None:
    segments = VARIANTS[variant](REALISTIC)
    text = template_text(segments)
    path = write(tmp_path / "compose.yml", text)
    ports = {"FREEPORT_1": 20001, "FREEPORT_2": 20002, "FREEPORT_10": 20010, "FREEPORT_api": 21000,
             "FREEPORT_dns": 5353}

    t = load(path)
    rendered = t.render(ports)

    assert rendered == expected_text(segments, ports)
    assert [(o.name, o.start, o.end) for o in t.occurrences] == [
        (name, start, start + len(name) + 3) for name, start in placeholder_offsets(segments)
    ]
    assert [(o.line, o.column) for o in t.occurrences] == [
        line_col(text, start) for _, start in placeholder_offsets(segments)
    ]
    assert sorted(t.names, key=sort_key) == REALISTIC_NAMES
    # the rendered file as bytes: BOM, CRLF and every non-placeholder byte as in the template
    out = tmp_path / "out.yml"
    write_file(str(out), rendered)
    assert out.read_bytes() == expected_text(segments, ports).encode()
    assert out.read_bytes().startswith(b"\xef\xbb\xbf") == variant.startswith("bom")
    assert (b"\r\n" in out.read_bytes()) == variant.endswith("crlf")
    # what Compose reads: placeholders became ports, the rest means what it meant
    data = yaml.safe_load(rendered)
    env = data["services"]["api"]["environment"]
    assert env["SELF_URL"] == "😀 http://localhost:20002/v1"
    assert env["NAME"] == "ñandú-21000"
    assert env["ESCAPED"] == "$$$$<FREEPORT_2>"
    assert env["LITERAL"] == "$$<FREEPORT_1> stays literal"
    assert env["DB_URL"] == "postgres://db:5432/app?x='y'"
    assert data["services"]["web"]["ports"] == ["127.0.0.1:20001:80", "[::1]:20001:80"]
    assert data["services"]["web"]["command"] == (
        "sh -c 'echo \"Grüße 😀 on 20001\" &&\nexec nginx -g \"daemon off;\"'\n"
    )
    assert data["services"]["dns"]["ports"][0] == {
        "target": 53, "published": 5353, "protocol": "udp", "host_ip": "::1"
    }
    assert "ports: [\"20002:8000\", '21000:9000', 2222:22]" in rendered  # the base-60 int stays as written
    assert "$<FREEPORT_9> in a comment" in rendered
    assert "$<FREEPORT_api> is not leased here" in rendered


def test_realistic_template_port_analysis(tmp_path: Path) -> None:
    stack = load_set([write(tmp_path / "compose.yml", template_text(REALISTIC))])
    assert stack.names == REALISTIC_NAMES
    assert stack.hosts("FREEPORT_1") == ["127.0.0.1", "::1"]  # both through the `ports: *web-ports` alias
    assert stack.protocols("FREEPORT_1") == ["tcp"]
    assert stack.hosts("FREEPORT_2") == []
    assert stack.hosts("FREEPORT_dns") == ["::1"]
    assert stack.protocols("FREEPORT_dns") == ["tcp", "udp"]
    assert stack.hosts("FREEPORT_10") == ["127.0.0.1"]
    assert stack.protocols("FREEPORT_10") == ["udp"]
    assert stack.conflicts() == {}
    assert stack.warnings() == []


def test_base60_looking_ports_are_strings_not_ints(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) constructs 2222:22 as 133342; Compose reads the string "2222:22".
    path = write(
        tmp_path / "c.yml",
        "services:\n  ssh:\n    ports:\n      - 2222:22\n      - 22:$<FREEPORT_1>\n"
        "      - $<FREEPORT_2>:22\n",
    )
    stack = load_set([path])
    entries = stack.templates[0].entries
    assert [(e.published, e.target, e.names) for e in entries] == [
        ("2222", "22", ()), ("22", "$<FREEPORT_1>", ()), ("$<FREEPORT_2>", "22", ("FREEPORT_2",))
    ]
    assert stack.conflicts() == {}  # a fixed port beside a leased one in one file: as the author wrote it
    assert stack.templates[0].render({"FREEPORT_1": 1, "FREEPORT_2": 2}) == (
        "services:\n  ssh:\n    ports:\n      - 2222:22\n      - 22:1\n      - 2:22\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        "    ports:\n      - $<FREEPORT_1>:80\n",
        "    ports:\n      - target: 80\n        published: $<FREEPORT_1>\n",
        "    ports: [$<FREEPORT_1>]\n",
        "    command: echo $<FREEPORT_1>\n",
        "    command: >-\n      echo\n      $<FREEPORT_1>\n",
    ],
)
@pytest.mark.parametrize("prefix", ["", BOM, BOM + "# comment\n"])
def test_placeholder_ending_a_scalar(tmp_path: Path, prefix: str, body: str) -> None:
    segments: list[Segment] = [prefix + "services:\n  web:\n    image: x\n"]
    head, tail = body.split("$<FREEPORT_1>")
    segments += [head, P("1"), tail]
    path = write(tmp_path / "c.yml", template_text(segments))
    assert load(path).render({"FREEPORT_1": 4242}) == expected_text(segments, {"FREEPORT_1": 4242})


def test_placeholders_in_comments_and_escapes_are_not_placeholders(tmp_path: Path) -> None:
    text = (
        "# $<FREEPORT_9> $<FREEPORT_> $<bad\n"
        "services:  # $<FREEPORT_8>\n"
        "  web:\n"
        "    image: x\n"
        "    environment:\n"
        "      A: $$<FREEPORT_1>\n"
        "      B: '$$<FREEPORT_>'\n"
        "      C: \"$$<oops\"\n"
        "      D: ${FREEPORT_1:-$$<x>}\n"
        "    ports:\n"
        "      - \"$<FREEPORT_1>:80\"  # was $<FREEPORT_7>:80\n"
        "    # - $<FREEPORT_>:81\n"
    )
    t = load(write(tmp_path / "c.yml", text))
    assert t.names == {"FREEPORT_1"}
    assert t.render({"FREEPORT_1": 7}) == text.replace('"$<FREEPORT_1>:80"', '"7:80"')


def test_comments_inside_a_scalars_marks_are_left_alone(tmp_path: Path) -> None:
    # a block scalar's node starts at `|`, a node with properties at `&anchor`/`!tag`: the comments
    # after them are inside the marks YAML gives, and still only comments
    segments = segments_of(
        "services:\n  web:\n    environment:\n"
        "      A: &a  # $<FREEPORT_9> $<FREEPORT_>\n        x-⟪1⟫\n"
        "      B: !!str   # $<bad\n        # another $<FREEPORT_>\n        '⟪2⟫'\n"
        "      C: &c !!str |  # $<FREEPORT_8>\n        ⟪1⟫\n"
        "      D: >-  # $<FREEPORT_7>\n        ⟪2⟫\n"
        "      E: [&e x⟪2⟫, !!str ⟪1⟫, *a]\n"
    )
    t = load(write(tmp_path / "c.yml", template_text(segments)))
    ports = {"FREEPORT_1": 1, "FREEPORT_2": 2}
    assert sorted(t.names) == ["FREEPORT_1", "FREEPORT_2"]
    assert t.render(ports) == expected_text(segments, ports)
    assert yaml.safe_load(t.render(ports))["services"]["web"]["environment"] == {
        "A": "x-1", "B": "2", "C": "1\n", "D": "2", "E": ["x2", "1", "x-1"]
    }


def test_interpolation_default_holding_a_placeholder_is_rendered(tmp_path: Path) -> None:
    text = 'services:\n  web:\n    ports:\n      - "${WEB_PORT:-$<FREEPORT_1>}:80"\n'
    t = load(write(tmp_path / "c.yml", text))
    assert t.render({"FREEPORT_1": 9}) == 'services:\n  web:\n    ports:\n      - "${WEB_PORT:-9}:80"\n'
    [entry] = t.entries
    assert (entry.published, entry.target, entry.names, entry.host_ip) == (
        "${WEB_PORT:-$<FREEPORT_1>}", "80", ("FREEPORT_1",), None
    )


def test_deeply_nested_template_is_read_without_recursion_error(tmp_path: Path) -> None:
    # libyaml accepts up to 1000 levels; the renderer must not hit Python's recursion limit below that
    text = "services: {}\nx:\n" + "- " * 998 + "$<FREEPORT_1>\n"
    t = load(write(tmp_path / "c.yml", text))
    assert t.render({"FREEPORT_1": 1}) == text.replace("$<FREEPORT_1>", "1")
    # deeper than YAML parsers allow: a TemplateError, never a RecursionError
    for deep in ("x:\n" + "- " * 5000 + "y\n", "x: " + "[" * 5000 + "]" * 5000 + "\n"):
        e = template_error(write(tmp_path / "deep.yml", "services: {}\n" + deep))
        assert e.problem.startswith("not valid YAML: ")


def test_file_of_exactly_the_size_limit_is_accepted(tmp_path: Path) -> None:
    head = "services:\n  web:\n    ports: ['$<FREEPORT_1>:80']\n# "
    text = head + "x" * (MAX_TEMPLATE_BYTES - len(head) - 1) + "\n"
    assert len(text.encode()) == MAX_TEMPLATE_BYTES
    assert load(write(tmp_path / "c.yml", text)).names == {"FREEPORT_1"}


# --------------------------------------------------------------------------------------------------------
# property-based: random templates from safe pieces

NAME_SUFFIXES = ["1", "2", "10", "db", "api", "a_b", "X9"]
SAFE = "abcXYZ019 _-./=@éß✓😀"
ESCAPES = ["$$", "$$<FREEPORT_1>", "$$$$", "${VAR:-x}", "$VAR", "$$<FREEPORT_>"]
COMMENT_JUNK = ["$<FREEPORT_9>", "$<FREEPORT_>", "$<bad", "$<FREEPORT_a-b>", "'", '"', "#", ": ", "$$"]

piece = st.one_of(
    st.text(SAFE, min_size=1, max_size=6),
    st.sampled_from(NAME_SUFFIXES).map(P),
    st.sampled_from(ESCAPES),
)
comment = st.lists(
    st.one_of(
        st.text(SAFE, max_size=6),
        st.sampled_from(COMMENT_JUNK),
        st.sampled_from(NAME_SUFFIXES).map(lambda n: f"$<FREEPORT_{n}>"),
    ),
    max_size=4,
).map("".join)


def _value(pieces: list[Segment], ports: Mapping[str, int]) -> str:
    return "".join(str(ports[f"FREEPORT_{p.name}"]) if isinstance(p, P) else p for p in pieces)


@st.composite
def templates(draw: st.DrawFn) -> tuple[list[Segment], dict[str, tuple[str, list[Any]]]]:
    """(segments of a template, {key: (style, pieces)} of the environment values it holds)."""
    segs: list[Segment] = []
    if draw(st.booleans()):
        segs.append(BOM)
    segs += [f"# {draw(comment)}\n", "services:\n  s:\n    image: busybox  # ", draw(comment), "\n",
             "    environment:\n"]
    spec: dict[str, tuple[str, list[Any]]] = {}
    for i in range(draw(st.integers(1, 5))):
        style = draw(st.sampled_from(["plain", "single", "double", "block"]))
        key = f"K{i}"
        # node properties, maybe followed by a comment and the value on the next line
        props = draw(st.sampled_from(["", f"&a{i} ", "!!str ", f"&a{i} !!str "]))
        if props and style != "block" and draw(st.booleans()):
            props += f" # {draw(comment)}\n        "
        if style == "block":
            lines = draw(st.lists(st.lists(piece, max_size=5), min_size=1, max_size=3))
            segs.append(f"      {key}: {props}|  # {draw(comment)}\n")
            for line in lines:
                segs += ["        v", *line, "\n"]
            spec[key] = (style, lines)
        else:
            pieces = draw(st.lists(piece, max_size=6))
            quote = {"plain": "v", "single": "'", "double": '"'}[style]
            segs += [f"      {key}: {props}{quote}", *pieces, quote]
            if draw(st.booleans()):
                segs += ["   # ", draw(comment)]
            segs.append("\n")
            spec[key] = (style, pieces)
        if draw(st.booleans()):
            segs.append(f"      # {draw(comment)}\n")
    published = draw(st.lists(st.sampled_from(NAME_SUFFIXES).map(P), max_size=3))
    if published:
        segs.append("    ports:\n")
        for i, p in enumerate(published):
            segs += ['      - "', p, f':8{i}"\n']
    if draw(st.booleans()):
        segs = crlf(segs)
    return segs, spec


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated=templates())
def test_property_render_keeps_every_byte_outside_placeholders(
    tmp_path: Path, generated: tuple[list[Segment], dict[str, tuple[str, list[Any]]]]
) -> None:
    segments, spec = generated
    text = template_text(segments)
    names = [name for name, _ in placeholder_offsets(segments)]
    ports = ports_for(names)
    path = write(tmp_path / "c.yml", text)

    t = load(path)
    rendered = t.render(ports)

    assert rendered == expected_text(segments, ports)
    assert [(o.name, o.start, o.line, o.column) for o in t.occurrences] == [
        (name, start, *line_col(text, start)) for name, start in placeholder_offsets(segments)
    ]
    env = yaml.safe_load(rendered)["services"]["s"]["environment"]
    for key, (style, content) in spec.items():
        if style == "block":
            want = "".join("v" + _value(line, ports) + "\n" for line in content)
        else:
            want = _value(content, ports)
            want = "v" + want + "v" if style == "plain" else want
        assert env[key] == want


TOKENS = [
    "services:", "\n", "\r\n", "  ", "    ", "- ", ": ", "'", '"', "#", "$", "$$", "$<", ">", "$<FREEPORT_1>",
    "$<FREEPORT_", "$<freeport_1>", "$<FOO>", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "|", ">-",
    "é", "😀",
    BOM, "\t", "\x00", "\x01", "ports:", "web:", "80", ":80", "/udp", "127.0.0.1:", "target: ", "published: ",
    "host_ip: ", "protocol: udp", "container_name: x", "!override ", "!reset ", "---", "${X:-1}", "\\x24<",
    "?",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map(lambda t: "".join(t).encode()),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(
        lambda t: ("services:\n  web:\n    ports:\n" + "".join(t)).encode()
    ),
    st.binary(max_size=60),
))
def test_property_only_template_errors_and_faithful_renders(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "c.yml", content)
    error: TemplateError | None = None
    try:
        t = load(path)
    except TemplateError as e:
        error = e
    if error is not None:
        lines = content.decode("utf-8", "replace").splitlines() or [""]
        assert str(error) == f"{path}:{error.line}:{error.column}: {error.problem}"
        assert 1 <= error.line <= len(lines) + 1
        assert error.column >= 1
        return
    text = content.decode("utf-8")
    last = 0
    for o in t.occurrences:
        assert o.start >= last
        assert PLACEHOLDER_RE.fullmatch(text, o.start, o.end)
        dollars = len(text[: o.start]) - len(text[: o.start].rstrip("$"))
        assert dollars % 2 == 0  # never the second half of a `$$` escape
        assert (o.line, o.column) == line_col(text, o.start)
        last = o.end
    ports = ports_for(sorted(t.names))
    expected, last = [], 0
    for o in t.occurrences:
        expected += [text[last : o.start], str(ports[o.name])]
        last = o.end
    assert t.render(ports) == "".join(expected) + text[last:]
    stack = TemplateSet([t])
    for name in stack.names:
        stack.hosts(name)
        stack.protocols(name)
    stack.warnings()
    load_override(stack.override_text(ports, stack.conflicts()))
    check_published({"services": {}}, stack, ports)


# --------------------------------------------------------------------------------------------------------
# errors, each at path:line:column


BAD_PLACEHOLDERS = [
    ("$<FREEPORT_>", "placeholder '$<FREEPORT_>' has no name: write $<FREEPORT_1> or $<FREEPORT_db>"),
    ("$<freeport_1>", "placeholder '$<freeport_1>' must be upper case: $<FREEPORT_1>"),
    ("$<Freeport_db>", "placeholder '$<Freeport_db>' must be upper case: $<FREEPORT_db>"),
    ("$<FOO_1>", "'$<FOO_1>' is not a placeholder: write $<FREEPORT_name>, or $$< for a literal '$<'"),
    ("$<FREEPORT_a-b>", "placeholder '$<FREEPORT_a-b>': a name holds only letters, digits and '_'"),
    ("$<FREEPORT_é>", "placeholder '$<FREEPORT_é>': a name holds only letters, digits and '_'"),
    ("$<FREEPORT_1", "unclosed placeholder '$<FREEPORT_1': write $<FREEPORT_name>"),
    ("$<", "unclosed placeholder '$<': write $<FREEPORT_name>"),
]


@pytest.mark.parametrize(("token", "problem"), BAD_PLACEHOLDERS)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ('services:\n  web:\n    ports:\n      - "', '"\n'),  # double-quoted, 4:10
        ("services:\n  web:\n    ports:\n      - ", "\n"),  # plain, 4:9
        ("services:\r\n  web:\r\n    image: 'é😀 ", "'\r\n"),  # CRLF, non-ASCII before, single-quoted
        ("services:\n  web:\n    command: |\n      echo ok\n      echo ", "\n"),  # block scalar
        ("{services: {web: {ports: ['", "']}}}\n"),  # flow, line 1
        (BOM + "{services: {web: {ports: ['", "']}}}\n"),  # a BOM is not a column
        # after a good one
        ("# $<FREEPORT_1> in a comment\nservices:\n  web:\n    ports: [$<FREEPORT_1>, ", "]\n"),
    ],
)
def test_malformed_placeholder(tmp_path: Path, before: str, after: str, token: str, problem: str) -> None:
    text = before + token + after
    path = write(tmp_path / "bad.yml", text)
    line, column = line_col(text, len(before))
    e = template_error(path)
    assert str(e) == f"{path}:{line}:{column}: {problem}"
    assert (e.path, e.line, e.column, e.problem) == (path, line, column, problem)
    assert e.exit_code == ExitCode.TEMPLATE


def test_malformed_placeholder_positions_are_explicit(tmp_path: Path) -> None:
    # the same positions as the parametrized test, written out by hand
    cases = [
        ('services:\n  web:\n    ports:\n      - "$<FREEPORT_>:80"\n', 4, 10),
        ("services:\n  web:\n    ports:\n      - $<FREEPORT_1:80\n", 4, 9),
        ("services:\r\n  web:\r\n    image: 'é😀 $<FOO>'\r\n", 3, 16),
        ("{services: {web: {ports: ['$<FREEPORT_>:80']}}}\n", 1, 28),
        (BOM + "{services: {web: {ports: ['$<FREEPORT_>:80']}}}\n", 1, 28),
    ]
    for i, (text, line, column) in enumerate(cases):
        path = write(tmp_path / f"bad{i}.yml", text)
        assert str(template_error(path)).startswith(f"{path}:{line}:{column}: "), text


@pytest.mark.parametrize(
    ("content", "line", "column", "problem"),
    [
        ("services:\n\tweb: x\n", 2, 1, None),  # invalid YAML (a tab)
        ("services:\n  web:\n    image: a: b\n", 3, 13, None),
        ("services:\n  web:\n    image: 'unclosed\n", 4, 1, None),
        ("- web\n- db\n", 1, 1, "not a Compose file: the top level is a list, not a mapping"),
        ("# a list\n\n- $<FREEPORT_1>\n", 3, 1, "not a Compose file: the top level is a list, not a mapping"),
        ("text $<FREEPORT_1>\n", 1, 1, "not a Compose file: the top level is a single value, not a mapping"),
        ("version: '3'\nservices:\n  - web\n", 3, 3, "`services:` must be a mapping of service names"),
        ("services: web\n", 1, 11, "`services:` must be a mapping of service names"),
        ("", 1, 1, "empty file: a Compose file is a mapping with `services:`"),
        ("\n  \n\n", 1, 1, "empty file: a Compose file is a mapping with `services:`"),
        ("# $<FREEPORT_1>\n# comments\n", 1, 1, "empty file: a Compose file is a mapping with `services:`"),
        ("---\n", 1, 1, "empty file: a Compose file is a mapping with `services:`"),
        ("---\n# nothing\n...\n", 1, 1, "empty file: a Compose file is a mapping with `services:`"),
        (
            "services:\n  web:\n    environment:\n      $<FREEPORT_1>: x\n", 4, 7,
            "placeholder $<FREEPORT_1> in a mapping key: ports go in values",
        ),
        ("services:\n  web:\n    labels: {a$<FREEPORT_2>: x}\n", 3, 15,
         "placeholder $<FREEPORT_2> in a mapping key: ports go in values"),
        ('services:\n  web:\n    image: "\\x24<FREEPORT_1>"\n', 3, 12,
         "a `$<` made with YAML escapes: write placeholders literally"),
        ("services:\n  web:\n    ports: 80\n", 3, 12, "`ports:` of service 'web' must be a list"),
        ("services:\n  web: nginx\n", 2, 8, "service 'web' must be a mapping"),
        ("services:\n  web:\n    ports: [[1]]\n", 3, 13,
         "a `ports:` item of service 'web' must be a string or mapping"),
    ],
)
def test_template_errors(tmp_path: Path, content: str, line: int, column: int, problem: str | None) -> None:
    path = write(tmp_path / "bad.yml", content)
    e = template_error(path)
    assert str(e).startswith(f"{path}:{line}:{column}: ")
    assert (e.line, e.column) == (line, column)
    if problem is None:
        assert e.problem.startswith("not valid YAML: ")
    else:
        assert e.problem == problem


@pytest.mark.parametrize(
    ("content", "line", "column", "problem"),
    [
        (b"services:\n  web:\n    image: '\xc3\xa9\x00'\n", 3, 14, "binary data (a NUL byte), not YAML text"),
        (b"\x00", 1, 1, "binary data (a NUL byte), not YAML text"),
        (b"\xef\xbb\xbfa: \x00\n", 1, 4, "binary data (a NUL byte), not YAML text"),
        (b"services:\n  web:\n    image: \"\xc3\xa9\xff\"\n", 3, 14, "not UTF-8 text"),
        (b"services:\r\n\xe2\x9c\x93: \xc3\n", 2, 4, "not UTF-8 text"),
        (b"\xff\xfes\x00", 1, 4, "binary data (a NUL byte), not YAML text"),  # UTF-16: NUL bytes
        (b"\xfe", 1, 1, "not UTF-8 text"),
    ],
)
def test_binary_and_non_utf8_content(
    tmp_path: Path, content: bytes, line: int, column: int, problem: str
) -> None:
    path = write(tmp_path / "bad.yml", content)
    assert str(template_error(path)) == f"{path}:{line}:{column}: {problem}"


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        ("services:\n  web:\n    image: é\x01\n", 3, 13),
        ("services:\n  web:\n    image: 😀\x7f\n", 3, 13),
        (BOM + "a: \x1b\n", 1, 4),
    ],
)
def test_control_character_is_located(tmp_path: Path, content: str, line: int, column: int) -> None:
    path = write(tmp_path / "bad.yml", content)
    e = template_error(path)
    assert (e.line, e.column) == (line, column)
    assert e.problem.startswith("not valid YAML: ")
    assert str(e).startswith(f"{path}:{line}:{column}: not valid YAML: ")


def test_missing_file_directory_and_oversized_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yml")
    assert str(template_error(missing)) == f"{missing}:1:1: no such file"
    directory = tmp_path / "dir.yml"
    directory.mkdir()
    assert str(template_error(str(directory))) == f"{directory}:1:1: is a directory, not a Compose file"
    big = write(tmp_path / "big.yml", "services: {}\n# " + "x" * MAX_TEMPLATE_BYTES + "\n")
    assert str(template_error(big)) == f"{big}:1:1: larger than 4 MiB: not a Compose template"


def test_stack_without_placeholder(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yml", "services:\n  web:\n    ports: ['8080:80']  # $<FREEPORT_1>\n")
    b = write(tmp_path / "b.yml", "services:\n  web:\n    environment: {A: $$<FREEPORT_1>}\n")
    with pytest.raises(TemplateError) as info:
        load_set([a, b])
    assert str(info.value) == f"{a}:1:1: no $<FREEPORT_name> placeholder in {a}, {b}: nothing to lease"


def test_stack_error_names_the_bad_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yml", "services:\n  web:\n    ports: ['$<FREEPORT_1>:80']\n")
    bad = write(tmp_path / "bad.yml", "services:\n  db:\n    ports: ['$<FREEPORT_db:5432']\n")
    with pytest.raises(TemplateError) as info:
        load_set([good, bad])
    assert str(info.value) == f"{bad}:3:14: unclosed placeholder '$<FREEPORT_db:5432': write $<FREEPORT_name>"


# --------------------------------------------------------------------------------------------------------
# names across files


def test_one_port_per_name_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yml", "services:\n  app:\n    environment:\n      DB: localhost:$<FREEPORT_db>\n"
                                  "    ports: ['$<FREEPORT_api>:80', '$<FREEPORT_10>:81']\n")
    b = write(tmp_path / "b.yml", "services:\n  db:\n    ports: ['$<FREEPORT_db>:5432', '$<FREEPORT_2>:1', "
                                  "'$<FREEPORT_1>:2']\n")
    stack = load_set([a, b])
    assert stack.names == ["FREEPORT_1", "FREEPORT_2", "FREEPORT_10", "FREEPORT_api", "FREEPORT_db"]
    ports = {"FREEPORT_1": 1, "FREEPORT_2": 2, "FREEPORT_10": 10, "FREEPORT_api": 3, "FREEPORT_db": 5432}
    assert stack.templates[0].render(ports) == (
        "services:\n  app:\n    environment:\n      DB: localhost:5432\n    ports: ['3:80', '10:81']\n"
    )
    assert stack.templates[1].render(ports) == "services:\n  db:\n    ports: ['5432:5432', '2:1', '1:2']\n"


def test_names_order_is_total_and_deterministic() -> None:
    want = [f"FREEPORT_{n}" for n in ("01", "1", "2", "10", "B", "api", "db")]
    names = [want[i] for i in (5, 3, 6, 2, 1, 0, 4)]
    assert sorted(names, key=sort_key) == want
    assert sorted(reversed(names), key=sort_key) == want  # FREEPORT_01 and FREEPORT_1 never tie


# --------------------------------------------------------------------------------------------------------
# hosts, protocols, conflicts, override file, check_published, warnings


def test_hosts_and_protocols(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yml", (
        "services:\n"
        "  a:\n"
        "    ports:\n"
        "      - 127.0.0.1:$<FREEPORT_1>:80\n"
        "      - '[::1]:$<FREEPORT_1>:80/udp'\n"
        "      - target: 81\n"
        "        published: $<FREEPORT_2>\n"
        "        host_ip: 10.0.0.1\n"
        "        protocol: UDP\n"
        "      - $<FREEPORT_2>:81\n"
        "      - ${BIND:-127.0.0.2}:$<FREEPORT_3>:82/sctp\n"
        "      - fe80::1:$<FREEPORT_4>:83\n"
        "      - 127.0.0.9:8080:80\n"
        "      - 84\n"
    ))
    stack = load_set([path])
    assert stack.hosts("FREEPORT_1") == ["127.0.0.1", "::1"]
    assert stack.protocols("FREEPORT_1") == ["tcp", "udp"]
    assert stack.hosts("FREEPORT_2") == ["10.0.0.1"]
    assert stack.protocols("FREEPORT_2") == ["tcp", "udp"]
    assert stack.hosts("FREEPORT_3") == []  # set by interpolation: only Compose knows it
    assert stack.protocols("FREEPORT_3") == ["sctp"]
    assert stack.hosts("FREEPORT_4") == ["fe80::1"]
    assert stack.hosts("FREEPORT_9") == []
    assert stack.protocols("FREEPORT_9") == []


def test_ports_through_a_merge_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yml", (
        "x-web: &web\n"
        "  image: nginx\n"
        "  container_name: fixed\n"
        "  ports: ['127.0.0.1:$<FREEPORT_1>:80/udp']\n"
        "services:\n"
        "  web:\n"
        "    <<: *web\n"
        "  other:\n"
        "    <<: [{image: x}, *web]\n"
        "  own:\n"
        "    <<: *web\n"
        "    ports: ['$<FREEPORT_2>:80']\n"
    ))
    stack = load_set([path])
    assert stack.hosts("FREEPORT_1") == ["127.0.0.1"]
    assert stack.protocols("FREEPORT_1") == ["udp"]
    assert stack.hosts("FREEPORT_2") == []
    assert stack.protocols("FREEPORT_2") == ["tcp"]
    assert [(e.service, e.published) for e in stack.templates[0].entries] == [
        ("web", "$<FREEPORT_1>"), ("other", "$<FREEPORT_1>"), ("own", "$<FREEPORT_2>")
    ]


def _conflict_stack(tmp_path: Path) -> tuple[str, str, TemplateSet]:
    base = write(tmp_path / "base.yml", (
        "services:\n"
        "  web:\n"
        "    image: nginx\n"
        "    ports:\n"
        '      - "8080:80"\n'
        '      - "9090:90"\n'
        "      - target: 53\n"
        "        published: 5353\n"
        "        protocol: udp\n"
        "      - 8443:443/udp\n"
        "  db:\n"
        "    image: postgres\n"
        '    ports: ["5432:5432"]\n'
        "  cache:\n"
        "    image: redis\n"
        "    ports: ['6379:6379']\n"
    ))
    over = write(tmp_path / "over.yml", (
        "services:\n"
        "  web:\n"
        "    ports:\n"
        '      - "127.0.0.1:$<FREEPORT_1>:80"\n'
        "      - target: 53\n"
        "        published: $<FREEPORT_dns>\n"
        "        protocol: udp\n"
        '        host_ip: "::1"\n'
        "      - $<FREEPORT_2>:443\n"
        "  db:\n"
        '    ports: ["[::1]:$<FREEPORT_db>:5432/udp"]\n'
        "  \"caché\":\n"
        "    image: x\n"
        "    ports: ['$<FREEPORT_3>:1']\n"
    ))
    return base, over, load_set([base, over])


def test_conflicts_and_override_text(tmp_path: Path) -> None:
    base, over, stack = _conflict_stack(tmp_path)
    conflicts = stack.conflicts()
    assert list(conflicts) == ["web"]  # db publishes 5432/tcp in base, 5432/udp leased: no clash
    assert [(e.path, e.line, e.value) for e in conflicts["web"]] == [
        (base, 6, "9090:90"),
        (base, 10, "8443:443/udp"),
        (over, 4, "127.0.0.1:$<FREEPORT_1>:80"),
        (over, 5, '{"target": "53", "published": "$<FREEPORT_dns>", "protocol": "udp", "host_ip": "::1"}'),
        (over, 9, "$<FREEPORT_2>:443"),
    ]
    ports = {"FREEPORT_1": 20001, "FREEPORT_2": 20002, "FREEPORT_3": 20003, "FREEPORT_db": 20004,
             "FREEPORT_dns": 20005}
    text = stack.override_text(ports, conflicts)
    assert text == (
        "# Written by freeport-compose: these services publish a container port that a base file\n"
        "# publishes too; !override makes the leased binding replace the base one instead of adding to it.\n"
        "services:\n"
        '  "web":\n'
        "    ports: !override\n"
        '      - "9090:90"\n'
        '      - "8443:443/udp"\n'
        '      - "127.0.0.1:20001:80"\n'
        '      - {"target": "53", "published": "20005", "protocol": "udp", "host_ip": "::1"}\n'
        '      - "20002:443"\n'
    )
    assert load_override(text) == {"services": {"web": {"ports": [
        "9090:90", "8443:443/udp", "127.0.0.1:20001:80",
        {"target": "53", "published": "20005", "protocol": "udp", "host_ip": "::1"}, "20002:443",
    ]}}}


def test_override_text_quotes_odd_service_names(tmp_path: Path) -> None:
    base = write(tmp_path / "a.yml", "services:\n  'we: b\"#':\n    ports: ['1:80']\n  ñ:\n    ports: [2:81]")
    over = write(tmp_path / "b.yml", "services:\n  'we: b\"#':\n    ports: ['$<FREEPORT_1>:80']\n"
                                     "  ñ:\n    ports: ['$<FREEPORT_1>:81']\n")
    stack = load_set([base, over])
    text = stack.override_text({"FREEPORT_1": 7}, stack.conflicts())
    assert load_override(text) == {"services": {'we: b"#': {"ports": ["7:80"]}, "ñ": {"ports": ["7:81"]}}}


def test_override_and_reset_in_a_later_file_remove_base_bindings(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yml", "services:\n  web:\n    ports: ['8080:80', '9090:90']\n")
    override = write(tmp_path / "o.yml", "services:\n  web:\n    ports: !override ['7070:70']\n")
    reset = write(tmp_path / "r.yml", "services:\n  web:\n    ports: !reset []\n")
    reset_null = write(tmp_path / "n.yml", "services:\n  web:\n    ports: !reset null\n")
    leased = write(tmp_path / "l.yml", "services:\n  web:\n    ports: ['$<FREEPORT_1>:80']\n")
    assert load_set([base, override, leased]).conflicts() == {}
    assert load_set([base, reset, leased]).conflicts() == {}
    assert load_set([base, reset_null, leased]).conflicts() == {}
    # without the reset the base's 8080:80 clashes; the reset file before the base changes nothing
    for files in ([base, leased], [reset, base, leased]):
        assert [e.value for e in load_set(files).conflicts()["web"]] == ["9090:90", "$<FREEPORT_1>:80"]
    # a placeholder file with !override is its own replacement: no conflict
    own = write(tmp_path / "own.yml", "services:\n  web:\n    ports: !override ['$<FREEPORT_1>:80']\n")
    assert load_set([base, own]).conflicts() == {}


def test_fixed_binding_beside_a_leased_one_in_the_same_file(tmp_path: Path) -> None:
    # Compose publishes both: nothing to override, and check_published expects both
    text = "services:\n  web:\n    ports: ['8080:80', '$<FREEPORT_1>:80', 2222:22]\n"
    path = write(tmp_path / "c.yml", text)
    stack = load_set([path])
    assert stack.conflicts() == {}
    config = _config({"web": [_port(80, "8080"), _port(80, "20001"), _port(22, "2222")]})
    assert check_published(config, stack, {"FREEPORT_1": 20001}) == []
    # the same fixed binding from a base file is a clash, replaced by the override
    base = write(tmp_path / "base.yml", "services:\n  web:\n    ports: ['9090:80']\n")
    stack = load_set([base, path])
    assert [e.value for e in stack.conflicts()["web"]] == ["8080:80", "$<FREEPORT_1>:80", "2222:22"]
    config["services"]["web"]["ports"].append(_port(80, "9090"))
    assert check_published(config, stack, {"FREEPORT_1": 20001}) == [
        f"{path}:3:24: Compose publishes web's container port 80/tcp on 20001, 8080, 9090, "
        "expected only the leased 20001, 8080"
    ]


def _config(ports: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """`docker compose config --format json` as Compose prints it, reduced to the services' ports."""
    return {"name": "proj", "services": {s: {"image": "x", "ports": p} for s, p in ports.items()}}


def _port(target: int, published: str, protocol: str = "tcp", host_ip: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"mode": "ingress", "target": target, "published": published, "protocol": protocol}
    if host_ip:
        p["host_ip"] = host_ip
    return p


def test_check_published(tmp_path: Path) -> None:
    _, over, stack = _conflict_stack(tmp_path)
    ports = {"FREEPORT_1": 20001, "FREEPORT_2": 20002, "FREEPORT_3": 20003, "FREEPORT_db": 20004,
             "FREEPORT_dns": 20005}
    good = _config({
        "web": [_port(90, "9090"), _port(443, "8443", "udp"), _port(80, "20001", host_ip="127.0.0.1"),
                _port(53, "20005", "udp", "::1"), _port(443, "20002")],
        "db": [_port(5432, "5432"), _port(5432, "20004", "udp", "::1")],
        "cache": [_port(6379, "6379")],
        "caché": [_port(1, "20003")],
    })
    assert check_published(good, stack, ports) == []
    # the base binding left beside the leased one (no override file given to Compose)
    left = json.loads(json.dumps(good))
    left["services"]["web"]["ports"].insert(0, _port(80, "8080"))
    assert check_published(left, stack, ports) == [
        f"{over}:4:9: Compose publishes web's container port 80/tcp on 20001, 8080, "
        "expected only the leased 20001"
    ]
    # a profile disabled `caché`; db published nothing on 5432/udp
    partial = json.loads(json.dumps(good))
    del partial["services"]["caché"]
    partial["services"]["db"]["ports"] = [_port(5432, "5432")]
    assert check_published(partial, stack, ports) == [
        f"{over}:11:13: Compose publishes db's container port 5432/udp on nothing, "
        "expected only the leased 20004"
    ]
    assert check_published({"name": "proj"}, stack, ports) == ["`docker compose config` printed no services"]


def test_check_published_interpolation_replacing_the_placeholder(tmp_path: Path) -> None:
    text = 'services:\n  web:\n    ports:\n      - "${WEB_PORT:-$<FREEPORT_1>}:80"\n'
    path = write(tmp_path / "c.yml", text)
    stack = load_set([path])
    ports = {"FREEPORT_1": 20001}
    assert check_published(_config({"web": [_port(80, "20001")]}), stack, ports) == []
    assert check_published(_config({"web": [_port(80, "9999")]}), stack, ports) == [
        f"{path}:4:9: Compose publishes web's container port 80/tcp on 9999, expected only the leased 20001"
    ]


def test_warnings_about_container_name(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.yml",
        "services:\n  web:\n    container_name: web\n    ports: ['$<FREEPORT_1>:80']\n  db:\n    image: x\n",
    )
    b = write(tmp_path / "b.yml", "services:\n  db: {image: y, container_name: db}\n")
    stack = load_set([a, b])
    tail = "cannot run at once; remove it to run stacks side by side"
    assert stack.warnings() == [
        f"{a}:3:5: service 'web' sets container_name, so two stacks from this file {tail}",
        f"{b}:2:18: service 'db' sets container_name, so two stacks from this file {tail}",
    ]
    assert load_set([a]).warnings() == [stack.warnings()[0]]


# --------------------------------------------------------------------------------------------------------
# write_file


def test_write_file_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "out.yml"
    dest.write_text("old\n")
    inode = dest.stat().st_ino
    write_file(str(dest), "new ✓\r\n")
    assert dest.read_bytes() == "new ✓\r\n".encode()
    assert dest.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert os.listdir(tmp_path) == ["out.yml"]
    assert dest.stat().st_mode & 0o777 == 0o644
    # failing half-way (text that cannot be encoded): the old file stays whole, no temporary is left
    with pytest.raises(UnicodeEncodeError):
        write_file(str(dest), "half \ud800 written")
    assert dest.read_bytes() == "new ✓\r\n".encode()
    assert os.listdir(tmp_path) == ["out.yml"]
    # a destination that cannot be replaced: it raises, and nothing is left behind
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "keep").write_text("k")
    with pytest.raises(IsADirectoryError):
        write_file(str(blocked), "x")
    assert sorted(os.listdir(tmp_path)) == ["blocked", "out.yml"]
    assert (blocked / "keep").read_text() == "k"


# --------------------------------------------------------------------------------------------------------
# the CLI, end to end without Docker


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert os.environ["FREEPORT_STATE_DIR"]  # the autouse fixture's private state dir, inherited
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
                          encoding="utf-8")


def leases() -> list[dict[str, Any]]:
    result = cli("leases", "--json")
    assert result.returncode == 0, result.stderr
    listed: dict[str, Any] = json.loads(result.stdout)
    assert listed["stacks"] == []  # else `ls` would ask Docker for container counts
    leased: list[dict[str, Any]] = listed["leases"]
    return leased


CLI_TEMPLATE = [BOM, *segments_of(
    "# demo: $<FREEPORT_9> stays\r\n"
    "services:\r\n"
    "  web:\r\n"
    "    image: nginx\r\n"
    "    environment: {GREETING: 'grüß dich', ESC: $$<FREEPORT_1>, API: 'http://localhost:⟪api⟫'}\r\n"
    "    ports:\r\n"
    '      - "127.0.0.1:⟪1⟫:80"\r\n'
    "      - ⟪10⟫:81/udp\r\n"
    "      - target: 82\r\n"
    "        published: ⟪2⟫\r\n"
    "      - '⟪api⟫:83'\r\n"
)]


def test_cli_render_ports_port_release(tmp_path: Path) -> None:
    template = write(tmp_path / "compose.yml", template_text(CLI_TEMPLATE))
    out = tmp_path / "out.yml"

    result = cli("render", "--no-check", "-f", template, "-o", str(out), "-p", "proj")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    shown = cli("ports", "-p", "proj", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    ports = json.loads(shown.stdout)
    assert list(ports) == ["FREEPORT_1", "FREEPORT_2", "FREEPORT_10", "FREEPORT_api"]
    assert shown.stdout == json.dumps(ports) + "\n"
    assert all(type(p) is int and 1 <= p <= 65535 for p in ports.values())
    assert len(set(ports.values())) == 4
    assert out.read_bytes() == expected_text(CLI_TEMPLATE, ports).encode()
    pairs = " ".join(f"{k}={v}" for k, v in ports.items())
    assert result.stderr == f"freeport-compose: project proj: {pairs}\n"
    assert {(lease["port"], lease["owner"], lease["label"]) for lease in _leases_without_stack_check()} == {
        (port, "proj", name) for name, port in ports.items()
    }

    # each port, then the address to reach it on (CLI_TEMPLATE binds none: 127.0.0.1)
    formats = {
        "dotenv": [line for k, v in ports.items() for line in (f"{k}={v}", f"{k}_HOST=127.0.0.1")],
        "env-file": [line for k, v in ports.items() for line in (f"{k}={v}", f"{k}_HOST=127.0.0.1")],
        "make": [line for k, v in ports.items() for line in (f"{k} := {v}", f"{k}_HOST := 127.0.0.1")],
        "shell": [line for k, v in ports.items() for line in (f"export {k}={v}", f"export {k}_HOST=127.0.0.1")],
    }
    for fmt, lines in formats.items():
        shown = cli("ports", "-p", "proj", "--format", fmt)
        assert (shown.returncode, shown.stdout) == (0, "\n".join(lines) + "\n"), fmt
    assert cli("ports", "-p", "proj").stdout == "\n".join(formats["dotenv"]) + "\n"
    for name in ("1", "FREEPORT_1", "api", "FREEPORT_10"):
        one = cli("port", "-p", "proj", name)
        key = name if name.startswith("FREEPORT_") else f"FREEPORT_{name}"
        assert (one.returncode, one.stdout) == (0, f"{ports[key]}\n")
    missing = cli("port", "-p", "proj", "9")
    assert missing.returncode == ExitCode.UNKNOWN_OWNER
    assert missing.stdout == ""

    released = cli("release", "--owner", "proj")
    assert released.returncode == 0, released.stderr
    assert _leases_without_stack_check() == []
    gone = cli("ports", "-p", "proj", "--format", "json")
    assert (gone.returncode, gone.stdout) == (ExitCode.UNKNOWN_OWNER, "")


def _leases_without_stack_check() -> list[dict[str, Any]]:
    """The leases, read from the state dir directly (the stack record would make `ls` ask Docker)."""
    from freeport_compose import store

    lease_store = store()
    return [{"port": r.port, "owner": r.owner, "label": r.label}
            for r in lease_store.records() if lease_store.is_held(r)]


def test_cli_render_with_a_base_file_writes_the_override(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yml", "services:\n  web:\n    image: x\n    ports: ['8080:80', '9090:90']")
    over = write(tmp_path / "over.yml", "services:\n  web:\n    ports: ['127.0.0.1:$<FREEPORT_1>:80']  # x\n")
    out = tmp_path / "out"

    result = cli("render", "--no-check", "-f", base, "-f", over, "-o", str(out), "-p", "proj2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [base, str(out / "2-over.yml"), str(out / "freeport-override.yml")]
    port = json.loads(cli("ports", "-p", "proj2", "--format", "json").stdout)["FREEPORT_1"]
    assert (out / "2-over.yml").read_text() == f"services:\n  web:\n    ports: ['127.0.0.1:{port}:80']  # x\n"
    assert load_override((out / "freeport-override.yml").read_text()) == {
        "services": {"web": {"ports": ["9090:90", f"127.0.0.1:{port}:80"]}}
    }
    assert sorted(os.listdir(out)) == ["2-over.yml", "freeport-override.yml"]
    assert cli("release", "--owner", "proj2").returncode == 0
    assert _leases_without_stack_check() == []


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        ("services:\n  web:\n    ports:\n      - '$<FREEPORT_>:80'\n", 4, 10),
        ("services:\n\tweb: {}\n", 2, 1),
        ("- $<FREEPORT_1>\n", 1, 1),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_cli_render_bad_template(
    tmp_path: Path, content: str, line: int, column: int, existing: bool
) -> None:
    template = write(tmp_path / "bad.yml", content)
    out = tmp_path / "out.yml"
    if existing:
        out.write_bytes(b"old: content\n")
        os.utime(out, (1_000_000_000, 1_000_000_000))

    result = cli("render", "--no-check", "-f", template, "-o", str(out), "-p", "proj")

    assert result.returncode == ExitCode.TEMPLATE
    assert ExitCode.TEMPLATE == 4
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"freeport-compose: {template}:{line}:{column}: ")
    if existing:
        assert out.read_bytes() == b"old: content\n"
        assert out.stat().st_mtime == 1_000_000_000
    else:
        assert not out.exists()
    assert sorted(set(os.listdir(tmp_path)) - {"state"}) == ["bad.yml", *(["out.yml"] if existing else [])]
    assert leases() == []


def test_cli_render_write_failure_leaves_no_lease(tmp_path: Path) -> None:
    template = write(tmp_path / "t.yml", "services:\n  web:\n    ports: ['$<FREEPORT_1>:80']\n")
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "out.yml"
    result = cli("render", "--no-check", "-f", template, "-o", str(out), "-p", "proj")
    assert result.returncode == ExitCode.OUTPUT  # the user's path, not the state dir
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"freeport-compose: cannot write {out}: ")
    assert leases() == []


def test_cli_unknown_project(tmp_path: Path) -> None:
    commands = [
        ("ports", "-p", "nosuch"),
        ("ports", "-p", "nosuch", "--format", "json"),
        ("port", "-p", "nosuch", "1"),
    ]
    for args in commands:
        result = cli(*args)
        assert result.returncode == ExitCode.UNKNOWN_OWNER == 9
        assert result.stdout == ""
        assert result.stderr == (
            "freeport-compose: no stack named 'nosuch' holds ports (see `freeport-compose leases`)\n"
        )
