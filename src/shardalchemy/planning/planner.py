"""The planner: a multi-shard SELECT -> a plan (per-shard statement + merge steps).

Pure: it reads the statement, the sharding rules and a few facts about the
shards' database (how it orders NULLs, how it compares text) and returns a
:class:`Plan`; it never touches a connection.

The plan answers what one database holding every shard's rows would answer:

- ``ORDER BY`` (any keys, ASC/DESC, NULLS FIRST/LAST or the dialect's
  default): each shard sorts, the plan merges the sorted streams; keys that
  are not in the select list become hidden columns, stripped from the result.
- ``LIMIT n OFFSET m``: each shard returns its first ``n + m`` rows, the
  OFFSET is applied after the merge.
- ``count``, ``sum``, ``min``, ``max``, ``avg`` (as SUM and COUNT),
  ``count/sum/avg(DISTINCT x)`` (the distinct values are pushed down as a
  group key), with or without ``GROUP BY``; ``HAVING``, ``ORDER BY`` and
  ``LIMIT`` are applied to the merged groups.
- ``DISTINCT``; ``UNION`` and ``UNION ALL``.

Whatever it cannot answer exactly raises
:class:`~shardalchemy.CrossShardQueryError` naming the construct: window
functions, aggregates it does not know, expressions over aggregates, FOR
UPDATE, INTERSECT/EXCEPT, joins of tables that are not co-located, subqueries
that aggregate or limit sharded rows, and text keys compared under a
collation Python cannot reproduce (MariaDB's default case-insensitive one).

Example::

    plan = plan_select(select(City).order_by(City.name).limit(10), facts, rules)
    print(plan)
    # Limit 10 offset 0
    # └── MergeSort cities.name ASC NULLS FIRST
    #     └── each shard: SELECT ... ORDER BY cities.name LIMIT 10
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import CompoundSelect, Select
from sqlalchemy.sql.selectable import Exists, ScalarSelect

from .._sqlalchemy import elements, selects
from ..errors import CrossShardQueryError
from ..sharding.rules import RuleBook
from .aggregates import plan_aggregate
from .builder import Builder
from .compound import plan_compound
from .expressions import contains_aggregate, short, strip
from .facts import DatabaseFacts
from .plan import Plan
from .refusals import check_constructs, refuse
from .rows import plan_rows, plan_without_from


class Planner:
    """Plans multi-shard SELECTs for one set of sharding rules.

    What the checks for unanswerable constructs find depends only on a
    statement's shape, so it is remembered per SQLAlchemy cache key (at most
    ``cache_size`` shapes); the plan itself is made per execution, from that
    execution's statement and values (a LIMIT, say, is a bound value that
    can differ between two executions of one shape).  Thread-safe.

    Example::

        planner = Planner(rules)
        plan = plan(select(City).order_by(City.name).limit(5), facts)
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
    """
    check_constructs(statement, rules)
    return _plan_checked(statement, facts, parameters or {})


def _plan_checked(statement: Any, facts: DatabaseFacts, parameters: Mapping[str, Any]) -> Plan:
    if isinstance(statement, CompoundSelect):
        return plan_compound(statement, facts, parameters)
    if not isinstance(statement, Select):
        raise refuse(short(statement), "only SELECT statements are merged across shards")
    if selects.distinct_on(statement):
        raise refuse("DISTINCT ON", "it is not merged yet")
    for extension in selects.syntax_extensions(statement):  # e.g. postgresql.distinct_on()
        raise refuse(
            f"the syntax extension {type(extension).__name__}",
            "shardalchemy cannot know what it does to the rows",
        )
    if selects.fetch_clause(statement):
        raise refuse("FETCH FIRST ... WITH TIES / PERCENT", "it is not merged yet")
    builder = Builder(statement, facts, parameters)
    if any(isinstance(strip(column), Exists | ScalarSelect) for column in builder.visible) and (
        not statement.get_final_froms()
    ):
        return plan_without_from(builder)
    grouped = bool(selects.group_by(statement)) or any(
        contains_aggregate(column) for column in builder.visible
    )
    having = selects.having(statement)
    if grouped or having is not None:
        return plan_aggregate(builder, having)
    return plan_rows(builder)
