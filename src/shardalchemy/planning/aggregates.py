"""The aggregate slots of a grouped statement: where each merged aggregate goes.

A slot is made where an aggregate is first met (the select list, an
expression, HAVING, ORDER BY), and what the shards must send for it is
decided then, so the per-shard columns come in the order the statement
names them: by the first of :data:`AGGREGATE_REWRITES` that applies (an AVG
as SUM and COUNT, a ``count(DISTINCT x)`` as ``x`` pushed down into the
GROUP BY), else as the aggregate itself (``count``, ``sum``; ``min``/``max``
with their comparison form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..merge.aggregate import AggregateSlot
from .columns import Columns
from .expressions import function_name, same_expression, short, strip
from .facts import DatabaseFacts
from .rewrites.push_down_distinct import push_down_distinct
from .rewrites.split_avg import split_avg

AggregateRewrite = Callable[["Aggregates", Any, int], AggregateSlot | None]
"""(the slots so far, an aggregate call, the position of its value) -> its slot, or ``None``
when the rewrite does not apply to that aggregate."""

AGGREGATE_REWRITES: tuple[AggregateRewrite, ...] = (
    push_down_distinct,  # count/sum/avg(DISTINCT x): x pushed down as a group key
    split_avg,  # AVG(x): SUM(x) and COUNT(x) from each shard
)
"""How the shards' partials of one aggregate are made, tried in order where it is met."""


class Aggregates:
    """The aggregate slots of a grouped statement, and the extra group keys they need.

    >>> from shardalchemy.planning import DatabaseFacts
    >>> statement = select(func.count(), func.avg(City.population))
    >>> columns = Columns(list(statement.selected_columns), DatabaseFacts("sqlite", False))
    >>> aggregates = Aggregates(columns)
    >>> [aggregates.slot_index(column, index) for index, column in enumerate(columns.visible)]
    [0, 1]
    >>> [(slot.kind, slot.sources) for slot in aggregates.slots]  # AVG from SUM, COUNT and AVG
    [('count', (0,)), ('avg', (2, 3, 1))]
    """

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self.facts: DatabaseFacts = columns.facts
        self.slots: list[AggregateSlot] = []
        self.functions: list[Any] = []  # the aggregate call of each slot
        self.extra_group_by: list[Any] = []  # values pushed down as group keys

    def slot_index(self, aggregate: Any, index: int | None = None) -> int:
        """The row position of ``aggregate``'s final value (``index``: where it is visible).

        A visible aggregate gets a slot of its own at its position even when
        the same aggregate is also elsewhere (selected twice, or hidden for an
        expression): each position must receive the merged value.
        """
        for function, slot in zip(self.functions, self.slots, strict=True):
            if same_expression(function, aggregate) and index in (None, slot.index):
                return slot.index
        columns = self.columns
        function = strip(aggregate)
        name = function_name(function)
        assert name is not None
        if index is None:
            index = columns.hidden_index(function, "aggregate")
        for rewrite in AGGREGATE_REWRITES:
            found = rewrite(self, function, index)
            if found is not None:
                slot = found
                break
        else:
            label = short(function)
            if name in ("min", "max"):
                compared, transform = columns.comparison(index, f"{name}()")
                sources = (index,) if compared == index else (index, compared)
                slot = AggregateSlot(name, index, sources, transform, label)
            else:
                slot = AggregateSlot(name, index, (index,), label=label)
        self.add(function, slot)
        return index

    def add(self, function: Any, slot: AggregateSlot) -> None:
        """Record ``slot`` as the slot of the aggregate call ``function``."""
        self.functions.append(function)
        self.slots.append(slot)

    def division(self) -> str:
        """How a decimal AVG is rounded on these shards (see :class:`~.merge.AggregateSlot`)."""
        return "postgresql" if self.facts.dialect == "postgresql" else "like"
