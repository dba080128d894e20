"""SELECT EXISTS (...) without FROM: true if it is true on any shard."""

from __future__ import annotations

from sqlalchemy.sql.selectable import Exists

from ...merge.aggregate import Aggregate, AggregateSlot
from ..draft import Draft
from ..expressions import short, strip
from ..refusals import refuse


def any_shard_exists(draft: Draft) -> Draft:
    """Every shard answers its one row of EXISTS; the merged row is true where any shard's is.

    A SELECT without FROM of anything but EXISTS is refused: every shard
    would answer it once, from its own rows only.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> statement = select(select(City.id).where(City.population > 10**7).exists())
    >>> draft = Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))
    >>> print(any_shard_exists(draft).finish())
    Aggregate EXISTS (SELECT cities.id FROM cities WHERE cities.populat... (no
        GROUP BY: one row)
    └── Concatenate
        └── each shard: SELECT EXISTS (SELECT cities.id FROM cities WHERE cities.population
            > 10000000) AS anon_1
    """
    if draft.shape != "exists":
        return draft
    slots = []
    for index, column in enumerate(draft.columns.visible):
        if not isinstance(strip(column), Exists):
            raise refuse(
                f"the column {short(column)} of a SELECT without FROM",
                "every shard would answer it once, from its own rows only",
            )
        slots.append(AggregateSlot("any", index, (index,), label=short(column)))
    draft.aggregate = Aggregate((), tuple(slots), scalar=True, width=len(draft.columns.visible))
    return draft
