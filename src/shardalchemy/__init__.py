"""shardalchemy: horizontal sharding for SQLAlchemy 2.x, ORM and Core, sync and async.

The public API is flat; the modules behind it are private unless named here.

Example::

    from shardalchemy import FollowParent, Lookup, ShardKey, ShardMap

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
        ...

    shard_map = ShardMap.tables("sqlite:///cities.db", ["asia", "europe"])
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        session.add(City(continent="Asia", name="Tokyo"))
        session.commit()
"""

from . import ids
from .errors import (
    BulkWriteError,
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
    UnknownShardError,
    UnknownShardKeyError,
)
from .inspection import StatementLog
from .options import assign_shard, set_shard_id
from .orm import ShardedResult, ShardedSession
from .routing import Explanation, Route, Router
from .sharding import FollowParent, Function, Hash, Lookup, Range, ShardKey, Strategy, shard_table
from .topology import ShardMap

__version__ = "0.1.0"

__all__ = [
    "BulkWriteError",
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
    "ShardQueryError",
    "ShardTimeoutError",
    "ShardedResult",
    "ShardedSession",
    "ShardingError",
    "StatementLog",
    "Strategy",
    "UnknownShardError",
    "UnknownShardKeyError",
    "assign_shard",
    "ids",
    "set_shard_id",
    "shard_table",
]
