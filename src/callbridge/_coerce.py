"""Coercion of configuration values (strings from YAML or the environment) to annotated types."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal, Union

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null", "~"})


class CoercionError(Exception):
    """A value that does not fit its type; ``expected`` names the type for a message."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def to_bool(value: Any) -> bool:
    """``true/false/1/0/yes/no/on/off`` in any case, real booleans, and the ints 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise CoercionError("bool (true/false, yes/no, on/off, 1/0)")


def type_name(tp: Any) -> str:
    """A reader's name for a type: ``int``, ``int or None``, ``one of 'min', 'max'``."""
    if tp is Any:  # a class from 3.11 on, not on 3.10
        return "Any"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        inner = ", ".join(type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{inner}]" if inner else base
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.name) for m in tp)
        return tp.__name__
    return str(tp)


class _Empty:
    """No annotation, or no default (``inspect.Parameter.empty``, without importing inspect)."""

    def __repr__(self) -> str:
        return "<empty>"


#: Marks a parameter without annotation or default.
EMPTY: Any = _Empty()


def is_untyped(tp: Any) -> bool:
    """No annotation we can check: missing, ``Any``, or an unresolved string."""
    return tp is EMPTY or tp is Any or tp is None or isinstance(tp, str)


def effective_type(annotation: Any, default: Any) -> Any:
    """The type a value is coerced to: the annotation, else the type of a plain default.

    A parameter without a usable annotation (none, ``Any``, or a name that cannot be
    resolved) but with a ``bool``, ``int`` or ``float`` default takes that type, so
    that ``"${DEBUG_MODE:-false}"`` reaches ``debug=False`` as ``False``, not as the
    truthy string ``'false'``. An ``int`` default also takes a float (``threshold=1``
    given ``0.5``). Other defaults (``None``, strings, containers) leave it untyped.
    """
    if not is_untyped(annotation):
        return annotation
    kind = type(default)
    if kind is bool or kind is float:
        return kind
    if kind is int:
        return int | float
    return annotation


def coerce_untyped(value: Any, annotation: Any, default: Any) -> Any:
    """:func:`coerce` to :func:`effective_type`, where only strings are converted by a default.

    A typed value from YAML (``0.5``, ``true``) is the user's own choice and stays as
    it is; a string (from the environment or quoted YAML) is read as the default's type.

    Raises:
        CoercionError: a string the default's type cannot read.
    """
    if not is_untyped(annotation):
        return coerce(value, annotation)
    tp = effective_type(annotation, default)
    if tp is annotation or not isinstance(value, str):
        return value
    return coerce(value, tp)


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as ``tp``, converting strings where the type asks for it.

    Raises:
        CoercionError: the value cannot be read as ``tp``.
    """
    if is_untyped(tp):
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return coerce(value, typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp)
    if origin is Literal:
        return _coerce_literal(value, tp)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise CoercionError("None")
    if tp is bool:
        return to_bool(value)
    if tp is int:
        return _coerce_int(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                raise CoercionError("float") from None
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise CoercionError("float")
    if tp is str:
        if isinstance(value, str):
            return value
        raise CoercionError("str")
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise CoercionError("path (a string)")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(value, tp)
    container = origin if origin is not None else tp
    if container in (list, tuple, set, frozenset) or container in _ABSTRACT_SEQUENCES:
        return _coerce_sequence(value, tp, container)
    if container is dict or container in _ABSTRACT_MAPPINGS:
        return _coerce_mapping(value, tp)
    if isinstance(tp, type):
        try:
            if isinstance(value, tp):
                return value
        except TypeError:  # protocols and other types that refuse isinstance
            return value
        raise CoercionError(type_name(tp))
    return value  # TypeVar, Callable and the like: nothing we can check


def _coerce_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CoercionError("int")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise CoercionError("int")


def _coerce_union(value: Any, tp: Any) -> Any:
    members = typing.get_args(tp)
    # An instance of a member is taken as is (no str -> int surprises in ``int | str``).
    for member in members:
        # get_origin: on 3.10 a parametrised generic (list[str]) passes isinstance(..., type).
        if (
            isinstance(member, type)
            and typing.get_origin(member) is None
            and not isinstance(value, bool)
            and isinstance(value, member)
        ):
            return value
    for member in members:
        if member is type(None):
            continue
        try:
            return coerce(value, member)
        except CoercionError:
            continue
    if type(None) in members and (
        value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
    ):
        return None
    raise CoercionError(type_name(tp))


def _coerce_literal(value: Any, tp: Any) -> Any:
    choices = typing.get_args(tp)
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    if isinstance(value, str):
        for choice in choices:
            if isinstance(choice, bool):
                try:
                    if to_bool(value) is choice:
                        return choice
                except CoercionError:
                    continue
            elif str(choice) == value.strip():
                return choice
    raise CoercionError(type_name(tp))


def _coerce_enum(value: Any, tp: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, tp):
        return value
    if isinstance(value, str):
        wanted = value.strip()
        for member in tp:
            if member.name.lower() == wanted.lower():
                return member
    for member in tp:
        if member.value == value or (isinstance(value, str) and str(member.value) == value.strip()):
            return member
    raise CoercionError(type_name(tp))


def _coerce_sequence(value: Any, tp: Any, container: Any) -> Any:
    if isinstance(value, str):
        # From the environment: "a, b, c"; an empty string is an empty list.
        value = [part.strip() for part in value.split(",")] if value.strip() else []
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise CoercionError(type_name(tp))
    args = typing.get_args(tp)
    items = list(value)
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(items):
            raise CoercionError(type_name(tp))
        return tuple(coerce(item, arg) for item, arg in zip(items, args, strict=True))
    item_tp = args[0] if args else Any
    coerced = [coerce(item, item_tp) for item in items]
    if container in (tuple, set, frozenset):
        return container(coerced)
    return coerced


def _coerce_mapping(value: Any, tp: Any) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise CoercionError(type_name(tp))
    args = typing.get_args(tp)
    key_tp, value_tp = args if len(args) == 2 else (Any, Any)
    return {coerce(k, key_tp): coerce(v, value_tp) for k, v in value.items()}


def _abstract(*names: str) -> tuple[Any, ...]:
    import collections.abc as abc

    return tuple(getattr(abc, name) for name in names)


_ABSTRACT_SEQUENCES = _abstract("Sequence", "MutableSequence", "Iterable", "Collection", "Set")
_ABSTRACT_MAPPINGS = _abstract("Mapping", "MutableMapping")


def is_mapping_type(tp: Any) -> bool:
    """Whether an annotation asks for a mapping (so a ``{name: ...}`` value is data, not a spec)."""
    if is_untyped(tp):
        return False
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(is_mapping_type(arg) for arg in typing.get_args(tp))
    container = origin if origin is not None else tp
    return container is dict or container in _ABSTRACT_MAPPINGS
