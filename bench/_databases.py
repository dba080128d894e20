"""Where the benchmarks' PostgreSQL databases live, and how the raw driver reaches them."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import URL, Engine


def database_urls(base: URL, prefix: str, shards: list[str]) -> tuple[dict[str, URL], URL]:
    """URLs of one database per shard (``<prefix>_<shard>``) and of one unsharded database.

    Example::

        shard_urls, one_url = database_urls(make_url(url), "bench", ["s0", "s1"])
    """
    sharded = {shard: base.set(database=f"{prefix}_{shard}") for shard in shards}
    return sharded, base.set(database=f"{prefix}_one")


def render(url: URL) -> str:
    """``url`` as a string, password included (``str(url)`` masks it)."""
    return url.render_as_string(hide_password=False)


def libpq(url: URL) -> str:
    """A conninfo URI psycopg.connect() accepts."""
    return render(url.set(drivername="postgresql"))


def create_databases(admin: Engine, names: list[str], reuse: bool = False) -> None:
    """Create each database anew (dropped first), or keep it as it is with ``reuse``."""
    with admin.connect() as connection:
        existing = set(connection.exec_driver_sql("SELECT datname FROM pg_database").scalars())
        for name in names:
            if reuse and name in existing:
                continue
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))


def drop_databases(admin: Engine, names: list[str]) -> None:
    """Drop each database, disconnecting whoever is still connected."""
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
