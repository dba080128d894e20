"""What a statement reads: its tables, their co-location groups, its outer joins.

Public to the planner, which refuses what the router would only scatter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, Table
from sqlalchemy.sql import visitors
from sqlalchemy.sql.selectable import Join

from .._sqlalchemy.elements import plain
from ..sharding.rules import FollowRule, Rule, RuleBook


def tables_of(statement: Any) -> list[Table]:
    """Every table a statement reads or writes, subqueries included."""
    seen: dict[Table, None] = {}
    for element in visitors.iterate(statement):
        if isinstance(element, Table):
            seen[plain(element)] = None
        elif isinstance(element, Select):
            # joins along relationships only become FROM objects here
            for source in element.get_final_froms():
                for inner in visitors.iterate(source):
                    if isinstance(inner, Table):
                        seen[plain(inner)] = None
    return list(seen)


def colocation_groups(tables: list[Table], rules: RuleBook) -> dict[Any, list[str]]:
    """Sharded tables by co-location group (the shard-key rule their rows follow)."""
    groups: dict[Any, list[str]] = {}
    for table in tables:
        rule: Rule | None = rules.for_table(table)
        if rule is None:
            continue
        root = rule.root if isinstance(rule, FollowRule) else rule
        groups.setdefault(root.table, []).append(str(table.name))
    return groups


def has_outer_join(statement: Any) -> bool:
    """Whether any outer (LEFT, RIGHT or FULL) join appears, however it was written.

    Read from the statement's join structure: ``Join`` objects built with
    ``join(..., isouter=True)`` / ``outerjoin()``, and the joins a
    ``Select.outerjoin()`` (ON clause or relationship) or an eager loader
    makes, which ``Select.get_final_froms()`` resolves.  Subqueries included.

    >>> has_outer_join(select(City).outerjoin(City.reports))
    True
    """
    for element in visitors.iterate(statement):
        if _is_outer(element):
            return True
        if isinstance(element, Select):
            for source in element.get_final_froms():
                if any(_is_outer(inner) for inner in visitors.iterate(source)):
                    return True
    return False


def _is_outer(element: Any) -> bool:
    return isinstance(element, Join) and bool(element.isouter or element.full)


def shard_key_hints(statement: Any, rules: RuleBook) -> tuple[list[str], list[str]]:
    """(sharded tables, shard-key attributes that would pin them) of a statement."""
    tables: list[str] = []
    keys: dict[str, None] = {}
    for table in tables_of(statement):
        rule = rules.for_table(table)
        if rule is None:
            continue
        tables.append(str(table.name))
        root = rule.root if isinstance(rule, FollowRule) else rule
        keys[f"{root.name}.{root.attribute}"] = None
    return tables, list(keys)


def statement_label(statement: Any) -> str:
    """A short description of a statement: its kind and the tables it reads or writes.

    >>> statement_label(select(City).join(City.reports))
    'SELECT cities, reports'
    """
    kind = "SELECT" if isinstance(statement, Select) else statement.__visit_name__.upper()
    target = getattr(statement, "table", None)
    sources = [target] if target is not None else getattr(statement, "get_final_froms", list)()
    tables: dict[str, None] = {}
    for source in sources:
        for element in visitors.iterate(source):
            if isinstance(element, Table):
                tables[str(element.name)] = None
    return f"{kind} {', '.join(tables)}".strip()
