"""Which table names are per shard: the mark a sharded table's name carries.

A sharded table's name (and its indexes' and named constraints' names) is a
:class:`ShardScopedName`: a ``str`` subclass equal to the original name, so
nothing in SQLAlchemy sees a difference, but the ``tables`` placement renders
it with the shard's prefix (see :mod:`shardalchemy.topology.naming`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.sql.elements import quoted_name


class ShardScopedName(quoted_name):
    """A table, index or constraint name that each shard renders its own way."""

    __slots__ = ()


def scope_table_names(table: Table) -> None:
    """Mark ``table``'s name and its index/constraint names as shard-scoped.

    Idempotent. Harmless in the ``database`` and ``schema`` placements, whose
    dialects render a :class:`ShardScopedName` exactly like the plain name.
    """
    if not isinstance(table.name, ShardScopedName):
        table.name = ShardScopedName(table.name, getattr(table.name, "quote", None))
    items: list[Any] = [*table.indexes, *table.constraints]
    for item in items:
        name = item.name
        if isinstance(name, str) and not isinstance(name, ShardScopedName):
            # a name made by a naming convention is final already, so dropping
            # its ``conv`` marker does not re-apply the convention
            item.name = ShardScopedName(str(name), getattr(name, "quote", None))
