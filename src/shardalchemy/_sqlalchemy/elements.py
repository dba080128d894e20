"""Private SQLAlchemy details of SQL expression elements (since SQLAlchemy 2.0).

Annotations, anonymous bind names, label references and the memoized cache
key have no public accessors; the router and the planner read them here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.sql import traversals


def plain(element: Any) -> Any:
    """``element`` without ORM annotations (annotated copies hash and compare differently)."""
    deannotate = getattr(element, "_deannotate", None)
    return (
        deannotate()
        if deannotate is not None and getattr(element, "_annotations", None)
        else element
    )


def is_anonymous_key(key: Any) -> bool:
    """Whether a bind parameter's key is anonymous (SQLAlchemy names it at compile time)."""
    from sqlalchemy.sql.elements import _anonymous_label

    return isinstance(key, _anonymous_label)


def label_reference_name(element: Any) -> str | None:
    """The label name an ORDER BY / GROUP BY ``"name"`` string refers to, or ``None``."""
    from sqlalchemy.sql.elements import _textual_label_reference

    if isinstance(element, _textual_label_reference):
        return str(element.element)
    return None


def unwrap_label_reference(element: Any) -> Any:
    """The expression behind an ORDER BY / GROUP BY reference to a labelled column."""
    from sqlalchemy.sql.elements import _label_reference

    while isinstance(element, _label_reference):
        element = element.element
    return element


def is_distinct(argument: Any) -> bool:
    """Whether an aggregate's argument is ``DISTINCT x`` (``distinct(x)`` / ``x.distinct()``)."""
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import UnaryExpression

    return isinstance(argument, UnaryExpression) and argument.operator is operators.distinct_op


def function(name: str, *arguments: Any) -> Any:
    """``func.<name>(*arguments)``."""
    from sqlalchemy import func

    return getattr(func, name)(*arguments)


def bind_value(bind: Any, parameters: Any) -> Any:
    """The value a bound parameter has in this execution."""
    if parameters and bind.key in parameters:
        return parameters[bind.key]
    return bind.effective_value


def cache_key(statement: Any) -> Any:
    """A statement's SQLAlchemy cache key (memoized by the statement), or ``None``.

    ``_generate_cache_key()`` is the memoizing form of the public
    ``ClauseElement`` cache-key machinery the router and planner cache on;
    ``None`` when some element of the statement cannot be cached.
    """
    generate = getattr(statement, "_generate_cache_key", None)
    return generate() if generate is not None else None


def original_bind_key(bind: Any) -> str:
    """The name an anonymous bind parameter was made from (``"sensor"`` for ``sensor_1``)."""
    return str(getattr(bind, "_orig_key", "") or "")


def same_structure(left: Any, right: Any) -> bool:
    """Whether two expressions are the same SQL (``ClauseElement.compare``), whoever made them.

    ``compare()`` also compares the ORM's ``_propagate_attrs`` (the mapper an ORM
    attribute made an expression from) by traversing the mappers as if they were SQL
    elements, which raises ``AttributeError`` (no ``__visit_name__``) when two mappers
    differ: ``func.count(Customer.id)`` against ``func.count(Order.id)``.  Which
    mapper made an expression does not change its SQL, so this comparison skips it
    (SQLAlchemy's private ``traversals.TraversalComparatorStrategy``, since 1.4).
    """
    comparator = _SqlOnlyComparator()  # type: ignore[no-untyped-call]
    return bool(comparator.compare(left, right))


class _SqlOnlyComparator(traversals.TraversalComparatorStrategy):
    __slots__ = ()

    def visit_propagate_attrs(self, *args: Any, **kw: Any) -> None:
        return None  # the ORM's plugin subject: who made the expression, not what it is


def with_bind_value(statement: Any, key: str, value: Any) -> Any:
    """A copy of ``statement`` whose bind parameter ``key`` holds ``value``.

    ``ClauseElement.params()`` does this for a SELECT but refuses INSERT, UPDATE
    and DELETE; the same cloning traversal (the public ``cloned_traverse``)
    replaces the value there too, leaving the statement's shape (and so its
    compiled form in the cache) as it was.
    """
    from sqlalchemy.sql import visitors

    def visit_bindparam(bind: Any) -> None:
        if bind.key == key:
            bind.value = value
            bind.required = False

    return visitors.cloned_traverse(
        statement,
        {"maintain_key": True, "detect_subquery_cols": True},
        {"bindparam": visit_bindparam},
    )
