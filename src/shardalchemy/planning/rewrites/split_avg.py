"""AVG split: each shard sends SUM and COUNT, the merge divides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._sqlalchemy import elements
from ...merge.aggregate import AggregateSlot
from ..expressions import arguments_of, function_name, short

if TYPE_CHECKING:
    from ..aggregates import Aggregates


def split_avg(aggregates: Aggregates, function: Any, index: int) -> AggregateSlot | None:
    """``avg(x)`` becomes ``sum(x)`` and ``count(x)`` on each shard; the merge divides.

    An average of the shards' averages would weigh a shard of two rows like
    one of two million.  Each shard still sends its own ``avg(x)`` (at
    ``index``): the merged average takes its type (and, outside PostgreSQL,
    its scale).  The user's own ``sum(x)`` / ``count(x)`` serve as the
    partials when selected; others travel as hidden columns.

    >>> from shardalchemy.planning import DatabaseFacts, Draft, rewrite
    >>> statement = select(City.continent, func.avg(City.population)).group_by(City.continent)
    >>> print(rewrite(Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))))
    Aggregate avg(cities.population) GROUP BY cities.continent
    └── Concatenate
        └── each shard: SELECT cities.continent, avg(cities.population) AS avg_1,
            sum(cities.population) AS _shardalchemy_sum_0, count(cities.population) AS
            _shardalchemy_count_1 FROM cities GROUP BY cities.continent
    """
    if function_name(function) != "avg":
        return None
    (argument,) = arguments_of(function)
    columns = aggregates.columns
    total = columns.index_of(elements.function("sum", argument), "sum")
    count = columns.index_of(elements.function("count", argument), "count")
    return AggregateSlot(
        "avg",
        index,
        (total, count, index),
        label=short(function),
        division=aggregates.division(),
    )
