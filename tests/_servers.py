"""Reach the test database servers and create and drop throwaway databases on them.

This module knows nothing about pytest: ``conftest.py`` turns these values into fixtures,
skips and failures. Everything here is usable from a plain script too::

    url = create_server_database("postgresql", new_database_name())
    ...
    drop_server_database("postgresql", url.database)

Server base URLs come from the environment (see ``URL_ENV_VARS``); every database made here is
named ``shardalchemy_test_<8 hex>`` so leftovers from a killed run are easy to spot.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

ServerKind = Literal["postgresql", "mariadb"]
"""A database server the tests can create databases on."""

Backend = Literal["sqlite", "postgresql", "mariadb"]
"""Anything ``make_database`` can create a database for: a server kind or a SQLite file."""

MakeDatabase = Callable[[Backend], URL]
"""Type of the ``make_database`` fixture: ``make_database("postgresql") -> URL``."""

SERVER_KINDS: Final[tuple[ServerKind, ...]] = get_args(ServerKind)
BACKENDS: Final[tuple[Backend, ...]] = get_args(Backend)

URL_ENV_VARS: Final[dict[ServerKind, str]] = {
    "postgresql": "SHARDALCHEMY_TEST_POSTGRESQL_URL",
    "mariadb": "SHARDALCHEMY_TEST_MARIADB_URL",
}
DEFAULT_URLS: Final[dict[ServerKind, str]] = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql",
}
# Administrative statements (CREATE/DROP DATABASE) always go through these synchronous
# drivers, whatever driver the configured URL names (it may be asyncpg, say).
ADMIN_DRIVERS: Final[dict[ServerKind, str]] = {
    "postgresql": "postgresql+psycopg",
    "mariadb": "mysql+pymysql",
}
SERVER_NAMES: Final[dict[ServerKind, str]] = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}

CONNECT_TIMEOUT_SECONDS: Final = 3
# Upper bound on any one CREATE/DROP DATABASE, so a stuck lock fails a teardown instead of
# hanging the whole run.
STATEMENT_TIMEOUT_SECONDS: Final = 30
DATABASE_NAME_PREFIX: Final = "shardalchemy_test_"
_DATABASE_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def server_url(kind: ServerKind, environ: Mapping[str, str] | None = None) -> URL:
    """Return the base URL of the ``kind`` server: its env var if set, else the default.

    >>> server_url("mariadb", {}).drivername
    'mysql+pymysql'
    """
    env = os.environ if environ is None else environ
    return make_url(env.get(URL_ENV_VARS[kind]) or DEFAULT_URLS[kind])


def is_ci(environ: Mapping[str, str]) -> bool:
    """Return True when ``environ`` says we run under CI (``CI`` is ``true``, ``1`` or ``yes``)."""
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@dataclass(frozen=True)
class Unavailable:
    """What to do about a server a test needs but cannot reach: ``skip`` or ``fail``, and why."""

    action: Literal["skip", "fail"]
    message: str


def decide_unavailable(kind: ServerKind, reason: str, environ: Mapping[str, str]) -> Unavailable:
    """Decide between skipping and failing a test whose ``kind`` server is unreachable.

    Under CI (see ``is_ci``) a missing server is a broken machine, so the test fails; on a
    laptop it is normal, so the test skips and says which env var points it at a server.

    >>> decide_unavailable("postgresql", "refused", {"CI": "true"}).action
    'fail'
    """
    name, env_var = SERVER_NAMES[kind], URL_ENV_VARS[kind]
    if is_ci(environ):
        return Unavailable(
            "fail",
            f"{name} server unreachable under CI=true ({reason}); "
            f"start it (.ci/run does) or set {env_var} to a reachable server URL",
        )
    return Unavailable(
        "skip",
        f"{name} server unreachable ({reason}); set {env_var} to a server URL "
        f"(e.g. {DEFAULT_URLS[kind]}) to run this test",
    )


_admin_engines: dict[ServerKind, Engine] = {}


def _admin_engine(kind: ServerKind) -> Engine:
    """Return the one pooled, autocommit engine used for this session's admin statements."""
    if kind not in _admin_engines:
        url = server_url(kind).set(drivername=ADMIN_DRIVERS[kind])
        connect_args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if kind == "mariadb":
            connect_args["read_timeout"] = 2 * STATEMENT_TIMEOUT_SECONDS
        _admin_engines[kind] = sa.create_engine(
            url, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args=connect_args
        )
    return _admin_engines[kind]


def dispose_admin_engines() -> None:
    """Close the admin connections opened by this module (call once at session end)."""
    while _admin_engines:
        _, engine = _admin_engines.popitem()
        engine.dispose()


@functools.cache
def probe_server(kind: ServerKind) -> str | None:
    """Try to connect to the ``kind`` server once per session: None if it answers, else why not.

    The result is cached, so a down server costs one connect timeout per run, not per test.
    """
    url = server_url(kind).set(drivername=ADMIN_DRIVERS[kind])
    connect_args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if kind == "mariadb":
        # PyMySQL's connect_timeout covers only the TCP connect, not the server's greeting.
        connect_args["read_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as error:  # any failure means "not usable"; the message says which
        lines = str(error).strip().splitlines() or [""]
        where = url.render_as_string(hide_password=True)
        return f"{where}: {type(error).__name__}: {lines[0]}"
    finally:
        engine.dispose()
    return None


def server_available(kind: ServerKind) -> bool:
    """Return True if the ``kind`` server accepted a connection (checked once per session)."""
    return probe_server(kind) is None


def new_database_name() -> str:
    """Return a fresh database name, ``shardalchemy_test_<8 hex>``."""
    return f"{DATABASE_NAME_PREFIX}{uuid.uuid4().hex[:8]}"


def _quoted(connection: Connection, name: str) -> str:
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"refusing unusual database name {name!r}")
    return connection.dialect.identifier_preparer.quote_identifier(name)


def create_server_database(kind: ServerKind, name: str) -> URL:
    """Create database ``name`` on the ``kind`` server and return a URL pointing at it.

    The URL keeps the configured driver, user, password and query of the server's base URL.
    """
    with _admin_engine(kind).connect() as connection:
        quoted = _quoted(connection, name)
        if kind == "postgresql":
            connection.exec_driver_sql(f"CREATE DATABASE {quoted} ENCODING 'UTF8'")
        else:
            connection.exec_driver_sql(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4")
    return server_url(kind).set(database=name)


def drop_server_database(kind: ServerKind, name: str) -> None:
    """Drop database ``name`` from the ``kind`` server, disconnecting anyone still using it.

    Connections a test left open (an engine it did not dispose, a transaction it did not end)
    are terminated first, so the drop cannot wait on them.
    """
    with _admin_engine(kind).connect() as connection:
        quoted = _quoted(connection, name)
        if kind == "postgresql":
            _drop_postgresql_database(connection, name, quoted)
        else:
            _drop_mariadb_database(connection, name, quoted)


def _drop_postgresql_database(connection: Connection, name: str, quoted: str) -> None:
    connection.exec_driver_sql(f"SET statement_timeout = '{STATEMENT_TIMEOUT_SECONDS}s'")
    version = connection.dialect.server_version_info or (0,)
    if version >= (13,):
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        return
    connection.execute(
        sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()"
        ),
        {"name": name},
    )
    connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")


def _drop_mariadb_database(connection: Connection, name: str, quoted: str) -> None:
    # DROP DATABASE waits for metadata locks held by open transactions, by default for a day.
    connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {STATEMENT_TIMEOUT_SECONDS}")
    others = connection.execute(
        sa.text(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE DB = :name AND ID <> CONNECTION_ID()"
        ),
        {"name": name},
    ).scalars()
    for thread_id in list(others):
        with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended since the SELECT
            connection.exec_driver_sql(f"KILL CONNECTION {int(thread_id)}")
    connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")


def server_database_exists(kind: ServerKind, name: str) -> bool:
    """Return True if database ``name`` exists on the ``kind`` server."""
    if kind == "postgresql":
        query = "SELECT 1 FROM pg_database WHERE datname = :name"
    else:
        query = "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :name"
    with _admin_engine(kind).connect() as connection:
        return connection.execute(sa.text(query), {"name": name}).first() is not None


class DatabaseFactory:
    """Create throwaway databases on demand and drop them all at once.

    >>> factory = DatabaseFactory(sqlite_dir=Path("/tmp"))
    >>> url = factory.create("sqlite")  # sqlite:////tmp/shardalchemy_test_1a2b3c4d.db
    >>> factory.drop_all()
    """

    def __init__(self, sqlite_dir: Path) -> None:
        self.sqlite_dir = sqlite_dir
        self.created: list[tuple[Backend, str]] = []

    def create(self, kind: Backend) -> URL:
        """Create a new, empty database of ``kind`` and return its URL."""
        name = new_database_name()
        if kind == "sqlite":
            url = URL.create("sqlite", database=str(self.sqlite_dir / f"{name}.db"))
        elif kind in SERVER_KINDS:
            url = create_server_database(kind, name)
        else:
            raise ValueError(f"unknown backend {kind!r}; expected one of {', '.join(BACKENDS)}")
        self.created.append((kind, name))
        return url

    def drop_all(self) -> None:
        """Drop every database this factory created; try all, then raise the first error."""
        errors: list[Exception] = []
        while self.created:
            kind, name = self.created.pop()
            try:
                if kind == "sqlite":
                    (self.sqlite_dir / f"{name}.db").unlink(missing_ok=True)
                else:
                    drop_server_database(kind, name)
            except Exception as error:  # keep dropping the others
                errors.append(error)
        if errors:
            raise RuntimeError(
                f"could not drop {len(errors)} test database(s): "
                + "; ".join(f"{type(e).__name__}: {e}" for e in errors)
            ) from errors[0]
