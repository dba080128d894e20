"""Expressions over aggregates in the select list, computed over the merged groups."""

from __future__ import annotations

from ..._sqlalchemy import selects
from ..draft import Draft
from ..expressions import contains_aggregate, is_aggregate, reads_columns, short, strip
from ..merged_expressions import Expressions
from ..refusals import refuse


def compute_over_aggregates(draft: Draft) -> Draft:
    """``max(x) - min(x)``, ``coalesce(sum(x), 0)``: computed after the merge, from merged values.

    The shards send the aggregates (hidden where not selected); the
    expression is computed in Python over the merged ones (``+``, ``-``,
    ``*``, ``coalesce()``; others are refused, see
    :class:`~..merged_expressions.Expressions`).  A column outside any
    aggregate without GROUP BY is refused: its value would come from an
    arbitrary shard's row.

    >>> from shardalchemy.planning import DatabaseFacts, Draft, rewrite
    >>> from shardalchemy.planning.rewrites.partial_aggregates import partial_aggregates
    >>> from shardalchemy.planning.rewrites.regroup import regroup
    >>> statement = select(func.max(City.population) - func.min(City.population))
    >>> draft = Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))
    >>> print(rewrite(draft, [partial_aggregates, compute_over_aggregates, regroup]))
    Compute 1 expression(s) over the merged aggregates
    └── Aggregate max(cities.population), min(cities.population) (no GROUP BY: one row)
        └── Concatenate
            └── each shard: SELECT max(cities.population) - min(cities.population) AS anon_1,
                max(cities.population) AS _shardalchemy_aggregate_0, min(cities.population)
                AS _shardalchemy_aggregate_1 FROM cities
    """
    if draft.shape != "grouped":
        return draft
    assert draft.aggregates is not None, "partial_aggregates runs first"
    expressions = Expressions(draft.columns, draft.aggregates, draft.parameters)
    grouped = bool(selects.group_by(draft.statement))
    for index, column in enumerate(draft.columns.visible):
        inner = strip(column)
        if is_aggregate(inner):
            continue
        if contains_aggregate(inner):
            compute = expressions.compile(inner, "the expression")
            draft.computed.append((index, compute, short(inner)))
        elif not grouped and reads_columns(inner):
            raise refuse(
                f"the column {short(column)} outside an aggregate without GROUP BY",
                "its value would come from an arbitrary shard's row",
            )
    return draft
