"""DISTINCT and UNION: the shards' rows are made distinct again after the merge."""

from __future__ import annotations

from sqlalchemy.sql.elements import ColumnElement

from ..._sqlalchemy import selects
from ...merge.keys import Transform, as_is
from ...merge.steps import Distinct
from ..draft import Draft


def distinct_rows(draft: Draft) -> Draft:
    """SELECT DISTINCT (and UNION): each shard's rows are distinct, the merged ones again.

    The same row may come from two shards, so :class:`~...merge.Distinct`
    keeps the first of each, comparing the user's columns as the database
    compares them (an ORM entity: by its identity).  The shards still
    de-duplicate their own rows first.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> statement = select(City.continent).distinct()
    >>> draft = Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))
    >>> print(distinct_rows(draft).finish())
    Distinct over 1 column(s)
    └── Concatenate
        └── each shard: SELECT DISTINCT cities.continent FROM cities
    """
    statement = draft.statement
    if draft.shape == "union":
        keyword = str(getattr(statement.keyword, "name", statement.keyword)).upper()
        wanted = keyword == "UNION"  # UNION ALL keeps every row
    else:
        wanted = draft.shape in ("rows", "grouped") and selects.is_distinct(statement)
    if not wanted:
        return draft
    columns = draft.columns
    indices: list[int] = []
    transforms: list[Transform] = []
    for index, column in enumerate(list(columns.visible)):
        if isinstance(column, ColumnElement):
            index, transform = columns.comparison(index, "DISTINCT")
        else:
            transform = as_is  # an ORM entity: one object per row identity
        indices.append(index)
        transforms.append(transform)
    draft.distinct = Distinct(tuple(indices), tuple(transforms))
    return draft
