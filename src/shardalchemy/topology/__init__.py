"""Topology: which shards exist and where each lives (database, schema or tables).

:class:`ShardMap` is the public entry point; :mod:`.naming` renders the
physical table names of the ``tables`` placement.
"""

from .shard_map import (
    PLACEMENTS,
    DatabaseShardMap,
    SchemaShardMap,
    ShardMap,
    TablesShardMap,
)

__all__ = ["PLACEMENTS", "DatabaseShardMap", "SchemaShardMap", "ShardMap", "TablesShardMap"]
