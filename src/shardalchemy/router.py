"""The router: statement + parameters -> route (the shards to run on, and why).

Pure: it reads the statement and the resolved sharding rules and returns a
:class:`Route`; it never touches a connection.  It may include more shards
than needed, never fewer: anything it cannot prove goes to every shard, with
that reason.

This first router understands the shard key compared with ``==`` or ``IN``
against literals or bound parameters in the top-level ``AND`` of a WHERE
clause, through joins, aliases and followers (a predicate on the parent's
shard key pins a join with its followers).  Deeper analysis (``OR``, ranges,
subqueries) is the job of the routing issue and will land here.

Example::

    route = route_statement(select(City).where(City.continent == "Asia"), {}, rules, shards)
    route.shards   # ("asia",)
    route.reason   # "City.continent = 'Asia' -> asia"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Delete, Select, Table, Update
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, Grouping

from ._compat import plain
from .models import KeyRule, RuleBook


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a statement runs: ``shards`` in shard-map order, and the ``reason``.

    Iterating a route yields its shard names, so a route can be returned
    anywhere SQLAlchemy expects an ``execute_chooser`` result.
    """

    shards: tuple[str, ...]
    reason: str
    statement: str = ""

    def __iter__(self) -> Iterator[str]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)


_MISSING = object()


def _conjuncts(clause: Any) -> Iterator[Any]:
    while isinstance(clause, Grouping):
        clause = clause.element
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for item in clause.clauses:
            yield from _conjuncts(item)
    else:
        yield clause


def _bound_values(bind: BindParameter[Any], parameters: Mapping[str, Any]) -> Any:
    """The value of a bound parameter: given in the statement or at execute time."""
    if bind.key in parameters:
        return parameters[bind.key]
    if bind.callable is None and bind.value is None and bind.required:
        return _MISSING
    return bind.effective_value


def _key_rules_for(column: Any, rules: RuleBook) -> list[KeyRule] | None:
    """The shard-key rules ``column`` is a projection of, or ``None`` if it is anything else.

    Every base column the expression derives from must be a shard key: a
    column of a UNION that mixes a shard key with another column proves nothing.
    """
    found: list[KeyRule] = []
    for base in column.proxy_set:
        if not isinstance(base, Column):
            continue
        base = plain(base)
        table = base.table
        if not isinstance(table, Table):
            continue
        rule = rules.for_table(plain(table))
        if not isinstance(rule, KeyRule) or plain(rule.column) is not base:
            return None
        found.append(rule)
    return found or None


def _pinning(
    clause: Any, parameters: Mapping[str, Any], rules: RuleBook
) -> tuple[str, set[str]] | None:
    """If ``clause`` pins the shard key to values, return (description, shards)."""
    if not isinstance(clause, BinaryExpression):
        return None
    left, right, operator = clause.left, clause.right, clause.operator
    if operator is operators.eq and isinstance(left, BindParameter):
        left, right = right, left
    if operator not in (operators.eq, operators.in_op) or not isinstance(right, BindParameter):
        return None
    if not hasattr(left, "proxy_set"):
        return None
    key_rules = _key_rules_for(left, rules)
    if key_rules is None:
        return None
    value = _bound_values(right, parameters)
    if value is _MISSING:
        return None
    values = list(value) if operator is operators.in_op else [value]
    shards: set[str] = set()
    for rule in key_rules:
        for item in values:
            if item is None:
                continue  # "= NULL" / "IN (NULL)" matches no row
            shard = rule.strategy.shard_for(item)
            if shard is None:
                # the database may compare differently (collations, casts):
                # an unmapped value proves nothing, so do not prune on it
                return None
            shards.add(shard)
    rule = key_rules[0]
    shown = f"= {values[0]!r}" if operator is operators.eq else f"IN {tuple(values)!r}"
    return f"{rule.name}.{rule.attribute} {shown}", shards


def statement_label(statement: Any) -> str:
    """A short description of a statement: its kind and tables."""
    kind = type(statement).__name__.upper()
    if isinstance(statement, Select):
        kind = "SELECT"
    tables = sorted(
        {
            str(plain(t).name)
            for t in getattr(statement, "get_final_froms", list)()
            if hasattr(t, "name")
        }
    )
    target = getattr(statement, "table", None)
    if target is not None and hasattr(target, "name"):
        tables = [str(plain(target).name)]
    return f"{kind} {', '.join(tables)}".strip()


def route_statement(
    statement: Any,
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    rules: RuleBook,
    shard_names: Sequence[str],
) -> Route:
    """Route a SELECT, UPDATE or DELETE to the shards that can hold its rows."""
    every = tuple(shard_names)
    label = statement_label(statement)
    if not isinstance(statement, Select | Update | Delete):
        return Route(every, f"{type(statement).__name__} is not analysed; all shards", label)
    whereclause = statement.whereclause
    if whereclause is None:
        return Route(every, "no WHERE clause; all shards", label)
    if parameters is None or not isinstance(parameters, Mapping):
        parameters = {}
    pinned: set[str] | None = None
    reasons: list[str] = []
    for conjunct in _conjuncts(whereclause):
        found = _pinning(conjunct, parameters, rules)
        if found is None:
            continue
        description, shards = found
        reasons.append(f"{description} -> {', '.join(sorted(shards)) or 'no shard'}")
        pinned = shards if pinned is None else pinned & shards
    if pinned is None:
        return Route(every, "no shard-key predicate in the WHERE clause; all shards", label)
    if not pinned:
        return Route(
            every, "; ".join(reasons) + "; no shard can match, running on all shards", label
        )
    return Route(tuple(s for s in every if s in pinned), "; ".join(reasons), label)
