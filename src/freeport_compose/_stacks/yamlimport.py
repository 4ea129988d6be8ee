"""PyYAML, imported without the one pattern its pure-Python reader compiles at import.

`yaml/reader.py` compiles `Reader.NON_PRINTABLE` (every printable range of Unicode, one character
class) when it is imported: ~12 ms of regex compiling, more than the rest of PyYAML's import, paid
by every `up`, `render`, `run` and `deploy`. That pattern belongs to PyYAML's pure-Python reader,
which our loader (libyaml's CSafeLoader) never runs. `import_yaml()` imports PyYAML with that one compile
deferred to the pattern's first use: a pure-Python loader (PyYAML without libyaml) compiles it when
it first reads, and gets the same pattern.

Guarantees: the modules are PyYAML's own; `re.compile` is PyYAML's to call only while PyYAML is
imported, and is restored even if the import fails; only the exact pattern below is deferred (a
PyYAML that compiles another one compiles it as usual); the deferred pattern answers every method
of the compiled one. While PyYAML is imported, another thread that compiles this same pattern gets
the deferred one too, which behaves alike.
"""

from __future__ import annotations

import re
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: see _runtime_typing.py
if TYPE_CHECKING:
    from types import ModuleType

# PyYAML 5 and 6's yaml/reader.py, verbatim.
NON_PRINTABLE = "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


class _Deferred:
    """A pattern compiled on first use: every attribute is the compiled pattern's."""

    def __init__(self, pattern: str, flags: int) -> None:
        self._args = (pattern, flags)
        self._compiled: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> object:
        if self._compiled is None:
            self._compiled = re.compile(*self._args)
        return getattr(self._compiled, name)


def import_yaml() -> ModuleType:
    """The `yaml` module, imported once with NON_PRINTABLE's compile deferred."""
    if "yaml" in sys.modules:
        return sys.modules["yaml"]
    compile_ = re.compile

    def deferring(pattern: object, flags: int = 0) -> object:
        if pattern == NON_PRINTABLE:
            return _Deferred(NON_PRINTABLE, flags)
        return compile_(pattern, flags)  # type: ignore[call-overload]

    re.compile = deferring  # type: ignore[assignment]
    try:
        import yaml
    finally:
        re.compile = compile_
    return yaml
