"""A shard-key ``IN`` list run as one statement per shard, and in batches past the bind limit.

Each shard is sent only the values of the list that route to it
(:meth:`~shardalchemy.routing.in_lists.InList.by_shard`).  When one shard's
values and the statement's other binds are still more than the database
accepts in one statement (:func:`bind_limit`), that shard's values are cut
into batches, each its own statement; every representation of one canonical
form stays in one batch, so the batches' rows are disjoint and are combined
exactly as the shards' rows are (the session hands every batch's rows to the
same :class:`~shardalchemy.planning.plan.Plan`, one stream each).  What cannot
be split exactly and is past the limit is refused with
:class:`~shardalchemy.CrossShardQueryError` naming the limit.

Example:

>>> continents = ["Asia", "Europe", "North America", "Europe"]
>>> route = shard_map.router.route(select(City).where(City.continent.in_(continents)))
>>> batches = in_list_batches(route.in_list, route.shards, limit=10, backend="sqlite")
>>> batches.batches  # each shard is sent its own values
{'asia': (['Asia'],), 'europe': (['Europe'],), 'north_america': (['North America'],)}
>>> route = shard_map.router.route(
...     select(City).where(City.continent.in_(continents), City.population > 100)
... )
>>> in_list_batches(route.in_list, route.shards, limit=3, backend="sqlite").batches["asia"]
(['Asia'],)
>>> in_list_batches(route.in_list, route.shards, limit=1, backend="sqlite")
Traceback (most recent call last):
...
shardalchemy.errors.CrossShardQueryError: the statement sends 5 bind parameters, past ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CrossShardQueryError
from ..routing.in_lists import InList
from ..sharding.strategies import ShardName

BIND_LIMITS: Mapping[tuple[str, str], int] = {
    # PostgreSQL's protocol counts a statement's parameters in 16 bits
    ("postgresql", "psycopg"): 65_535,
    ("postgresql", "psycopg_async"): 65_535,
    ("postgresql", "pg8000"): 65_535,
    # asyncpg refuses more than 32,767 arguments itself
    ("postgresql", "asyncpg"): 32_767,
    # MariaDB / MySQL prepared statements (MariaDB Connector/Python binds on the server)
    ("mariadb", "mariadbconnector"): 65_535,
    ("mysql", "mysqlconnector"): 65_535,
}
"""Binds one statement may carry, per (dialect, driver), where the driver binds on the server.

Drivers that interpolate the values into the SQL text (PyMySQL, mysqlclient,
aiomysql, psycopg2) are bounded by the server's packet size instead
(``max_allowed_packet``); they are given the protocol's 65,535 too, which
keeps a statement well within the 16 MB MariaDB allows by default unless its
values are long strings.  SQLite's limit is read from the connection
(``SQLITE_LIMIT_VARIABLE_NUMBER``) where the driver tells it.
"""

DEFAULT_BIND_LIMIT = 65_535
"""The limit of a backend :data:`BIND_LIMITS` does not name."""

SMALLEST_BIND_LIMIT = 999
"""No supported database refuses a statement of this many binds (SQLite before 3.32)."""

COMPILED_BINDS = 16
"""Binds kept free for what a dialect adds as it compiles (SQLite's ``LIMIT ? OFFSET ?``
sends an OFFSET of 0 the statement does not hold), under a database's own limit."""


def bind_limit(dialect: str, driver: str, sqlite_limit: int | None = None) -> int:
    """The binds one statement may carry on ``dialect`` through ``driver``.

    ``sqlite_limit`` is what the SQLite connection reports
    (``getlimit(SQLITE_LIMIT_VARIABLE_NUMBER)``), when it could be read; else
    SQLite's compiled-in default is assumed: 32,766 since 3.32, 999 before.

    >>> bind_limit("postgresql", "psycopg"), bind_limit("postgresql", "asyncpg")
    (65535, 32767)
    >>> bind_limit("sqlite", "pysqlite", sqlite_limit=250000)
    250000
    """
    if dialect == "sqlite":
        if sqlite_limit is not None:
            return sqlite_limit
        import sqlite3

        return 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return BIND_LIMITS.get((dialect, driver), DEFAULT_BIND_LIMIT)


@dataclasses.dataclass(frozen=True)
class InListBatches:
    """The values of the shard key's ``IN`` list each statement is sent.

    ``batches`` maps each shard to its statements' value lists (one list: one
    statement); ``bind_key`` is the list's bind parameter, ``given`` whether
    the execution's parameters carry it (else the statement does); ``limit``
    the bind limit the batches keep under.
    """

    bind_key: str
    given: bool
    batches: Mapping[ShardName, tuple[list[Any], ...]]
    limit: int

    @property
    def statements(self) -> int:
        """How many statements run in all."""
        return sum(len(batches) for batches in self.batches.values())

    @property
    def batched(self) -> bool:
        """Whether some shard runs more than one statement."""
        return any(len(batches) > 1 for batches in self.batches.values())


def in_list_batches(
    in_list: InList,
    shards: Sequence[ShardName],
    limit: int,
    backend: str,
    reserve: int = 0,
) -> InListBatches | None:
    """The statements of a statement with ``in_list`` on ``shards``, ``limit`` binds each.

    ``reserve`` binds of each statement are kept free (:data:`COMPILED_BINDS`).

    ``None``: run the statement as it is (one shard, within the limit; or
    values not known here).  Raises :class:`~shardalchemy.CrossShardQueryError`
    when the statement is past the limit and its list cannot be split exactly.
    """
    count = in_list.bind_count()
    if count is None:
        return None  # values given under another name: the database will tell
    if len(shards) == 1 and count + reserve <= limit:
        return None
    if not in_list.splittable:
        if count + reserve > limit:
            raise _past_the_limit(count, limit, backend, in_list.why_not)
        return None
    split = in_list.by_shard(shards)
    values = in_list.values()
    if split is None or values is None:
        if count + reserve > limit:
            raise _past_the_limit(
                count,
                limit,
                backend,
                "a value of the IN list has no known canonical form or shard, so it may match "
                "rows on any shard and its list cannot be cut",
            )
        return None
    capacity = limit - reserve - (count - len(values))
    batches: dict[ShardName, tuple[list[Any], ...]] = {}
    for shard in shards:
        groups = split.get(shard, [])
        packed = _pack(groups, capacity)
        if packed is None:
            raise _past_the_limit(
                count,
                limit,
                backend,
                f"the statement's other binds leave room for {max(capacity, 0)} values of the "
                "list per statement, fewer than the representations of one value",
            )
        batches[shard] = packed or ([],)
    return InListBatches(in_list.bind_key, in_list.given, batches, limit)


def _pack(groups: list[list[Any]], capacity: int) -> tuple[list[Any], ...] | None:
    """Groups packed in order into lists of at most ``capacity`` values, none cut in two."""
    packed: list[list[Any]] = []
    current: list[Any] = []
    for group in groups:
        if len(group) > capacity:
            return None
        if len(current) + len(group) > capacity:
            packed.append(current)
            current = []
        current.extend(group)
    if current:
        packed.append(current)
    return tuple(packed)


def _past_the_limit(count: int, limit: int, backend: str, why: str) -> CrossShardQueryError:
    return CrossShardQueryError(
        f"the statement sends {count} bind parameters, past {backend}'s limit of {limit} per "
        f"statement, and cannot be split into statements whose rows combine exactly: {why}. "
        "Put the shard key's IN list as a condition of its own in the WHERE clause "
        "(... AND key IN (...)), or send the values in smaller statements",
        construct=f"{count} bind parameters (limit {limit})",
    )


def refuse_batched(error: CrossShardQueryError, batches: InListBatches) -> CrossShardQueryError:
    """The planner's refusal of a shape, for a one-shard statement cut into batches."""
    return CrossShardQueryError(
        f"the shard key's IN list is past the bind limit of {batches.limit} per statement, so "
        f"it runs as {batches.statements} statements whose rows must be combined, and this "
        f"statement's rows cannot be combined exactly: {error}",
        construct=error.construct,
    )
