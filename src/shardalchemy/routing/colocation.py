"""Co-location, proved from the statement: may each shard combine only its own rows?

A statement that combines rows (joins, correlated subqueries) can run shard by shard only
when every combination it makes is of rows living on one shard.  Sharing a root model is not
enough (a self-join on a non-key column pairs rows of different shards); the statement itself
must prove it, by equalities that hold for every combined row: conjuncts of ``ON`` or
``WHERE`` (never under ``OR`` or ``NOT``) that equate

- the shard keys of two row sources sharded by the same rule (``a.tenant_id = b.tenant_id``,
  both following one ``ShardKey``), or a follower's foreign key with its parent's shard key;
- a follower's foreign key with the key of its parent (``reports.city_id = cities.id``, what
  a relationship join writes);
- two shard-aware IDs of one generator (an ID names the shard its row was inserted on).

Equalities are transitive (union-find over the row sources of every level of the statement).
A subquery in ``WHERE``, ``HAVING`` or the select list is co-located when its rows are tied
to the outer row this way (correlated on the shard key); a subquery in ``FROM`` is a row
source of its own, co-located inside, whose shard is that of the columns it projects.

Also not answerable shard by shard, whatever the equalities: sharded rows read only inside
subqueries of a query over unsharded tables (each shard answers for every unsharded row), and
an outer join that keeps every row of unsharded tables while joining sharded ones.

Pure: statement + rules -> :class:`Colocation`, which says what proved it, or why not.

Example:

>>> colocation(select(City.name, Report.temperature).join(City.reports), shard_map.rules)
<Colocation proven: cities.id = reports.city_id (Report follows City)>
>>> from sqlalchemy.orm import aliased
>>> twin = aliased(City)
>>> print(colocation(select(City.id).join(twin, twin.name == City.name), shard_map.rules))
not co-located: nothing equates the shard keys of cities and an alias of cities (join on
an alias of cities.name = cities.name); their rows may meet on different shards
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, CompoundSelect, Delete, Select, Table, Update
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BooleanClauseList,
    ClauseElement,
    ColumnElement,
    Grouping,
    Label,
)
from sqlalchemy.sql.selectable import Alias, FromClause, Join, ScalarSelect, SelectBase, Subquery

from .._sqlalchemy import dml, selects
from .._sqlalchemy.elements import is_anonymous_key, plain
from ..sharding.rules import FollowRule, KeyRule, RuleBook
from ..sharding.strategies import id_strategy_of
from .tables import colocation_groups, tables_of


@dataclasses.dataclass(frozen=True)
class Colocation:
    """Whether a statement's combined rows always live on one shard, and why (or why not).

    ``proofs`` are the equalities that tied its row sources together; ``problem`` says what
    is not tied (``None`` when proven) and ``construct`` names it for a
    :class:`~shardalchemy.CrossShardQueryError`.  ``sharded`` is false for a statement that
    reads no sharded table.
    """

    proven: bool
    proofs: tuple[str, ...] = ()
    problem: str | None = None
    construct: str | None = None
    sharded: bool = True

    def describe(self) -> str:
        """One line: what proved co-location, or why nothing did."""
        if self.proven:
            if not self.proofs:
                return "co-located: one sharded row source" if self.sharded else "no sharded table"
            return f"co-located: {'; '.join(self.proofs)}"
        return f"not co-located: {self.problem}"

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        if self.proven:
            return f"<Colocation proven: {'; '.join(self.proofs) or 'one sharded row source'}>"
        return f"<Colocation not proven: {self.problem}>"


PROVEN_UNSHARDED = Colocation(True, sharded=False)


def colocation(statement: Any, rules: RuleBook) -> Colocation:
    """Whether ``statement`` combines only rows of one shard at a time (see the module doc)."""
    while isinstance(statement, Grouping):
        statement = statement.element
    if isinstance(statement, CompoundSelect):
        # the parts' rows never combine: each part must be co-located in itself
        proofs: list[str] = []
        sharded = False
        for part in statement.selects:
            found = colocation(part, rules)
            if not found.proven:
                return found
            proofs.extend(found.proofs)
            sharded = sharded or found.sharded
        return Colocation(True, tuple(dict.fromkeys(proofs)), sharded=sharded)
    if not isinstance(statement, Select | Update | Delete):
        return PROVEN_UNSHARDED  # nothing this analysis can read (routed as a whole)
    return _Analysis(rules).run(statement)


# -- row sources -------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Source:
    """One row source of the statement: a table, an alias of one, or a subquery in FROM."""

    element: Any  # the FROM object whose columns the statement names
    label: str
    origin: str  # "from", "subquery" (in an expression), "derived" (in FROM)
    # columns (of ``element``) whose value decides the row's shard, and the space of that
    # value: rows with equal values in one space live on one shard
    placements: list[tuple[Any, Any]]
    rule: FollowRule | None = None  # a follower: its foreign key pairs prove its parent
    base_table: Table | None = None


def _space_of_rule(rule: KeyRule) -> Any:
    return ("key", id(rule))


def _table_of(element: Any) -> Table | None:
    element = plain(element)
    if isinstance(element, Table):
        return element
    if isinstance(element, Alias) and isinstance(plain(element.element), Table):
        return plain(element.element)  # type: ignore[no-any-return]
    return None


def _column_on(element: Any, base: Column[Any]) -> Any:
    """``element``'s column for the base table column ``base`` (the column itself on a table)."""
    if element is base.table:
        return base
    return element.c[base.key]


class _Analysis:
    def __init__(self, rules: RuleBook) -> None:
        self.rules = rules
        self.sources: list[_Source] = []
        self.parent: dict[int, int] = {}
        self.proofs: list[str] = []
        self.problem: Colocation | None = None
        self.joins: list[str] = []  # non-proving conditions seen, for the message
        self.scopes: dict[int, tuple[dict[Any, _Source], ...]] = {}  # per nested SELECT

    # union-find over source indices
    def find(self, index: int) -> int:
        while self.parent.get(index, index) != index:
            index = self.parent[index]
        return index

    def union(self, first: _Source, second: _Source, proof: str) -> None:
        a, b = self.find(self.sources.index(first)), self.find(self.sources.index(second))
        if a != b:
            self.parent[a] = b
            self.proofs.append(proof)

    def root(self, source: _Source) -> Any:
        """The rule deciding the source's shard in the end (``None``: not one rule's table)."""
        if source.base_table is None:
            return None
        rule = self.rules.for_table(source.base_table)
        return rule.root if isinstance(rule, FollowRule) else rule

    def fail(self, problem: str, construct: str) -> None:
        if self.problem is None:
            self.problem = Colocation(False, problem=problem, construct=construct)

    # -- the walk ------------------------------------------------------------------------------
    def run(self, statement: Any) -> Colocation:
        while isinstance(statement, Grouping):
            statement = statement.element
        if isinstance(statement, CompoundSelect):
            return colocation(statement, self.rules)
        top = self.statement(statement, enclosing=(), scopes=(), origin="from")
        if self.problem is not None:
            return self.problem
        sharded = [source for source in self.sources if _is_sharded(source)]
        if not sharded:
            return PROVEN_UNSHARDED
        if not top:
            # a SELECT without FROM (SELECT EXISTS (...)): it combines no rows; what each
            # shard's subqueries answer is for the planner to merge (or refuse)
            return Colocation(True, ("a SELECT without FROM combines no rows",))
        top_sharded = [source for source in top if source in sharded]
        if not top_sharded:
            inner = sharded[0]
            return Colocation(
                False,
                problem=(
                    f"{inner.label} is read only in a subquery of a query over tables that are "
                    "not sharded, so every shard would answer for every one of their rows"
                ),
                construct=f"a subquery over the sharded table {inner.label}",
            )
        anchor = self.find(self.sources.index(top_sharded[0]))
        for source in sharded:
            if self.find(self.sources.index(source)) == anchor:
                continue
            first = top_sharded[0].label
            if self.root(source) is not self.root(top_sharded[0]):
                groups = colocation_groups(tables_of(statement), self.rules)
                described = "; ".join(", ".join(names) for names in groups.values())
                return Colocation(
                    False,
                    problem=(
                        f"reads tables sharded independently of each other ({described}): each "
                        "shard can only combine its own rows"
                    ),
                    construct=f"a statement over {', '.join(sorted(map(str, groups)))}",
                )
            if source.origin == "subquery":
                return Colocation(
                    False,
                    problem=(
                        f"the subquery over {source.label} is not tied to the outer query (over "
                        f"{first}) on the shard key (an uncorrelated subquery, or one correlated "
                        "on another column), so each shard would compute it over its own rows "
                        "only"
                    ),
                    construct=f"a subquery over {source.label} not correlated on the shard key",
                )
            conditions = f" ({'; '.join(self.joins)})" if self.joins else ""
            return Colocation(
                False,
                problem=(
                    f"nothing equates the shard keys of {first} and {source.label}"
                    f"{conditions}; their rows may meet on different shards"
                ),
                construct=f"a join of {first} and {source.label} not on their shard keys",
            )
        return Colocation(True, tuple(dict.fromkeys(self.proofs)))

    def statement(
        self,
        statement: Any,
        enclosing: tuple[Any, ...],
        scopes: tuple[dict[Any, _Source], ...],
        origin: str,
    ) -> list[_Source]:
        """Add the row sources of one SELECT/UPDATE/DELETE; return those of its own FROM.

        ``enclosing``: the FROM objects of the queries around it (what it may correlate to);
        ``scopes``: their row sources by FROM object, innermost last.
        """
        if isinstance(statement, Select):
            froms = [plain(element) for element in statement.get_final_froms()]
            froms = _after_correlation(statement, froms, enclosing)
            where = statement.whereclause
            expressions: list[Any] = [
                *selects.raw_columns(statement),
                *selects.group_by(statement),
                *selects.order_by(statement),
            ]
            having = selects.having(statement)
            if having is not None:
                expressions.append(having)
        else:  # UPDATE / DELETE: the target table, and tables its WHERE names directly
            where = statement.whereclause
            froms = [plain(statement.table), *_implicit_froms(where, plain(statement.table))]
            expressions = [value for _, value in dml.dml_assignments(statement)]
        own: list[_Source] = []
        scope: dict[Any, _Source] = {}
        conditions: list[tuple[Any, bool]] = []  # (ON clause, outer join?)
        for element in froms:
            self.from_element(element, own, scope, conditions, origin)
        if where is not None:
            conditions.append((where, False))
        visible = (*enclosing, *_leaves(froms))
        chain = (*scopes, scope)
        for clause, _outer in conditions:
            for conjunct in _conjuncts(clause):
                self.equality(conjunct, chain)
        self.scopes[id(statement)] = chain
        # subqueries in expressions: their rows must be tied to these on the shard key
        for clause, _outer in conditions:
            self.subqueries(clause, visible, chain)
        for expression in expressions:
            self.subqueries(expression, visible, chain)
        # key IN (SELECT key FROM ...): a semi-join, tied like an equality of the two
        for clause, _outer in conditions:
            for conjunct in _conjuncts(clause):
                self.semi_join(conjunct, chain)
        return own

    def semi_join(self, conjunct: Any, scopes: tuple[dict[Any, _Source], ...]) -> None:
        """``x IN (SELECT y ...)`` ties ``x``'s row to ``y``'s as ``x = y`` would.

        Only for a subquery that keeps every matching row (no LIMIT/OFFSET) and selects a
        column (not an aggregate): then every ``y`` equal to ``x`` lives on ``x``'s shard.
        """
        if not (isinstance(conjunct, BinaryExpression) and conjunct.operator is operators.in_op):
            return
        outer = _column(conjunct.left)
        inner_select: Any = conjunct.right
        while isinstance(inner_select, Grouping | ScalarSelect):
            inner_select = inner_select.element
        if outer is None or not isinstance(inner_select, Select):
            return
        columns = selects.raw_columns(inner_select)
        inner_scopes = self.scopes.get(id(inner_select))
        if len(columns) != 1 or inner_scopes is None or selects.has_limit_or_offset(inner_select):
            return
        inner = _column(columns[0])
        if inner is None:
            return
        self.tie(
            outer,
            scopes,
            inner,
            inner_scopes,
            f"{_describe_column(outer)} IN (SELECT {_describe_column(inner)} ...)",
        )

    def from_element(
        self,
        element: Any,
        own: list[_Source],
        scope: dict[Any, _Source],
        conditions: list[tuple[Any, bool]],
        origin: str,
    ) -> None:
        element = plain(element)
        if isinstance(element, Join):
            start = len(own)
            self.from_element(element.left, own, scope, conditions, origin)
            before = len(own)
            self.from_element(element.right, own, scope, conditions, origin)
            if element.onclause is not None:
                conditions.append((element.onclause, bool(element.isouter or element.full)))
            if element.isouter or element.full:
                self.outer_join(element, own[start:before], own[before:])
            return
        if element in scope:
            return  # named twice in one FROM list (a join and an implicit FROM)
        table = _table_of(element)
        if table is not None:
            source: _Source | None = self.table_source(element, table, origin)
        elif isinstance(element, Subquery) and isinstance(element.element, SelectBase):
            source = self.derived_source(element)
        else:
            return  # a table-valued function, VALUES, text: the same on every shard
        if source is not None:
            own.append(source)
            scope[element] = source

    def table_source(self, element: Any, table: Table, origin: str) -> _Source:
        rule = self.rules.for_table(table)
        label = _name_of(element, table)
        placements: list[tuple[Any, Any]] = []
        follows: FollowRule | None = None
        if isinstance(rule, KeyRule):
            placements.append((_column_on(element, plain(rule.column)), _space_of_rule(rule)))
        elif isinstance(rule, FollowRule):
            follows = rule
            pairs = list(rule.relationship.local_remote_pairs or ())
            parent = rule.parent
            if len(pairs) == 1:
                local, remote = plain(pairs[0][0]), plain(pairs[0][1])
                if isinstance(parent, KeyRule) and plain(parent.column) is remote:
                    placements.append((_column_on(element, local), _space_of_rule(parent)))
                ids = id_strategy_of(remote)
                if ids is not None:
                    placements.append((_column_on(element, local), ("id", id(ids.generator))))
        for column in table.primary_key.columns:
            ids = id_strategy_of(column)
            if ids is not None and rule is not None:
                placements.append((_column_on(element, column), ("id", id(ids.generator))))
        source = _Source(element, label, origin, placements, follows, table)
        self.add(source)
        return source

    def derived_source(self, subquery: Subquery) -> _Source | None:
        """A subquery in FROM: co-located inside; its shard is that of the keys it projects."""
        inner: Any = subquery.element
        while isinstance(inner, Grouping):
            inner = inner.element
        parts = inner.selects if isinstance(inner, CompoundSelect) else [inner]
        analyses = []
        part: Any
        for part in parts:
            while isinstance(part, Grouping):
                part = part.element
            analysis = _Analysis(self.rules)
            found = analysis.run(part)
            if not found.proven:
                self.fail(found.problem or "", found.construct or "a subquery in FROM")
                return None
            analyses.append((analysis, found))
        if not any(found.sharded for _, found in analyses):
            return None
        placements: list[tuple[Any, Any]] = []
        for column in subquery.c:
            # a column places rows when every part projects the same kind of shard key in it
            spaces: set[Any] | None = None
            for analysis, _ in analyses:
                here = {
                    space
                    for source in analysis.sources
                    for placement, space in source.placements
                    if placement is not None and placement in column.proxy_set
                }
                spaces = here if spaces is None else spaces & here
            placements.extend((column, space) for space in sorted(spaces or (), key=repr))
        name = _name_of(subquery)
        label = "a subquery in FROM" if name == "a subquery" else f"the subquery {name}"
        source = _Source(subquery, label, "derived", placements)
        if not placements:
            # its rows' shards are not visible from outside: it can only stand alone
            source.placements = [(None, ("opaque", id(subquery)))]
        self.add(source)
        return source

    def add(self, source: _Source) -> None:
        self.sources.append(source)

    def outer_join(self, join: Join, left: list[_Source], right: list[_Source]) -> None:
        """An outer join must not keep rows that exist on every shard (unsharded) alone."""
        sides = [(join.left, left, right)]
        if join.full:
            sides.append((join.right, right, left))
        for kept_from, kept, joined in sides:
            joined_sharded = [source for source in joined if _is_sharded(source)]
            if joined_sharded and not any(_is_sharded(source) for source in kept):
                kept_names = _describe_from(kept_from)
                self.fail(
                    f"an outer join keeps every row of {kept_names} (not sharded) while it joins "
                    f"the sharded {joined_sharded[0].label}, so every shard would keep them",
                    f"an outer join keeping every row of {kept_names}",
                )

    def equality(self, conjunct: Any, scopes: tuple[dict[Any, _Source], ...]) -> None:
        if not (isinstance(conjunct, BinaryExpression) and conjunct.operator is operators.eq):
            return
        left, right = _column(conjunct.left), _column(conjunct.right)
        if left is None or right is None:
            return
        shown = f"{_describe_column(left)} = {_describe_column(right)}"
        self.tie(left, scopes, right, scopes, shown)

    def tie(
        self,
        left: Any,
        left_scopes: tuple[dict[Any, _Source], ...],
        right: Any,
        right_scopes: tuple[dict[Any, _Source], ...],
        shown: str,
    ) -> None:
        """Union the sources of two columns the statement equates, if that proves a shard."""
        first, second = _resolve(left.table, left_scopes), _resolve(right.table, right_scopes)
        if first is None or second is None or first is second:
            return
        for one, two in ((first, second), (second, first)):
            column_one, column_two = (left, right) if one is first else (right, left)
            spaces_one = {space for col, space in one.placements if _same(col, column_one)}
            spaces_two = {space for col, space in two.placements if _same(col, column_two)}
            if spaces_one & spaces_two:
                self.union(one, two, f"{shown} (shard keys)")
                return
            if one.rule is not None and self.follows(one, column_one, two, column_two):
                parent = one.rule.relationship.mapper.class_.__name__
                self.union(one, two, f"{shown} ({one.rule.name} follows {parent})")
                return
        self.joins.append(f"join on {shown}")

    def follows(self, follower: _Source, local: Any, parent: _Source, remote: Any) -> bool:
        """Whether ``local = remote`` is the follower's foreign key to this parent's key."""
        rule = follower.rule
        assert rule is not None
        parent_table = rule.relationship.mapper.local_table
        if parent.base_table is not parent_table:
            return False
        pairs = list(rule.relationship.local_remote_pairs or ())
        if len(pairs) != 1:  # a composite key: every pair must be equated; not proved here
            return False
        fk, ref = plain(pairs[0][0]), plain(pairs[0][1])
        return _same(_column_on(follower.element, fk), local) and _same(
            _column_on(parent.element, ref), remote
        )

    def subqueries(
        self, clause: Any, visible: tuple[Any, ...], scopes: tuple[dict[Any, _Source], ...]
    ) -> None:
        for select in _nested_selects(clause):
            parts = select.selects if isinstance(select, CompoundSelect) else [select]
            for part in parts:
                while isinstance(part, Grouping):
                    part = part.element
                if isinstance(part, Select):
                    self.statement(part, visible, scopes, origin="subquery")
                else:
                    self.fail(
                        "a set operation inside a subquery is not analysed",
                        "a UNION / INTERSECT / EXCEPT in a subquery",
                    )


# -- helpers ---------------------------------------------------------------------------------------


def _after_correlation(
    select: Select[Any], froms: list[Any], enclosing: tuple[Any, ...]
) -> list[Any]:
    """``froms`` without those SQLAlchemy correlates to the enclosing query (as it compiles)."""
    if not enclosing:
        return froms
    correlated = set(map(id, _flatten(enclosing)))
    explicit, excepted, auto = selects.correlation(select)
    if explicit:
        names = set(map(id, _flatten(explicit)))
        froms = [f for f in froms if not (id(f) in names and id(f) in correlated)]
    if excepted is not None:
        kept = set(map(id, _flatten(excepted)))
        froms = [f for f in froms if not (id(f) in correlated and id(f) not in kept)]
    if auto and len(froms) > 1:
        froms = [f for f in froms if id(f) not in correlated]
    return froms


def _flatten(froms: Any) -> Iterator[Any]:
    for element in froms:
        element = plain(element)
        yield element
        if isinstance(element, Join):
            yield from _flatten((element.left, element.right))


def _leaves(froms: list[Any]) -> list[Any]:
    return list(_flatten(froms))


def _is_sharded(source: _Source) -> bool:
    return bool(source.placements or source.rule)


def _resolve(element: Any, scopes: tuple[dict[Any, _Source], ...]) -> _Source | None:
    """The row source a FROM object names here: the innermost query's own first."""
    for scope in reversed(scopes):
        found: _Source | None = scope.get(element)
        if found is not None:
            return found
    return None


def _implicit_froms(where: Any, target: Any) -> list[Any]:
    """Tables an UPDATE/DELETE's WHERE names outside subqueries (its implicit FROM list)."""
    if where is None:
        return []
    found: dict[Any, None] = {}
    stack = [where]
    while stack:
        element = stack.pop()
        if isinstance(element, SelectBase):
            continue
        column = _column(element) if isinstance(element, ColumnElement) else None
        if column is not None and plain(column.table) is not target:
            found[plain(column.table)] = None
        stack.extend(element.get_children())
    return list(found)


def _conjuncts(clause: Any) -> Iterator[Any]:
    while isinstance(clause, Grouping):
        clause = clause.element
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for inner in clause.clauses:
            yield from _conjuncts(inner)
    else:
        yield clause


def _column(element: Any) -> Any:
    while isinstance(element, Grouping | Label):
        element = element.element
    element = plain(element)
    if isinstance(element, ColumnElement) and isinstance(
        getattr(element, "table", None), FromClause
    ):
        return element
    return None


def _same(placement: Any, column: Any) -> bool:
    return placement is not None and (placement is column or placement in column.proxy_set)


def _name_of(element: Any, table: Table | None = None) -> str:
    """A FROM object's name as a reader knows it (an anonymous alias: ``an alias of t``)."""
    name = getattr(element, "name", None)
    if name is None or is_anonymous_key(name):
        base = table if table is not None else _table_of(element)
        return f"an alias of {base.name}" if base is not None else "a subquery"
    return str(name)


def _describe_column(column: Any) -> str:
    return f"{_name_of(column.table)}.{column.key}"


def _describe_from(element: Any) -> str:
    leaves = [leaf for leaf in _flatten([element]) if not isinstance(leaf, Join)]
    return ", ".join(_name_of(leaf) for leaf in leaves)


def _nested_selects(clause: Any) -> Iterator[Any]:
    """The SELECTs directly inside an expression (not those inside them: they are theirs)."""
    stack = [clause]
    while stack:
        element = stack.pop()
        if not isinstance(element, ClauseElement):
            continue
        if isinstance(element, Select | CompoundSelect) and element is not clause:
            yield element
            continue
        if isinstance(element, FromClause):
            continue  # a table or a subquery in FROM, named in the select list: not an expression
        stack.extend(element.get_children())
