"""Resolved sharding rules: one rule class per kind of table.

- :class:`KeyRule`: a table sharded by one of its columns (``ShardKey``);
- :class:`FollowRule`: a table whose rows live on their parent's shard
  (``FollowParent``);
- :class:`UnshardedRule`: a table that is not sharded, and where its rows live.

The :class:`RuleBook` resolves a shard map's declarations into rules once and
answers, for any table or mapper, which rule applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Column, ColumnElement, FromClause, Table
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE, ONETOMANY

from ..errors import (
    MissingShardKeyError,
    ModelConfigurationError,
    ShardingError,
    UnknownShardError,
    UnknownShardKeyError,
)
from .canonical import CanonicalForm, canonical_form, dialect_names
from .declarations import SHARDING_INFO_KEY, ShardKey, declaration_for, sharded_mappers
from .strategies import ShardName, Strategy

_DIRECTION_WORDS = {ONETOMANY: "one-to-many", MANYTOMANY: "many-to-many", MANYTOONE: "many-to-one"}


class CanonicalStrategy(Strategy):
    """A key rule's strategy as callers see it: any value is canonicalized first.

    ``shard_for(value)`` asks the strategy about the canonical form of the stored
    values ``column = value`` matches (:mod:`shardalchemy.sharding.canonical`),
    and returns ``None`` ("no proof": every shard, or the caller's clear error)
    when that form is not known.  ``key_strategy`` is the strategy itself, keyed
    by canonical forms.

    Example (an ``Integer`` shard key, a ``Lookup`` declared with a string key):

    >>> from sqlalchemy import Column, Integer, MetaData, Table
    >>> from shardalchemy import Lookup
    >>> table = Table("t", MetaData(), Column("tenant", Integer))
    >>> rule = KeyRule("T", table, table.c.tenant, "tenant", Lookup({"7": "seven"}))
    >>> rule.strategy.shard_for(7), rule.strategy.shard_for("7"), rule.strategy.shard_for("7.5")
    ('seven', 'seven', None)
    """

    def __init__(self, key_strategy: Strategy, canonical: Callable[[Any], Any]) -> None:
        self.key_strategy = key_strategy
        self.canonical = canonical
        self._shard_for = key_strategy.shard_for

    def shard_for(self, value: Any) -> ShardName | None:
        if value is None:
            return None
        try:
            value = self.canonical(value)
        except ShardingError:  # its stored form is not known: no proof
            return None
        return self._shard_for(value)

    def shard_names(self) -> frozenset[str] | None:
        return self.key_strategy.shard_names()

    def shards_between(
        self, low: Any, low_inclusive: bool, high: Any, high_inclusive: bool
    ) -> frozenset[str] | None:
        bounds = []
        for bound in (low, high):
            if bound is not None:
                try:
                    form = self.canonical(bound)
                except ShardingError:
                    return None
                if form != bound:  # a bound compared as another value moves the boundary
                    return None
                bound = form
            bounds.append(bound)
        return self.key_strategy.shards_between(bounds[0], low_inclusive, bounds[1], high_inclusive)

    def describe(self) -> str:
        return self.key_strategy.describe()

    def __getattr__(self, name: str) -> Any:  # the strategy's own attributes (buckets, mapping)
        if name in ("key_strategy", "canonical", "_shard_for"):
            raise AttributeError(name)
        return getattr(self.key_strategy, name)

    def __repr__(self) -> str:
        return repr(self.key_strategy)


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """A resolved :class:`ShardKey`: model or table, column, strategy, canonical form.

    Every value is routed by its canonical form, the value the database stores
    (:mod:`shardalchemy.sharding.canonical`), on every path: a row written
    (:meth:`shard_for_value`, :meth:`shard_of_stored`) and a value looked up
    (:meth:`shard_of_key`, and ``strategy.shard_for``: the rule's ``strategy``
    is a :class:`CanonicalStrategy`).  ``key_strategy`` is the declared
    strategy bound to the shards, with the values it names (``Lookup`` keys,
    ``Range`` bounds) in canonical form; it is asked about canonical forms only.

    Example (the weather world's ``City``, on SQLite):

    >>> rule = shard_map.rules.for_mapper(City.__mapper__)
    >>> rule.shard_for_value("Asia"), rule.shard_of_key("Mars")
    ('asia', None)
    """

    name: str
    table: FromClause
    column: ColumnElement[Any]
    attribute: str
    strategy: Strategy
    form: CanonicalForm = None  # type: ignore[assignment]  # None: the column's generic form
    key_strategy: Strategy = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        form = self.form
        if form is None:  # a rule built by hand: the form of a RuleBook without a dialect
            form = canonical_form(self.column.type, None, model=self.name, attribute=self.attribute)
            object.__setattr__(self, "form", form)
        strategy = self.strategy
        if isinstance(strategy, CanonicalStrategy):
            key_strategy = strategy.key_strategy  # already canonical (dataclasses.replace)
        else:
            key_strategy = strategy.canonicalized(
                form.stored, f"{self.name}.{self.attribute}", converts=form.converts
            )
        object.__setattr__(self, "key_strategy", key_strategy)
        object.__setattr__(self, "strategy", CanonicalStrategy(key_strategy, form.compared))

    def canonical(self, value: Any) -> Any:
        """The value a row written with shard key ``value`` holds; raises :class:`ShardKeyError`.

        ``None`` raises :class:`~shardalchemy.MissingShardKeyError`.
        """
        if value is None:
            raise MissingShardKeyError(
                f"{self.name}.{self.attribute} is None; a sharded row needs a shard key "
                f"to choose its shard ({self.strategy.describe()})",
                model=self.name,
                attribute=self.attribute,
                value=None,
            )
        return self.form.stored(value)

    def shard_for_value(self, value: Any) -> str:
        """The shard of a row whose shard key is ``value``; raises a clear error if none."""
        stored = self.canonical(value)
        shard = self.key_strategy.shard_for(stored)
        if shard is None:
            shown = repr(value) if stored == value else f"{value!r} (stored as {stored!r})"
            raise UnknownShardKeyError(
                f"{self.name}.{self.attribute} = {shown} maps to no shard "
                f"({self.strategy.describe()}); add it to the strategy or fix the value",
                model=self.name,
                attribute=self.attribute,
                value=value,
            )
        return shard

    def shard_of_stored(self, value: Any) -> ShardName | None:
        """:meth:`shard_for_value` without the errors: ``None`` when it would raise.

        For loops over many rows (bulk writes) that explain a ``None`` afterwards.
        """
        if value is None:
            return None
        try:
            return self.key_strategy.shard_for(self.form.stored(value))
        except ShardingError:  # its stored form is not known
            return None

    def shard_of_key(self, value: Any) -> ShardName | None:
        """The one shard whose rows ``column = value`` can match, or ``None`` if not known.

        For lookups: ``get()``, an UPDATE by primary key, a follower's foreign key.
        ``None`` means "every shard" (a value whose comparison cannot be known,
        one no shard is mapped for, ``None`` itself), never "no shard".
        """
        return self.strategy.shard_for(value)

    def protected_names(self) -> dict[str, str]:
        """Names whose assignment would move a row (attribute and column key) -> as shown."""
        shown = f"its shard key {self.attribute}"
        return {self.attribute: shown, str(self.column.key): shown}


@dataclasses.dataclass(frozen=True)
class FollowRule:
    """A resolved :class:`FollowParent`: the relationship and the parent's rule."""

    name: str
    table: FromClause
    relationship: RelationshipProperty[Any]
    parent: Rule

    def protected_names(self) -> dict[str, str]:
        """Names whose assignment would move a row (foreign-key attributes and columns) -> shown."""
        relationship = self.relationship
        names: dict[str, str] = {}
        for local, _ in relationship.local_remote_pairs or ():
            shown = f"{local.key}, the foreign key it follows its parent by"
            names[str(local.key)] = shown
            prop = relationship.parent.get_property_by_column(local)
            names[prop.key] = shown
        return names

    @property
    def root(self) -> KeyRule:
        """The rule of the ancestor that owns the shard key."""
        rule: Rule = self
        while isinstance(rule, FollowRule):
            rule = rule.parent
        return rule


Rule = KeyRule | FollowRule
"""The rule of a sharded table: by its own key, or by its parent's."""


@dataclasses.dataclass(frozen=True)
class UnshardedRule:
    """A table that is not sharded, and where its rows live.

    ``home`` is the shard whose connection reaches the table's only copy (the
    ``tables`` placement keeps one copy of every unsharded table, in the
    database all shards share), or ``None`` when every shard has a copy of its
    own (the ``database`` and ``schema`` placements): a statement or an
    object must then say which shard it means.

    Example:

    >>> RuleBook(("asia", "europe"), unsharded_home="asia").unsharded("settings")
    UnshardedRule(name='settings', home='asia')
    >>> RuleBook(("asia", "europe")).unsharded("settings").home is None  # a copy per shard
    True
    """

    name: str
    home: ShardName | None


class RuleBook:
    """Resolved sharding rules for one shard map, cached per mapper and table.

    Resolving validates the declaration (attributes exist, the parent is
    sharded, strategies name known shards) and binds strategies to the shard
    map's shard names.
    """

    def __init__(
        self,
        shard_names: tuple[ShardName, ...],
        *,
        unsharded_home: ShardName | None = None,
        dialect: str | Iterable[str] | None = None,
    ) -> None:
        self.shard_names = shard_names
        # where the topology keeps unsharded tables: one copy reached through
        # this shard, or (None) a copy on every shard
        self.unsharded_home = unsharded_home
        self.dialects = dialect_names(dialect)
        """The backends the shards run (several: their strictest common form is used)."""
        self._by_mapper: dict[Mapper[Any], Rule | None] = {}
        self._by_table: dict[Any, Rule | None] = {}
        self._forms: dict[Any, CanonicalForm | None] = {}

    def canonical_form(self, column: Any, name: str) -> CanonicalForm | None:
        """The canonical form of ``column``'s values (``None``: its type has none).

        For columns that route without being a shard key (shard-aware IDs).
        """
        try:
            return self._forms[column]
        except (KeyError, TypeError):
            pass
        try:
            form: CanonicalForm | None = canonical_form(
                column.type, self.dialects, model=name, attribute=str(column.key)
            )
        except ModelConfigurationError:
            form = None
        with contextlib.suppress(TypeError):
            self._forms[column] = form
        return form

    def for_mapper(self, mapper: Mapper[Any]) -> Rule | None:
        """The rule of ``mapper`` (``None`` if it is not sharded)."""
        try:
            return self._by_mapper[mapper]
        except KeyError:
            pass
        rule = self._resolve_mapper(mapper, ())
        self._by_mapper[mapper] = rule
        if rule is not None:
            self._by_table.setdefault(rule.table, rule)
        return rule

    def unsharded(self, name: str) -> UnshardedRule:
        """The rule of a table (or model) named ``name`` that is not sharded."""
        return UnshardedRule(name, self.unsharded_home)

    def check(self, metadata: Any) -> list[Rule]:
        """Resolve the rules of every sharded model and table in ``metadata``.

        Raises the first configuration error (a strategy naming an unknown
        shard, a follower of an unsharded parent, ...) instead of at first use.
        """
        rules = [self.for_mapper(mapper) for mapper in sharded_mappers(metadata.tables.values())]
        rules += [self.for_table(table) for table in metadata.tables.values()]
        return list(dict.fromkeys(rule for rule in rules if rule is not None))

    def for_table(self, table: Any) -> Rule | None:
        """The rule of a Core table, or of the model mapped to it."""
        try:
            return self._by_table[table]
        except (KeyError, TypeError):
            pass
        mappers = sharded_mappers([table]) if isinstance(table, Table) else None
        if mappers:
            return self.for_mapper(mappers[0])
        rule: Rule | None = None
        declaration = getattr(table, "info", {}).get(SHARDING_INFO_KEY)
        if isinstance(declaration, ShardKey):
            rule = self._key_rule(str(table.name), table, declaration)
        with contextlib.suppress(TypeError):  # an unhashable FROM is simply not cached
            self._by_table[table] = rule
        return rule

    def _resolve_mapper(self, mapper: Mapper[Any], seen: tuple[Mapper[Any], ...]) -> Rule | None:
        name = mapper.class_.__name__
        if mapper in seen:
            chain = " -> ".join(m.class_.__name__ for m in (*seen, mapper))
            raise ModelConfigurationError(f"{name} follows itself through a cycle: {chain}")
        declaration = declaration_for(mapper)
        table = mapper.local_table
        if declaration is None:
            return self.for_table(table) if isinstance(table, Table) else None
        if isinstance(declaration, ShardKey):
            return self._key_rule(name, table, declaration, mapper)
        relationship = mapper.relationships.get(declaration.relationship)
        if relationship is None:
            raise ModelConfigurationError(
                f"{name} follows {declaration.relationship!r}, but {name} has no relationship "
                f"of that name (relationships: {sorted(mapper.relationships.keys())})"
            )
        if relationship.direction is not MANYTOONE:
            raise ModelConfigurationError(
                f"{name}.{declaration.relationship} must be a many-to-one relationship to the "
                f"parent that {name} follows, not {_DIRECTION_WORDS[relationship.direction]}"
            )
        parent_mapper = relationship.mapper
        if parent_mapper in self._by_mapper:
            parent = self._by_mapper[parent_mapper]
        else:
            # resolved once and cached, so a follower shares its parent's
            # rule (and bound strategy) instead of a copy
            parent = self._resolve_mapper(parent_mapper, (*seen, mapper))
            self._by_mapper[parent_mapper] = parent
            if parent is not None:
                self._by_table.setdefault(parent.table, parent)
        if parent is None:
            raise ModelConfigurationError(
                f"{name} follows {declaration.relationship!r} to "
                f"{relationship.mapper.class_.__name__}, which is not sharded; give "
                f"{relationship.mapper.class_.__name__} a __sharding__ = ShardKey(...)"
            )
        return FollowRule(name, table, relationship, parent)

    def _key_rule(
        self, name: str, table: Any, declaration: ShardKey, mapper: Mapper[Any] | None = None
    ) -> KeyRule:
        attribute = declaration.attribute
        if mapper is not None:
            prop = mapper.column_attrs.get(attribute)
            if prop is None or len(prop.columns) != 1 or not isinstance(prop.columns[0], Column):
                raise ModelConfigurationError(
                    f"{name}.__sharding__ names shard key {attribute!r}, which is not a "
                    f"column of {name}'s table (a shard key is a stored column, not an "
                    "expression or relationship)"
                )
            column = prop.columns[0]
        else:
            column = table.c[attribute]
        form = canonical_form(column.type, self.dialects, model=name, attribute=attribute)
        rule = KeyRule(
            name, table, column, attribute, declaration.strategy.bind(self.shard_names), form
        )
        for shard in sorted(rule.strategy.shard_names() or ()):
            if shard not in self.shard_names:
                raise UnknownShardError(
                    shard, self.shard_names, f"the strategy of {name}.{attribute}"
                )
        return rule
