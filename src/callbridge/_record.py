"""A base for the core's small internal records.

attrs builds each class at import by generating and compiling code (about 2 ms a
class here); the core's public data model stays attrs, but its internal records are
plain slotted classes with a typed ``__init__`` each, so that ``import callbridge``
stays cheap (benchmarks/startup.py).
"""

from typing import Any


class Record:
    """Equality, hashing and a repr from ``__slots__``."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
