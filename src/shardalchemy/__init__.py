"""shardalchemy: horizontal sharding for SQLAlchemy 2.x, ORM and Core, sync and async.

The public API is flat: everything a user needs is imported from here.

Example:

>>> from sqlalchemy import Integer, String, select
>>> from sqlalchemy.orm import DeclarativeBase, mapped_column
>>> from shardalchemy import Lookup, ShardKey, ShardMap
>>> class Base(DeclarativeBase):
...     pass
>>> class Town(Base):
...     __tablename__ = "towns"
...     __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
...     id = mapped_column(Integer, primary_key=True)
...     continent = mapped_column(String(20))
...     name = mapped_column(String(50))
>>> shard_map = ShardMap.tables("sqlite://", ["asia", "europe"])
>>> shard_map.create_all(Base.metadata)
>>> with shard_map.sessionmaker()() as session:
...     session.add(Town(continent="Asia", name="Tokyo"))
...     session.add(Town(continent="Europe", name="Rome"))
...     session.commit()
...     session.explain(select(Town).where(Town.continent == "Europe")).shards
('europe',)

The rooms behind it (``topology``, ``sharding``, ``routing``, ``planning``, ``merge``,
``execution``, ``orm``, ``writes``, ``ids``, ``cli``) are described in ARCHITECTURE.md.
"""

from . import ids
from .errors import (
    BulkWriteError,
    CommitError,
    ConfigurationError,
    CrossShardQueryError,
    MissingParentError,
    MissingShardKeyError,
    ModelConfigurationError,
    RoutingError,
    ScatterQueryError,
    ShardingError,
    ShardKeyChangeError,
    ShardKeyError,
    ShardMapError,
    ShardQueryError,
    ShardTimeoutError,
    TwoPhaseUnavailableError,
    UnknownShardError,
    UnknownShardKeyError,
)
from .inspection import StatementLog
from .options import assign_shard, set_shard_id
from .orm import ShardedResult, ShardedSession
from .routing import Explanation, Route, Router
from .sharding import (
    FollowParent,
    Function,
    Hash,
    Lookup,
    Range,
    ShardKey,
    ShardName,
    Strategy,
    shard_table,
)
from .topology import ShardMap

__version__ = "0.1.0"

__all__ = [
    "BulkWriteError",
    "CommitError",
    "ConfigurationError",
    "CrossShardQueryError",
    "Explanation",
    "FollowParent",
    "Function",
    "Hash",
    "Lookup",
    "MissingParentError",
    "MissingShardKeyError",
    "ModelConfigurationError",
    "Range",
    "Route",
    "Router",
    "RoutingError",
    "ScatterQueryError",
    "ShardKey",
    "ShardKeyChangeError",
    "ShardKeyError",
    "ShardMap",
    "ShardMapError",
    "ShardName",
    "ShardQueryError",
    "ShardTimeoutError",
    "ShardedResult",
    "ShardedSession",
    "ShardingError",
    "StatementLog",
    "Strategy",
    "TwoPhaseUnavailableError",
    "UnknownShardError",
    "UnknownShardKeyError",
    "assign_shard",
    "ids",
    "set_shard_id",
    "shard_table",
]
