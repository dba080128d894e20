"""Private SQLAlchemy details of SELECT statements (since SQLAlchemy 2.0).

``Select`` keeps its clauses in attributes without public getters; the
planner reads them here, and rebuilds statements only through public
generative methods (``add_columns``, ``group_by``, ``order_by(None)``,
``limit``, ``offset``), except for HAVING, which has no public way to be
removed.
"""

from __future__ import annotations

from typing import Any

from .elements import bind_value


def raw_columns(statement: Any) -> list[Any]:
    """The select list as written: columns, expressions and ORM entities, one per result column."""
    return list(getattr(statement, "_raw_columns", ()))


def result_columns(statement: Any) -> list[Any]:
    """The select list as each row holds it: one entry per result column.

    A Core table or subquery selected whole (``select(table)``, ``select(subquery)``)
    is as many result columns as it has columns, so it is replaced by them; an ORM
    entity (a FROM annotated with its ``parententity``, SQLAlchemy's private mark of
    an entity in ``_raw_columns``) stays one entry: the ORM loads it as one object.
    """
    from sqlalchemy.sql.elements import ColumnElement
    from sqlalchemy.sql.selectable import FromClause

    columns: list[Any] = []
    for column in raw_columns(statement):
        annotations = getattr(column, "_annotations", None) or {}
        if (
            isinstance(column, FromClause)
            and not isinstance(column, ColumnElement)  # a SQL function is both
            and "parententity" not in annotations
        ):
            columns.extend(column.c)
        else:
            columns.append(column)
    return columns


def order_by(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_order_by_clauses", ()))


def group_by(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_group_by_clauses", ()))


def having(statement: Any) -> Any:
    """The HAVING criteria as one clause, or ``None``."""
    from sqlalchemy import and_

    criteria = tuple(getattr(statement, "_having_criteria", ()))
    if not criteria:
        return None
    return criteria[0] if len(criteria) == 1 else and_(*criteria)


def without_having(statement: Any) -> Any:
    """A copy of ``statement`` without its HAVING criteria."""
    if not getattr(statement, "_having_criteria", ()):
        return statement
    copy = statement._generate()
    copy._having_criteria = ()
    return copy


def distinct_on(statement: Any) -> tuple[Any, ...]:
    return tuple(getattr(statement, "_distinct_on", ()))


# where SQLAlchemy 2.1's dialect syntax extensions (Select.ext(), e.g. PostgreSQL's
# distinct_on()) attach to a SELECT
_SYNTAX_EXTENSION_SLOTS = (
    "_pre_columns_clause",
    "_post_select_clause",
    "_post_criteria_clause",
    "_post_body_clause",
)


def syntax_extensions(statement: Any) -> list[Any]:
    """The dialect syntax extensions a SELECT carries (``select(...).ext(distinct_on(x))``)."""
    found = (getattr(statement, slot, None) for slot in _SYNTAX_EXTENSION_SLOTS)
    return [extension for extension in found if extension is not None]


def fetch_clause(statement: Any) -> Any:
    return getattr(statement, "_fetch_clause", None)


def has_limit_or_offset(statement: Any) -> bool:
    return (
        getattr(statement, "_limit_clause", None) is not None
        or getattr(statement, "_offset_clause", None) is not None
        or getattr(statement, "_fetch_clause", None) is not None
    )


def limit_offset(statement: Any, parameters: Any) -> tuple[Any, Any]:
    """LIMIT and OFFSET: their values when bound (literals or parameters), else the clause."""
    from sqlalchemy.sql.elements import BindParameter

    values: list[Any] = []
    for name in ("_limit_clause", "_offset_clause"):
        clause = getattr(statement, name, None)
        if isinstance(clause, BindParameter):
            clause = bind_value(clause, parameters)
        values.append(clause)
    return values[0], values[1]


def statement_options(statement: Any) -> tuple[Any, ...]:
    """The options attached to a statement with ``.options()``."""
    return tuple(getattr(statement, "_with_options", ()))


def is_distinct(statement: Any) -> bool:
    """Whether a SELECT is ``SELECT DISTINCT`` (``Select._distinct``; no public getter).

    Also when its select list starts with a column-level ``distinct(x)``: SQLAlchemy
    renders ``select(distinct(x), y)`` as ``SELECT DISTINCT x, y``, which the database
    reads as DISTINCT over the whole row (a ``DISTINCT`` further on is a syntax error).
    """
    if getattr(statement, "_distinct", False):
        return True
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import Grouping, Label, UnaryExpression

    for column in raw_columns(statement):
        while isinstance(column, Label | Grouping):
            column = column.element
        if isinstance(column, UnaryExpression) and column.operator is operators.distinct_op:
            return True
    return False


def for_update(statement: Any) -> Any:
    """A SELECT's FOR UPDATE clause (``Select._for_update_arg``), or ``None``."""
    return getattr(statement, "_for_update_arg", None)


def correlation(statement: Any) -> tuple[tuple[Any, ...], tuple[Any, ...] | None, bool]:
    """How a SELECT correlates when nested: (``correlate(...)`` FROMs, ``correlate_except(...)``
    FROMs or ``None``, auto-correlation on).

    ``Select._correlate``, ``_correlate_except`` and ``_auto_correlate`` are what the
    compiler reads to drop FROMs of the enclosing query (SQLAlchemy 2.0's
    ``SelectState._get_display_froms``); the co-location analysis repeats that decision.
    """
    excepted = getattr(statement, "_correlate_except", None)
    return (
        tuple(getattr(statement, "_correlate", ())),
        tuple(excepted) if excepted is not None else None,
        bool(getattr(statement, "_auto_correlate", True)),
    )
