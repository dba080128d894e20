"""Private SQLAlchemy details of INSERT and UPDATE statements (since SQLAlchemy 2.0).

Bulk writes route the rows a statement carries in ``.values()``; SQLAlchemy
keeps them, and the RETURNING flags, in attributes without public getters.
"""

from __future__ import annotations

from typing import Any


def dml_assignments(statement: Any) -> list[tuple[Any, Any]]:
    """(column or key, value) pairs an UPDATE statement's ``.values()`` assigns."""
    values = getattr(statement, "_values", None) or {}
    ordered = getattr(statement, "_ordered_values", None) or ()
    return [*values.items(), *ordered]


def _unwrap(value: Any) -> Any:
    """A literal bound into a statement's VALUES, or the expression itself."""
    from sqlalchemy.sql.elements import BindParameter

    if isinstance(value, BindParameter) and value.callable is None:
        return value.value
    return value


def _key_of(column: Any) -> Any:
    return column if isinstance(column, str) else getattr(column, "key", column)


def insert_values(
    statement: Any,
) -> tuple[dict[str, Any] | None, list[tuple[dict[str, Any], dict[Any, Any]]] | None]:
    """An INSERT's ``.values()``: its single row, and its rows given as a list.

    The single row is keyed by column key with literal values unwrapped from
    their bound parameters (SQL expressions are left as they are: they cannot
    be routed).  Each row of the list comes as that routing form plus the row
    as the statement holds it (to build one statement per shard from).
    """
    single = getattr(statement, "_values", None)
    multi = getattr(statement, "_multi_values", None) or ()
    columns = list(statement.table.c) if multi else []
    rows: list[tuple[dict[str, Any], dict[Any, Any]]] = []
    for parameter_sets in multi:
        for parameters in parameter_sets:
            if not isinstance(parameters, dict):  # positional, in the table's column order
                parameters = dict(zip(columns, parameters, strict=False))
            rows.append(({_key_of(k): _unwrap(v) for k, v in parameters.items()}, parameters))
    values = {_key_of(k): _unwrap(v) for k, v in single.items()} if single else None
    return values, (rows if multi else None)


def has_returning(statement: Any) -> bool:
    """Whether a DML statement has a RETURNING clause."""
    return bool(getattr(statement, "_returning", ()))


def without_values(statement: Any) -> Any:
    """A copy of an INSERT without its ``.values()`` (to re-add one shard's rows)."""
    copy = statement._generate()
    copy._values = None
    copy._multi_values = ()
    return copy


def in_parameter_order(statement: Any) -> Any:
    """``statement`` with RETURNING rows in the order of its parameter sets.

    The same as ``returning(..., sort_by_parameter_order=True)``, set on a
    statement that already has its RETURNING clause.
    """
    if not getattr(statement, "_returning", ()) or statement._sort_by_parameter_order:
        return statement
    copy = statement._generate()
    copy._sort_by_parameter_order = True
    return copy


def has_where(statement: Any) -> bool:
    """Whether an UPDATE/DELETE has WHERE criteria (an ORM UPDATE without is "by primary key")."""
    return bool(getattr(statement, "_where_criteria", ()))
