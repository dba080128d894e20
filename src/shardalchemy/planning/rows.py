"""Plans for rows as they are: merge-sort, DISTINCT, LIMIT/OFFSET, SELECT EXISTS."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.sql.selectable import Exists

from .._sqlalchemy import elements, selects
from ..merge.aggregate import Aggregate, AggregateSlot
from ..merge.combine import Combiner, Concatenate, MergeSort
from ..merge.steps import Limit, Step
from .builder import Builder, distinct_step
from .expressions import order_parts, short, strip
from .facts import WEIGHT
from .plan import Plan
from .refusals import refuse


def plan_without_from(builder: Builder) -> Plan:
    """SELECT EXISTS (...): every shard answers one row; the answer is whether any said yes."""
    slots = []
    for index, column in enumerate(builder.visible):
        if not isinstance(strip(column), Exists):
            raise refuse(
                f"the column {short(column)} of a SELECT without FROM",
                "every shard would answer it once, from its own rows only",
            )
        slots.append(AggregateSlot("any", index, (index,), label=short(column)))
    aggregate = Aggregate((), tuple(slots), scalar=True, width=len(builder.visible))
    return Plan(builder.statement, Concatenate(), (aggregate,), None)


def _single_entity(statement: Any) -> bool:
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    description = descriptions[0]
    return description.get("entity") is not None and description.get("expr") is description.get(
        "entity"
    )


def plan_rows(builder: Builder) -> Plan:
    """Rows as they are: merge-sort, DISTINCT, LIMIT/OFFSET."""
    plan = _plan_rows_with(builder, {})
    entity_columns = _loaded_entity_columns(builder.statement)
    if not entity_columns or not any(
        elements.plain(elements.unwrap_label_reference(order_parts(clause)[0])) in entity_columns
        for clause in selects.order_by(builder.statement)
    ):
        return plan
    again = Builder(builder.statement, builder.facts, builder.parameters)
    return dataclasses.replace(_plan_rows_with(again, entity_columns), fallback=plan)


def _loaded_entity_columns(statement: Any) -> dict[Any, Any]:
    """Columns the ORM loads for the entities of ``statement``, readable from its rows.

    Only for plain entities (no aliases), statements without loader options
    (joined eager loading would change the rows) and without DISTINCT.
    """
    if selects.is_distinct(statement) or selects.statement_options(statement):
        return {}
    columns: dict[Any, Any] = {}
    for description in statement.column_descriptions:
        entity = description.get("entity")
        if entity is None or description.get("expr") is not entity:
            continue
        mapper = getattr(entity, "__mapper__", None)
        if mapper is None or getattr(mapper, "with_polymorphic", None):
            continue
        for prop in mapper.column_attrs:
            if getattr(prop, "deferred", False) or len(prop.columns) != 1:
                continue
            column = prop.columns[0]
            if getattr(column, "table", None) is mapper.local_table:
                columns[elements.plain(column)] = column
    return columns


def _plan_rows_with(builder: Builder, readable: dict[Any, Any]) -> Plan:
    """The rows plan; sort keys among ``readable`` columns are read from the loaded rows."""
    statement = builder.statement
    from_rows: list[Any] = []

    def resolve(expression: Any) -> int:
        column = elements.plain(elements.unwrap_label_reference(expression))
        if column in readable:
            transform = builder.transform(column, "ORDER BY")
            if transform is not WEIGHT:  # MariaDB's weights must come from SQL
                if column not in from_rows:
                    from_rows.append(column)
                placeholder = -1 - from_rows.index(column)  # placed after the SQL columns
                builder.placeholder_transforms[placeholder] = transform
                return placeholder
        return builder.index_of(expression, "sort")

    keys = builder.sort_keys(selects.order_by(statement), resolve)
    if from_rows:  # after the statement's own columns, hidden ones included
        width = builder.width()
        keys = [
            dataclasses.replace(key, index=width - 1 - key.index) if key.index < 0 else key
            for key in keys
        ]
    steps: list[Step] = []
    if selects.is_distinct(statement):
        steps.append(distinct_step(builder))
    limit, offset = builder.limit_offset()
    shard_statement = statement
    if builder.hidden:
        shard_statement = shard_statement.add_columns(*builder.hidden)
    if limit is not None or offset:
        shard_statement = shard_statement.limit(None if limit is None else limit + offset).offset(
            None
        )
        steps.append(Limit(limit, offset))
    combiner: Combiner = MergeSort(tuple(keys)) if keys else Concatenate()
    return Plan(
        shard_statement,
        combiner,
        tuple(steps),
        len(builder.visible) if builder.hidden or from_rows else None,
        _single_entity(statement),
        tuple(readable[column] for column in from_rows),
    )
