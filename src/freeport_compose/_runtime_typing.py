"""typing's run-time pieces that the hot paths use, without importing typing.

`import typing` costs every start ~3 ms (it imports re, enum, contextlib and more), and `get`,
`release`, `port` and `ports` would pay it only for `NamedTuple` and `Generic`. Modules import
typing's own names under `if TYPE_CHECKING:` and these stand-ins otherwise, so mypy checks the real
types while the running program builds the same classes: a `NamedTuple` here is, like typing's, a
`collections.namedtuple` class with the body's methods, defaults and docstring.

Guarantee: a class built with `NamedTuple` here has the fields, defaults, methods, `_replace`,
`_asdict`, repr, equality and pickling of the same class built with typing.NamedTuple
(tests/test_units.py compares the two).
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What namedtuple makes itself, or what its class must not have replaced (typing refuses the same).
_PROHIBITED = frozenset(
    ("__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make", "_replace", "_asdict")
)
_SPECIAL = frozenset(("__module__", "__qualname__", "__annotations__"))


class _NamedTupleMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if not bases:  # NamedTuple itself
            return super().__new__(mcs, name, bases, namespace)
        annotations = namespace.get("__annotations__", {})
        fields = tuple(annotations)
        defaults = [namespace[f] for f in fields if f in namespace]
        for f in fields[len(fields) - len(defaults) :]:
            if f not in namespace:
                raise TypeError(f"Non-default namedtuple field {f} cannot follow default field(s)")
        cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])  # type: ignore[misc]
        cls.__qualname__ = namespace.get("__qualname__", name)
        cls.__annotations__ = dict(annotations)
        for key, value in namespace.items():
            if key in _PROHIBITED:
                raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
            if key not in _SPECIAL and key not in fields:
                setattr(cls, key, value)
        return cls


class NamedTuple(metaclass=_NamedTupleMeta):
    """`class Record(NamedTuple): field: type = default`, as with typing.NamedTuple."""


class Generic:
    """`class Box(Generic[T])` at run time: the parameters only matter to the type checker."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> type[Generic]:
        return cls


def TypeVar(name: str, *constraints: object, **options: object) -> str:
    """A type variable's name: at run time nothing reads it."""
    return name
