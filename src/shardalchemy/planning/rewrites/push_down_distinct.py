"""DISTINCT push-down: ``count/sum/avg(DISTINCT x)`` sends ``x`` as a group key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._sqlalchemy import elements
from ...merge.aggregate import AggregateSlot
from ..expressions import arguments_of, function_name, short

if TYPE_CHECKING:
    from ..aggregates import Aggregates

# min/max of DISTINCT values are min/max: re-aggregated as they are
_PUSHED_DOWN = frozenset({"count", "sum", "avg"})


def push_down_distinct(aggregates: Aggregates, function: Any, index: int) -> AggregateSlot | None:
    """``count(DISTINCT x)``: each shard groups by ``x`` too; the merge counts the distinct ``x``.

    The shards' own distinct counts cannot be added (a value may be on
    several shards), so ``x`` is pushed down into each shard's GROUP BY and
    sent as a hidden column; the merge collects each group's distinct values
    (compared as the database compares them) and counts, sums or averages
    them.  Each shard still sends its own result (at ``index``): an average
    takes its type.

    >>> from shardalchemy.planning import DatabaseFacts, Draft, rewrite
    >>> statement = select(func.count(City.continent.distinct()))
    >>> print(rewrite(Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))))
    Aggregate count(DISTINCT cities.continent) (no GROUP BY: one row)
    └── Concatenate
        └── each shard: SELECT count(DISTINCT cities.continent) AS count_1, cities.continent
            AS _shardalchemy_distinct_0 FROM cities GROUP BY cities.continent
    """
    name = function_name(function)
    arguments = arguments_of(function)
    if name not in _PUSHED_DOWN or len(arguments) != 1 or not elements.is_distinct(arguments[0]):
        return None
    value = arguments[0].element  # x of DISTINCT x
    columns = aggregates.columns
    value_index = columns.hidden_index(value, "distinct")
    aggregates.extra_group_by.append(value)
    value_index, transform = columns.comparison(value_index, f"{name}(DISTINCT)")
    return AggregateSlot(
        f"{name}_distinct",
        index,
        (value_index, index),
        transform,
        short(function),
        aggregates.division(),
    )
