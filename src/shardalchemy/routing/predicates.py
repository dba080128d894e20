"""The WHERE clause analysed into a tree of predicates, each of which allows a set of shards.

A tree is built once per statement shape (:class:`Analysis`) and evaluated per
execution against that execution's parameter values (:class:`Values`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Column, CompoundSelect, Select, Table
from sqlalchemy.sql import operators
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

from .._sqlalchemy.elements import is_anonymous_key, original_bind_key, plain
from ..sharding.canonical import Canonical, CanonicalForm, unknowable
from ..sharding.rules import FollowRule, KeyRule, RuleBook
from ..sharding.strategies import Strategy, id_strategy_of
from .route import Explanation

MISSING = object()


class Values:
    """Parameter values of one execution: by bind position in the cache key, or by name."""

    __slots__ = ("binds", "parameters")

    def __init__(self, binds: Sequence[BindParameter[Any]], parameters: Mapping[str, Any]) -> None:
        self.binds = binds
        self.parameters = parameters

    def value(self, reference: BindRef) -> Any:
        bind = self.binds[reference.position] if reference.position >= 0 else reference.bind
        parameters = self.parameters
        if bind.key in parameters:
            return parameters[bind.key]
        if parameters and is_anonymous_key(bind.key):
            # SQLAlchemy also accepts an anonymous bind's compiled name
            # ("sensor_1"); it is not known here, so do not trust the default
            original = original_bind_key(bind)
            if original and any(str(key).startswith(original) for key in parameters):
                return MISSING
        if bind.callable is None and bind.value is None and bind.required:
            return MISSING
        return bind.effective_value


@dataclasses.dataclass(frozen=True)
class BindRef:
    """Where a compared value comes from: a bound parameter of the statement."""

    position: int  # in the statement's cache-key bind list; -1 when uncached
    bind: BindParameter[Any]


@dataclasses.dataclass(frozen=True)
class KeyTarget:
    """A column whose values determine the shard, and how.

    ``canonical`` turns a compared value into the canonical form of the stored
    values it matches (raising :class:`~shardalchemy.ShardKeyError` when that is
    not known): the strategy only ever sees canonical forms.  ``orders`` says
    whether SQL orders those as Python does (not strings), so ranges may prune.
    """

    description: str
    strategy: Strategy
    canonical: Canonical
    orders: bool = True
    own_key: bool = True  # the model's own shard key (never NULL), not a follower's FK
    kind: str = "value"
    type_name: str = "value"

    @staticmethod
    def of(
        description: str, strategy: Strategy, form: CanonicalForm | None, own_key: bool = True
    ) -> KeyTarget:
        if form is None:
            return KeyTarget(description, strategy, unknowable, False, own_key)
        return KeyTarget(
            description,
            strategy,
            form.compared,
            form.orders,
            own_key,
            form.kind,
            form.type_name,
        )


class Node:
    """A predicate of the analysed WHERE clause."""

    def shards(self, values: Values) -> frozenset[Any] | None:
        raise NotImplementedError

    def explain(self, values: Values) -> Explanation:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Unknown(Node):
    why: str

    def shards(self, values: Values) -> None:
        return None

    def explain(self, values: Values) -> Explanation:
        return Explanation(self.why, None)


@dataclasses.dataclass(frozen=True)
class And(Node):
    children: tuple[Node, ...]

    def shards(self, values: Values) -> frozenset[Any] | None:
        result: frozenset[Any] | None = None
        for child in self.children:
            allowed = child.shards(values)
            if allowed is not None:
                result = allowed if result is None else result & allowed
        return result

    def explain(self, values: Values) -> Explanation:
        children = [child.explain(values) for child in self.children]
        return Explanation("AND: intersection", self.shards(values), children)


@dataclasses.dataclass(frozen=True)
class Or(Node):
    children: tuple[Node, ...]

    def shards(self, values: Values) -> frozenset[Any] | None:
        result: frozenset[Any] = frozenset()
        for child in self.children:
            allowed = child.shards(values)
            if allowed is None:
                return None
            result |= allowed
        return result

    def explain(self, values: Values) -> Explanation:
        children = [child.explain(values) for child in self.children]
        return Explanation("OR: union", self.shards(values), children)


@dataclasses.dataclass(frozen=True)
class Empty(Node):
    """A predicate no row can satisfy (e.g. ``shard_key IS NULL``)."""

    why: str

    def shards(self, values: Values) -> frozenset[Any]:
        return frozenset()

    def explain(self, values: Values) -> Explanation:
        return Explanation(self.why, frozenset())


def _shard_of(target: KeyTarget, value: Any) -> tuple[Any, str]:
    """The shard of one compared value, or (None, why it cannot prune)."""
    try:
        # the database compares the stored value ("1" = 1): so does the strategy
        value = target.canonical(value)
    except Exception as error:  # a ShardKeyError, or a TypeDecorator that fails
        reason = getattr(error, "reason", None) or type(error).__name__
        return None, f"{value!r} is not compared as one stored value ({reason})"
    try:
        shard = target.strategy.shard_for(value)
    except Exception as error:  # a user strategy that fails must not break queries
        return None, f"the strategy failed on {value!r} ({type(error).__name__})"
    if shard is None:
        # the database may still match it (collations, casts): no proof
        return None, f"{value!r} is not mapped by the strategy"
    return shard, ""


@dataclasses.dataclass(frozen=True)
class In(Node):
    """``key = value``, ``key IN (...)`` or a tuple IN, by reference to binds."""

    targets: tuple[KeyTarget, ...]
    operand: tuple[BindRef, ...]
    is_list: bool  # the bind holds a list of values (expanding IN)
    tuple_index: int | None  # position of the key inside tuple values
    shown: str

    def _items(self, values: Values) -> list[Any] | None:
        if len(self.operand) == 1 and not self.is_list and self.tuple_index is None:
            value = values.value(self.operand[0])
            return None if value is MISSING else [value]
        collected: list[Any] = []
        for reference in self.operand:
            value = values.value(reference)
            if value is MISSING:
                return None
            if self.is_list:
                collected.extend(value)
            else:
                collected.append(value)
        if self.tuple_index is not None:
            collected = [item[self.tuple_index] for item in collected]
        return collected

    def _evaluate(self, values: Values) -> tuple[frozenset[Any] | None, str]:
        items = self._items(values)
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

    def shards(self, values: Values) -> frozenset[Any] | None:
        # the hot path: the same decisions as _evaluate, without the words
        items = self._items(values)
        if items is None:
            return None
        shards = set()
        for target in self.targets:
            canonical = target.canonical
            shard_for = target.strategy.shard_for
            for item in items:
                if item is None:
                    continue
                try:
                    shard = shard_for(canonical(item))
                except Exception:  # a refused value, or a failing user strategy: no proof
                    return None
                if shard is None:
                    return None
                shards.add(shard)
        return frozenset(shards)

    def explain(self, values: Values) -> Explanation:
        shards, text = self._evaluate(values)
        return Explanation(text, shards)


@dataclasses.dataclass(frozen=True)
class Between(Node):
    """``key BETWEEN a AND b`` / ``key < b`` ...: shards of a range strategy's interval."""

    targets: tuple[KeyTarget, ...]
    low: BindRef | None
    low_inclusive: bool
    high: BindRef | None
    high_inclusive: bool

    def _evaluate(self, values: Values) -> tuple[frozenset[Any] | None, str]:
        low = values.value(self.low) if self.low is not None else None
        high = values.value(self.high) if self.high is not None else None
        text = self._describe(low, high)
        if low is MISSING or high is MISSING:
            return None, f"{text}: a bound is not given, so it does not prune"
        shards: set[Any] = set()
        for target in self.targets:
            if not target.orders:
                order = "the collation" if target.kind == "string" else "the database's type"
                return None, f"{text}: {target.kind} order depends on {order}, so it does not prune"
            bounds: list[Any] = []
            for bound in (low, high):
                if bound is None:
                    bounds.append(None)
                    continue
                try:
                    form = target.canonical(bound)
                except Exception:
                    form = MISSING
                # a bound the database compares as another value would move the boundary
                if form is MISSING or form != bound:
                    return (
                        None,
                        f"{text}: {bound!r} is not a {target.type_name}, so it does not prune",
                    )
                bounds.append(form)
            try:
                allowed = target.strategy.shards_between(
                    bounds[0], self.low_inclusive, bounds[1], self.high_inclusive
                )
            except Exception as error:
                return None, f"{text}: the strategy failed ({type(error).__name__})"
            if allowed is None:
                return None, f"{text}: {target.strategy.describe()} cannot prune a range"
            shards |= allowed
        return frozenset(shards), text

    def _describe(self, low: Any, high: Any) -> str:
        name = self.targets[0].description
        low = "?" if low is MISSING else low
        high = "?" if high is MISSING else high
        if self.low is not None and self.high is not None:
            return f"{name} BETWEEN {low!r} AND {high!r}"
        if self.low is not None:
            return f"{name} {'>=' if self.low_inclusive else '>'} {low!r}"
        return f"{name} {'<=' if self.high_inclusive else '<'} {high!r}"

    def shards(self, values: Values) -> frozenset[Any] | None:
        return self._evaluate(values)[0]

    def explain(self, values: Values) -> Explanation:
        shards, text = self._evaluate(values)
        return Explanation(text, shards)


_FLIPPED = {
    operators.lt: operators.gt,
    operators.le: operators.ge,
    operators.gt: operators.lt,
    operators.ge: operators.le,
}


class Analysis:
    """Turns one statement into a :class:`_Plan`. Short-lived; one per cache miss."""

    def __init__(self, rules: RuleBook, bind_positions: Mapping[int, int]) -> None:
        self.rules = rules
        self.bind_positions = bind_positions
        self.has_outer_join = False
        self.cacheable = True

    def ref(self, bind: BindParameter[Any]) -> BindRef:
        position = self.bind_positions.get(id(bind), -1)
        if position < 0:
            self.cacheable = False  # its value could not be re-read from another statement
        return BindRef(position, bind)

    def key_targets(self, column: Any) -> tuple[KeyTarget, ...] | None:
        """How ``column``'s values determine a shard, or ``None`` if they do not.

        Every base column the expression derives from must determine the
        shard: a column of a UNION that mixes the shard key with another
        column or an expression proves nothing.  Columns of subqueries and
        aliases are proxies whose own bases are in the same proxy set.
        """
        if not hasattr(column, "proxy_set"):
            return None
        found: list[KeyTarget] = []
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

    def _target_for_column(self, column: Column[Any], table: Table) -> KeyTarget | None:
        rule = self.rules.for_table(table)
        if isinstance(rule, KeyRule) and plain(rule.column) is column:
            return KeyTarget.of(f"{rule.name}.{rule.attribute}", rule.key_strategy, rule.form)
        id_strategy = id_strategy_of(column)
        if id_strategy is not None:
            # a shard-aware ID names the shard its row was inserted on
            name = rule.name if rule is not None else str(table.name)
            form = self.rules.canonical_form(column, name)
            return KeyTarget.of(f"{name}.{column.key}", id_strategy, form)
        if isinstance(rule, FollowRule):
            # a follower's foreign key carries the shard too when the parent's
            # referenced column does: the parent's shard key or shard-aware ID
            for local, remote in rule.relationship.local_remote_pairs or ():
                if plain(local) is not column:
                    continue
                parent = rule.parent
                name = f"{rule.name}.{column.key}"
                if isinstance(parent, KeyRule) and plain(parent.column) is plain(remote):
                    # the foreign key holds the parent's key: canonical as the parent's
                    return KeyTarget.of(
                        f"{name} (= {parent.name}.{parent.attribute})",
                        parent.key_strategy,
                        parent.form,
                        own_key=False,
                    )
                parent_ids = id_strategy_of(plain(remote))
                if parent_ids is not None:
                    return KeyTarget.of(
                        f"{name} (= {parent.name}.{remote.key}, a shard-aware ID)",
                        parent_ids,
                        self.rules.canonical_form(plain(remote), parent.name),
                        own_key=False,
                    )
        return None

    def predicate(self, clause: Any) -> Node:
        while isinstance(clause, Grouping):
            clause = clause.element
        if isinstance(clause, BooleanClauseList):
            children = tuple(self.predicate(item) for item in clause.clauses)
            if clause.operator is operators.and_:
                return And(children)
            if clause.operator is operators.or_:
                return Or(children)
        if isinstance(clause, Exists):
            return Unknown("EXISTS (...) does not restrict the outer shard key")
        if isinstance(clause, UnaryExpression):
            if clause.operator is operators.inv:
                inner: Any = clause.element
                while isinstance(inner, Grouping):
                    inner = inner.element
                if isinstance(inner, UnaryExpression) and inner.operator is operators.inv:
                    return self.predicate(inner.element)  # NOT NOT x is x
                return Unknown("NOT ...: rows with other values may be on any shard")
            return Unknown(f"{_short(clause)} is not a shard-key comparison")
        if isinstance(clause, BinaryExpression):
            return self.comparison(clause)
        return Unknown(f"{_short(clause)} is not a shard-key comparison")

    def comparison(self, clause: BinaryExpression[Any]) -> Node:
        left, right, operator = clause.left, clause.right, clause.operator
        if operator in (operators.eq, *_FLIPPED) and isinstance(left, BindParameter):
            left, right = right, left
            operator = _FLIPPED.get(operator, operator)
        if operator is operators.is_ and isinstance(right, Null):
            targets = self.key_targets(left)
            if targets is None:
                return Unknown(f"{_short(clause)} is not on a shard key")
            if not all(target.own_key for target in targets):
                return Unknown(f"{targets[0].description} IS NULL: a foreign key can be NULL")
            if self.has_outer_join:
                return Unknown(
                    f"{targets[0].description} IS NULL: an outer join can produce NULL keys"
                )
            return Empty(f"{targets[0].description} IS NULL: no row has a NULL shard key")
        if operator is operators.in_op:
            return self.membership(clause, left, right)
        if operator is operators.eq:
            if not isinstance(right, BindParameter):
                return Unknown(f"{_short(clause)} does not compare with a value")
            targets = self.key_targets(left)
            if targets is None:
                return Unknown(f"{_short(clause)} is not on a shard key")
            return In(targets, (self.ref(right),), False, None, "=")
        if operator is operators.between_op:
            targets = self.key_targets(left)
            bounds = list(getattr(right, "clauses", ()))
            if targets is None:
                return Unknown(f"{_short(clause)} is not on a shard key")
            if len(bounds) != 2 or not all(isinstance(b, BindParameter) for b in bounds):
                return Unknown(f"{_short(clause)}: bounds are not values")
            if clause.modifiers.get("symmetric"):
                return Unknown(f"{targets[0].description} BETWEEN SYMMETRIC is not pruned")
            return Between(targets, self.ref(bounds[0]), True, self.ref(bounds[1]), True)
        if operator in _FLIPPED:
            targets = self.key_targets(left)
            if targets is None:
                return Unknown(f"{_short(clause)} is not on a shard key")
            if not isinstance(right, BindParameter):
                return Unknown(f"{_short(clause)} does not compare with a value")
            inclusive = operator in (operators.le, operators.ge)
            if operator in (operators.gt, operators.ge):
                return Between(targets, self.ref(right), inclusive, None, False)
            return Between(targets, None, False, self.ref(right), inclusive)
        return Unknown(f"{_short(clause)} is not a shard-key comparison")

    def membership(self, clause: Any, left: Any, right: Any) -> Node:
        tuple_index = None
        if isinstance(left, Tuple):
            for index, element in enumerate(left.clauses):
                targets = self.key_targets(element)
                if targets is not None:
                    tuple_index = index
                    break
            else:
                return Unknown(f"{_short(clause)}: no shard key in the tuple")
        else:
            targets = self.key_targets(left)
            if targets is None:
                return Unknown(f"{_short(clause)} is not on a shard key")
        while isinstance(right, Grouping):
            right = right.element
        if isinstance(right, BindParameter) and right.expanding:
            return In(targets, (self.ref(right),), True, tuple_index, "IN")
        if isinstance(right, ClauseList) and all(
            isinstance(item, BindParameter) for item in right.clauses
        ):
            operand = tuple(self.ref(cast(BindParameter[Any], item)) for item in right.clauses)
            return In(targets, operand, False, tuple_index, "IN")
        if isinstance(right, Select | ScalarSelect | CompoundSelect):
            return Unknown(f"{targets[0].description} IN (subquery) does not prune")
        return Unknown(f"{_short(clause)}: the IN list is not made of values")


def _short(clause: Any) -> str:
    text = type(clause).__name__
    with contextlib.suppress(Exception):  # an element may not compile without a dialect
        text = str(clause)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."
