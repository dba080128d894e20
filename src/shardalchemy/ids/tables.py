"""The tables behind the ID generators, and how to create them.

``shardalchemy_sequences``
    one row per hi/lo sequence: ``name`` (primary key) and ``next_value``, the
    first value no process has leased yet.
``shardalchemy_workers``
    one row per worker number ever leased by a shard-aware generator:
    ``generator`` and ``worker`` (primary key), the ``owner`` token of the
    process holding it, ``expires_at_ms`` (database clock, Unix ms) and
    ``issued_until_ms``: the holder issues only IDs whose time is before it,
    so a process that takes the number over later starts after it.

They live in :data:`ID_METADATA`, apart from your models, so a shard map's
``create_all`` does not copy them to every shard; create them once where the
generators look for them (a designated shard, or a database of their own)
with :func:`create_id_tables`, or add ``ID_METADATA``'s tables to your
migrations.

Example (the shards of a SQLite shard map in one file share a connection, which cannot hold
the generators' short transactions: there, give the tables a file of their own, as the
doctests do with ``ids_url``):

>>> from sqlalchemy import inspect
>>> create_id_tables(shard_map.bind("asia"))  # on a designated shard
>>> sorted(set(inspect(shard_map.bind("asia")).get_table_names()) & set(ID_METADATA.tables))
['shardalchemy_sequences', 'shardalchemy_workers']
>>> create_id_tables(ids_url)  # or in a database of their own
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, create_engine
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement, literal_column

ID_METADATA = MetaData()
"""The :class:`~sqlalchemy.MetaData` holding the ID generators' tables."""

sequences_table = Table(
    "shardalchemy_sequences",
    ID_METADATA,
    Column("name", String(200), primary_key=True),
    Column("next_value", BigInteger, nullable=False),
)
"""Hi/lo sequences: ``name`` -> ``next_value`` (first value not leased yet)."""

workers_table = Table(
    "shardalchemy_workers",
    ID_METADATA,
    Column("generator", String(200), primary_key=True),
    Column("worker", Integer, primary_key=True, autoincrement=False),
    Column("owner", String(64), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("issued_until_ms", BigInteger, nullable=False),
)
"""Worker-number leases of shard-aware generators."""

_DB_NOW_MS = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    # UNIX_TIMESTAMP() has no time-zone ambiguity; NOW(6) only adds the milliseconds
    "mysql": "(UNIX_TIMESTAMP() * 1000 + FLOOR(MICROSECOND(NOW(6)) / 1000))",
    "mariadb": "(UNIX_TIMESTAMP() * 1000 + FLOOR(MICROSECOND(NOW(6)) / 1000))",
}


def db_now_ms(connection: Connection) -> ColumnElement[int] | None:
    """The database clock in Unix milliseconds, as SQL; ``None`` for other dialects.

    Lease expiry is judged by the database's clock, so processes whose own
    clocks disagree still agree on which leases have expired.
    """
    sql = _DB_NOW_MS.get(connection.dialect.name)
    return None if sql is None else literal_column(sql, BigInteger)


def create_id_tables(bind: Engine | Connection | str | URL) -> None:
    """Create the ID generators' tables in ``bind``'s database if missing (idempotent).

    ``bind`` may be a shard map's ``bind(shard)``: the tables then live on that
    shard (in its schema, for the ``schema`` placement).

    Example:

    >>> from sqlalchemy import inspect
    >>> url = ids_url.replace("ids.db", "fresh.db")
    >>> create_id_tables(url)
    >>> create_id_tables(url)  # idempotent
    >>> inspect(create_engine(url)).get_table_names()
    ['shardalchemy_sequences', 'shardalchemy_workers']
    """
    if isinstance(bind, Connection):
        _create(bind)
        return
    engine = create_engine(bind) if isinstance(bind, str | URL) else bind
    try:
        try:
            with engine.begin() as connection:
                _create(connection)
        except DBAPIError:
            # another process may have created them at the same moment
            with engine.begin() as connection:
                _create(connection)
    finally:
        if engine is not bind:
            engine.dispose()


async def create_id_tables_async(bind: Any) -> None:
    """:func:`create_id_tables` for an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.

    Example:

    >>> import asyncio
    >>> from sqlalchemy import inspect
    >>> from sqlalchemy.ext.asyncio import create_async_engine
    >>> url = ids_url.replace("ids.db", "fresh.db")
    >>> async def main() -> None:
    ...     engine = create_async_engine(url.replace("sqlite:", "sqlite+aiosqlite:"))
    ...     await create_id_tables_async(engine)
    ...     await engine.dispose()
    >>> asyncio.run(main())
    >>> inspect(create_engine(url)).get_table_names()
    ['shardalchemy_sequences', 'shardalchemy_workers']
    """
    from sqlalchemy.ext.asyncio import AsyncEngine

    engine = bind if isinstance(bind, AsyncEngine) else AsyncEngine(bind)
    async with engine.begin() as connection:
        await connection.run_sync(_create)


def _create(connection: Connection) -> None:
    ID_METADATA.create_all(connection, checkfirst=True)


__all__ = [
    "ID_METADATA",
    "create_id_tables",
    "create_id_tables_async",
    "db_now_ms",
    "sequences_table",
    "workers_table",
]
