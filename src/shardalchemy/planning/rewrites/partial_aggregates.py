"""GROUP BY and aggregates: what each shard sends for its partial groups."""

from __future__ import annotations

from sqlalchemy.sql.elements import ColumnElement

from ..._sqlalchemy import selects
from ..aggregates import Aggregates
from ..draft import Draft
from ..expressions import is_aggregate, strip
from ..refusals import refuse


def partial_aggregates(draft: Draft) -> Draft:
    """Each shard groups its own rows: its groups are partial, its aggregates partials.

    The group keys get their places in the per-shard row (hidden where not
    selected), and so do the select list's aggregates: a ``count`` or
    ``sum`` is sent as it is (the merge adds them up), ``min``/``max`` with
    their comparison form; an AVG and a DISTINCT aggregate as their rewrites
    say (:data:`~..aggregates.AGGREGATE_REWRITES`).  The merge re-aggregates
    the partial groups (:mod:`.regroup`).  An ORM entity in an aggregate query
    is refused: its columns are not one value.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> statement = select(func.count(), func.max(City.population)).group_by(City.continent)
    >>> draft = partial_aggregates(Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False)))
    >>> print(draft.finish())
    Concatenate
    └── each shard: SELECT count(*) AS count_1, max(cities.population) AS max_1,
        cities.continent AS _shardalchemy_group_0 FROM cities GROUP BY cities.continent
    >>> [(slot.kind, slot.index) for slot in draft.aggregates.slots]
    [('count', 0), ('max', 1)]
    """
    if draft.shape != "grouped":
        return draft
    columns = draft.columns
    if any(not isinstance(column, ColumnElement) for column in columns.visible):
        raise refuse(
            "an ORM entity in an aggregate query",
            "select the entity's columns instead, or aggregate in a subquery pinned to a shard",
        )
    aggregates = draft.aggregates = Aggregates(columns)
    draft.group_columns = [
        columns.index_of(expression, "group") for expression in selects.group_by(draft.statement)
    ]
    for index, column in enumerate(columns.visible):
        if is_aggregate(strip(column)):
            aggregates.slot_index(strip(column), index)
    return draft
