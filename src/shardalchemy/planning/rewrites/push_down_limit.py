"""LIMIT push-down: each shard sends its first ``n + m`` rows; OFFSET applies after the merge."""

from __future__ import annotations

import dataclasses

from ..._sqlalchemy import selects
from ...merge.steps import Limit
from ..draft import Draft
from ..expressions import short
from ..refusals import refuse


def push_down_limit(draft: Draft) -> Draft:
    """``LIMIT n OFFSET m``: ``LIMIT n + m`` on each shard, then :class:`~...merge.Limit`.

    The first ``n + m`` rows of the whole are among the first ``n + m`` of
    some shard, so no shard need send more; the merge skips ``m`` and keeps
    ``n``.  A grouped statement's LIMIT applies to merged groups: the shards
    send every group, the merged groups' sort keeps only its top ``n + m``.
    LIMIT and OFFSET must be integers (literals, or values bound at execute
    time); anything else is refused.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> statement = select(City.name).limit(10).offset(20)
    >>> draft = Draft.of(statement, DatabaseFacts("sqlite", nulls_high=False))
    >>> print(push_down_limit(draft).finish())
    Limit 10 offset 20
    └── Concatenate
        └── each shard: SELECT cities.name FROM cities LIMIT 30
    """
    if draft.shape not in ("rows", "grouped", "union"):
        return draft
    limit, offset = selects.limit_offset(draft.statement, draft.parameters)
    for name, value in (("LIMIT", limit), ("OFFSET", offset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise refuse(
                f"{name} {short(value)}",
                "across shards LIMIT and OFFSET must be integers (literals or bound values)",
            )
    offset = offset or 0
    top = None if limit is None else limit + offset
    if draft.shape == "grouped":
        draft.shard_statement = draft.shard_statement.limit(None).offset(None)
        if draft.sort is not None:
            draft.sort = dataclasses.replace(draft.sort, top=top)
    elif limit is not None or offset:
        draft.shard_statement = draft.shard_statement.limit(top).offset(None)
    if limit is not None or offset:
        draft.limit = Limit(limit, offset)
    return draft
