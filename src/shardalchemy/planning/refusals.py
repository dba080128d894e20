"""What no plan can answer exactly: the constructs refused with ``CrossShardQueryError``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CompoundSelect, Select
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    FunctionFilter,
    Grouping,
    Over,
    WithinGroup,
)
from sqlalchemy.sql.selectable import AliasedReturnsRows, Lateral

from .._sqlalchemy import elements, selects
from ..errors import cross_shard_refusal
from ..routing.colocation import colocation
from ..routing.tables import colocation_groups, tables_of
from ..sharding.rules import FollowRule, RuleBook
from .expressions import (
    UNMERGEABLE,
    WINDOW_ONLY,
    conjuncts,
    contains_aggregate,
    function_name,
    short,
)

refuse = cross_shard_refusal
"""The error for a construct that cannot be answered exactly across shards."""


def check_constructs(statement: Any, rules: RuleBook | None) -> None:
    """Refuse what would make a per-shard answer differ from one database's."""
    if selects.for_update(statement) is not None:
        raise refuse(
            "SELECT ... FOR UPDATE",
            "rows locked on several shards in one statement are not one lock; lock per shard",
        )
    # tables of the outer FROM list: a subquery naming one of them is correlated to it
    outer = {
        elements.plain(table)
        for source in getattr(statement, "get_final_froms", list)()
        for table in tables_of(source)
    }
    for element in visitors.iterate(statement):
        if isinstance(element, Over):
            raise refuse(
                f"window function {short(element)}",
                "a window over rows of several shards is computed per shard",
            )
        if isinstance(element, WithinGroup):
            raise refuse(f"ordered-set aggregate {short(element)}", "it cannot be merged")
        if isinstance(element, FunctionFilter):
            raise refuse(f"aggregate FILTER {short(element)}", "FILTER is not merged yet")
        name = function_name(element)
        if name in UNMERGEABLE:
            raise refuse(f"aggregate {name}()", "shardalchemy does not know how to merge it")
        if name in WINDOW_ONLY:
            raise refuse(f"window function {name}()", "it is computed per shard")
        if isinstance(element, CompoundSelect) and element is not statement:
            check_compound_keyword(element)
        if isinstance(element, AliasedReturnsRows) and rules is not None:
            _check_derived_table(element, rules, outer)
    if rules is not None:
        groups = colocation_groups(tables_of(statement), rules)
        if len(groups) > 1:
            names = sorted(name for tables in groups.values() for name in tables)
            raise refuse(
                f"a statement over {', '.join(names)}",
                "these tables are sharded independently (not co-located), so their rows "
                "meet on no single shard",
            )
        # rows the statement combines must be proved to live on one shard (routing/colocation)
        proof = colocation(statement, rules)
        if not proof.proven:
            raise refuse(proof.construct or "this statement", proof.problem or "")


def check_plannable(statement: Any) -> None:
    """Refuse the statements no rewrite plans: not a SELECT, and SELECTs with clauses not merged.

    (What is refused here is the statement's own kind and clauses; what
    :func:`check_constructs` refuses may be anywhere inside it.)
    """
    if isinstance(statement, CompoundSelect):
        check_compound_keyword(statement)
        for select in statement.selects:
            inner = select.element if isinstance(select, Grouping) else select
            if isinstance(inner, Select) and (
                selects.group_by(inner)
                or selects.has_limit_or_offset(inner)
                or any(contains_aggregate(column) for column in selects.raw_columns(inner))
            ):
                raise refuse(
                    "a UNION of SELECTs with aggregates, GROUP BY or LIMIT",
                    "each part would be computed per shard",
                )
        return
    if not isinstance(statement, Select):
        raise refuse(short(statement), "only SELECT statements are merged across shards")
    if selects.distinct_on(statement):
        raise refuse("DISTINCT ON", "it is not merged yet")
    for extension in selects.syntax_extensions(statement):  # e.g. postgresql.distinct_on()
        raise refuse(
            f"the syntax extension {type(extension).__name__}",
            "shardalchemy cannot know what it does to the rows",
        )
    if selects.fetch_clause(statement):
        raise refuse("FETCH FIRST ... WITH TIES / PERCENT", "it is not merged yet")


def check_compound_keyword(compound: CompoundSelect[Any]) -> None:
    keyword = str(getattr(compound.keyword, "name", compound.keyword)).upper()
    if "INTERSECT" in keyword or "EXCEPT" in keyword:
        raise refuse(
            keyword.replace("_", " "),
            "a row of one side and a row of the other may live on different shards",
        )


def _check_derived_table(source: AliasedReturnsRows, rules: RuleBook, outer: set[Any]) -> None:
    """Refuse a subquery in FROM (or a CTE) whose rows per shard are not its part of the whole.

    A subquery in an expression (scalar, ``IN``, ``EXISTS``) is answerable per shard only
    when correlated on the shard key, which :func:`~..routing.colocation.colocation`
    proves (then its rows are all on the outer row's shard, whatever it aggregates or
    limits).  A derived table is a row source of its own: grouped, limited, made
    distinct or aggregated over one shard's rows, it is partial (unless LATERAL and
    correlated to a parent on a follower's foreign key).
    """
    inner: Any = source.element
    lateral = isinstance(source, Lateral)
    for part in inner.selects if isinstance(inner, CompoundSelect) else [inner]:
        select = part.element if isinstance(part, Grouping) else part
        if isinstance(select, Select):
            _check_subquery(select, rules, outer if lateral else set(), correlated=lateral)


def _check_subquery(
    select: Select[Any], rules: RuleBook, outer: set[Any], correlated: bool
) -> None:
    if not any(rules.for_table(table) is not None for table in tables_of(select)):
        return  # reads no sharded table: the same on every shard
    why = []
    if selects.group_by(select):
        why.append("GROUP BY")
    if selects.has_limit_or_offset(select):
        why.append("LIMIT/OFFSET")
    if selects.is_distinct(select):
        why.append("DISTINCT")
    if any(contains_aggregate(column) for column in selects.raw_columns(select)):
        why.append("an aggregate")
    if why and not (correlated and _correlated_colocated(select, rules, outer)):
        raise refuse(
            f"a subquery with {' and '.join(why)} ({short(select)})",
            "it would be computed per shard over that shard's rows only",
        )


def _correlated_colocated(select: Select[Any], rules: RuleBook, outer: set[Any]) -> bool:
    """Whether ``select`` reads only rows co-located with the outer row it is correlated to.

    True when its WHERE requires (AND) a follower's foreign key to equal the
    outer parent's referenced column (``Report.city_id == City.id``, as a
    count of a city's reports is written): those rows live on the outer
    row's shard.
    """
    own = {elements.plain(table) for table in tables_of(select)} - outer
    where = getattr(select, "whereclause", None)
    if where is None:
        return False
    for conjunct in conjuncts(where):
        if not (isinstance(conjunct, BinaryExpression) and conjunct.operator is operators.eq):
            continue
        left, right = elements.plain(conjunct.left), elements.plain(conjunct.right)
        tables = (getattr(left, "table", None), getattr(right, "table", None))
        if None in tables or (tables[0] in own) == (tables[1] in own):
            continue
        for table in tables:
            rule = rules.for_table(table)
            if not isinstance(rule, FollowRule):
                continue
            for local, remote in rule.relationship.local_remote_pairs or ():
                pair = {elements.plain(local), elements.plain(remote)}
                if pair == {left, right}:
                    return True
    return False
