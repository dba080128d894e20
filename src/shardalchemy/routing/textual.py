"""Textual SQL in a statement: what the router cannot see into.

A ``text()`` statement, a ``text(...).columns(...)`` select, a ``text()`` or
``text().columns()`` used as a FROM (as itself, a subquery or a CTE), and a
lightweight ``table("name")`` (a name, not a :class:`~sqlalchemy.Table` whose
sharding is known) may read any table, sharded or not: the statement is
routed to every shard, and the session refuses to combine their answers
(:class:`~shardalchemy.CrossShardQueryError`) unless pinned or concatenated.
Text fragments inside a structured statement (its columns, WHERE, ORDER BY)
name no FROM: the router routes by the rest of the statement, and the
planner judges the fragments.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Join, Select, TableClause, TextualSelect


def textual_part(statement: Any) -> str | None:
    """What in ``statement`` is textual SQL the router cannot analyse, or ``None``.

    >>> from sqlalchemy import column, select, table, text
    >>> textual_part(text("SELECT count(*) FROM tasks"))
    'text()'
    >>> textual_part(select(column("n")).select_from(text("SELECT 1 AS n").columns().subquery()))
    'text().columns()'
    >>> textual_part(select(column("id")).select_from(table("tasks")))
    "table('tasks')"
    >>> textual_part(select(column("id")).where(text("id > 1"))) is None
    True
    >>> textual_part(select(City).from_statement(text("SELECT * FROM cities")))
    'from_statement(text())'
    """
    if isinstance(statement, TextClause):
        return "text()"
    # select(Entity).from_statement(text(...)): the ORM's FromStatement wraps the text
    wrapped = getattr(statement, "element", None)
    if isinstance(wrapped, TextClause):
        return "from_statement(text())"
    if isinstance(wrapped, TextualSelect):
        return "from_statement(text().columns())"
    for element in visitors.iterate(statement):
        if isinstance(element, TextualSelect):
            return "text().columns()"
        if isinstance(element, Select):
            sources: list[Any] = list(element.get_final_froms())
        else:
            target = getattr(element, "table", None) if getattr(element, "is_dml", False) else None
            sources = [target] if target is not None else []
        for source in sources:
            found = _textual_source(source)
            if found is not None:
                return found
    return None


def _textual_source(source: Any) -> str | None:
    while True:
        if isinstance(source, Join):
            return _textual_source(source.left) or _textual_source(source.right)
        if isinstance(source, TextClause):
            return "text()"
        if isinstance(source, TextualSelect):
            return "text().columns()"
        if isinstance(source, TableClause) and not isinstance(source, Table):
            return f"table({source.name!r})"
        inner = getattr(source, "element", None)  # a subquery, alias or CTE
        if inner is None or inner is source:
            return None
        source = inner
