"""Which model (or table) is sharded by what, and which follows which parent.

A model declares its sharding in one class attribute, ``__sharding__``:

- :class:`ShardKey` names the attribute holding the shard key and the
  strategy that turns its value into a shard;
- :class:`FollowParent` names a many-to-one relationship: the model's rows
  live on the shard of their parent row and have no shard key of their own.

Example::

    class WeatherLocation(Base):
        __tablename__ = "weather_locations"
        __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", ...}))
        ...

    class Report(Base):
        __tablename__ = "weather_reports"
        __sharding__ = FollowParent("location")
        location: Mapped[WeatherLocation] = relationship(back_populates="reports")

A Core table is sharded with :func:`shard_table`.  Models without
``__sharding__`` are not sharded: every shard has its own rows of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Column, ColumnElement, FromClause, Table, event
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE, ONETOMANY

from . import _naming
from .errors import (
    MissingShardKeyError,
    ModelConfigurationError,
    UnknownShardError,
    UnknownShardKeyError,
)
from .strategies import Strategy, as_strategy

_INFO_KEY = "shardalchemy.sharding"
_DIRECTION_WORDS = {ONETOMANY: "one-to-many", MANYTOMANY: "many-to-many", MANYTOONE: "many-to-one"}


@dataclasses.dataclass(frozen=True, init=False)
class ShardKey:
    """Shard a model (or table) by the value of one attribute.

    ``strategy`` is a :class:`~shardalchemy.strategies.Strategy`, or a plain
    dict (a lookup) or callable (a function).

    Example::

        __sharding__ = ShardKey("continent", {"Asia": "asia", "Europe": "europe"})
    """

    attribute: str
    strategy: Strategy

    def __init__(
        self,
        attribute: str,
        strategy: Strategy | Mapping[Any, str] | Callable[[Any], str | None],
    ) -> None:
        if not isinstance(attribute, str) or not attribute:
            raise ModelConfigurationError(f"ShardKey needs an attribute name, not {attribute!r}")
        object.__setattr__(self, "attribute", attribute)
        object.__setattr__(self, "strategy", as_strategy(strategy))


@dataclasses.dataclass(frozen=True)
class FollowParent:
    """Keep a model's rows on the shard of their parent, via a many-to-one relationship.

    Example::

        __sharding__ = FollowParent("location")
    """

    relationship: str


Declaration = ShardKey | FollowParent


def shard_table(table: Table, key: ShardKey) -> Table:
    """Shard a Core :class:`~sqlalchemy.Table` by one of its columns.

    ``key.attribute`` is the column's key.  Returns the table.

    Example::

        events = shard_table(Table("events", metadata, ...), ShardKey("tenant_id", Hash()))
    """
    if not isinstance(key, ShardKey):
        raise ModelConfigurationError(
            f"shard_table({table.name!r}) needs a ShardKey; followers are declared on models"
        )
    if key.attribute not in table.c:
        raise ModelConfigurationError(
            f"table {table.name!r} has no column {key.attribute!r} to use as its shard key"
        )
    existing = table.info.get(_INFO_KEY)
    if existing is not None and existing != key:
        raise ModelConfigurationError(
            f"table {table.name!r} already has shard key {existing!r}; a table has one shard key"
        )
    table.info[_INFO_KEY] = key
    _naming.scope_table_names(table)
    return table


def declaration_for(mapper: Mapper[Any]) -> Declaration | None:
    """The ``__sharding__`` declaration that applies to ``mapper``'s class, if any."""
    declarations = [
        (klass, klass.__dict__["__sharding__"])
        for klass in mapper.class_.__mro__
        if "__sharding__" in klass.__dict__ and klass.__dict__["__sharding__"] is not None
    ]
    if not declarations:
        return None
    owner, declaration = declarations[0]
    if isinstance(declaration, list | tuple | set):
        raise ModelConfigurationError(
            f"{owner.__name__}.__sharding__ declares {len(declaration)} shard keys; a model "
            "has exactly one ShardKey or one FollowParent"
        )
    if not isinstance(declaration, ShardKey | FollowParent):
        raise ModelConfigurationError(
            f"{owner.__name__}.__sharding__ must be a ShardKey or FollowParent, not {declaration!r}"
        )
    for other_owner, other in declarations[1:]:
        other_mapper = getattr(other_owner, "__mapper__", None)  # None for an unmapped mixin
        other_table = getattr(other_mapper, "local_table", None)
        if other != declaration and mapper.local_table is other_table:
            raise ModelConfigurationError(
                f"{owner.__name__} declares {declaration!r} but its base {other_owner.__name__} "
                f"declares {other!r} for the same table; a table has one shard key"
            )
    return declaration


# table -> the sharded mappers of that table, base first (single-table
# inheritance maps several classes to one table)
_SHARDED_MAPPERS: weakref.WeakKeyDictionary[Table, list[Mapper[Any]]] = weakref.WeakKeyDictionary()


@event.listens_for(Mapper, "after_mapper_constructed")
def _scope_sharded_tables(mapper: Mapper[Any], class_: type) -> None:
    # the table-name markers must be in place before anything compiles
    declared = any(vars(klass).get("__sharding__") is not None for klass in class_.__mro__)
    if declared and isinstance(mapper.local_table, Table):
        _naming.scope_table_names(mapper.local_table)
        _SHARDED_MAPPERS.setdefault(mapper.local_table, []).append(mapper)


def sharded_mappers(tables: Iterable[Table]) -> list[Mapper[Any]]:
    """The mappers of the sharded models mapped to ``tables``."""
    return [mapper for table in tables for mapper in _SHARDED_MAPPERS.get(table, ())]


# -- resolved rules -------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class FollowRule:
    """A resolved :class:`FollowParent`: the relationship and the parent's rule."""

    name: str
    table: FromClause
    relationship: RelationshipProperty[Any]
    parent: Rule

    @property
    def root(self) -> KeyRule:
        """The rule of the ancestor that owns the shard key."""
        rule: Rule = self
        while isinstance(rule, FollowRule):
            rule = rule.parent
        return rule


Rule = KeyRule | FollowRule


class RuleBook:
    """Resolved sharding rules for one shard map, cached per mapper and table.

    Resolving validates the declaration (attributes exist, the parent is
    sharded, strategies name known shards) and binds strategies to the shard
    map's shard names.
    """

    def __init__(self, shard_names: tuple[str, ...]) -> None:
        self.shard_names = shard_names
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
        mappers = _SHARDED_MAPPERS.get(table) if isinstance(table, Table) else None
        if mappers:
            return self.for_mapper(mappers[0])
        rule: Rule | None = None
        declaration = getattr(table, "info", {}).get(_INFO_KEY)
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
