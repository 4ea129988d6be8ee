"""typing's and dataclasses' run-time pieces that our commands use, without importing either.

`import typing` costs every start ~3 ms (it imports re, enum, contextlib and more), and
`import dataclasses` ~9 ms (it imports inspect, which imports ast, dis, tokenize...), plus ~0.5 ms
for each class it makes (it compiles source for every method). Modules import the real names under
`if TYPE_CHECKING:` and these stand-ins otherwise, so mypy checks the real types and semantics while
the running program builds the same classes: a `NamedTuple` here is, like typing's, a
`collections.namedtuple` class with the body's methods, defaults and docstring; a `dataclass` here
gets the `__init__`, `__repr__`, `__eq__`, `__hash__` (frozen) and frozenness that the real one
would generate, for the subset we use: fields with defaults or `field(default_factory=...)`,
`frozen=True`, `__post_init__`, and one class deriving from another.

Guarantee: a class built here behaves as the same class built with typing.NamedTuple or
dataclasses.dataclass in everything the subset covers (tests/test_units.py compares them); anything
outside the subset is refused with TypeError when the class is made, never silently built otherwise.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
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


class _Field:
    """`field(default_factory=f)`: the one form of dataclasses.field we use."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], object]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], Any]) -> Any:
    return _Field(default_factory)


_MISSING = object()


def dataclass(cls: type | None = None, /, *, frozen: bool = False) -> Any:
    """`@dataclass` and `@dataclass(frozen=True)`, as dataclasses.dataclass builds them."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def _build(cls: type, frozen: bool) -> type:
    fields: dict[str, object] = {}  # name -> default, _Field, or _MISSING; bases first, as dataclasses orders them
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("__record_fields__", {}))
    # The class's own annotations (strings, under `from __future__ import annotations`): its fields.
    own: dict[str, object] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect costs ~4 ms to import)
    for name, annotation in own.items():
        if "ClassVar" in str(annotation) or "InitVar" in str(annotation):
            raise TypeError(f"{cls.__name__}.{name}: ClassVar and InitVar are not in the subset built here")
        default = cls.__dict__.get(name, _MISSING)
        if isinstance(default, _Field):
            delattr(cls, name)  # as dataclasses: a factory's field has no class attribute
        fields[name] = default
    names = tuple(fields)
    seen_default = False
    for name in names:
        if fields[name] is _MISSING and seen_default:
            raise TypeError(f"non-default argument {name!r} follows default argument")
        seen_default = seen_default or fields[name] is not _MISSING
    post_init = getattr(cls, "__post_init__", None)

    def __init__(self: Any, *args: object, **kwargs: object) -> None:
        if len(args) > len(names):
            raise TypeError(f"__init__() takes {len(names) + 1} positional arguments but {len(args) + 1} were given")
        values = dict(zip(names, args, strict=False))  # fewer args than fields: the rest by keyword or default
        for key, value in kwargs.items():
            if key not in fields:
                raise TypeError(f"__init__() got an unexpected keyword argument {key!r}")
            if key in values:
                raise TypeError(f"__init__() got multiple values for argument {key!r}")
            values[key] = value
        for name in names:
            if name not in values:
                default = fields[name]
                if default is _MISSING:
                    raise TypeError(f"__init__() missing 1 required positional argument: {name!r}")
                values[name] = default.factory() if isinstance(default, _Field) else default
            object.__setattr__(self, name, values[name])
        if post_init is not None:
            post_init(self)

    def values_of(self: Any) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in names)

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(values_of(self) == values_of(other))

    methods: dict[str, object] = {
        "__record_fields__": fields,
        "__init__": __init__,
        "__repr__": __repr__,
        "__eq__": __eq__,
        "__hash__": None,  # mutable: unhashable, as dataclasses makes an eq=True class without frozen
    }
    if frozen:

        def __setattr__(self: Any, name: str, value: object) -> None:
            raise AttributeError(f"cannot assign to field {name!r}")  # dataclasses.FrozenInstanceError is one

        def __delattr__(self: Any, name: str) -> None:
            raise AttributeError(f"cannot delete field {name!r}")

        def __hash__(self: Any) -> int:
            return hash(values_of(self))

        methods.update(__setattr__=__setattr__, __delattr__=__delattr__, __hash__=__hash__)
    for name, method in methods.items():
        setattr(cls, name, method)
    return cls
