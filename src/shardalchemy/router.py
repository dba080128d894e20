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

Example::

    router = Router(rules, ["asia", "europe"])
    route = router.route(select(City).where(City.continent == "Asia"))
    route.shards   # ("asia",)
    route.reason   # "City.continent = 'Asia' -> asia"
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

from sqlalchemy import Column, CompoundSelect, Delete, Insert, Select, Table, Update
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseList,
    Grouping,
    Label,
    Null,
    Tuple,
    UnaryExpression,
)
from sqlalchemy.sql.selectable import Exists, ScalarSelect

from ._compat import is_anonymous_key, plain
from .ids.columns import generator_of
from .models import FollowRule, KeyRule, Rule, RuleBook
from .strategies import Strategy


class Route:
    """Where a statement runs: ``shards`` in shard-map order, and the ``reason``.

    Iterating a route yields its shard names, so a route can be returned
    anywhere SQLAlchemy expects an ``execute_chooser`` result.  ``explanation``
    (when the router made the route) is the reason tree: which predicate
    allowed which shards.  ``plan`` (from :meth:`ShardedSession.explain`, for a
    SELECT on several shards) is the :class:`~shardalchemy.planner.Plan` that
    merges the shards' rows, or ``plan_error`` the
    :class:`~shardalchemy.CrossShardQueryError` running it would raise.
    """

    __slots__ = (
        "_reason",
        "explanation",
        "plan",
        "plan_error",
        "scatter",
        "shards",
        "statement",
    )

    def __init__(
        self,
        shards: Sequence[Any],
        reason: str | Callable[[], str],
        statement: str = "",
        *,
        explanation: Explanation | None = None,
        scatter: bool = False,
        plan: Any = None,
        plan_error: Exception | None = None,
    ) -> None:
        self.plan = plan
        self.plan_error = plan_error
        self.shards: tuple[Any, ...] = tuple(shards)
        self._reason = reason
        self.statement = statement
        self.explanation = explanation
        self.scatter = scatter
        """True when the router could not prune: the statement reaches every shard."""

    @property
    def reason(self) -> str:
        """Why these shards, in words (computed on first use)."""
        if not isinstance(self._reason, str):
            self._reason = self._reason()
        return self._reason

    def labelled(self, statement: str) -> Route:
        """This route, described as a route of ``statement``."""
        return Route(
            self.shards,
            self._reason,
            statement,
            explanation=self.explanation,
            scatter=self.scatter,
            plan=self.plan,
            plan_error=self.plan_error,
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Route):
            return NotImplemented
        return (self.shards, self.reason, self.statement) == (
            other.shards,
            other.reason,
            other.statement,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        label = f" {self.statement}" if self.statement else ""
        return f"<Route{label} -> {', '.join(map(str, self.shards))}: {self.reason}>"


@dataclasses.dataclass
class Explanation:
    """One node of a route's reason tree.

    ``shards`` is the set the node allows, or ``None`` for "cannot prune".
    """

    text: str
    shards: frozenset[Any] | None
    children: list[Explanation] = dataclasses.field(default_factory=list)

    def lines(self, indent: str = "") -> list[str]:
        """The tree as indented text lines."""
        allowed = "all shards" if self.shards is None else ", ".join(sorted(map(str, self.shards)))
        result = [f"{indent}{self.text} -> {allowed or 'no shard'}"]
        for child in self.children:
            result.extend(child.lines(indent + "  "))
        return result

    def __str__(self) -> str:
        return "\n".join(self.lines())


# -- the analysed shape ---------------------------------------------------------

_MISSING = object()
_NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})


class _Values:
    """Parameter values of one execution: by bind position in the cache key, or by name."""

    __slots__ = ("binds", "parameters")

    def __init__(self, binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]) -> None:
        self.binds = binds
        self.parameters = parameters

    def value(self, reference: _BindRef) -> Any:
        bind = self.binds[reference.position] if reference.position >= 0 else reference.bind
        parameters = self.parameters
        if bind.key in parameters:
            return parameters[bind.key]
        if parameters and is_anonymous_key(bind.key):
            # SQLAlchemy also accepts an anonymous bind's compiled name
            # ("sensor_1"); it is not known here, so do not trust the default
            original = str(getattr(bind, "_orig_key", "") or "")
            if original and any(str(key).startswith(original) for key in parameters):
                return _MISSING
        if bind.callable is None and bind.value is None and bind.required:
            return _MISSING
        return bind.effective_value


@dataclasses.dataclass(frozen=True)
class _BindRef:
    """Where a compared value comes from: a bound parameter of the statement."""

    position: int  # in the statement's cache-key bind list; -1 when uncached
    bind: BindParameter[Any]


@dataclasses.dataclass(frozen=True)
class _KeyTarget:
    """A column whose values determine the shard, and how."""

    description: str
    strategy: Strategy
    python_type: type | None
    own_key: bool = True  # the model's own shard key (never NULL), not a follower's FK


class _Node:
    """A predicate of the analysed WHERE clause."""

    def shards(self, values: _Values) -> frozenset[Any] | None:
        raise NotImplementedError

    def explain(self, values: _Values) -> Explanation:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Unknown(_Node):
    why: str

    def shards(self, values: _Values) -> None:
        return None

    def explain(self, values: _Values) -> Explanation:
        return Explanation(self.why, None)


@dataclasses.dataclass(frozen=True)
class _And(_Node):
    children: tuple[_Node, ...]

    def shards(self, values: _Values) -> frozenset[Any] | None:
        result: frozenset[Any] | None = None
        for child in self.children:
            allowed = child.shards(values)
            if allowed is not None:
                result = allowed if result is None else result & allowed
        return result

    def explain(self, values: _Values) -> Explanation:
        children = [child.explain(values) for child in self.children]
        return Explanation("AND: intersection", self.shards(values), children)


@dataclasses.dataclass(frozen=True)
class _Or(_Node):
    children: tuple[_Node, ...]

    def shards(self, values: _Values) -> frozenset[Any] | None:
        result: frozenset[Any] = frozenset()
        for child in self.children:
            allowed = child.shards(values)
            if allowed is None:
                return None
            result |= allowed
        return result

    def explain(self, values: _Values) -> Explanation:
        children = [child.explain(values) for child in self.children]
        return Explanation("OR: union", self.shards(values), children)


@dataclasses.dataclass(frozen=True)
class _Empty(_Node):
    """A predicate no row can satisfy (e.g. ``shard_key IS NULL``)."""

    why: str

    def shards(self, values: _Values) -> frozenset[Any]:
        return frozenset()

    def explain(self, values: _Values) -> Explanation:
        return Explanation(self.why, frozenset())


def _shard_of(target: _KeyTarget, value: Any) -> tuple[Any, str]:
    """The shard of one compared value, or (None, why it cannot prune)."""
    if target.python_type is not None and not isinstance(value, target.python_type):
        # the database casts ("1" = 1); the strategy would not
        return None, f"{value!r} is not a {target.python_type.__name__} like the column"
    try:
        shard = target.strategy.shard_for(value)
    except Exception as error:  # a user strategy that fails must not break queries
        return None, f"the strategy failed on {value!r} ({type(error).__name__})"
    if shard is None:
        # the database may still match it (collations, casts): no proof
        return None, f"{value!r} is not mapped by the strategy"
    return shard, ""


@dataclasses.dataclass(frozen=True)
class _In(_Node):
    """``key = value``, ``key IN (...)`` or a tuple IN, by reference to binds."""

    targets: tuple[_KeyTarget, ...]
    operand: tuple[_BindRef, ...]
    is_list: bool  # the bind holds a list of values (expanding IN)
    tuple_index: int | None  # position of the key inside tuple values
    shown: str

    def _values(self, values: _Values) -> list[Any] | None:
        if len(self.operand) == 1 and not self.is_list and self.tuple_index is None:
            value = values.value(self.operand[0])
            return None if value is _MISSING else [value]
        collected: list[Any] = []
        for reference in self.operand:
            value = values.value(reference)
            if value is _MISSING:
                return None
            if self.is_list:
                collected.extend(value)
            else:
                collected.append(value)
        if self.tuple_index is not None:
            collected = [item[self.tuple_index] for item in collected]
        return collected

    def _evaluate(self, values: _Values) -> tuple[frozenset[Any] | None, str]:
        items = self._values(values)
        if items is None:
            return (
                None,
                f"{self.targets[0].description}: its value is not given, so it does not prune",
            )
        shards: set[Any] = set()
        for target in self.targets:
            for item in items:
                if item is None:
                    continue  # "= NULL" / "IN (NULL)" matches no row
                shard, why_not = _shard_of(target, item)
                if shard is None:
                    return None, f"{self._describe(items)}: {why_not}, so it does not prune"
                shards.add(shard)
        return frozenset(shards), self._describe(items)

    def _describe(self, items: list[Any]) -> str:
        if self.shown == "=":
            return f"{self.targets[0].description} = {items[0]!r}"
        return f"{self.targets[0].description} IN {tuple(items)!r}"

    def shards(self, values: _Values) -> frozenset[Any] | None:
        # the hot path: the same decisions as _evaluate, without the words
        items = self._values(values)
        if items is None:
            return None
        shards = set()
        for target in self.targets:
            expected = target.python_type
            for item in items:
                if item is None:
                    continue
                if expected is not None and not isinstance(item, expected):
                    return None
                try:
                    shard = target.strategy.shard_for(item)
                except Exception:
                    return None
                if shard is None:
                    return None
                shards.add(shard)
        return frozenset(shards)

    def explain(self, values: _Values) -> Explanation:
        shards, text = self._evaluate(values)
        return Explanation(text, shards)


@dataclasses.dataclass(frozen=True)
class _Between(_Node):
    """``key BETWEEN a AND b`` / ``key < b`` ...: shards of a range strategy's interval."""

    targets: tuple[_KeyTarget, ...]
    low: _BindRef | None
    low_inclusive: bool
    high: _BindRef | None
    high_inclusive: bool

    def _evaluate(self, values: _Values) -> tuple[frozenset[Any] | None, str]:
        low = values.value(self.low) if self.low is not None else None
        high = values.value(self.high) if self.high is not None else None
        text = self._describe(low, high)
        if low is _MISSING or high is _MISSING:
            return None, f"{text}: a bound is not given, so it does not prune"
        shards: set[Any] = set()
        for target in self.targets:
            if target.python_type is str:
                return None, f"{text}: string order depends on the collation, so it does not prune"
            for bound in (low, high):
                expected = target.python_type
                if bound is not None and expected is not None and not isinstance(bound, expected):
                    return (
                        None,
                        f"{text}: {bound!r} is not a {expected.__name__}, so it does not prune",
                    )
            try:
                allowed = target.strategy.shards_between(
                    low, self.low_inclusive, high, self.high_inclusive
                )
            except Exception as error:
                return None, f"{text}: the strategy failed ({type(error).__name__})"
            if allowed is None:
                return None, f"{text}: {target.strategy.describe()} cannot prune a range"
            shards |= allowed
        return frozenset(shards), text

    def _describe(self, low: Any, high: Any) -> str:
        name = self.targets[0].description
        low = "?" if low is _MISSING else low
        high = "?" if high is _MISSING else high
        if self.low is not None and self.high is not None:
            return f"{name} BETWEEN {low!r} AND {high!r}"
        if self.low is not None:
            return f"{name} {'>=' if self.low_inclusive else '>'} {low!r}"
        return f"{name} {'<=' if self.high_inclusive else '<'} {high!r}"

    def shards(self, values: _Values) -> frozenset[Any] | None:
        return self._evaluate(values)[0]

    def explain(self, values: _Values) -> Explanation:
        shards, text = self._evaluate(values)
        return Explanation(text, shards)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The cached analysis of one statement shape."""

    predicate: _Node | None  # None: nothing prunes, ``why`` says why
    why: str
    cacheable: bool = True  # False when a compared bind is not in the cache key
    first_shard_only: bool = False  # the answer is the same on every shard
    # (binds, parameters) -> the one shard, or None: see _single_shard_function
    single: _SingleShard | None = dataclasses.field(
        init=False, default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # compiled once per statement shape; frozen, hence object.__setattr__
        single = _single_shard_function(self.predicate) if self.predicate is not None else None
        object.__setattr__(self, "single", single)


# The fast path of the common route, ``shard_key = :value`` (possibly ANDed with
# predicates that do not prune): one function of (the cache key's binds, the
# execution's parameters) that returns the one shard, or None when it cannot
# decide alone.  None is not a verdict: Router.route() then decides, so the
# fast path only has to agree with route() when it does return a shard.
_SingleShard = Callable[[Sequence[BindParameter[Any]], Mapping[str, Any]], Any]


def _single_shard_function(node: _Node) -> _SingleShard | None:
    """The fast path of ``node``, or None if its shape has none."""
    if isinstance(node, _In):
        return _single_equality(node)
    if isinstance(node, _And):
        picks: list[_SingleShard] = []
        for child in node.children:
            if isinstance(child, _Unknown):
                continue  # allows every shard: nothing to intersect
            pick = _single_shard_function(child)
            if pick is None:
                return None  # a child that may narrow to no shard: route() decides
            picks.append(pick)
        if not picks:
            return None
        if len(picks) == 1:
            return picks[0]

        def intersection(binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]) -> Any:
            chosen = None
            for pick in picks:
                shard = pick(binds, parameters)
                if shard is None or (chosen is not None and shard != chosen):
                    return None  # undecided, or an empty intersection
                chosen = shard
            return chosen

        return intersection
    return None


def _single_equality(node: _In) -> _SingleShard | None:
    """``key = :value`` as one closure: _Values.value + _In.shards, for one value."""
    if node.is_list or node.tuple_index is not None or len(node.operand) != 1:
        return None
    if len(node.targets) != 1:
        return None
    (reference,) = node.operand
    position, fixed_bind = reference.position, reference.bind
    expected = node.targets[0].python_type
    shard_for = node.targets[0].strategy.shard_for

    def equality(binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]) -> Any:
        bind = binds[position] if position >= 0 else fixed_bind
        key = bind.key
        if key in parameters:
            value = parameters[key]
        elif parameters or (bind.callable is None and bind.value is None and bind.required):
            return None  # perhaps given under another name, or not at all
        else:
            value = bind.effective_value  # a value in the statement
        if value is None or (expected is not None and not isinstance(value, expected)):
            return None  # "= NULL" matches no row; a value of another type proves nothing
        try:
            return shard_for(value)
        except Exception:  # a user strategy that fails must not break queries
            return None

    return equality


# -- analysis ---------------------------------------------------------------------

_FLIPPED = {
    operators.lt: operators.gt,
    operators.le: operators.ge,
    operators.gt: operators.lt,
    operators.ge: operators.le,
}


class _Analysis:
    """Turns one statement into a :class:`_Plan`. Short-lived; one per cache miss."""

    def __init__(self, rules: RuleBook, bind_positions: Mapping[int, int]) -> None:
        self.rules = rules
        self.bind_positions = bind_positions
        self.has_outer_join = False
        self.cacheable = True

    def ref(self, bind: BindParameter[Any]) -> _BindRef:
        position = self.bind_positions.get(id(bind), -1)
        if position < 0:
            self.cacheable = False  # its value could not be re-read from another statement
        return _BindRef(position, bind)

    def key_targets(self, column: Any) -> tuple[_KeyTarget, ...] | None:
        """How ``column``'s values determine a shard, or ``None`` if they do not.

        Every base column the expression derives from must determine the
        shard: a column of a UNION that mixes the shard key with another
        column or an expression proves nothing.  Columns of subqueries and
        aliases are proxies whose own bases are in the same proxy set.
        """
        if not hasattr(column, "proxy_set"):
            return None
        found: list[_KeyTarget] = []
        for base in column.proxy_set:
            if isinstance(base, Label):
                continue  # a renamed expression; what it renames is in the set too
            if not isinstance(base, Column):
                return None  # an expression: its values are not shard-key values
            base = plain(base)
            table = base.table
            if not isinstance(table, Table):
                continue  # a subquery's or alias's column; its bases are in the set
            target = self._target_for_column(base, table)
            if target is None:
                return None
            found.append(target)
        return tuple(found) or None

    def _target_for_column(self, column: Column[Any], table: Table) -> _KeyTarget | None:
        rule = self.rules.for_table(table)
        if isinstance(rule, KeyRule) and plain(rule.column) is column:
            return _KeyTarget(f"{rule.name}.{rule.attribute}", rule.strategy, _python_type(column))
        id_strategy = _id_strategy(column)
        if id_strategy is not None:
            # a shard-aware ID names the shard its row was inserted on
            name = rule.name if rule is not None else str(table.name)
            return _KeyTarget(f"{name}.{column.key}", id_strategy, _python_type(column))
        if isinstance(rule, FollowRule):
            # a follower's foreign key carries the shard too when the parent's
            # referenced column does: the parent's shard key or shard-aware ID
            for local, remote in rule.relationship.local_remote_pairs or ():
                if plain(local) is not column:
                    continue
                parent = rule.parent
                name = f"{rule.name}.{column.key}"
                if isinstance(parent, KeyRule) and plain(parent.column) is plain(remote):
                    return _KeyTarget(
                        f"{name} (= {parent.name}.{parent.attribute})",
                        parent.strategy,
                        _python_type(column),
                        own_key=False,
                    )
                parent_ids = _id_strategy(plain(remote))
                if parent_ids is not None:
                    return _KeyTarget(
                        f"{name} (= {parent.name}.{remote.key}, a shard-aware ID)",
                        parent_ids,
                        _python_type(column),
                        own_key=False,
                    )
        return None

    def predicate(self, clause: Any) -> _Node:
        while isinstance(clause, Grouping):
            clause = clause.element
        if isinstance(clause, BooleanClauseList):
            children = tuple(self.predicate(item) for item in clause.clauses)
            if clause.operator is operators.and_:
                return _And(children)
            if clause.operator is operators.or_:
                return _Or(children)
        if isinstance(clause, Exists):
            return _Unknown("EXISTS (...) does not restrict the outer shard key")
        if isinstance(clause, UnaryExpression):
            if clause.operator is operators.inv:
                inner: Any = clause.element
                while isinstance(inner, Grouping):
                    inner = inner.element
                if isinstance(inner, UnaryExpression) and inner.operator is operators.inv:
                    return self.predicate(inner.element)  # NOT NOT x is x
                return _Unknown("NOT ...: rows with other values may be on any shard")
            return _Unknown(f"{_short(clause)} is not a shard-key comparison")
        if isinstance(clause, BinaryExpression):
            return self.comparison(clause)
        return _Unknown(f"{_short(clause)} is not a shard-key comparison")

    def comparison(self, clause: BinaryExpression[Any]) -> _Node:
        left, right, operator = clause.left, clause.right, clause.operator
        if operator in (operators.eq, *_FLIPPED) and isinstance(left, BindParameter):
            left, right = right, left
            operator = _FLIPPED.get(operator, operator)
        if operator is operators.is_ and isinstance(right, Null):
            targets = self.key_targets(left)
            if targets is None:
                return _Unknown(f"{_short(clause)} is not on a shard key")
            if not all(target.own_key for target in targets):
                return _Unknown(f"{targets[0].description} IS NULL: a foreign key can be NULL")
            if self.has_outer_join:
                return _Unknown(
                    f"{targets[0].description} IS NULL: an outer join can produce NULL keys"
                )
            return _Empty(f"{targets[0].description} IS NULL: no row has a NULL shard key")
        if operator is operators.in_op:
            return self.membership(clause, left, right)
        if operator is operators.eq:
            if not isinstance(right, BindParameter):
                return _Unknown(f"{_short(clause)} does not compare with a value")
            targets = self.key_targets(left)
            if targets is None:
                return _Unknown(f"{_short(clause)} is not on a shard key")
            return _In(targets, (self.ref(right),), False, None, "=")
        if operator is operators.between_op:
            targets = self.key_targets(left)
            bounds = list(getattr(right, "clauses", ()))
            if targets is None:
                return _Unknown(f"{_short(clause)} is not on a shard key")
            if len(bounds) != 2 or not all(isinstance(b, BindParameter) for b in bounds):
                return _Unknown(f"{_short(clause)}: bounds are not values")
            if clause.modifiers.get("symmetric"):
                return _Unknown(f"{targets[0].description} BETWEEN SYMMETRIC is not pruned")
            return _Between(targets, self.ref(bounds[0]), True, self.ref(bounds[1]), True)
        if operator in _FLIPPED:
            targets = self.key_targets(left)
            if targets is None:
                return _Unknown(f"{_short(clause)} is not on a shard key")
            if not isinstance(right, BindParameter):
                return _Unknown(f"{_short(clause)} does not compare with a value")
            inclusive = operator in (operators.le, operators.ge)
            if operator in (operators.gt, operators.ge):
                return _Between(targets, self.ref(right), inclusive, None, False)
            return _Between(targets, None, False, self.ref(right), inclusive)
        return _Unknown(f"{_short(clause)} is not a shard-key comparison")

    def membership(self, clause: Any, left: Any, right: Any) -> _Node:
        tuple_index = None
        if isinstance(left, Tuple):
            for index, element in enumerate(left.clauses):
                targets = self.key_targets(element)
                if targets is not None:
                    tuple_index = index
                    break
            else:
                return _Unknown(f"{_short(clause)}: no shard key in the tuple")
        else:
            targets = self.key_targets(left)
            if targets is None:
                return _Unknown(f"{_short(clause)} is not on a shard key")
        while isinstance(right, Grouping):
            right = right.element
        if isinstance(right, BindParameter) and right.expanding:
            return _In(targets, (self.ref(right),), True, tuple_index, "IN")
        if isinstance(right, ClauseList) and all(
            isinstance(item, BindParameter) for item in right.clauses
        ):
            operand = tuple(self.ref(cast(BindParameter[Any], item)) for item in right.clauses)
            return _In(targets, operand, False, tuple_index, "IN")
        if isinstance(right, Select | ScalarSelect | CompoundSelect):
            return _Unknown(f"{targets[0].description} IN (subquery) does not prune")
        return _Unknown(f"{_short(clause)}: the IN list is not made of values")


class IdStrategy(Strategy):
    """Routes by a shard-aware ID: the shard is decoded from the ID itself.

    Example::

        IdStrategy(generator).shard_for(city.id)   # "europe"
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def shard_for(self, value: Any) -> str | None:
        try:
            shard: str = self.generator.shard_of(value)
        except Exception:  # not an ID of this layout: it proves nothing
            return None
        return shard

    def describe(self) -> str:
        return "shard-aware ID"


def _id_strategy(column: Any) -> IdStrategy | None:
    generator = generator_of(column)
    if generator is None or not getattr(generator, "encodes_shard", False):
        return None
    return IdStrategy(generator)


def _python_type(column: Any) -> type | None:
    try:
        python_type: type = column.type.python_type
    except NotImplementedError:
        return None
    return python_type


def _short(clause: Any) -> str:
    text = type(clause).__name__
    with contextlib.suppress(Exception):  # an element may not compile without a dialect
        text = str(clause)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _tables_of(statement: Any) -> list[Table]:
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


def _groups(tables: list[Table], rules: RuleBook) -> dict[Any, list[str]]:
    """Sharded tables by co-location group (the shard-key rule their rows follow)."""
    groups: dict[Any, list[str]] = {}
    for table in tables:
        rule: Rule | None = rules.for_table(table)
        if rule is None:
            continue
        root = rule.root if isinstance(rule, FollowRule) else rule
        groups.setdefault(root.table, []).append(str(table.name))
    return groups


def _has_outer_join(statement: Any) -> bool:
    """Whether any outer join appears, however it was written (ON clause, relationship).

    Checked on the compiled text: ``Select.outerjoin()`` keeps its joins as
    instructions that only become Join objects when compiled.
    """
    try:
        return "OUTER JOIN" in str(statement.compile())
    except Exception:  # cannot compile without a dialect: assume the worst
        return True


def shard_key_hints(statement: Any, rules: RuleBook) -> tuple[list[str], list[str]]:
    """(sharded tables, shard-key attributes that would pin them) of a statement."""
    tables: list[str] = []
    keys: dict[str, None] = {}
    for table in _tables_of(statement):
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


class Router:
    """Routes statements for one set of sharding rules and shard names.

    Thread-safe; the analysis cache is bounded (``cache_size`` shapes).
    """

    def __init__(
        self,
        rules: RuleBook,
        shard_names: Sequence[Any],
        cache_size: int = 500,
        *,
        unsharded_tables_once: bool = False,
    ) -> None:
        self.rules = rules
        # the tables placement keeps one copy of every table that is not sharded:
        # a statement reading only those is answered by any one shard
        self.unsharded_tables_once = unsharded_tables_once
        self.shard_names = tuple(shard_names)
        self._order = {name: index for index, name in enumerate(self.shard_names)}
        self._cache: dict[Any, _Plan] = {}
        self._cache_size = cache_size
        # the last statement single_shard() planned: (its cache key object, plan).
        # SQLAlchemy memoizes a statement's cache key, so a statement executed
        # again is recognised by identity, without hashing its key; one tuple,
        # replaced whole, so threads read a consistent pair
        self._recent: tuple[Any, _Plan | None] = (None, None)

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
    ) -> Any:
        """The one shard :meth:`route` would choose, or ``None`` when it may not be one.

        The fast path for the common ``shard_key = :value`` statement: no
        :class:`Route`, no reason.  ``None`` does not mean "no shard": it means
        "ask :meth:`route`" (several shards, no proof, an executemany...).

        Example::

            router.single_shard(select(City).where(City.continent == "Asia"))  # "asia"
            router.single_shard(select(City))                                  # None
        """
        if parameters is None:
            parameters = _NO_PARAMETERS
        elif not isinstance(parameters, dict) and not isinstance(parameters, Mapping):
            # (a dict is checked first: an ABC's isinstance is slow on the hot path)
            return None  # executemany: route() unions the parameter sets
        generate = getattr(statement, "_generate_cache_key", None)
        cache_key = generate() if generate is not None else None
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
        return shard if shard in self._order else None  # unknown names: route() explains

    # -- planning, cached per statement shape -------------------------------------
    def _plan(
        self, statement: Any, cache_key: Any = _MISSING
    ) -> tuple[_Plan, Sequence[BindParameter[Any]]]:
        if cache_key is _MISSING:
            cache_key = None
            generate = getattr(statement, "_generate_cache_key", None)
            if generate is not None:
                cache_key = generate()
        if cache_key is None:
            return self._analyse(statement, {}), ()
        plan = self._cache.get(cache_key.key)
        if plan is None:
            positions = {id(bind): index for index, bind in enumerate(cache_key.bindparams)}
            plan = self._analyse(statement, positions)
            if not plan.cacheable:
                return plan, cache_key.bindparams
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # shapes are few in practice; start over
            self._cache[cache_key.key] = plan
        return plan, cache_key.bindparams

    def _analyse(self, statement: Any, positions: Mapping[int, int]) -> _Plan:
        kind = type(statement).__name__
        if isinstance(statement, Insert):
            source = getattr(statement, "select", None)
            if source is None:
                return _Plan(None, "INSERT is routed by its rows, not analysed here")
            target = self.rules.for_table(plain(statement.table))
            if target is not None:
                return _Plan(
                    None,
                    f"INSERT ... SELECT into the sharded table {statement.table.name}: its rows "
                    "are not routed one by one",
                )
            plan = self._analyse(source, positions)
            why = f"INSERT ... SELECT: {plan.why}" if plan.why else ""
            return _Plan(plan.predicate, why, plan.cacheable)
        if not isinstance(statement, Select | Update | Delete | CompoundSelect):
            return _Plan(None, f"{kind} cannot be analysed")
        tables = _tables_of(statement)
        groups = _groups(tables, self.rules)
        if not groups and (not tables or self.unsharded_tables_once):
            # every shard would give the same answer (or, writing, apply it again)
            why = "reads no table" if not tables else "reads only tables that are not sharded"
            return _Plan(None, f"{why}: one shard answers", first_shard_only=True)
        if len(groups) > 1:
            described = "; ".join(", ".join(names) for names in groups.values())
            return _Plan(
                None,
                f"reads tables sharded independently of each other ({described}): "
                "each shard can only combine its own rows",
            )
        analysis = _Analysis(self.rules, positions)
        analysis.has_outer_join = _has_outer_join(statement)
        if isinstance(statement, CompoundSelect):
            parts = [self._where(select, analysis) for select in statement.selects]
            if any(part is None for part in parts):
                return _Plan(None, "a SELECT of the UNION has no WHERE clause")
            return _Plan(_Or(tuple(p for p in parts if p is not None)), "", analysis.cacheable)
        predicate = self._where(statement, analysis)
        if predicate is None:
            return _Plan(None, "no WHERE clause")
        return _Plan(predicate, "", cacheable=analysis.cacheable)

    def _where(self, statement: Any, analysis: _Analysis) -> _Node | None:
        while isinstance(statement, Grouping):
            statement = statement.element
        if isinstance(statement, CompoundSelect):
            parts = [self._where(select, analysis) for select in statement.selects]
            if any(part is None for part in parts):
                return None
            return _Or(tuple(p for p in parts if p is not None))
        whereclause = getattr(statement, "whereclause", None)
        if whereclause is None:
            return None
        return analysis.predicate(whereclause)

    # -- evaluation, per execution ------------------------------------------------
    def _evaluate(
        self,
        plan: _Plan,
        binds: Sequence[BindParameter[Any]],
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        *,
        explain: bool,
    ) -> Route:
        every = self.shard_names
        if plan.first_shard_only:
            tree = Explanation(plan.why, frozenset(every[:1])) if explain else None
            return Route(every[:1], plan.why, explanation=tree)
        if plan.predicate is None:
            why = plan.why
            tree = Explanation(why, None) if explain else None
            return Route(every, f"{why}; all shards", explanation=tree, scatter=True)
        if parameters is None:
            parameter_sets: Sequence[Mapping[str, Any]] = ({},)
        elif isinstance(parameters, Mapping):
            parameter_sets = (parameters,)
        else:
            parameter_sets = list(parameters) or ({},)
        predicate = plan.predicate
        union: set[Any] = set()
        unprunable = False
        for parameter_set in parameter_sets:
            allowed = predicate.shards(_Values(binds, parameter_set))
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
            )

        def reason() -> str:
            return _reason_text(_explain_all(predicate, binds, parameter_sets))

        tree = _explain_all(predicate, binds, parameter_sets) if explain else None
        if len(union) == 1:
            (shard,) = union
            if shard in self._order:
                return Route((shard,), reason, explanation=tree)
        if union and union.issubset(self._order):
            shards = tuple(sorted(union, key=self._order.__getitem__))
            return Route(shards, reason, explanation=tree)
        if not union:

            def empty_reason() -> str:
                return f"{reason()}; no shard can match, running on {every[0]} alone"

            return Route(every[:1], empty_reason, explanation=tree)
        return Route(every, reason, explanation=tree, scatter=True)


def _explain_all(
    predicate: _Node,
    binds: Sequence[BindParameter[Any]],
    parameter_sets: Sequence[Mapping[str, Any]],
) -> Explanation:
    value_sets = [_Values(binds, parameters) for parameters in parameter_sets]
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
    shard_names: Sequence[str],
) -> Route:
    """Route one statement without a cache (see :class:`Router` for repeated use)."""
    return Router(rules, shard_names).route(statement, parameters)
