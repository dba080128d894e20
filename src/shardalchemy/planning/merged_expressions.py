"""Expressions over merged groups (HAVING, arithmetic over aggregates) compiled to Python.

Each compiles to a function of a merged row, in SQL's three-valued logic; the
aggregates it reads get their slots (:mod:`.aggregates`) as they are met.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseElement,
    False_,
    Null,
    True_,
    UnaryExpression,
)

from .._sqlalchemy import elements
from ..merge.keys import Row, as_is
from .aggregates import Aggregates
from .columns import Columns
from .expressions import (
    arguments_of,
    contains_aggregate,
    function_name,
    is_aggregate,
    short,
    strip,
    text_like,
)
from .refusals import refuse

_COMPARISONS: dict[Any, Callable[[Any, Any], Any]] = {
    operators.eq: operator.eq,
    operators.ne: operator.ne,
    operators.lt: operator.lt,
    operators.le: operator.le,
    operators.gt: operator.gt,
    operators.ge: operator.ge,
}


_ARITHMETIC: dict[Any, Callable[[Any, Any], Any]] = {
    operators.add: operator.add,
    operators.sub: operator.sub,
    operators.mul: operator.mul,
}


class Predicate:
    """HAVING compiled to a Python function of a merged row, in SQL's three-valued logic."""

    def __init__(
        self, columns: Columns, aggregates: Aggregates, parameters: Mapping[str, Any]
    ) -> None:
        self.columns = columns
        self.aggregates = aggregates
        self.parameters = parameters

    def compile(self, clause: Any) -> Callable[[Row], Any]:
        clause = strip(clause)
        if isinstance(clause, BooleanClauseList) and clause.operator in (
            operators.and_,
            operators.or_,
        ):
            parts = [self.compile(inner) for inner in clause.clauses]
            return _and(parts) if clause.operator is operators.and_ else _or(parts)
        if isinstance(clause, UnaryExpression) and clause.operator is operators.inv:
            inner = self.compile(clause.element)
            return lambda row: None if (value := inner(row)) is None else not value
        if isinstance(clause, BinaryExpression):
            if clause.operator in (operators.is_, operators.is_not) and isinstance(
                clause.right, Null
            ):
                left = self.operand(clause.left)
                if clause.operator is operators.is_:
                    return lambda row: left(row) is None
                return lambda row: left(row) is not None
            compare = _COMPARISONS.get(clause.operator)
            if compare is not None:
                self._check_text(clause)
                left, right = self.operand(clause.left), self.operand(clause.right)

                def comparison(row: Row) -> Any:
                    a, b = left(row), right(row)
                    return None if a is None or b is None else compare(a, b)

                return comparison
        if isinstance(clause, True_ | False_):
            value = isinstance(clause, True_)
            return lambda row: value
        raise refuse(f"HAVING {short(clause)}", "only comparisons, AND, OR and NOT are merged")

    def _check_text(self, clause: BinaryExpression[Any]) -> None:
        for side in (clause.left, clause.right):
            if isinstance(side, BindParameter):
                continue
            if text_like(side) and self.columns.transform(side, "HAVING") is not as_is:
                raise refuse(f"HAVING {short(clause)}", "it compares text under a collation")

    def operand(self, element: Any) -> Callable[[Row], Any]:
        expressions = Expressions(self.columns, self.aggregates, self.parameters)
        return expressions.compile(element, "HAVING operand")


class Expressions:
    """Expressions over merged groups compiled to Python functions of a merged row.

    Aggregates read their merged slot; ``+``, ``-``, ``*``, unary ``-`` and
    ``coalesce()`` compute as SQL does (NULL in, NULL out; Python's int,
    Decimal and float arithmetic keep the types and scales the databases
    give); other expressions without aggregates are group-level, read from
    the group's row.  Division is refused: its integer and decimal rules
    differ between databases.
    """

    def __init__(
        self, columns: Columns, aggregates: Aggregates, parameters: Mapping[str, Any]
    ) -> None:
        self.columns = columns
        self.aggregates = aggregates
        self.parameters = parameters

    def compile(self, element: Any, what: str) -> Callable[[Row], Any]:
        element = strip(element)
        if isinstance(element, BindParameter):
            value = elements.bind_value(element, self.parameters)
            return lambda row: value
        if isinstance(element, Null):
            return lambda row: None
        if is_aggregate(element):
            return operator.itemgetter(self.aggregates.slot_index(element))
        if not contains_aggregate(element):
            if not isinstance(element, ClauseElement):
                raise refuse(f"{what} {short(element)}", "it is not an expression")
            # a group-level expression: the same on every row of the group
            return operator.itemgetter(self.columns.index_of(element, "group_value"))
        arithmetic = (
            _ARITHMETIC.get(element.operator) if isinstance(element, BinaryExpression) else None
        )
        if arithmetic is not None:
            left = self.compile(element.left, what)
            right = self.compile(element.right, what)

            def compute(row: Row) -> Any:
                a, b = left(row), right(row)
                return None if a is None or b is None else arithmetic(a, b)

            return compute
        if isinstance(element, UnaryExpression) and element.operator is operators.neg:
            inner = self.compile(element.element, what)
            return lambda row: None if (value := inner(row)) is None else -value
        if function_name(element) == "coalesce":
            parts = [self.compile(argument, what) for argument in arguments_of(element)]

            def first_not_null(row: Row) -> Any:
                for part in parts:
                    value = part(row)
                    if value is not None:
                        return value
                return None

            return first_not_null
        raise refuse(
            f"{what} {short(element)}",
            "only +, -, * and coalesce() are computed over merged aggregates; select the "
            "aggregates and compute the expression in Python",
        )


def _and(parts: list[Callable[[Row], Any]]) -> Callable[[Row], Any]:
    return _connective(parts, deciding=False)


def _or(parts: list[Callable[[Row], Any]]) -> Callable[[Row], Any]:
    return _connective(parts, deciding=True)


def _connective(parts: list[Callable[[Row], Any]], deciding: bool) -> Callable[[Row], Any]:
    """AND (``deciding=False``: one FALSE decides) or OR (one TRUE decides), NULL-aware."""

    def evaluate(row: Row) -> Any:
        unknown = False
        for part in parts:
            value = part(row)
            if value is None:
                unknown = True
            elif bool(value) is deciding:
                return deciding
        return None if unknown else not deciding

    return evaluate
