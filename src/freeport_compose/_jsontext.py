"""JSON text without importing the json package: the records every command reads and writes are JSON.

`import json` costs a start ~3 ms, most of it the `re` that json.decoder compiles its patterns with;
`get`, `ports`, `port` and a reclaim read or write one small record and would pay it for that.
`loads` drives the C scanner json.loads itself uses (`_json.make_scanner`, with json's own defaults),
so what it accepts and what it returns are json.loads's; where the C scanner is missing (not
CPython), it is json.loads. `string` writes one string as json.dumps does.

Guarantees: `loads(data)` returns what `json.loads(data)` returns for UTF-8 data, and raises
ValueError (or RecursionError, as json.loads) where json.loads raises; data in another encoding is
refused (ValueError), never misread. `string(text)` is `json.dumps(text)`, byte for byte
(tests/test_units.py compares both).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: see _runtime_typing.py
if TYPE_CHECKING:
    from collections.abc import Callable

_WHITESPACE = " \t\n\r"  # JSON's own (json.decoder's WHITESPACE)


class _Defaults:
    """What json.JSONDecoder() hands the C scanner: the attributes it reads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _c_loads() -> Callable[[bytes | str], object] | None:
    try:
        from _json import make_scanner
    except ImportError:  # pragma: no cover (PyPy): json.loads it is
        return None
    scan = make_scanner(_Defaults())  # type: ignore[arg-type]  # it reads only these attributes

    def loads(data: bytes | str) -> object:
        if isinstance(data, bytes):
            text = data.decode("utf-8-sig")  # a BOM dropped, as json.loads does; UnicodeDecodeError is a ValueError
        elif data.startswith("\ufeff"):
            raise ValueError("Unexpected UTF-8 BOM")  # as json.loads refuses it in a str
        else:
            text = data
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = scan(text, start)
        except StopIteration as e:
            raise ValueError(f"Expecting value: char {e.value}") from None
        if text[end:].strip(_WHITESPACE):
            raise ValueError(f"Extra data: char {end}")
        return value

    return loads


def _json_loads(data: bytes | str) -> object:
    import json

    return json.loads(data)


loads: Callable[[bytes | str], object] = _c_loads() or _json_loads


def string(text: str) -> str:
    """`json.dumps(text)`: as it is where nothing needs escaping (owner names, host names, most
    labels), through json otherwise."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    import json

    return json.dumps(text)
