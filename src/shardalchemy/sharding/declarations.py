"""Which model (or table) is sharded by what, and which follows which parent.

A model declares its sharding in one class attribute, ``__sharding__``:

- :class:`ShardKey` names the attribute holding the shard key and the
  strategy that turns its value into a shard;
- :class:`FollowParent` names a many-to-one relationship: the model's rows
  live on the shard of their parent row and have no shard key of their own.

Example:

>>> from sqlalchemy import ForeignKey, Integer, String
>>> from sqlalchemy.orm import DeclarativeBase, mapped_column, relationship
>>> from shardalchemy import FollowParent, Lookup, ShardKey
>>> class Base(DeclarativeBase):
...     pass
>>> class WeatherLocation(Base):
...     __tablename__ = "weather_locations"
...     __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
...     id = mapped_column(Integer, primary_key=True)
...     continent = mapped_column(String(20))
>>> class Report(Base):
...     __tablename__ = "weather_reports"
...     __sharding__ = FollowParent("location")
...     id = mapped_column(Integer, primary_key=True)
...     location_id = mapped_column(ForeignKey("weather_locations.id"))
...     location = relationship(WeatherLocation)
>>> declaration_for(Report.__mapper__)
FollowParent(relationship='location')

A Core table is sharded with :func:`shard_table`.  Models without
``__sharding__`` are not sharded: every shard has its own rows of them.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.orm import Mapper

from ..errors import ModelConfigurationError
from .scoped_names import scope_table_names
from .strategies import Strategy, as_strategy

SHARDING_INFO_KEY = "shardalchemy.sharding"


@dataclasses.dataclass(frozen=True, init=False)
class ShardKey:
    """Shard a model (or table) by the value of one attribute.

    ``strategy`` is a :class:`~shardalchemy.strategies.Strategy`, or a plain
    dict (a lookup) or callable (a function).

    Example (in a model, ``__sharding__ = ShardKey(...)``):

    >>> ShardKey("continent", {"Asia": "asia", "Europe": "europe"}).strategy
    <Lookup: lookup (2 values)>
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

    Example (in a model, ``__sharding__ = FollowParent(...)``):

    >>> FollowParent("location").relationship
    'location'
    """

    relationship: str


Declaration = ShardKey | FollowParent


def shard_table(table: Table, key: ShardKey) -> Table:
    """Shard a Core :class:`~sqlalchemy.Table` by one of its columns.

    ``key.attribute`` is the column's key.  Returns the table.

    Example:

    >>> from sqlalchemy import Column, Integer, MetaData, Table
    >>> from shardalchemy import Hash
    >>> events = Table("events", MetaData(), Column("id", Integer), Column("tenant_id", Integer))
    >>> shard_table(events, ShardKey("tenant_id", Hash())) is events
    True
    """
    if not isinstance(key, ShardKey):
        raise ModelConfigurationError(
            f"shard_table({table.name!r}) needs a ShardKey; followers are declared on models"
        )
    if key.attribute not in table.c:
        raise ModelConfigurationError(
            f"table {table.name!r} has no column {key.attribute!r} to use as its shard key"
        )
    existing = table.info.get(SHARDING_INFO_KEY)
    if existing is not None and existing != key:
        raise ModelConfigurationError(
            f"table {table.name!r} already has shard key {existing!r}; a table has one shard key"
        )
    table.info[SHARDING_INFO_KEY] = key
    scope_table_names(table)
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
        scope_table_names(mapper.local_table)
        _SHARDED_MAPPERS.setdefault(mapper.local_table, []).append(mapper)


def sharded_mappers(tables: Iterable[Table]) -> list[Mapper[Any]]:
    """The mappers of the sharded models mapped to ``tables``."""
    return [mapper for table in tables for mapper in _SHARDED_MAPPERS.get(table, ())]
