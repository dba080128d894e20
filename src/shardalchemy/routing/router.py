"""The router: statement + parameters -> route (the shards to run on, and why).

Pure: it reads the statement and the resolved sharding rules and returns a
:class:`Route`; it never touches a connection.  It may include more shards
than needed, never fewer: anything it cannot prove goes to every shard, with
that reason.

What it understands, in the WHERE clause of a SELECT, UPDATE or DELETE (and
of each SELECT of a UNION):

- the shard key compared with ``==`` or ``IN`` against literals or bound
  parameters (values in the statement, given at execute time, expanding
  ``IN``, ``tuple_(...).in_(...)``);
- ``AND`` (intersection) and ``OR`` (union) at any depth; ``NOT`` and ``!=``
  are never pruned on (rows with other values may live anywhere);
- ``IS NULL`` on a shard key (no row has a NULL shard key) when no outer join
  can produce NULLs;
- ``BETWEEN``, ``<``, ``<=``, ``>``, ``>=`` for the ``Range`` strategy (other
  strategies fall back to every shard);
- followers: the parent's shard key through a join, and a follower's foreign
  key when the parent's referenced column is the parent's shard key;
- columns of aliases, subqueries and CTEs that project the shard key.

A statement that reads tables sharded independently of each other (not
co-located) goes to every shard, and the route says so.

The analysis depends only on the statement's shape, so it is cached per
SQLAlchemy cache key; each execution only re-reads the parameter values.  The
commonest shape, ``shard_key = :value``, also compiles to one small function
(:meth:`Router.single_shard`, what the session runs for it).

Example (``shard_map.router`` is a shard map's own router):

>>> router = Router(shard_map.rules, shard_map.shard_names)
>>> route = router.route(select(City).where(City.continent == "Asia"))
>>> route.shards
('asia',)
>>> route.reason
"City.continent = 'Asia' -> asia"
>>> router.route(select(City).where(City.name == "Tokyo")).scatter  # no shard key: all shards
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import CompoundSelect, Delete, Insert, Select, Update
from sqlalchemy.sql.elements import (
    BindParameter,
    Grouping,
)

from .._sqlalchemy.elements import cache_key as cache_key_of
from .._sqlalchemy.elements import plain
from ..sharding.rules import RuleBook
from ..sharding.strategies import ShardName
from .colocation import Colocation, colocation
from .fast_path import SingleShard, single_shard_function
from .in_lists import InList, InListShape, in_list_shape
from .predicates import MISSING, Analysis, Node, Or, Values
from .route import Explanation, Route
from .tables import colocation_groups, has_outer_join, tables_of
from .textual import textual_part

_NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Shape:
    """The cached analysis of one statement shape."""

    predicate: Node | None  # None: nothing prunes, ``why`` says why
    why: str
    cacheable: bool = True  # False when a compared bind is not in the cache key
    first_shard_only: bool = False  # the answer is the same on every shard
    colocation: Colocation | None = None  # what proved the rows it combines co-located
    in_list: InListShape | None = None  # its expanding IN binds, if any (split by shard)
    # (binds, parameters) -> the one shard, or None: see _single_shard_function
    single: SingleShard | None = dataclasses.field(
        init=False, default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # compiled once per statement shape; frozen, hence object.__setattr__
        single = single_shard_function(self.predicate) if self.predicate is not None else None
        object.__setattr__(self, "single", single)


class Router:
    """Routes statements for one set of sharding rules and shard names.

    Thread-safe; the analysis cache is bounded (``cache_size`` shapes).
    """

    def __init__(
        self,
        rules: RuleBook,
        shard_names: Sequence[ShardName],
        cache_size: int = 500,
    ) -> None:
        self.rules = rules
        self.shard_names = tuple(shard_names)
        self._position = {name: index for index, name in enumerate(self.shard_names)}
        self._shapes: dict[Any, Shape] = {}
        self._shapes_size = cache_size
        # the last statement single_shard() planned: (its cache key object, plan).
        # SQLAlchemy memoizes a statement's cache key, so a statement executed
        # again is recognised by identity, without hashing its key; one tuple,
        # replaced whole, so threads read a consistent pair
        self._recent: tuple[Any, Shape | None] = (None, None)

    def route(
        self,
        statement: Any,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> Route:
        """The route of ``statement`` executed with ``parameters``."""
        plan, binds = self._plan(statement)
        return self._evaluate(plan, binds, parameters, explain=False)

    def explain(
        self,
        statement: Any,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> Route:
        """Like :meth:`route`, with the reason tree in ``route.explanation``."""
        plan, binds = self._plan(statement)
        return self._evaluate(plan, binds, parameters, explain=True)

    def single_shard(
        self,
        statement: Any,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> ShardName | None:
        """The one shard :meth:`route` would choose, or ``None`` when it may not be one.

        The fast path for the common ``shard_key = :value`` statement: no
        :class:`Route`, no reason.  ``None`` does not mean "no shard": it means
        "ask :meth:`route`" (several shards, no proof, an executemany...).

        Example:

        >>> shard_map.router.single_shard(select(City).where(City.continent == "Asia"))
        'asia'
        >>> shard_map.router.single_shard(select(City)) is None  # ask route()
        True
        """
        if parameters is None:
            parameters = _NO_PARAMETERS
        elif not isinstance(parameters, dict) and not isinstance(parameters, Mapping):
            # (a dict is checked first: an ABC's isinstance is slow on the hot path)
            return None  # executemany: route() unions the parameter sets
        cache_key = cache_key_of(statement)
        if cache_key is None:
            return None
        recent_key, plan = self._recent
        if recent_key is not cache_key or plan is None:
            plan = self._plan(statement, cache_key)[0]
            if plan.cacheable:  # remembered like route() remembers shapes
                self._recent = (cache_key, plan)
        single = plan.single
        if single is None:
            return None
        shard = single(cache_key.bindparams, parameters)
        return shard if shard in self._position else None  # unknown names: route() explains

    # -- planning, cached per statement shape -------------------------------------
    def _plan(
        self, statement: Any, cache_key: Any = MISSING
    ) -> tuple[Shape, Sequence[BindParameter[Any]]]:
        if cache_key is MISSING:
            cache_key = cache_key_of(statement)
        if cache_key is None:
            return self._analyse(statement, {}), ()
        plan = self._shapes.get(cache_key.key)
        if plan is None:
            positions = {id(bind): index for index, bind in enumerate(cache_key.bindparams)}
            plan = self._analyse(statement, positions, cache_key.bindparams)
            if not plan.cacheable:
                return plan, cache_key.bindparams
            if len(self._shapes) >= self._shapes_size:
                self._shapes.clear()  # shapes are few in practice; start over
            self._shapes[cache_key.key] = plan
        return plan, cache_key.bindparams

    def _analyse(
        self,
        statement: Any,
        positions: Mapping[int, int],
        binds: Sequence[BindParameter[Any]] = (),
    ) -> Shape:
        kind = type(statement).__name__
        if isinstance(statement, Insert):
            source = getattr(statement, "select", None)
            if source is None:
                return Shape(None, "INSERT is routed by its rows, not analysed here")
            target = self.rules.for_table(plain(statement.table))
            if target is not None:
                return Shape(
                    None,
                    f"INSERT ... SELECT into the sharded table {statement.table.name}: its rows "
                    "are not routed one by one",
                )
            plan = self._analyse(source, positions)
            why = f"INSERT ... SELECT: {plan.why}" if plan.why else ""
            return Shape(plan.predicate, why, plan.cacheable)
        if not isinstance(statement, Select | Update | Delete | CompoundSelect):
            return Shape(None, f"{kind} cannot be analysed")
        textual = textual_part(statement)
        if textual is not None:  # it may read any table: every shard
            return Shape(None, f"reads {textual}, which cannot be analysed")
        tables = tables_of(statement)
        groups = colocation_groups(tables, self.rules)
        if not groups and all(self.rules.unsharded(str(t.name)).home for t in tables):
            # only tables with one copy (or none): every shard would give the
            # same answer (or, writing, apply it again)
            why = "reads no table" if not tables else "reads only tables that are not sharded"
            return Shape(None, f"{why}: one shard answers", first_shard_only=True)
        proof = colocation(statement, self.rules)
        if not proof.proven:
            # rows of different shards may meet: no shard's rows prove where the others
            # are, so nothing prunes (and the planner refuses it on several shards)
            return Shape(None, proof.problem or "", colocation=proof)
        analysis = Analysis(self.rules, positions)
        analysis.has_outer_join = has_outer_join(statement)
        if isinstance(statement, CompoundSelect):
            parts = [self._where(select, analysis) for select in statement.selects]
            if any(part is None for part in parts):
                return Shape(None, "a SELECT of the UNION has no WHERE clause", colocation=proof)
            predicate: Node = Or(tuple(p for p in parts if p is not None))
            return Shape(predicate, "", analysis.cacheable, colocation=proof)
        where = self._where(statement, analysis)
        in_list = in_list_shape(where, binds) if binds else None
        if where is None:
            return Shape(None, "no WHERE clause", colocation=proof, in_list=in_list)
        return Shape(where, "", cacheable=analysis.cacheable, colocation=proof, in_list=in_list)

    def _where(self, statement: Any, analysis: Analysis) -> Node | None:
        while isinstance(statement, Grouping):
            statement = statement.element
        if isinstance(statement, CompoundSelect):
            parts = [self._where(select, analysis) for select in statement.selects]
            if any(part is None for part in parts):
                return None
            return Or(tuple(p for p in parts if p is not None))
        whereclause = getattr(statement, "whereclause", None)
        if whereclause is None:
            return None
        return analysis.predicate(whereclause)

    # -- evaluation, per execution ------------------------------------------------
    def _evaluate(
        self,
        plan: Shape,
        binds: Sequence[BindParameter[Any]],
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        *,
        explain: bool,
    ) -> Route:
        every = self.shard_names
        colocated = plan.colocation
        if plan.first_shard_only:
            tree = Explanation(plan.why, frozenset(every[:1])) if explain else None
            return Route(every[:1], plan.why, explanation=tree)
        if plan.predicate is None:
            why = plan.why
            tree = Explanation(why, None) if explain else None
            counted = None
            if plan.in_list is not None and (parameters is None or isinstance(parameters, Mapping)):
                counted = InList(plan.in_list, binds, parameters or _NO_PARAMETERS)
            return Route(
                every,
                f"{why}; all shards",
                explanation=tree,
                scatter=True,
                colocation=colocated,
                in_list=counted,
            )
        if parameters is None:
            parameter_sets: Sequence[Mapping[str, Any]] = ({},)
        elif isinstance(parameters, Mapping):
            parameter_sets = (parameters,)
        else:
            parameter_sets = list(parameters) or ({},)
        in_list = None
        if plan.in_list is not None and len(parameter_sets) == 1:  # not an executemany
            in_list = InList(plan.in_list, binds, parameter_sets[0])
        predicate = plan.predicate
        union: set[Any] = set()
        unprunable = False
        for parameter_set in parameter_sets:
            allowed = predicate.shards(Values(binds, parameter_set))
            if allowed is None:
                unprunable = True
                break
            union |= allowed
        if unprunable:
            tree = _explain_all(predicate, binds, parameter_sets) if explain else None
            return Route(
                every,
                lambda: _reason_text(_explain_all(predicate, binds, parameter_sets)),
                explanation=tree,
                scatter=True,
                colocation=colocated,
                in_list=in_list,
            )

        def reason() -> str:
            return _reason_text(_explain_all(predicate, binds, parameter_sets))

        tree = _explain_all(predicate, binds, parameter_sets) if explain else None
        if len(union) == 1:
            (shard,) = union
            if shard in self._position:
                return Route(
                    (shard,), reason, explanation=tree, colocation=colocated, in_list=in_list
                )
        if union and union.issubset(self._position):
            shards = tuple(sorted(union, key=self._position.__getitem__))
            return Route(shards, reason, explanation=tree, colocation=colocated, in_list=in_list)
        if not union:

            def empty_reason() -> str:
                return f"{reason()}; no shard can match, running on {every[0]} alone"

            return Route(
                every[:1], empty_reason, explanation=tree, colocation=colocated, in_list=in_list
            )
        return Route(
            every, reason, explanation=tree, scatter=True, colocation=colocated, in_list=in_list
        )


def _explain_all(
    predicate: Node,
    binds: Sequence[BindParameter[Any]],
    parameter_sets: Sequence[Mapping[str, Any]],
) -> Explanation:
    value_sets = [Values(binds, parameters) for parameters in parameter_sets]
    if len(value_sets) == 1:
        return predicate.explain(value_sets[0])
    children = [predicate.explain(values) for values in value_sets]
    shards: frozenset[Any] | None = frozenset()
    for child in children:
        shards = None if shards is None or child.shards is None else shards | child.shards
    return Explanation(f"executemany of {len(value_sets)} parameter sets: union", shards, children)


def _reason_text(tree: Explanation) -> str:
    """A one-line reason from the tree: the leaves that decided, in order.

    Under an AND that prunes, the predicates that could not prune add nothing
    and are left out (``explain`` still shows them).
    """
    leaves: list[str] = []

    def walk(node: Explanation, pruning_and: bool) -> None:
        if node.shards is None and pruning_and:
            return
        if not node.children:
            if node.shards is None:
                leaves.append(node.text)
            else:
                allowed = ", ".join(sorted(map(str, node.shards))) or "no shard"
                leaves.append(f"{node.text} -> {allowed}")
            return
        prunes = node.text.startswith("AND") and node.shards is not None
        for child in node.children:
            walk(child, prunes)

    walk(tree, False)
    text = "; ".join(dict.fromkeys(leaves))
    if tree.shards is None:
        text += "; all shards"
    return text


def route_statement(
    statement: Any,
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    rules: RuleBook,
    shard_names: Sequence[ShardName],
) -> Route:
    """Route one statement without a cache (see :class:`Router` for repeated use)."""
    return Router(rules, shard_names).route(statement, parameters)
