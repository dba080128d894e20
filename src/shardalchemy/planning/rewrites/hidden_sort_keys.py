"""Hidden sort keys: ORDER BY across shards, with keys not selected sent as hidden columns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.sql.elements import ColumnElement

from ..._sqlalchemy import elements, selects
from ...merge.combine import MergeSort
from ...merge.keys import SortKey, Transform
from ...merge.steps import Sort
from ..draft import Draft
from ..expressions import (
    TextualKey,
    contains_aggregate,
    is_aggregate,
    order_parts,
    short,
    strip,
    textual_keys,
)
from ..facts import WEIGHT
from ..merged_expressions import Expressions
from ..refusals import refuse


def hidden_sort_keys(draft: Draft) -> Draft:
    """ORDER BY: each shard sorts and the sorted streams are merged, or the merged groups sorted.

    Rows as they are, and a UNION: every shard sorts its rows, a streaming
    k-way merge (:class:`~...merge.MergeSort`) combines the sorted streams.
    A grouped statement: the shards do not sort; the merged groups are
    (:class:`~...merge.Sort`), by group keys, aggregates or expressions over
    them.  A key in the select list is read there; any other key is selected
    as a hidden column, stripped from the result, except for an ORM entity's
    key the ORM loads anyway: read from the loaded rows (``draft.readable``,
    see :func:`entity_sort_columns`).  NULLs go where the dialect puts them
    unless the key says; text compares as the database compares it.

    >>> from shardalchemy.planning import DatabaseFacts, Draft
    >>> statement = select(City.name).order_by(City.population.desc())
    >>> draft = Draft.of(statement, DatabaseFacts("postgresql", nulls_high=True))
    >>> print(hidden_sort_keys(draft).finish())
    MergeSort cities.population DESC NULLS FIRST
    └── each shard: SELECT cities.name, cities.population AS _shardalchemy_sort_0 FROM cities
        ORDER BY cities.population DESC
    """
    clauses = selects.order_by(draft.statement)
    if draft.shape == "rows":
        keys = _row_sort_keys(draft, clauses)
        if keys:
            draft.combiner = MergeSort(tuple(keys))
    elif draft.shape == "union":
        keys = _sort_keys(draft, clauses, lambda expression: _union_column(draft, expression))
        if keys:
            draft.combiner = MergeSort(tuple(keys))
    elif draft.shape == "grouped":
        keys = _sort_keys(draft, clauses, _group_resolver(draft))
        if keys:
            draft.sort = Sort(tuple(keys))
        draft.shard_statement = draft.shard_statement.order_by(None)
    return draft


def entity_sort_columns(draft: Draft) -> dict[Any, Any]:
    """The columns of an ORM entity that a rows draft's sort keys can read from the loaded rows.

    Empty unless a sort key is among them.  Only for plain entities (no
    aliases), statements without loader options (joined eager loading would
    change the rows) and without DISTINCT.  A second copy of an entity's
    column would cost the database a projection of every row it scans
    (PostgreSQL: ~40% of an unindexed top-k); where the session cannot read
    the loaded rows, it runs the plan that selects them (its fallback).
    """
    statement = draft.statement
    clauses = selects.order_by(statement)
    if draft.shape != "rows" or not clauses or selects.is_distinct(statement):
        return {}
    if selects.statement_options(statement):
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
    if not any(
        elements.plain(elements.unwrap_label_reference(order_parts(clause)[0])) in columns
        for clause in clauses
    ):
        return {}
    return columns


def _sort_keys(
    draft: Draft,
    clauses: Sequence[Any],
    resolve: Callable[[Any], int],
    placeholders: Mapping[int, Transform] | None = None,
) -> list[SortKey]:
    """The sort keys of ``clauses``, each at the position ``resolve`` finds its expression.

    A negative position is a placeholder for a value read from the loaded
    rows, compared by ``placeholders[position]``.
    """
    columns = draft.columns
    keys = []
    for clause in clauses:
        expression, descending, nulls_first = order_parts(clause)
        textual = textual_keys(expression)
        if textual is not None:
            keys.extend(_textual_sort_keys(draft, clause, textual, descending, nulls_first))
            continue
        if nulls_first is None:
            nulls_first = descending if draft.facts.nulls_high else not descending
        index = resolve(expression)
        if index < 0:
            assert placeholders is not None
            transform = placeholders[index]
        elif not isinstance(columns.expression_at(index), ColumnElement):
            raise refuse(f"ORDER BY {short(expression)}", "it does not name a column")
        else:
            index, transform = columns.comparison(index, "ORDER BY")
        keys.append(SortKey(index, descending, nulls_first, transform, short(expression)))
    return keys


def _textual_sort_keys(
    draft: Draft,
    clause: Any,
    textual: list[TextualKey],
    descending: bool,
    nulls_first: bool | None,
) -> list[SortKey]:
    """``ORDER BY text("n DESC")``: sorts by the select list's columns the text names."""
    columns = draft.columns
    what = f"ORDER BY {short(clause)}"
    wrapped = descending or nulls_first is not None  # text("n").desc()
    keys = []
    for key in textual:
        if wrapped and (len(textual) > 1 or key.descending is not None or key.nulls_first):
            raise refuse(what, "its direction is given twice")
        if key.nulls_first is not None and draft.facts.dialect in ("mysql", "mariadb"):
            raise refuse(what, "NULLS FIRST / LAST is not SQL on this database")
        down = descending if key.descending is None else key.descending
        nulls = nulls_first if key.nulls_first is None else key.nulls_first
        if nulls is None:
            nulls = down if draft.facts.nulls_high else not down
        index = columns.by_output_name(key.name, key.quoted, what)
        if not isinstance(columns.expression_at(index), ColumnElement):
            raise refuse(what, "it does not name a column")
        index, transform = columns.comparison(index, "ORDER BY")
        keys.append(SortKey(index, down, nulls, transform, key.name))
    return keys


def _row_sort_keys(draft: Draft, clauses: Sequence[Any]) -> list[SortKey]:
    """Keys of rows as they are; those among ``draft.readable`` are read from the loaded rows."""
    columns, readable = draft.columns, draft.readable
    from_rows: list[Any] = []
    placeholders: dict[int, Transform] = {}

    def resolve(expression: Any) -> int:
        column = elements.plain(elements.unwrap_label_reference(expression))
        if column in readable:
            transform = columns.transform(column, "ORDER BY")
            if transform is not WEIGHT:  # MariaDB's weights must come from SQL
                if column not in from_rows:
                    from_rows.append(column)
                placeholder = -1 - from_rows.index(column)  # placed after the SQL columns
                placeholders[placeholder] = transform
                return placeholder
        return columns.index_of(expression, "sort")

    keys = _sort_keys(draft, clauses, resolve, placeholders)
    if from_rows:  # after the statement's own columns, hidden ones included
        width = columns.width()
        keys = [
            dataclasses.replace(key, index=width - 1 - key.index) if key.index < 0 else key
            for key in keys
        ]
        draft.row_columns = tuple(readable[column] for column in from_rows)
    return keys


def _union_column(draft: Draft, expression: Any) -> int:
    """A UNION's ORDER BY names its columns (by label, or as the first SELECT's columns)."""
    columns = draft.columns
    name = elements.label_reference_name(expression)
    if name is not None:
        return columns.by_label(name)
    expression = elements.unwrap_label_reference(expression)
    index = columns.visible_index(expression)
    if index is None:
        name = getattr(expression, "key", None) or getattr(expression, "name", None)
        if name is None:
            raise refuse(f"ORDER BY {short(expression)}", "it is not a column of the UNION")
        return columns.by_label(str(name))
    return index


def _group_resolver(draft: Draft) -> Callable[[Any], int]:
    """Positions of a grouped statement's keys: group keys, aggregates, expressions over them."""
    columns, aggregates = draft.columns, draft.aggregates
    assert aggregates is not None, "partial_aggregates runs first"
    expressions = Expressions(columns, aggregates, draft.parameters)

    def resolve(expression: Any) -> int:
        if elements.label_reference_name(expression) is not None:
            return columns.index_of(expression, "sort")
        expression = elements.unwrap_label_reference(expression)
        if is_aggregate(strip(expression)):
            return aggregates.slot_index(strip(expression), columns.visible_index(expression))
        if contains_aggregate(expression):
            index = columns.visible_index(expression)
            if index is None:  # computed into a hidden column of its own
                index = columns.hidden_index(expression, "computed")
                compute = expressions.compile(expression, "ORDER BY")
                draft.computed.append((index, compute, short(expression)))
            return index
        return columns.index_of(expression, "sort")

    return resolve
