"""Compile-time table naming for the ``tables`` placement.

In the ``tables`` placement every shard keeps its own copy of each sharded
table inside one database, distinguished by name (``asia_weather_locations``).
The renaming happens where SQLAlchemy turns a table's name into SQL text, never
by editing SQL strings afterwards:

1. The names of sharded tables (and of their indexes and named constraints)
   are replaced by :class:`ShardScopedName`, a ``str`` subclass equal to the
   original name, so nothing else in SQLAlchemy sees a difference.
2. Each shard gets its own copy of the engine's dialect, whose identifier
   preparer renders a :class:`ShardScopedName` as the shard's name for it.
   Every table name, qualified column, ``INSERT INTO``, ``CREATE TABLE`` and
   ``REFERENCES`` goes through ``IdentifierPreparer.quote``; literals and other
   identifiers never do, so a literal or a column that happens to contain the
   table's name is left alone.
3. SQLAlchemy's compiled cache keys include the dialect object, so the
   per-shard dialects keep per-shard compiled SQL apart, including the ORM's
   per-mapper caches used during flush.

This module relies on two semi-private details (``IdentifierPreparer.quote`` being
the single place identifiers are rendered, and the compiled cache being keyed
by dialect instance); they are isolated here so an upgrade touches one file.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql.elements import quoted_name

_PREPARER_CLASSES: dict[type, type] = {}


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


class _ShardNamingPreparer:
    """Mixed into a dialect's IdentifierPreparer class; see module docstring."""

    shard_name: str
    naming: str

    def quote(self, ident: str, *args: Any, **kw: Any) -> str:
        if isinstance(ident, ShardScopedName):
            ident = quoted_name(
                self.naming.format(shard=self.shard_name, table=str(ident)), ident.quote
            )
        quoted: str = super().quote(ident, *args, **kw)  # type: ignore[misc]
        return quoted


def _naming_preparer_class(base: type) -> type:
    cls = _PREPARER_CLASSES.get(base)
    if cls is None:
        cls = type(f"ShardNaming{base.__name__}", (_ShardNamingPreparer, base), {})
        _PREPARER_CLASSES[base] = cls
    return cls


def shard_dialect(engine: Engine, shard_name: str, naming: str) -> Dialect:
    """A copy of ``engine``'s dialect that renders shard-scoped names for ``shard_name``.

    Call :func:`refresh_shard_dialect` after the engine's first connect, when
    the dialect has learned the server's facts (version, quoting).
    """
    dialect = copy.copy(engine.dialect)
    _install_preparer(dialect, engine.dialect, shard_name, naming)
    return dialect


def refresh_shard_dialect(dialect: Dialect, base: Dialect) -> None:
    """Bring a shard's dialect copy up to date with ``base`` after it initialized."""
    preparer: Any = dialect.identifier_preparer
    shard_name, naming = preparer.shard_name, preparer.naming
    dialect.__dict__.update(base.__dict__)
    _install_preparer(dialect, base, shard_name, naming)


def _install_preparer(dialect: Dialect, base: Dialect, shard_name: str, naming: str) -> None:
    preparer: Any = copy.copy(base.identifier_preparer)
    preparer.__class__ = _naming_preparer_class(type(base.identifier_preparer))
    preparer.dialect = dialect
    preparer._strings = {}  # its quoting cache is keyed by plain strings
    preparer.shard_name = shard_name
    preparer.naming = naming
    dialect.identifier_preparer = preparer


def physical_table_name(table: Table, shard_name: str, naming: str) -> str:
    """The name ``table`` has on ``shard_name`` in the ``tables`` placement."""
    if isinstance(table.name, ShardScopedName):
        return naming.format(shard=shard_name, table=str(table.name))
    return str(table.name)
