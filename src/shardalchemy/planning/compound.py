"""Plans for UNION and UNION ALL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import CompoundSelect, Select
from sqlalchemy.sql.elements import (
    Grouping,
)

from .._sqlalchemy import elements, selects
from ..merge.combine import Combiner, Concatenate, MergeSort
from ..merge.steps import Limit, Step
from .builder import Builder, distinct_step
from .expressions import contains_aggregate, short
from .facts import DatabaseFacts
from .plan import Plan
from .refusals import check_compound_keyword, refuse


def plan_compound(
    statement: CompoundSelect[Any], facts: DatabaseFacts, parameters: Mapping[str, Any]
) -> Plan:
    """UNION / UNION ALL: the shards' unions, made distinct again, ordered, limited."""
    check_compound_keyword(statement)
    for select in statement.selects:
        inner = select.element if isinstance(select, Grouping) else select
        if isinstance(inner, Select) and (
            selects.group_by(inner)
            or selects.has_limit_or_offset(inner)
            or any(contains_aggregate(column) for column in selects.raw_columns(inner))
        ):
            raise refuse(
                "a UNION of SELECTs with aggregates, GROUP BY or LIMIT",
                "each part would be computed per shard",
            )
    builder = Builder(statement, facts, parameters, list(statement.selected_columns))

    def resolve(expression: Any) -> int:
        name = elements.label_reference_name(expression)
        if name is not None:
            return builder.by_label(name)
        expression = elements.unwrap_label_reference(expression)
        index = builder.visible_index(expression)
        if index is None:
            name = getattr(expression, "key", None) or getattr(expression, "name", None)
            if name is None:
                raise refuse(f"ORDER BY {short(expression)}", "it is not a column of the UNION")
            return builder.by_label(str(name))
        return index

    keys = builder.sort_keys(selects.order_by(statement), resolve)
    steps: list[Step] = []
    keyword = str(getattr(statement.keyword, "name", statement.keyword)).upper()
    if keyword == "UNION":
        steps.append(distinct_step(builder))
    limit, offset = builder.limit_offset()
    shard_statement: Any = statement
    if limit is not None or offset:
        shard_statement = statement.limit(None if limit is None else limit + offset).offset(None)
        steps.append(Limit(limit, offset))
    combiner: Combiner = MergeSort(tuple(keys)) if keys else Concatenate()
    return Plan(shard_statement, combiner, tuple(steps), None)
