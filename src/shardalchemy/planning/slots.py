"""The aggregate slots of a grouped statement, and the partial columns each needs.

Where each aggregate's merged value goes in the merged row, and what the
shards must send for it: an AVG as SUM and COUNT, a ``count(DISTINCT x)`` as
``x`` pushed down into the GROUP BY, MIN/MAX with their comparison form.
"""

from __future__ import annotations

from typing import Any

from .._sqlalchemy import elements
from ..merge.aggregate import AggregateSlot
from .builder import Builder
from .expressions import arguments_of, function_name, same_expression, short, strip


class Aggregates:
    """The aggregate slots of a grouped statement, and the partial columns they need."""

    def __init__(self, builder: Builder) -> None:
        self.builder = builder
        self.slots: list[AggregateSlot] = []
        self.expressions: list[Any] = []
        self.extra_group_by: list[Any] = []

    def slot_index(self, aggregate: Any, index: int | None = None) -> int:
        """The row position of ``aggregate``'s final value (``index``: where it is visible).

        A visible aggregate gets a slot of its own at its position even when
        the same aggregate is also elsewhere (selected twice, or hidden for an
        expression): each position must receive the merged value.
        """
        for expression, slot in zip(self.expressions, self.slots, strict=True):
            if same_expression(expression, aggregate) and index in (None, slot.index):
                return slot.index
        builder = self.builder
        function = strip(aggregate)
        name = function_name(function)
        assert name is not None
        arguments = arguments_of(function)
        distinct_value = None
        if len(arguments) == 1 and elements.is_distinct(arguments[0]):
            distinct_value = arguments[0].element
        if index is None:
            index = builder.hidden_index(function, "aggregate")
        label = short(function)
        division = "postgresql" if builder.facts.dialect == "postgresql" else "like"
        if distinct_value is not None and name in ("count", "sum", "avg"):
            value_index = builder.hidden_index(distinct_value, "distinct")
            self.extra_group_by.append(distinct_value)
            value_index, transform = builder.comparison(value_index, f"{name}(DISTINCT)")
            slot = AggregateSlot(
                f"{name}_distinct", index, (value_index, index), transform, label, division
            )
        elif name == "avg":
            (argument,) = arguments
            # the user's own SUM(x) / COUNT(x) serve as the partials when selected
            total = builder.index_of(elements.function("sum", argument), "sum")
            count = builder.index_of(elements.function("count", argument), "count")
            slot = AggregateSlot(
                "avg", index, (total, count, index), label=label, division=division
            )
        elif name in ("min", "max"):
            compared, transform = builder.comparison(index, f"{name}()")
            sources = (index,) if compared == index else (index, compared)
            slot = AggregateSlot(name, index, sources, transform, label)
        else:
            slot = AggregateSlot(name, index, (index,), label=label)
        self.expressions.append(function)
        self.slots.append(slot)
        return index
