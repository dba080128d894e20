"""The planner: a multi-shard SELECT -> a plan (per-shard statement + merge operators).

Pure: it reads the statement, the sharding rules and a few facts about the
shards' database (how it orders NULLs, how it compares text) and returns a
:class:`~.plan.Plan`; it never touches a connection.

The plan answers what one database holding every shard's rows would answer.
It is made by the rewrites of :data:`REWRITES`, applied in order to a
:class:`~.draft.Draft` of the statement, one module each in :mod:`.rewrites`
(as sqlglot's optimizer applies its rules):

- ``ORDER BY`` (any keys, ASC/DESC, NULLS FIRST/LAST or the dialect's
  default): each shard sorts, the plan merges the sorted streams; keys that
  are not in the select list become hidden columns, stripped from the result
  (:mod:`~.rewrites.hidden_sort_keys`).
- ``LIMIT n OFFSET m``: each shard returns its first ``n + m`` rows, the
  OFFSET is applied after the merge (:mod:`~.rewrites.push_down_limit`).
- ``count``, ``sum``, ``min``, ``max`` (:mod:`~.rewrites.regroup`), ``avg``
  (as SUM and COUNT, :mod:`~.rewrites.split_avg`), ``count/sum/avg(DISTINCT
  x)`` (the distinct values pushed down as a group key,
  :mod:`~.rewrites.push_down_distinct`), with or without ``GROUP BY``;
  expressions over them (:mod:`~.rewrites.compute_over_aggregates`);
  ``HAVING`` (:mod:`~.rewrites.split_having`), ``ORDER BY`` and ``LIMIT``
  applied to the merged groups.
- ``DISTINCT``; ``UNION`` and ``UNION ALL`` (:mod:`~.rewrites.distinct_rows`);
  ``SELECT EXISTS (...)`` (:mod:`~.rewrites.any_shard_exists`).

Whatever it cannot answer exactly raises
:class:`~shardalchemy.CrossShardQueryError` naming the construct
(:mod:`.refusals`): window functions, aggregates it does not know, division
of aggregates, FOR UPDATE, INTERSECT/EXCEPT, joins of tables that are not
co-located, subqueries that aggregate or limit sharded rows, and text keys
compared under a collation Python cannot reproduce.

>>> from shardalchemy.planning import DatabaseFacts, plan_select
>>> facts = DatabaseFacts("postgresql", nulls_high=True, default_collation="c.utf-8")
>>> print(plan_select(select(City.name).order_by(City.name).limit(10), facts))
Limit 10 offset 0
└── MergeSort cities.name ASC NULLS LAST
    └── each shard: SELECT cities.name FROM cities ORDER BY cities.name LIMIT 10
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._sqlalchemy import elements
from ..errors import CrossShardQueryError
from ..sharding.rules import RuleBook
from .draft import Draft
from .facts import DatabaseFacts
from .plan import Plan
from .refusals import check_constructs, check_plannable
from .rewrites.any_shard_exists import any_shard_exists
from .rewrites.compute_over_aggregates import compute_over_aggregates
from .rewrites.distinct_rows import distinct_rows
from .rewrites.hidden_sort_keys import entity_sort_columns, hidden_sort_keys
from .rewrites.partial_aggregates import partial_aggregates
from .rewrites.push_down_limit import push_down_limit
from .rewrites.regroup import regroup
from .rewrites.split_having import split_having

Rewrite = Callable[[Draft], Draft]

REWRITES: tuple[Rewrite, ...] = (
    any_shard_exists,  # SELECT EXISTS (...) without FROM: true if true on any shard
    partial_aggregates,  # GROUP BY keys and the select list's aggregates, sent by each shard
    compute_over_aggregates,  # max(x) - min(x) in the select list: computed after the merge
    split_having,  # HAVING: taken off the shards, evaluated on the merged groups
    hidden_sort_keys,  # ORDER BY: merge-sorted streams, or sorted groups; keys sent hidden
    regroup,  # after every rewrite that meets aggregates: the merge re-aggregates them all
    distinct_rows,  # DISTINCT, UNION: made distinct again after the merge
    push_down_limit,  # LIMIT n OFFSET m: n + m per shard; after ORDER BY (top n + m)
)
"""The planner's rewrites, in the order they apply.

Each puts its operator in its own place in the draft, so the plan's order
is SQL's whatever this list's; the list's order matters where one rewrite
reads what another wrote (as the comments say), and for the order of the
hidden columns in the per-shard row, which follows it.  AVG split and
DISTINCT push-down decompose one aggregate each: they apply where an
aggregate is met (:data:`~.aggregates.AGGREGATE_REWRITES`).
"""


def rewrite(draft: Draft, rewrites: Sequence[Rewrite] = REWRITES) -> Plan:
    """Apply ``rewrites`` to ``draft`` in order, and finish it into a plan."""
    for each in rewrites:
        draft = each(draft)
    return draft.finish()


class Planner:
    """Plans multi-shard SELECTs for one set of sharding rules.

    What the checks for unanswerable constructs find depends only on a
    statement's shape, so it is remembered per SQLAlchemy cache key (at most
    ``cache_size`` shapes); the plan itself is made per execution, from that
    execution's statement and values (a LIMIT, say, is a bound value that
    can differ between two executions of one shape).  Thread-safe.

    >>> from shardalchemy.planning import DatabaseFacts
    >>> planner = Planner(shard_map.rules)
    >>> facts = DatabaseFacts("sqlite", nulls_high=False)
    >>> print(planner.plan(select(func.count()).select_from(City), facts))
    Aggregate count(*) (no GROUP BY: one row)
    └── Concatenate
        └── each shard: SELECT count(*) AS count_1 FROM cities
    """

    def __init__(self, rules: RuleBook | None, cache_size: int = 500) -> None:
        self.rules = rules
        self._checked: dict[Any, CrossShardQueryError | None] = {}
        self._cache_size = cache_size

    def plan(
        self, statement: Any, facts: DatabaseFacts, parameters: Mapping[str, Any] | None = None
    ) -> Plan:
        """The plan of ``statement``; raises CrossShardQueryError if no plan is exact."""
        cache_key = elements.cache_key(statement)
        if cache_key is None:
            return plan_select(statement, facts, self.rules, parameters)
        if cache_key.key in self._checked:
            refusal = self._checked[cache_key.key]
        else:
            try:
                check_constructs(statement, self.rules)
                refusal = None
            except CrossShardQueryError as error:
                refusal = error
            if len(self._checked) >= self._cache_size:
                self._checked.clear()  # shapes are few in practice; start over
            self._checked[cache_key.key] = refusal
        if refusal is not None:  # a new exception each time: tracebacks do not pile up
            raise CrossShardQueryError(str(refusal), construct=refusal.construct)
        return _plan_checked(statement, facts, parameters or {})


def plan_select(
    statement: Any,
    facts: DatabaseFacts,
    rules: RuleBook | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Plan:
    """Plan a SELECT (or UNION) that runs on several shards.

    ``parameters`` are the execution's parameters (for LIMIT/OFFSET and
    HAVING values given at execute time).  Raises
    :class:`~shardalchemy.CrossShardQueryError` for what it cannot answer.

    >>> from shardalchemy.planning import DatabaseFacts
    >>> facts = DatabaseFacts("sqlite", nulls_high=False)
    >>> plan_select(select(City).where(City.population > 10), facts).merges
    False
    """
    check_constructs(statement, rules)
    return _plan_checked(statement, facts, parameters or {})


def _plan_checked(statement: Any, facts: DatabaseFacts, parameters: Mapping[str, Any]) -> Plan:
    check_plannable(statement)
    draft = Draft.of(statement, facts, parameters)
    readable = entity_sort_columns(draft)
    if not readable:
        return rewrite(draft)
    # an entity's sort keys read from the rows it is loaded from; the plan selecting them
    # as hidden columns is the fallback, for where those rows cannot be read
    again = draft.again(readable)
    fallback = rewrite(draft)
    return dataclasses.replace(rewrite(again), fallback=fallback)
