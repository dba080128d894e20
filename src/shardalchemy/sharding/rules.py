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
from typing import Any

from sqlalchemy import Column, ColumnElement, FromClause, Table
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE, ONETOMANY

from ..errors import (
    MissingShardKeyError,
    ModelConfigurationError,
    UnknownShardError,
    UnknownShardKeyError,
)
from .declarations import SHARDING_INFO_KEY, ShardKey, declaration_for, sharded_mappers
from .strategies import ShardName, Strategy

_DIRECTION_WORDS = {ONETOMANY: "one-to-many", MANYTOMANY: "many-to-many", MANYTOONE: "many-to-one"}


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """A resolved :class:`ShardKey`: model or table, column, bound strategy."""

    name: str
    table: FromClause
    column: ColumnElement[Any]
    attribute: str
    strategy: Strategy

    def shard_for_value(self, value: Any) -> str:
        """The shard of a row whose shard key is ``value``; raises a clear error if none."""
        if value is None:
            raise MissingShardKeyError(
                f"{self.name}.{self.attribute} is None; a sharded row needs a shard key "
                f"to choose its shard ({self.strategy.describe()})",
                model=self.name,
                attribute=self.attribute,
                value=None,
            )
        shard = self.strategy.shard_for(value)
        if shard is None:
            raise UnknownShardKeyError(
                f"{self.name}.{self.attribute} = {value!r} maps to no shard "
                f"({self.strategy.describe()}); add it to the strategy or fix the value",
                model=self.name,
                attribute=self.attribute,
                value=value,
            )
        return shard

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
        self, shard_names: tuple[ShardName, ...], *, unsharded_home: ShardName | None = None
    ) -> None:
        self.shard_names = shard_names
        # where the topology keeps unsharded tables: one copy reached through
        # this shard, or (None) a copy on every shard
        self.unsharded_home = unsharded_home
        self._by_mapper: dict[Mapper[Any], Rule | None] = {}
        self._by_table: dict[Any, Rule | None] = {}

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
        strategy = declaration.strategy.bind(self.shard_names)
        for shard in sorted(strategy.shard_names() or ()):
            if shard not in self.shard_names:
                raise UnknownShardError(
                    shard, self.shard_names, f"the strategy of {name}.{attribute}"
                )
        return KeyRule(name, table, column, attribute, strategy)
