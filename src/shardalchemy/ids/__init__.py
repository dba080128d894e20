"""Globally unique ID generators for sharded data: hi/lo blocks, shard-aware 64-bit IDs, UUIDv7.

Three choices, all usable as ORM or Core column defaults, sync and async:

:class:`HiLoSequence`
    Named 64-bit sequences.  Each process leases a block of values in a short
    transaction on a table (on a designated shard or a database of its own)
    and hands them out from memory.  Compact integers; no shard in the value.
:class:`ShardAwareIdGenerator`
    64-bit IDs laid out ``time | shard | worker | sequence`` (see
    :class:`IdLayout`): issued in memory, time-ordered, and the shard of the
    row is recoverable from the ID alone (:meth:`~ShardAwareIdGenerator.shard_of`).
    Worker numbers are leased from a table with expiry and renewal.
:class:`UUIDv7Generator`
    RFC 9562 UUIDv7 keys; no table at all.  **The shard is not encoded in a
    UUID**: rows keyed by UUIDv7 cannot be routed by their ID.

Create the tables the first two need once with :func:`create_id_tables`.

Example (the doctests keep the ID tables in a SQLite file of their own, ``ids_url``: a shard
map's SQLite shards in one file share a connection, which cannot hold them; on a server,
``shard_map.bind("asia")`` does):

>>> from sqlalchemy.orm import DeclarativeBase, Mapped
>>> from shardalchemy import Lookup, ShardKey
>>> from shardalchemy.ids import ShardAwareIdGenerator, create_id_tables, mapped_id_column
>>> create_id_tables(ids_url)
>>> ids = ShardAwareIdGenerator(ids_url, shard_map)
>>> class Numbered(DeclarativeBase):
...     pass
>>> class Town(Numbered):
...     __tablename__ = "towns"
...     __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
...     id: Mapped[int] = mapped_id_column(ids)
...     continent: Mapped[str]
>>> shard_map.create_all(Numbered.metadata)
>>> with Session() as session:
...     town = Town(continent="Europe")
...     session.add(town)
...     session.commit()
...     ids.shard_of(town.id)
'europe'
>>> ids.close()
"""

from .columns import (
    ID_GENERATOR_INFO,
    IdGenerator,
    generator_of,
    id_column,
    mapped_id_column,
    shard_of_id,
)
from .errors import (
    ClockMovedBackwardsError,
    IdConfigurationError,
    IdGeneratorError,
    IdLayoutError,
    IdSpaceExhaustedError,
    InvalidIdError,
    SequenceUnavailableError,
    WorkerLeaseError,
)
from .hilo import HiLoSequence
from .layout import DEFAULT_EPOCH_MS, MAX_ID, IdClock, IdLayout, IdParts, number_shards
from .shard_aware import ShardAwareIdGenerator
from .tables import ID_METADATA, create_id_tables, create_id_tables_async
from .uuid7 import UUIDv7Generator, uuid7_from

__all__ = [
    "DEFAULT_EPOCH_MS",
    "ID_GENERATOR_INFO",
    "ID_METADATA",
    "MAX_ID",
    "ClockMovedBackwardsError",
    "HiLoSequence",
    "IdClock",
    "IdConfigurationError",
    "IdGenerator",
    "IdGeneratorError",
    "IdLayout",
    "IdLayoutError",
    "IdParts",
    "IdSpaceExhaustedError",
    "InvalidIdError",
    "SequenceUnavailableError",
    "ShardAwareIdGenerator",
    "UUIDv7Generator",
    "WorkerLeaseError",
    "create_id_tables",
    "create_id_tables_async",
    "generator_of",
    "id_column",
    "mapped_id_column",
    "number_shards",
    "shard_of_id",
    "uuid7_from",
]
