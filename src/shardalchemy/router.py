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
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    Grouping,
    Label,
)

from ._compat import plain
from .models import KeyRule, RuleBook


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a statement runs: ``shards`` in shard-map order, and the ``reason``.

    Iterating a route yields its shard names, so a route can be returned
    anywhere SQLAlchemy expects an ``execute_chooser`` result.
    """

    shards: tuple[Any, ...]  # shard names (drop-in choosers may use any hashable)
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

    Every base the expression derives from must be a shard key: a column of a
    UNION that mixes the shard key with another column or an expression
    proves nothing.  Columns of subqueries and aliases are proxies whose own
    bases are in the same proxy set, so they are passed over.
    """
    found: list[KeyRule] = []
    for base in column.proxy_set:
        if isinstance(base, Label):
            continue  # a renamed expression; what it renames is in the set too
        if not isinstance(base, Column):
            return None  # an expression: its values are not shard-key values
        base = plain(base)
        table = base.table
        if not isinstance(table, Table):
            continue  # a subquery's or alias's column; its bases are in the set
        rule = rules.for_table(plain(table))
        if not isinstance(rule, KeyRule) or plain(rule.column) is not base:
            return None
        found.append(rule)
    return found or None


def _python_type(rule: KeyRule) -> type | None:
    try:
        python_type: type = rule.column.type.python_type
    except NotImplementedError:
        return None
    return python_type


def _shard_of(rule: KeyRule, value: Any) -> tuple[str | None, str]:
    """The shard of one compared value, or (None, why it cannot be pruned)."""
    expected = _python_type(rule)
    if expected is not None and not isinstance(value, expected):
        # the database casts ("1" = 1); the strategy would not
        return None, f"{value!r} is not a {expected.__name__} like the column"
    try:
        shard = rule.strategy.shard_for(value)
    except Exception as error:  # a user strategy that fails must not break queries
        return None, f"the strategy failed on {value!r} ({type(error).__name__})"
    if shard is None:
        # the database may still match it (collations, casts): no proof
        return None, f"{value!r} is not mapped by the strategy"
    return shard, ""


@dataclasses.dataclass(frozen=True)
class _Pin:
    """A shard-key predicate: the shards it allows, or ``None`` and why not."""

    description: str
    shards: frozenset[str] | None
    unprunable: str = ""


def _pinning(clause: Any, parameters: Mapping[str, Any], rules: RuleBook) -> _Pin | None:
    """If ``clause`` compares the shard key with values, what it proves."""
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
    rule = key_rules[0]
    value = _bound_values(right, parameters)
    if value is _MISSING:
        return _Pin(f"{rule.name}.{rule.attribute}", None, "its value is not given")
    values = list(value) if operator is operators.in_op else [value]
    shown = f"= {values[0]!r}" if operator is operators.eq else f"IN {tuple(values)!r}"
    description = f"{rule.name}.{rule.attribute} {shown}"
    shards: set[str] = set()
    for key_rule in key_rules:
        for item in values:
            if item is None:
                continue  # "= NULL" / "IN (NULL)" matches no row
            shard, why_not = _shard_of(key_rule, item)
            if shard is None:
                return _Pin(description, None, why_not)
            shards.add(shard)
    return _Pin(description, frozenset(shards))


def statement_label(statement: Any) -> str:
    """A short description of a statement: its kind and the tables it reads or writes.

    >>> statement_label(select(City).join(City.reports))
    'SELECT cities, reports'
    """
    kind = "SELECT" if isinstance(statement, Select) else type(statement).__name__.upper()
    target = getattr(statement, "table", None)
    sources = [target] if target is not None else getattr(statement, "get_final_froms", list)()
    tables: dict[str, None] = {}
    for source in sources:
        for element in visitors.iterate(source):
            if isinstance(element, Table):
                tables[str(element.name)] = None
    return f"{kind} {', '.join(tables)}".strip()


def route_statement(
    statement: Any,
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    rules: RuleBook,
    shard_names: Sequence[str],
) -> Route:
    """Route a SELECT, UPDATE or DELETE to the shards that can hold its rows.

    ``parameters`` are the execute-time parameters: one mapping, or a list of
    them for an executemany (the route is then the union over the sets).
    """
    every = tuple(shard_names)
    if not isinstance(statement, Select | Update | Delete):
        return Route(every, f"{type(statement).__name__} is not analysed; all shards")
    whereclause = statement.whereclause
    if whereclause is None:
        return Route(every, "no WHERE clause; all shards")
    if parameters is None:
        parameter_sets: list[Mapping[str, Any]] = [{}]
    elif isinstance(parameters, Mapping):
        parameter_sets = [parameters]
    else:
        parameter_sets = list(parameters) or [{}]
    conjuncts = list(_conjuncts(whereclause))
    union: set[str] = set()
    reasons: list[str] = []
    for parameter_set in parameter_sets:
        pinned: frozenset[str] | None = None
        for conjunct in conjuncts:
            pin = _pinning(conjunct, parameter_set, rules)
            if pin is None:
                continue
            if pin.shards is None:
                reasons.append(f"{pin.description}: {pin.unprunable}, so it does not prune")
                continue
            reasons.append(f"{pin.description} -> {', '.join(sorted(pin.shards)) or 'no shard'}")
            pinned = pin.shards if pinned is None else pinned & pin.shards
        if pinned is None:
            why = "; ".join(dict.fromkeys(reasons)) or "no shard-key predicate in the WHERE clause"
            return Route(every, f"{why}; all shards")
        union |= pinned
    reason = "; ".join(dict.fromkeys(reasons))
    if not union:
        return Route(every, f"{reason}; no shard can match, running on all shards")
    return Route(tuple(s for s in every if s in union), reason)
