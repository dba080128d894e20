"""The per-shard row: the user's columns, then hidden ones, and how each compares.

The merge operators read the shards' rows by position.  :class:`Columns`
says what each position holds: first the select list as written (what the
user gets back), then the hidden columns the rewrites add (sort keys, partial
aggregates, MariaDB's ``WEIGHT_STRING`` sort keys), stripped from the result.
"""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import literal
from sqlalchemy.sql import operators, sqltypes, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    Cast,
    ColumnClause,
    ColumnElement,
    ExpressionClauseList,
    Label,
)

from .._sqlalchemy import elements
from ..merge.keys import Transform, as_is
from .expressions import (
    arguments_of,
    explicit_collation,
    function_name,
    same_expression,
    short,
    strip,
    text_like,
    type_of,
)
from .facts import WEIGHT, DatabaseFacts
from .refusals import refuse

# a hidden column's label, unlikely to meet a user's
_HIDDEN = "_shardalchemy_{}_{}"


class Columns:
    """The positions of the per-shard row: ``visible`` (the user's), then ``hidden``.

    >>> from shardalchemy.planning import DatabaseFacts
    >>> statement = select(City.name)
    >>> columns = Columns(list(statement.selected_columns), DatabaseFacts("sqlite", False))
    >>> columns.index_of(City.name, "sort"), columns.index_of(City.population, "sort")
    (0, 1)
    >>> columns.hidden
    [<sqlalchemy.sql.elements.Label at ...; _shardalchemy_sort_0>]
    """

    def __init__(self, visible: list[Any], facts: DatabaseFacts) -> None:
        # the result's columns: the select list as written (a UNION: its selected columns)
        self.visible = visible
        self.facts = facts
        self.hidden: list[Any] = []
        self.counter = itertools.count()

    def width(self) -> int:
        return len(self.visible) + len(self.hidden)

    def visible_index(self, expression: Any) -> int | None:
        for index, column in enumerate(self.visible):
            if not isinstance(column, ColumnElement):
                continue  # an ORM entity: its columns are not one result column
            if same_expression(column, expression):
                return index
        return None

    def by_label(self, name: str) -> int:
        for index, column in enumerate(self.visible):
            if getattr(column, "name", None) == name or getattr(column, "key", None) == name:
                return index
        raise refuse(f"ORDER BY / GROUP BY {name!r}", "it names no column of the select list")

    def by_output_name(self, name: str, quoted: bool, what: str) -> int:
        """The select list's column the database names ``name`` in its result.

        A label given with ``.label()`` or a table's column, by its name (an unquoted
        name case-insensitively); the anonymous names SQLAlchemy makes up (``count_1``)
        are not the user's to name.  Refused unless exactly one column is so named.
        """

        def named(column: Any) -> bool:
            if isinstance(column, Label):
                own = None if elements.is_anonymous_key(column.name) else column.name
            elif isinstance(column, ColumnClause):
                own = column.name
            else:
                own = None
            if own is None:
                return False
            return own == name if quoted else str(own).lower() == name.lower()

        found = [index for index, column in enumerate(self.visible) if named(column)]
        if len(found) != 1:
            why = "it names no column of the select list" if not found else "it is ambiguous"
            raise refuse(what, f"{why} (a label given with .label(), or a table's column)")
        return found[0]

    def hidden_index(self, expression: Any, kind: str) -> int:
        """The position of ``expression`` among the hidden columns, added if it is not there."""
        for index, column in enumerate(self.hidden):
            if same_expression(column, expression):
                return len(self.visible) + index
        label = _HIDDEN.format(kind, next(self.counter))
        self.hidden.append(strip(expression).label(label))
        return len(self.visible) + len(self.hidden) - 1

    def index_of(self, expression: Any, kind: str) -> int:
        """The position of ``expression``: visible if selected (or named by label), else hidden."""
        reference = elements.label_reference_name(expression)
        if reference is not None:
            return self.by_label(reference)
        expression = elements.unwrap_label_reference(expression)
        index = self.visible_index(expression)
        return index if index is not None else self.hidden_index(expression, kind)

    def expression_at(self, index: int) -> Any:
        if index < len(self.visible):
            return self.visible[index]
        return self.hidden[index - len(self.visible)]

    def transform(self, expression: Any, what: str) -> Transform:
        """How values of ``expression`` compare in the database; refuses what cannot be told."""
        type_ = type_of(expression)
        if isinstance(type_, sqltypes.Enum) and (
            self.facts.dialect != "sqlite" and getattr(type_, "native_enum", False)
        ):
            raise refuse(
                f"{what} {short(expression)}",
                "a native ENUM orders by its declaration order, not by its labels",
            )
        if isinstance(type_, sqltypes.JSON):
            raise refuse(f"{what} {short(expression)}", "JSON values have no portable order")
        if not text_like(expression):
            return as_is
        if self.facts.dialect in ("mysql", "mariadb") and not _collation_is_known(expression):
            return self._weighed(expression, what)
        collation = explicit_collation(expression)
        transform = self.facts.text_transform(collation)
        if transform is None:
            shown = collation or self.facts.default_collation or "the default"
            raise refuse(
                f"{what} {short(expression)} under collation {shown}",
                "shardalchemy compares text across shards in code-point order and cannot "
                "reproduce this collation; use a binary collation "
                "(e.g. .collate('utf8mb4_bin') on MariaDB, .collate('C') on PostgreSQL)",
            )
        return transform

    def _weighed(self, expression: Any, what: str) -> Transform:
        """MariaDB text whose collation is not its type's: compared by its WEIGHT_STRING().

        An expression's collation follows MariaDB's coercibility rules (a concatenation
        of a case-insensitive and a ``_bin`` column is binary; a CAST takes the
        connection's collation), so it is not guessed: the database's own sort keys
        compare it.  Padded to its length, as PAD SPACE collations compare, which is
        not how ``binary`` or NO PAD collations compare: with one of those among its
        text it is refused.
        """
        for inner in [expression, *visitors.iterate(expression)]:
            if isinstance(inner, BinaryExpression) and inner.operator is operators.collate:
                collation = str(getattr(inner.right, "collation", "")) or None
            elif isinstance(inner, ColumnClause) and text_like(inner):
                collation = getattr(inner.type, "collation", None)
            else:
                continue
            if not self._pads_space(collation):
                raise refuse(
                    f"{what} {short(expression)}",
                    "text of a binary or NO PAD collation in an expression whose collation "
                    "MariaDB derives; sort by a column, or give the expression a collation "
                    "(.collate(...))",
                )
        return WEIGHT

    def _pads_space(self, collation: str | None) -> bool:
        """Whether MariaDB compares text of ``collation`` (None: the default) as PAD SPACE."""
        name = (collation or self.facts.default_collation or "").lower()
        transform = self.facts.text_transform(collation)
        # binary and NO PAD collations count trailing spaces (MySQL 8's _0900_ are NO PAD)
        return transform is not as_is and "nopad" not in name and "_0900_" not in name

    def comparison(self, index: int, what: str) -> tuple[int, Transform]:
        """Where to read the comparison form of the column at ``index``, and how to apply it.

        Usually the column itself with a transform; for text under a collation
        Python cannot reproduce, on MariaDB, a hidden ``WEIGHT_STRING()`` column:
        the collation's own sort key, as bytes (Vitess compares the same way).
        """
        expression = strip(self.expression_at(index))
        transform = self.transform(expression, what)
        if transform is not WEIGHT:
            return index, transform
        if _collation_is_known(expression) and not self._pads_space(explicit_collation(expression)):
            raise refuse(
                f"{what} {short(expression)}",
                "text of a NO PAD collation compared by WEIGHT_STRING would need its own "
                "length, which padding loses; use a binary collation (e.g. "
                ".collate('utf8mb4_bin'))",
            )
        length = text_length(expression)
        if not length:
            raise refuse(
                f"{what} {short(expression)}",
                "text of no declared length (or an expression of text whose length is not "
                "known) under a collation that is not binary; give the column a length "
                "(String(n)), cast the expression to String(n), or use a binary collation",
            )
        # padded to its length, as the collation compares (PAD SPACE): 'a' = 'a '
        padded = elements.function("rpad", expression, length, literal(" "))
        weight = elements.function("weight_string", padded)
        return self.hidden_index(weight, "weight"), as_is


def _collation_is_known(expression: Any) -> bool:
    """Whether ``expression``'s collation is what its type says: a column, or ``COLLATE``."""
    inner = strip(expression)
    if isinstance(inner, BinaryExpression) and inner.operator is operators.collate:
        return True
    return isinstance(inner, ColumnClause) and not getattr(inner, "is_literal", False)


# functions whose text result is no longer than their first argument
_NO_LONGER = frozenset({"lower", "upper", "lcase", "ucase", "trim", "ltrim", "rtrim", "substr",
                        "substring", "left", "right", "min", "max"})  # fmt: skip


def text_length(expression: Any) -> int | None:
    """The most characters a text expression can hold, or ``None`` when it is not known.

    A column or a ``CAST`` to ``String(n)``: ``n`` (MariaDB truncates to it); a
    concatenation: its parts' together; a literal: its own; ``lower(x)`` and the
    like: ``x``'s; ``coalesce``: its longest argument's.  The declared length of an
    expression's type is not a bound (``region + "/" + id`` has ``region``'s type).
    """
    inner = strip(expression)
    if isinstance(inner, BindParameter):
        value = inner.effective_value  # None: given at execute time, of no known length
        return len(str(value)) if value is not None else None
    if isinstance(inner, ColumnClause | Cast):
        length = getattr(inner.type, "length", None)
        return int(length) if length else None
    if isinstance(inner, BinaryExpression) and inner.operator in (
        operators.concat_op,  # (an untyped a + b is arithmetic: of no text length)
        operators.collate,
    ):
        if inner.operator is operators.collate:
            return text_length(inner.left)
        left, right = text_length(inner.left), text_length(inner.right)
        return None if left is None or right is None else left + right
    if isinstance(inner, ExpressionClauseList) and inner.operator is operators.concat_op:
        lengths = [text_length(part) for part in inner.clauses]  # a || b || c, flattened
        return None if None in lengths else sum(length or 0 for length in lengths)
    name = function_name(inner)
    if name is None:
        return None
    arguments = arguments_of(inner)
    if name in _NO_LONGER and arguments:
        return text_length(arguments[0])
    if name in ("coalesce", "ifnull", "nullif", "greatest", "least") and arguments:
        lengths = [text_length(argument) for argument in arguments]
        return None if None in lengths else max(length or 0 for length in lengths)
    if name == "concat" and arguments:
        lengths = [text_length(argument) for argument in arguments]
        return None if None in lengths else sum(length or 0 for length in lengths)
    return None
