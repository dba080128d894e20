"""Operators over the combined rows: compute, filter, sort, distinct, limit; and running a plan."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .aggregate import Aggregate
from .combine import Combiner
from .description import Description, node
from .keys import Row, SortKey, Transform, sort_key, transform_name


@dataclasses.dataclass(frozen=True)
class Compute:
    """Expressions over merged aggregates (``sum(x) + count(*)``), computed per merged row.

    ``labels`` name the expressions (for the plan as data), one per column.
    """

    columns: tuple[tuple[int, Callable[[Row], Any]], ...]
    labels: tuple[str, ...] = ()

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        columns = self.columns
        for row in rows:
            out = list(row)
            for index, compute in columns:
                out[index] = compute(row)
            yield tuple(out)

    def describe(self) -> str:
        return f"Compute {len(self.columns)} expression(s) over the merged aggregates"

    def description(self, children: Sequence[Description] = ()) -> Description:
        labels = self.labels or tuple("" for _ in self.columns)
        computed = [
            {"column": index, "label": label}
            for (index, _), label in zip(self.columns, labels, strict=True)
        ]
        return node("Compute", children, columns=computed)


@dataclasses.dataclass(frozen=True)
class Filter:
    """HAVING, evaluated on merged groups: keeps rows whose predicate is TRUE."""

    predicate: Callable[[Row], Any]
    label: str

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        predicate = self.predicate
        return (row for row in rows if predicate(row) is True)

    def describe(self) -> str:
        return f"Filter {self.label}"

    def description(self, children: Sequence[Description] = ()) -> Description:
        return node("Filter", children, predicate=self.label)


@dataclasses.dataclass(frozen=True)
class Sort:
    """ORDER BY over rows made after the shards (merged groups); top-k with a limit."""

    keys: tuple[SortKey, ...]
    top: int | None = None

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        key = sort_key(self.keys)
        if self.top is not None:
            return iter(heapq.nsmallest(self.top, rows, key=key))
        return iter(sorted(rows, key=key))

    def describe(self) -> str:
        top = f" (top {self.top})" if self.top is not None else ""
        return f"Sort {', '.join(key.describe() for key in self.keys)}{top}"

    def description(self, children: Sequence[Description] = ()) -> Description:
        return node("Sort", children, keys=[key.description() for key in self.keys], top=self.top)


@dataclasses.dataclass(frozen=True)
class Distinct:
    """DISTINCT over the user's columns, as the database compares them."""

    indices: tuple[int, ...]
    transforms: tuple[Transform, ...]

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        seen: set[Any] = set()
        pairs = list(zip(self.indices, self.transforms, strict=True))
        for row in rows:
            key = tuple([transform(row[i]) for i, transform in pairs])
            if key not in seen:
                seen.add(key)
                yield row

    def describe(self) -> str:
        return f"Distinct over {len(self.indices)} column(s)"

    def description(self, children: Sequence[Description] = ()) -> Description:
        columns = [
            {"column": index, "compare": transform_name(transform)}
            for index, transform in zip(self.indices, self.transforms, strict=True)
        ]
        return node("Distinct", children, columns=columns)


@dataclasses.dataclass(frozen=True)
class Limit:
    """LIMIT/OFFSET after the merge (each shard was asked for ``limit + offset`` rows)."""

    limit: int | None
    offset: int

    def apply(self, rows: Iterable[Row]) -> Iterator[Row]:
        stop = None if self.limit is None else self.offset + self.limit
        return itertools.islice(rows, self.offset, stop)

    def describe(self) -> str:
        limit = "ALL" if self.limit is None else str(self.limit)
        return f"Limit {limit} offset {self.offset}"

    def description(self, children: Sequence[Description] = ()) -> Description:
        return node("Limit", children, limit=self.limit, offset=self.offset)


Step = Aggregate | Compute | Filter | Sort | Distinct | Limit


def run(
    combiner: Combiner, steps: Sequence[Step], streams: Sequence[Iterator[Row]]
) -> Iterator[Row]:
    """Feed the shards' streams through ``combiner`` and then each step in turn."""
    rows: Iterator[Row] = combiner.combine(streams)
    for step in steps:
        rows = iter(step.apply(rows))
    return rows
