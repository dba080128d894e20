"""Looking at SQL expressions: labels stripped, aggregates found, types and collations read."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy.sql import operators, sqltypes, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BooleanClauseList,
    ClauseElement,
    ClauseList,
    ColumnElement,
    Grouping,
    Label,
    TextClause,
    UnaryExpression,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import FromClause, ScalarSelect, SelectBase

from .._sqlalchemy import elements
from ..errors import cross_shard_refusal
from .plan import sql_text

# aggregates the planner merges; others it refuses (it cannot know every
# user-defined aggregate: these are the ones databases ship)
MERGEABLE = frozenset({"count", "sum", "min", "max", "avg"})


UNMERGEABLE = frozenset(
    {
        "array_agg", "string_agg", "group_concat", "json_agg", "jsonb_agg", "json_object_agg",
        "jsonb_object_agg", "json_arrayagg", "json_objectagg", "json_group_array",
        "json_group_object", "xmlagg", "listagg", "bool_and", "bool_or", "every", "bit_and",
        "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp", "std", "variance",
        "var_pop", "var_samp", "median", "mode", "percentile_cont", "percentile_disc", "corr",
        "covar_pop", "covar_samp", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
        "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy", "total", "any_value",
        "range_agg", "range_intersect_agg",
    }
)  # fmt: skip


WINDOW_ONLY = frozenset(
    {"row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
     "first_value", "last_value", "nth_value"}
)  # fmt: skip


# functions whose result has the type of their (first) argument
_TYPE_OF_ARGUMENTS = frozenset(
    {"abs", "round", "floor", "ceil", "ceiling", "trunc", "truncate", "sign", "mod",
     "greatest", "least", "coalesce", "nullif", "ifnull"}
)  # fmt: skip


def short(element: Any) -> str:
    text = sql_text(element) if isinstance(element, ClauseElement) else str(element)
    return text if len(text) <= 60 else text[:57] + "..."


def strip(element: Any) -> Any:
    """``element`` without labels, parentheses, one-element lists and a column's ``DISTINCT``.

    (GROUP BY keeps a function as a list of one anonymous label of it; a column-level
    ``distinct(x)`` of the select list makes the whole SELECT distinct, see
    :func:`~shardalchemy._sqlalchemy.selects.is_distinct`, and its value is ``x``'s.)
    """
    while True:
        if isinstance(element, Label | Grouping) or elements.is_distinct(element):
            element = element.element
        elif isinstance(element, ClauseList) and len(element.clauses) == 1:
            element = element.clauses[0]
        else:
            return element


def function_name(element: Any) -> str | None:
    if isinstance(element, FunctionElement):
        return str(getattr(element, "name", "")).lower()
    return None


def arguments_of(function: Any) -> list[Any]:
    """A function call's arguments (``[]`` for anything else: ``a || b || c`` has clauses too)."""
    if not isinstance(function, FunctionElement):
        return []
    return list(function.clauses.clauses) if getattr(function, "clauses", None) is not None else []


def is_aggregate(element: Any) -> bool:
    """A call of a mergeable aggregate (``min``/``max`` of two arguments are scalar in SQLite)."""
    name = function_name(element)
    if name not in MERGEABLE:
        return False
    return not (name in ("min", "max") and len(arguments_of(element)) != 1)


def shallow(element: Any) -> Iterator[Any]:
    """``element`` and what it contains, without entering subqueries (their own business)."""
    stack = [element]
    while stack:
        inner = stack.pop()
        yield inner
        if inner is not element and isinstance(inner, SelectBase | ScalarSelect | FromClause):
            continue
        stack.extend(inner.get_children())


def contains_aggregate(element: Any) -> bool:
    return any(
        is_aggregate(inner) or function_name(inner) in UNMERGEABLE for inner in shallow(element)
    )


def same_expression(left: Any, right: Any) -> bool:
    return elements.same_structure(elements.plain(strip(left)), elements.plain(strip(right)))


def type_of(element: Any) -> Any:
    """The SQL type of an expression; some functions without one take their arguments'."""
    element = strip(element)
    type_ = getattr(element, "type", None)
    if not isinstance(type_, sqltypes.NullType):
        return type_
    name = function_name(element)
    arguments = arguments_of(element)
    if name in MERGEABLE and len(arguments) == 1:
        argument = arguments[0]
        return type_of(argument.element if elements.is_distinct(argument) else argument)
    if name in _TYPE_OF_ARGUMENTS and arguments:
        # abs(x), round(x, 2), mod(a, b) ... of numbers are numbers; of anything
        # untyped or textual, unknown (and text keys need more care)
        types = [type_of(argument) for argument in arguments]
        if all(
            t is not None and not isinstance(t, sqltypes.String | sqltypes.NullType) for t in types
        ):
            return types[0]
    return type_


def text_like(element: Any) -> bool:
    type_ = type_of(element)
    return type_ is None or isinstance(type_, sqltypes.String | sqltypes.NullType)


def explicit_collation(element: Any) -> str | None:
    """A collation named by ``.collate(...)`` or by a String column type inside ``element``."""
    for inner in visitors.iterate(element):
        if isinstance(inner, BinaryExpression) and inner.operator is operators.collate:
            return str(getattr(inner.right, "collation", "")) or None
    for inner in [element, *visitors.iterate(element)]:
        collation = getattr(getattr(inner, "type", None), "collation", None)
        if collation:
            return str(collation)
    return None


def order_parts(clause: Any) -> tuple[Any, bool, bool | None]:
    """(expression, descending, nulls first or None for the default) of an ORDER BY key."""
    descending = False
    nulls_first: bool | None = None
    element = clause
    while True:
        unwrapped = elements.unwrap_label_reference(element)
        if unwrapped is not element:  # ORDER BY label.desc() wraps the whole DESC
            element = unwrapped
            continue
        if isinstance(element, UnaryExpression) and element.modifier is not None:
            modifier = element.modifier
            if modifier is operators.desc_op:
                descending = True
            elif modifier is operators.nulls_first_op:
                nulls_first = True
            elif modifier is operators.nulls_last_op:
                nulls_first = False
            elif modifier is not operators.asc_op:
                break
            element = element.element
        elif isinstance(element, Grouping):
            element = element.element
        else:
            break
    return element, descending, nulls_first


def reads_columns(element: Any) -> bool:
    return any(
        isinstance(inner, ColumnElement) and getattr(inner, "table", None) is not None
        for inner in shallow(element)
    )


def conjuncts(clause: Any) -> Iterator[Any]:
    clause = strip(clause)
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for inner in clause.clauses:
            yield from conjuncts(inner)
    else:
        yield clause


# one key of a textual ORDER BY: a name (plain, "quoted" or `quoted`), ASC/DESC, NULLS FIRST/LAST
_TEXTUAL_KEY = re.compile(
    r"""\s*(?:"(?P<double>[^"]+)"|`(?P<back>[^`]+)`|(?P<plain>[A-Za-z_][A-Za-z0-9_$]*))"""
    r"""(?:\s+(?P<direction>ASC|DESC))?(?:\s+NULLS\s+(?P<nulls>FIRST|LAST))?\s*""",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class TextualKey:
    """One key of ``ORDER BY text("n DESC")``: the output column it names, and how it sorts.

    ``quoted`` names compare exactly, others case-insensitively (as SQL identifiers);
    ``descending`` and ``nulls_first`` are ``None`` where the text does not say.
    """

    name: str
    quoted: bool
    descending: bool | None
    nulls_first: bool | None


def textual_keys(element: Any) -> list[TextualKey] | None:
    """The keys of a textual ORDER BY that only names columns (``text("n DESC, city")``).

    ``None`` when ``element`` is not textual; raises CrossShardQueryError when it is
    but says anything else (an expression, a function, a parameter): the planner cannot
    know what it computes.
    """
    if not isinstance(element, TextClause):
        return None
    keys = []
    for part in element.text.split(","):
        match = _TEXTUAL_KEY.fullmatch(part)
        if match is None:
            raise cross_shard_refusal(
                f"ORDER BY text({element.text!r})",
                "a textual ORDER BY is merged only when it names columns of the select list "
                "(with ASC/DESC); order by the expressions themselves instead",
            )
        direction, nulls = match["direction"], match["nulls"]
        keys.append(
            TextualKey(
                match["double"] or match["back"] or match["plain"],
                match["plain"] is None,
                None if direction is None else direction.upper() == "DESC",
                None if nulls is None else nulls.upper() == "FIRST",
            )
        )
    return keys
