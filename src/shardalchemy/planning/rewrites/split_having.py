"""HAVING split: the shards group without it, the merged groups are filtered by it."""

from __future__ import annotations

from ..._sqlalchemy import selects
from ...merge.steps import Filter
from ..draft import Draft
from ..expressions import short
from ..merged_expressions import Predicate


def split_having(draft: Draft) -> Draft:
    """HAVING is taken off the per-shard statement and evaluated on the merged groups.

    A shard's partial group may fail the condition where the whole group
    passes it (``count(*) > 2`` with two rows here and one there), so the
    shards send every group and :class:`~...merge.Filter` keeps those whose
    condition, over the merged aggregates, is TRUE (in SQL's three-valued
    logic).  The aggregates it reads travel as hidden columns.

    >>> from shardalchemy.planning import DatabaseFacts, Draft, rewrite
    >>> from shardalchemy.planning.rewrites.partial_aggregates import partial_aggregates
    >>> from shardalchemy.planning.rewrites.regroup import regroup
    >>> statement = select(City.continent).group_by(City.continent).having(func.count() > 2)
    >>> draft = Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))
    >>> print(rewrite(draft, [partial_aggregates, split_having, regroup]))
    Filter HAVING count(*) > 2
    └── Aggregate count(*) GROUP BY cities.continent
        └── Concatenate
            └── each shard: SELECT cities.continent, count(*) AS _shardalchemy_aggregate_0
                FROM cities GROUP BY cities.continent
    """
    having = selects.having(draft.statement)
    if draft.shape != "grouped" or having is None:
        return draft
    assert draft.aggregates is not None, "partial_aggregates runs first"
    predicate = Predicate(draft.columns, draft.aggregates, draft.parameters).compile(having)
    draft.filter = Filter(predicate, f"HAVING {short(having)}")
    draft.shard_statement = selects.without_having(draft.shard_statement)
    return draft
