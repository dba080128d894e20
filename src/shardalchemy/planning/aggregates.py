"""Plans for GROUP BY and aggregates: partials per shard, re-aggregated after the merge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.sql.elements import (
    ColumnElement,
)

from .._sqlalchemy import elements, selects
from ..merge.aggregate import Aggregate
from ..merge.combine import Concatenate
from ..merge.keys import Row
from ..merge.steps import Compute, Filter, Limit, Sort, Step
from .builder import Builder, distinct_step
from .expressions import (
    contains_aggregate,
    is_aggregate,
    reads_columns,
    short,
    strip,
)
from .merged_expressions import Expressions, Predicate
from .plan import Plan
from .refusals import refuse
from .slots import Aggregates


def plan_aggregate(builder: Builder, having: Any) -> Plan:
    """GROUP BY / aggregates: partials per shard, re-aggregated after the merge."""
    statement = builder.statement
    if any(not isinstance(column, ColumnElement) for column in builder.visible):
        raise refuse(
            "an ORM entity in an aggregate query",
            "select the entity's columns instead, or aggregate in a subquery pinned to a shard",
        )
    aggregates = Aggregates(builder)
    expressions = Expressions(builder, aggregates)
    computed: list[tuple[int, Callable[[Row], Any]]] = []  # expressions over aggregates
    group_by = list(selects.group_by(statement))
    group_columns = [builder.index_of(expression, "group") for expression in group_by]
    for index, column in enumerate(builder.visible):  # first the plain aggregates...
        if is_aggregate(strip(column)):
            aggregates.slot_index(strip(column), index)
    for index, column in enumerate(builder.visible):  # ... which expressions may then read
        inner = strip(column)
        if is_aggregate(inner):
            continue
        if contains_aggregate(inner):
            computed.append((index, expressions.compile(inner, "the expression")))
        elif not group_by and reads_columns(inner):
            raise refuse(
                f"the column {short(column)} outside an aggregate without GROUP BY",
                "its value would come from an arbitrary shard's row",
            )
    predicate = None
    if having is not None:
        predicate = Predicate(builder, aggregates).compile(having)

    def resolve(expression: Any) -> int:
        if elements.label_reference_name(expression) is not None:
            return builder.index_of(expression, "sort")
        expression = elements.unwrap_label_reference(expression)
        if is_aggregate(strip(expression)):
            return aggregates.slot_index(strip(expression), builder.visible_index(expression))
        if contains_aggregate(expression):
            index = builder.visible_index(expression)
            if index is None:  # computed into a hidden column of its own
                index = builder.hidden_index(expression, "computed")
                computed.append((index, expressions.compile(expression, "ORDER BY")))
            return index
        return builder.index_of(expression, "sort")

    keys = builder.sort_keys(selects.order_by(statement), resolve)
    comparisons = [builder.comparison(index, "GROUP BY") for index in group_columns]
    group_indices = [index for index, _ in comparisons]
    group_transforms = tuple(transform for _, transform in comparisons)
    steps: list[Step] = [
        Aggregate(
            tuple(group_indices),
            tuple(aggregates.slots),
            scalar=not group_by,
            group_transforms=group_transforms,
            group_labels=tuple(short(expression) for expression in group_by),
            width=builder.width(),
        )
    ]
    if computed:
        steps.append(Compute(tuple(computed)))
    if predicate is not None:
        steps.append(Filter(predicate, f"HAVING {short(having)}"))
    if selects.is_distinct(statement):
        steps.append(distinct_step(builder))
    limit, offset = builder.limit_offset()
    if keys:
        steps.append(Sort(tuple(keys), None if limit is None else limit + offset))
    if limit is not None or offset:
        steps.append(Limit(limit, offset))
    shard_statement = selects.without_having(statement).order_by(None).limit(None).offset(None)
    if builder.hidden:
        shard_statement = shard_statement.add_columns(*builder.hidden)
    if aggregates.extra_group_by:
        shard_statement = shard_statement.group_by(*aggregates.extra_group_by)
    return Plan(
        shard_statement,
        Concatenate(),
        tuple(steps),
        len(builder.visible) if builder.hidden else None,
    )
