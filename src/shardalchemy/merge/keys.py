"""Sort keys and comparison forms: how merged rows compare as the database compares them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

Row = tuple[Any, ...]


Transform = Callable[[Any], Any]


def as_is(value: Any) -> Any:
    """The comparison form of values that compare in Python as in the database: themselves."""
    return value


class _Reversed:
    """Orders its value backwards: the DESC half of a sort key."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


class PadSpaceText:
    """A string ordered as a PAD SPACE collation orders it (MariaDB's ``*_bin``).

    Such a collation compares two strings as if the shorter one were padded
    with spaces: ``'a'`` equals ``'a '`` and sorts after ``'a\\t'``.
    """

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def _padded(self, other: PadSpaceText) -> tuple[str, str]:
        width = max(len(self.value), len(other.value))
        return self.value.ljust(width), other.value.ljust(width)

    def __lt__(self, other: PadSpaceText) -> bool:
        mine, theirs = self._padded(other)
        return mine < theirs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PadSpaceText) and self.value.rstrip(" ") == other.value.rstrip(" ")

    def __hash__(self) -> int:
        return hash(self.value.rstrip(" "))


def transform_name(transform: Transform) -> str:
    """A comparison form by name, for plans as data: ``as_is``, ``pad_space``."""
    return str(getattr(transform, "__name__", type(transform).__name__))


def pad_space(value: Any) -> Any:
    """The comparison form of a value under a PAD SPACE binary collation."""
    return PadSpaceText(value) if isinstance(value, str) else value


@dataclasses.dataclass(frozen=True)
class SortKey:
    """One ORDER BY key: a column position, its direction and where NULLs go.

    ``nulls_first`` is already resolved (explicit ``NULLS FIRST/LAST``, or the
    dialect's default for the direction); ``transform`` maps a value to the
    form that compares as the database compares it (identity for numbers and
    binary-collated text).
    """

    index: int
    descending: bool = False
    nulls_first: bool = False
    transform: Transform = as_is
    label: str = ""

    def describe(self) -> str:
        direction = "DESC" if self.descending else "ASC"
        nulls = "NULLS FIRST" if self.nulls_first else "NULLS LAST"
        return f"{self.label or f'#{self.index}'} {direction} {nulls}"

    def description(self) -> dict[str, Any]:
        """The key as plain data: its column's position and label, direction, NULLs, comparison."""
        return {
            "column": self.index,
            "label": self.label,
            "descending": self.descending,
            "nulls_first": self.nulls_first,
            "compare": transform_name(self.transform),
        }

    def part(self) -> Callable[[Any], Any]:
        null_key = (0,) if self.nulls_first else (2,)
        transform = self.transform
        if self.descending:
            return lambda value: null_key if value is None else (1, _Reversed(transform(value)))
        if transform is as_is:
            return lambda value: null_key if value is None else (1, value)
        return lambda value: null_key if value is None else (1, transform(value))


def sort_key(keys: Sequence[SortKey]) -> Callable[[Row], Any]:
    """A key function for ``sorted``/``heapq`` that orders rows by ``keys``."""
    parts = [(key.index, key.part()) for key in keys]
    if len(parts) == 1:
        ((index, part),) = parts
        return lambda row: part(row[index])
    return lambda row: tuple([part(row[index]) for index, part in parts])
