"""Regroup: the merge re-aggregates the shards' partial groups by the same keys."""

from __future__ import annotations

from ..._sqlalchemy import selects
from ...merge.aggregate import Aggregate
from ..draft import Draft
from ..expressions import short


def regroup(draft: Draft) -> Draft:
    """The shards' partial groups, merged by group key, their partial aggregates combined.

    A group's ``count`` is the sum of the shards' counts, its ``sum`` their
    sum, its ``min``/``max`` theirs, its AVG the sum of the sums over the sum
    of the counts.  Group keys compare as the database compares them (text
    under a case-insensitive collation groups as the database groups it).
    Without GROUP BY there is one row, even when no shard has a row.  The
    aggregates are all those the rewrites before it met: the select list's,
    and those of expressions, HAVING and ORDER BY.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> from shardalchemy.planning.rewrites.partial_aggregates import partial_aggregates
    >>> statement = select(City.continent, func.count()).group_by(City.continent)
    >>> draft = partial_aggregates(Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False)))
    >>> print(regroup(draft).finish())
    Aggregate count(*) GROUP BY cities.continent
    └── Concatenate
        └── each shard: SELECT cities.continent, count(*) AS count_1 FROM cities
            GROUP BY cities.continent
    """
    if draft.shape != "grouped":
        return draft
    assert draft.aggregates is not None, "partial_aggregates runs first"
    columns = draft.columns
    group_by = selects.group_by(draft.statement)
    comparisons = [columns.comparison(index, "GROUP BY") for index in draft.group_columns]
    draft.aggregate = Aggregate(
        tuple(index for index, _ in comparisons),
        tuple(draft.aggregates.slots),
        scalar=not group_by,
        group_transforms=tuple(transform for _, transform in comparisons),
        group_labels=tuple(short(expression) for expression in group_by),
        width=columns.width(),
    )
    return draft
