"""Compile-time table naming for the ``tables`` placement.

In the ``tables`` placement every shard keeps its own copy of each sharded
table inside one database, distinguished by name (``asia_weather_locations``).
The renaming happens where SQLAlchemy turns a table's name into SQL text, never
by editing SQL strings afterwards:

1. The names of sharded tables (and of their indexes and named constraints)
   are each a :class:`~shardalchemy.sharding.scoped_names.ShardScopedName`,
   a ``str`` subclass equal to the original name (see that module).
2. Each shard gets its own copy of the engine's dialect, whose identifier
   preparer renders a ``ShardScopedName`` as the shard's name for it.
   Every table name, qualified column, ``INSERT INTO``, ``CREATE TABLE`` and
   ``REFERENCES`` goes through ``IdentifierPreparer.quote``; literals and other
   identifiers never do, so a literal or a column that happens to contain the
   table's name is left alone.
3. SQLAlchemy's compiled cache keys include the dialect object, so the
   per-shard dialects keep per-shard compiled SQL apart, including the ORM's
   per-mapper caches used during flush.

The dialect copying itself relies on semi-private details, kept in
:mod:`shardalchemy._sqlalchemy.dialects`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Table

from ..sharding.scoped_names import ShardScopedName


def physical_table_name(table: Table, shard_name: str, naming: str) -> str:
    """The name ``table`` has on ``shard_name`` in the ``tables`` placement."""
    if isinstance(table.name, ShardScopedName):
        return naming.format(shard=shard_name, table=str(table.name))
    return str(table.name)


def shard_renamer(shard_name: str, naming: str) -> Callable[[str], str | None]:
    """How ``shard_name``'s dialect renames identifiers: shard-scoped names get its prefix.

    >>> rename = shard_renamer("asia", "{shard}_{table}")
    >>> rename(ShardScopedName("cities", None)), rename("cities")
    ('asia_cities', None)
    """

    def rename(ident: str) -> str | None:
        if isinstance(ident, ShardScopedName):
            return naming.format(shard=shard_name, table=str(ident))
        return None

    return rename
