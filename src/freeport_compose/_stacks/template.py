"""One Compose template: a file whose host ports are `$<FREEPORT_name>` placeholders, read and checked.

Guarantees: a template is read once with YAML positions. Placeholders are looked for only inside
YAML scalars (comments are left alone), checked, and replaced in the original text, so everything
else in the file (comments, anchors, quoting, key order, `${VAR}` and `$$`) comes out byte for
byte. Every problem is a TemplateError located as file:line:column.

May touch: reads the one file it is given; writes nothing.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import yaml

from .._error import TemplateError
from .names import PREFIX

try:  # libyaml is 10x faster; positions are in characters either way
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

PLACEHOLDER_RE = re.compile(r"\$<FREEPORT_([A-Za-z0-9_]+)>")
MAX_TEMPLATE_BYTES = 4 << 20  # a Compose file larger than this is not a hand-written template
_OVERRIDE_TAGS = ("!override", "!reset")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BREAK_RE = re.compile(r"[\r\n\x85\u2028\u2029]")  # YAML 1.1 line breaks
_PROPERTIES_RE = re.compile(r"(?:[&!]\S*\s+(?:#.*\s+)*)+")  # `&anchor !tag  # comment` before a scalar


def placeholders(text: str) -> list[str]:
    """The placeholder names in `text`, in order; `$$<...>` (Compose's escaped dollar) is none."""
    return [name for _, _, name, _ in scan(text) if name is not None]


def substitute(text: str, ports: Mapping[str, int]) -> str:
    """`text` with each placeholder replaced by its port, exactly as `Template.render` replaces it
    (`$$<...>` stays literal)."""
    out, last = [], 0
    for start, end, name, _ in scan(text):
        if name is not None:
            out += [text[last:start], str(ports[name])]
            last = end
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True)
class Occurrence:
    """One placeholder in a file: what it names, and where an editor finds it."""

    name: str  # "FREEPORT_1", "FREEPORT_db"
    start: int  # character offsets into the file's text
    end: int
    line: int
    column: int


@dataclass(frozen=True)
class PortEntry:
    """One item of a service's `ports:`, kept so a base binding can be found and replaced."""

    service: str
    target: str  # container port as written ("80", "8000-8001", or an interpolation)
    protocol: str
    host_ip: str | None
    published: str  # host port as written, placeholders included
    value: str  # the whole entry as Compose will read it (short syntax string or JSON of the mapping)
    is_mapping: bool
    names: tuple[str, ...]  # placeholders in the published part
    path: str
    line: int
    column: int
    resets: bool  # this file's `ports:` carries !override/!reset: earlier entries are dropped


@dataclass
class Template:
    """One Compose file of a stack, read and checked, with its placeholders located."""

    path: str
    text: str
    occurrences: list[Occurrence]
    entries: list[PortEntry]
    container_names: list[tuple[str, int, int]]  # (service, line, column) of container_name keys
    fixed_names: list[tuple[str, str, int, int]] = field(default_factory=list)  # (kind, key, line, column)
    resets: list[str] = field(default_factory=list)  # services whose `ports:` are !override/!reset here
    project_name: str | None = None  # the top-level `name:` as written (Compose interpolates it)

    @property
    def names(self) -> set[str]:
        return {o.name for o in self.occurrences}

    def render(self, ports: Mapping[str, int]) -> str:
        """The text with every placeholder replaced by its port, and nothing else changed."""
        out, last = [], 0
        for occ in self.occurrences:
            out.append(self.text[last : occ.start])
            out.append(str(ports[occ.name]))
            last = occ.end
        out.append(self.text[last:])
        return "".join(out)


class _Lines:
    """Offset -> (line, column), both 1-based."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i + 1, offset - self.starts[i] + 1


def _diagnose(raw: str, j: int) -> tuple[int, str]:
    """End offset and explanation of a `$<` at raw[j] that is not a valid placeholder."""
    stop = j + 2
    while stop < len(raw) and raw[stop] != ">" and not raw[stop].isspace() and raw[stop] not in "\"',]}$":
        stop += 1
    if stop >= len(raw) or raw[stop] != ">":
        return stop, f"unclosed placeholder {raw[j:stop]!r}: write $<FREEPORT_name>"
    token, inner = raw[j : stop + 1], raw[j + 2 : stop]
    if inner == PREFIX:
        return stop + 1, f"placeholder {token!r} has no name: write $<FREEPORT_1> or $<FREEPORT_db>"
    if inner.upper().startswith(PREFIX) and not inner.startswith(PREFIX):
        return stop + 1, f"placeholder {token!r} must be upper case: $<{PREFIX}{inner[len(PREFIX) :]}>"
    if inner.startswith(PREFIX):
        return stop + 1, f"placeholder {token!r}: a name holds only letters, digits and '_'"
    return stop + 1, f"{token!r} is not a placeholder: write $<FREEPORT_name>, or $$< for a literal '$<'"


def scan(raw: str) -> Iterator[tuple[int, int, str | None, str]]:
    """(start, end, name, problem) for each `$<` in raw; `$$` escapes are skipped.

    name is "FREEPORT_x" for a valid placeholder (problem empty), else None with the problem.
    """
    i = 0
    while (j := raw.find("$", i)) >= 0:
        nxt = raw[j + 1 : j + 2]
        if nxt == "$":  # Compose's escaped dollar: `$$<FREEPORT_1>` stays literal
            i = j + 2
        elif nxt != "<":
            i = j + 1
        elif m := PLACEHOLDER_RE.match(raw, j):
            yield j, m.end(), PREFIX + m.group(1), ""
            i = m.end()
        else:
            end, problem = _diagnose(raw, j)
            yield j, end, None, problem
            i = end


def _byte_position(data: bytes, pos: int) -> tuple[int, int]:
    """1-based line and column of byte offset pos, in characters like every other position (no BOM)."""
    start = data.rfind(b"\n", 0, pos) + 1
    before = data[start:pos]
    if start == 0 and before.startswith(b"\xef\xbb\xbf"):
        before = before[3:]
    return data.count(b"\n", 0, pos) + 1, len(before.decode("utf-8", "replace")) + 1


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except FileNotFoundError:
        raise TemplateError(path, 1, 1, "no such file") from None
    except IsADirectoryError:
        raise TemplateError(path, 1, 1, "is a directory, not a Compose file") from None
    except OSError as e:
        raise TemplateError(path, 1, 1, f"cannot read: {e.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(path, 1, 1, f"larger than {MAX_TEMPLATE_BYTES >> 20} MiB: not a Compose template")
    nul = data.find(b"\0")
    if nul >= 0:
        raise TemplateError(path, *_byte_position(data, nul), "binary data (a NUL byte), not YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(path, *_byte_position(data, e.start), "not UTF-8 text") from None


def _yaml_error(path: str, e: yaml.YAMLError) -> TemplateError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    what = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
    if mark is None:
        return TemplateError(path, 1, 1, what)
    return TemplateError(path, mark.line + 1, mark.column + 1, what)


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _get(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    """mapping[key], also through `<<` merge keys (own keys first, then merged mappings in order)."""
    todo, seen = [mapping], set()
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        merged: list[yaml.Node] = []
        for k, v in m.value:
            if k.tag == _MERGE_TAG:
                merged += v.value if isinstance(v, yaml.SequenceNode) else [v]
            elif _scalar(k) == key:
                return v  # type: ignore[no-any-return]
        todo += [n for n in reversed(merged) if isinstance(n, yaml.MappingNode)]
    return None


def _rsplit(value: str, sep: str) -> tuple[str, str] | None:
    """value split at its last `sep` outside `${...}` interpolations, or None without one."""
    depth, at, i = 0, -1, 0
    while i < len(value):
        if value.startswith("$$", i) or value.startswith("${", i):
            depth += value[i + 1] == "{"
            i += 2
            continue
        if value[i] == "}" and depth:
            depth -= 1
        elif value[i] == sep and not depth:
            at = i
        i += 1
    return None if at < 0 else (value[:at], value[at + 1 :])


def _parse_short(value: str) -> tuple[str | None, str, str, str] | None:
    """(host_ip, published, target, protocol) of `[IP:]HOST:CONTAINER[/PROTO]`; None without a host port."""
    protocol = "tcp"
    if split := _rsplit(value, "/"):
        value, protocol = split
    if not (split := _rsplit(value, ":")):
        return None  # container port only: Compose picks a random host port
    rest, target = split
    host_ip: str | None = None
    if rest.startswith("["):
        close = rest.find("]")
        host_ip, published = rest[1:close], rest[close + 2 :]
    elif split := _rsplit(rest, ":"):
        host_ip, published = split
    else:
        published = rest
    return host_ip or None, published, target, protocol.lower() or "tcp"


class _Reader:
    """Reads one file: YAML nodes with positions, then placeholders and port entries."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.text = _read_text(path)
        # YAML reads the text without its BOM (libyaml's marks skip it, PyYAML's count it): positions
        # are in self.body, occurrences in self.text, `shift` apart.
        self.shift = 1 if self.text.startswith("\ufeff") else 0
        self.body = self.text[self.shift :]
        self.lines = _Lines(self.body)
        self.occurrences: list[Occurrence] = []
        self.entries: list[PortEntry] = []
        self.container_names: list[tuple[str, int, int]] = []
        self.fixed_names: list[tuple[str, str, int, int]] = []
        self.resets: list[str] = []
        self.project_name: str | None = None

    def error(self, offset: int, problem: str) -> TemplateError:
        line, column = self.lines.at(offset)
        return TemplateError(self.path, line, column, problem)

    def read(self) -> Template:
        if not self.text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in self.text.splitlines()):
            raise TemplateError(self.path, 1, 1, "empty file: a Compose file is a mapping with `services:`")
        try:
            documents = list(yaml.compose_all(self.body, Loader=_Loader))
        except yaml.YAMLError as e:
            error = _yaml_error(self.path, e)
            bad = yaml.reader.Reader.NON_PRINTABLE.search(self.body)
            if isinstance(e, yaml.reader.ReaderError) and bad:  # its position is in bytes with libyaml
                raise self.error(bad.start(), error.problem) from None
            raise error from None
        except RecursionError:  # PyYAML without libyaml recurses once per nesting level
            raise TemplateError(self.path, 1, 1, "not valid YAML: nested too deeply") from None
        seen: set[int] = set()
        if all(_empty_document(d) for d in documents):
            raise TemplateError(self.path, 1, 1, "empty file: a Compose file is a mapping with `services:`")
        for doc in documents:
            if _empty_document(doc):
                continue
            if not isinstance(doc, yaml.MappingNode):
                kind = "a list" if isinstance(doc, yaml.SequenceNode) else "a single value"
                raise self.error(doc.start_mark.index, f"not a Compose file: the top level is {kind}, not a mapping")
            self._walk(doc, seen)
            self._services(doc)
            self._named(doc)
            self.project_name = _scalar(_get(doc, "name")) or self.project_name
        self.occurrences.sort(key=lambda o: o.start)
        return Template(
            self.path,
            self.text,
            self.occurrences,
            self.entries,
            self.container_names,
            fixed_names=self.fixed_names,
            resets=self.resets,
            project_name=self.project_name,
        )

    def _walk(self, root: yaml.Node, seen: set[int]) -> None:
        """Every scalar once, in document order; a loop, not recursion: libyaml nests up to 1000 deep."""
        todo: list[tuple[yaml.Node, bool]] = [(root, False)]
        while todo:
            node, is_key = todo.pop()
            if id(node) in seen:
                continue  # an alias: the anchored node was read already
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                self._scalar(node, is_key)
            elif isinstance(node, yaml.SequenceNode):
                todo += [(item, False) for item in reversed(node.value)]
            elif isinstance(node, yaml.MappingNode):
                for k, v in reversed(node.value):
                    todo += [(v, False), (k, True)]

    def _scalar(self, node: yaml.ScalarNode, is_key: bool) -> None:
        start, end = node.start_mark.index, node.end_mark.index
        # Comments can sit inside a scalar's marks: after its `&anchor !tag`, and after a block
        # scalar's `|` or `>` on its header line. Neither is part of the value.
        if props := _PROPERTIES_RE.match(self.body, start, end):
            start = props.end()
        if node.style in ("|", ">") and (header := _BREAK_RE.search(self.body, start, end)):
            start = header.end()
        raw = self.body[start:end]
        found = 0
        if "$" in raw:
            for s, e, name, problem in scan(raw):
                if name is None:
                    raise self.error(start + s, problem)
                if is_key:
                    raise self.error(start + s, f"placeholder $<{name}> in a mapping key: ports go in values")
                line, column = self.lines.at(start + s)
                at = self.shift + start
                self.occurrences.append(Occurrence(name, at + s, at + e, line, column))
                found += 1
        if "$<" in node.value and sum(1 for _ in scan(node.value)) != found:
            # The value holds a `$<` the source does not show literally (a YAML escape such as "\x24<"):
            # Compose would receive it untouched, so it must be written out plainly.
            raise self.error(start, "a `$<` made with YAML escapes: write placeholders literally")

    def _named(self, doc: yaml.MappingNode) -> None:
        """Networks and volumes given a fixed `name:` and not `external`: every copy of the stack shares them."""
        for kind in ("networks", "volumes"):
            section = _get(doc, kind)
            if not isinstance(section, yaml.MappingNode):
                continue
            for key, spec in section.value:
                if not isinstance(spec, yaml.MappingNode):
                    continue
                name, external = _get(spec, "name"), _get(spec, "external")
                if name is None or _scalar(external) in ("true", "True", "yes"):
                    continue
                line, column = self.lines.at(name.start_mark.index)
                self.fixed_names.append((kind[:-1], _scalar(key) or "?", line, column))

    def _services(self, doc: yaml.MappingNode) -> None:
        services = _get(doc, "services")
        if services is None:
            return
        if not isinstance(services, yaml.MappingNode):
            raise self.error(services.start_mark.index, "`services:` must be a mapping of service names")
        for key, svc in services.value:
            name = _scalar(key) or "?"
            if not isinstance(svc, yaml.MappingNode):
                if isinstance(svc, yaml.ScalarNode) and svc.tag.endswith(":null"):
                    continue
                raise self.error(svc.start_mark.index, f"service {name!r} must be a mapping")
            for k, _ in svc.value:
                if _scalar(k) == "container_name":
                    line, column = self.lines.at(k.start_mark.index)
                    self.container_names.append((name, line, column))
            ports = _get(svc, "ports")
            if ports is not None:
                self._ports(name, ports)

    def _ports(self, service: str, ports: yaml.Node) -> None:
        resets = ports.tag in _OVERRIDE_TAGS
        if resets:
            self.resets.append(service)
        if not isinstance(ports, yaml.SequenceNode):
            if isinstance(ports, yaml.ScalarNode) and (ports.tag in _OVERRIDE_TAGS or ports.tag.endswith(":null")):
                return
            raise self.error(ports.start_mark.index, f"`ports:` of service {service!r} must be a list")
        for item in ports.value:
            line, column = self.lines.at(item.start_mark.index)
            if isinstance(item, yaml.ScalarNode):
                parsed = _parse_short(item.value)
                if parsed is None:
                    continue
                host_ip, published, target, protocol = parsed
                value, is_mapping = item.value, False
            elif isinstance(item, yaml.MappingNode):
                fields = {_scalar(k): _scalar(v) for k, v in item.value}
                published = fields.get("published") or ""
                if not published:
                    continue
                target = fields.get("target") or ""
                protocol = (fields.get("protocol") or "tcp").lower()
                host_ip = fields.get("host_ip") or None
                value, is_mapping = json.dumps({k: v for k, v in fields.items() if k is not None}), True
            else:
                raise self.error(
                    item.start_mark.index, f"a `ports:` item of service {service!r} must be a string or mapping"
                )
            names = tuple(placeholders(published))
            if host_ip is not None and (host_ip.startswith("$") or "${" in host_ip):
                host_ip = None  # set by interpolation: only Compose knows it
            self.entries.append(
                PortEntry(
                    service,
                    target,
                    protocol,
                    host_ip,
                    published,
                    value,
                    is_mapping,
                    names,
                    self.path,
                    line,
                    column,
                    resets,
                )
            )
            resets = False


def _empty_document(doc: yaml.Node | None) -> bool:
    """A document with no content at all (`---` alone), which the YAML parser reads as an empty null."""
    return doc is None or (isinstance(doc, yaml.ScalarNode) and doc.tag.endswith(":null") and doc.value == "")


def load(path: str) -> Template:
    """Read and check one Compose file; TemplateError (file:line:column) on any problem."""
    return _Reader(path).read()
