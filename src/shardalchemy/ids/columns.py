"""ID columns: a generator as a column's default, marked so the router can find it.

:func:`id_column` (Core) and :func:`mapped_id_column` (ORM) build a primary-key
column whose default is the generator's ``column_default`` and whose
``info[ID_GENERATOR_INFO]`` is the generator.  :func:`generator_of` finds the
generator of a column (marked, or a plain ``default=generator.column_default``)
and :func:`shard_of_id` turns an ID into its shard when the generator encodes
one, which is what routing ``get()`` / ``WHERE id = ...`` / ``IN`` by ID needs.

Example (``ids`` is a :class:`~shardalchemy.ids.ShardAwareIdGenerator`):

>>> from sqlalchemy import MetaData, Table
>>> towns = Table("towns", MetaData(), id_column("id", ids))
>>> generator_of(towns.c.id) is ids
True
>>> shard_of_id(towns.c.id, ids.next_id("europe"))  # the ID of a row on "europe"
'europe'
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Column
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.types import TypeEngine

ID_GENERATOR_INFO = "shardalchemy.id_generator"
"""The ``Column.info`` key under which :func:`id_column` stores the column's generator."""


@runtime_checkable
class IdGenerator(Protocol):
    """What every ID generator offers: the protocol of the three generators.

    Example:

    >>> from shardalchemy.ids import UUIDv7Generator
    >>> def describe(generator: IdGenerator) -> str:
    ...     return "shard-aware" if generator.encodes_shard else "plain"
    >>> describe(ids), describe(order_ids), describe(UUIDv7Generator())
    ('shard-aware', 'plain', 'plain')
    >>> isinstance(order_ids, IdGenerator)
    True
    """

    encodes_shard: bool

    def column_default(self, context: Any) -> Any:
        """Called by SQLAlchemy with the execution context; returns a new ID."""

    def column_type(self) -> TypeEngine[Any]:
        """The SQL type of the IDs."""


def _column_options(generator: IdGenerator, kwargs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(generator, IdGenerator):
        raise TypeError(f"expected an ID generator, got {generator!r}")
    info = dict(kwargs.pop("info", None) or {})
    info[ID_GENERATOR_INFO] = generator
    options: dict[str, Any] = {
        "primary_key": True,
        "autoincrement": False,  # the generator, not the database, numbers rows
        "default": generator.column_default,
        "info": info,
    }
    options.update(kwargs)
    return options


def id_column(name: str, generator: IdGenerator, **kwargs: Any) -> Column[Any]:
    """A Core :class:`~sqlalchemy.Column` numbered by ``generator`` (primary key by default).

    ``kwargs`` go to ``Column`` (``primary_key=False``, ``comment=...``).

    Example:

    >>> from sqlalchemy import MetaData, String, Table
    >>> towns = Table("towns", MetaData(), id_column("id", ids), Column("name", String(50)))
    >>> towns.c.id.primary_key, towns.c.id.autoincrement, towns.c.id.type
    (True, False, BigInteger())
    >>> towns.c.id.info[ID_GENERATOR_INFO] is ids
    True
    """
    options = _column_options(generator, kwargs)
    return Column(name, generator.column_type(), **options)


def mapped_id_column(generator: IdGenerator, **kwargs: Any) -> MappedColumn[Any]:
    """An ORM :func:`~sqlalchemy.orm.mapped_column` numbered by ``generator``.

    Example:

    >>> from sqlalchemy.orm import DeclarativeBase
    >>> class Numbered(DeclarativeBase):
    ...     pass
    >>> class Town(Numbered):
    ...     __tablename__ = "towns"
    ...     id = mapped_id_column(ids)  # in a module of yours: id: Mapped[int] = ...
    >>> generator_of(Town.id) is ids, Town.__table__.c.id.primary_key
    (True, True)
    """
    options = _column_options(generator, kwargs)
    return mapped_column(generator.column_type(), **options)


def generator_of(column: Any) -> Any | None:
    """The ID generator numbering ``column``, or ``None``.

    Finds the marker set by :func:`id_column` / :func:`mapped_id_column`, or a
    plain ``default=generator.column_default``.  Accepts a ``Column`` or an
    ORM attribute (``City.id``).

    Example:

    >>> generator_of(id_column("id", ids))
    <ShardAwareIdGenerator 'default' worker=None shards={'asia': 0, ...} on database sqlite:///...>
    >>> generator_of(Column("id", order_ids.column_type(), default=order_ids.column_default))
    <HiLoSequence 'orders' block_size=1000 on database sqlite:///...>
    >>> generator_of(City.id) is None  # numbered by the database, not by a generator
    True
    """
    column = getattr(column, "expression", column)  # an ORM attribute -> its column
    info = getattr(column, "info", None) or {}
    generator = info.get(ID_GENERATOR_INFO)
    if generator is not None:
        return generator
    default = getattr(column, "default", None)
    owner = getattr(getattr(default, "arg", None), "__self__", None)
    return owner if isinstance(owner, IdGenerator) else None


def shard_of_id(column: Any, value: Any) -> str | None:
    """The shard a row lives on, from its ID alone; ``None`` if the column's IDs do not say.

    Raises :class:`~shardalchemy.ids.InvalidIdError` for a value that cannot be
    an ID of the column's shard-aware generator.

    Example:

    >>> shard_of_id(id_column("id", ids), ids.next_id("europe"))
    'europe'
    >>> shard_of_id(id_column("id", order_ids), order_ids.next_id()) is None  # no shard in it
    True
    """
    generator = generator_of(column)
    if generator is None or not generator.encodes_shard:
        return None
    shard: str = generator.shard_of(value)
    return shard


__all__ = [
    "ID_GENERATOR_INFO",
    "IdGenerator",
    "generator_of",
    "id_column",
    "mapped_id_column",
    "shard_of_id",
]
