"""Combining the shards' row streams: one after another, or a k-way merge of sorted streams."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Iterator, Sequence

from .description import Description, node
from .keys import Row, SortKey, sort_key


class Concatenate:
    """Shard after shard, in shard-map order (no order was asked for)."""

    def combine(self, streams: Sequence[Iterator[Row]]) -> Iterator[Row]:
        return itertools.chain.from_iterable(streams)

    def describe(self) -> str:
        return "Concatenate"

    def description(self, children: Sequence[Description] = ()) -> Description:
        return node("Concatenate", children)


@dataclasses.dataclass(frozen=True)
class MergeSort:
    """A streaming k-way merge of streams each already sorted by ``keys``."""

    keys: tuple[SortKey, ...]

    def combine(self, streams: Sequence[Iterator[Row]]) -> Iterator[Row]:
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=sort_key(self.keys))

    def describe(self) -> str:
        return f"MergeSort {', '.join(key.describe() for key in self.keys)}"

    def description(self, children: Sequence[Description] = ()) -> Description:
        return node("MergeSort", children, keys=[key.description() for key in self.keys])


Combiner = Concatenate | MergeSort
