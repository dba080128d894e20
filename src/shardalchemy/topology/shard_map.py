"""Shard maps: which shards exist and where each one lives.

Three placements, all first-class:

``database``
    every shard is its own database or server, with its own engine
    (any SQLAlchemy URL, or an :class:`~sqlalchemy.engine.Engine`).
``schema``
    shards are schemas of one database: PostgreSQL schemas, MariaDB/MySQL
    databases, or SQLite files ATTACHed to the main one.  Routing uses
    SQLAlchemy's ``schema_translate_map``.
``tables``
    shards are sets of tables inside one database, named by a convention
    (``{shard}_{table}`` by default: ``asia_weather_locations``).  Names are
    rewritten when SQL is compiled, never by editing SQL text.

Example:

>>> weather = ShardMap.tables("sqlite://", ["north_america", "asia", "europe", "south_america"])
>>> weather.create_all(Base.metadata)
>>> with weather.sessionmaker()() as session:
...     session.add(City(id=10, continent="Asia", name="Osaka"))
...     session.commit()
>>> weather.table_name(City.__table__, "asia")
'asia_cities'

Every table of a sharded model exists once per shard.  In the ``tables``
placement other tables exist once in the database; in the ``schema`` and
``database`` placements every shard has its own copy of every table.

A session's shards that live in one database (the ``tables`` and ``schema``
placements) share one connection of that session, so a session writing to
several of them works inside one transaction of that database (one SQLite
transaction, not a wait on the file's write lock), and two sessions are as
isolated as two connections are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import MetaData, create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.schema import CreateSchema

from .._sqlalchemy import drivers
from .._sqlalchemy.dialects import refresh_shard_dialect, shard_dialect
from ..errors import ShardMapError, UnknownShardError
from ..inspection import SHARD_OPTION
from ..planning.planner import Planner
from ..routing.router import Router
from ..sharding.rules import RuleBook
from .collations import check_key_collations
from .naming import physical_table_name, shard_renamer

PLACEMENTS = ("database", "schema", "tables")


def _engine_for(url_or_engine: str | URL | Engine, options: dict[str, Any]) -> Engine:
    """Build an engine (sync, or the sync facade of an async one)."""
    if isinstance(url_or_engine, Engine):
        return url_or_engine
    try:
        url = make_url(url_or_engine)
    except Exception as error:  # SQLAlchemy raises ArgumentError for a bad URL
        raise ShardMapError(f"invalid database URL {url_or_engine!r}: {error}") from None
    # SQLAlchemy's own pools: a queue of connections for a file or a server, one
    # connection per thread (asyncio: one) for an in-memory SQLite database,
    # where every connection would be a database of its own.  A session's
    # shards in one database share one of its connections (see _sqlalchemy/engines.py).
    if url.get_dialect().is_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        return create_async_engine(url, **options).sync_engine
    return create_engine(url, **options)


def _repeated(mapping: Mapping[str, Any], key: Any = None) -> list[tuple[str, str]]:
    """Pairs of keys of ``mapping`` whose values are the same (after ``key``)."""
    seen: dict[Any, str] = {}
    pairs = []
    for name, value in mapping.items():
        folded = key(value) if key is not None and isinstance(value, str) else value
        if folded in seen:
            pairs.append((seen[folded], name))
        else:
            seen[folded] = name
    return pairs


def _refuse_shared_databases(targets: Mapping[str, Any]) -> None:
    """Two shards of the ``database`` placement given the same database (URL or engine)."""
    identities: dict[str, Any] = {}
    for shard, target in targets.items():
        if isinstance(target, Engine):
            identity: Any = ("engine", id(drivers.engine_of(target)))
            url = target.url
        else:
            try:
                url = make_url(target)
            except Exception:  # reported with its own message when the engine is built
                continue
            identity = None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            continue  # every in-memory SQLite database is a database of its own
        rendered = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)
        for key in (identity, ("url", rendered)):
            if key is None:
                continue
            other = identities.setdefault(key, shard)
            if other != shard:
                raise ShardMapError(
                    f"shards {other!r} and {shard!r} are given the same database "
                    f"({url.render_as_string(hide_password=True)}): they would share their "
                    "rows; give each shard a database of its own"
                )


def _database_identity(connection: Connection) -> Any:
    """Who the database behind ``connection`` is, as the server tells (``None``: unknown)."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        database = connection.engine.url.database
        if not database or database == ":memory:":
            return None
        return ("sqlite", str(Path(database).resolve()))
    if dialect == "postgresql":
        query = "SELECT current_database(), inet_server_addr(), current_setting('port')"
    elif dialect in ("mysql", "mariadb"):
        query = "SELECT DATABASE(), @@hostname, @@port"
    else:
        return None
    row = connection.exec_driver_sql(query).first()
    return (dialect, *(str(value) for value in row)) if row is not None else None


def _backend_of(target: Any) -> str | None:
    """The backend (``"postgresql"``, ``"sqlite"``, ...) a URL or engine reaches, if known."""
    if isinstance(target, Engine):
        return str(target.dialect.name)
    try:
        return str(make_url(target).get_backend_name())
    except Exception:  # an invalid URL is reported when its engine is built
        return None


def _check_names(names: Iterable[str], what: str) -> tuple[str, ...]:
    result = tuple(names)
    if not result:
        raise ShardMapError(f"a shard map needs at least one shard ({what})")
    for name in result:
        if not isinstance(name, str) or not name:
            raise ShardMapError(f"shard names must be non-empty strings, got {name!r} ({what})")
    duplicates = sorted({name for name in result if result.count(name) > 1})
    if duplicates:
        raise ShardMapError(f"shard names must be unique; repeated: {duplicates} ({what})")
    return result


class ShardMap:
    """The shards of a sharded store and where each one lives.

    Build one with :meth:`databases`, :meth:`schemas`, :meth:`tables` or
    :meth:`from_config`; hand it to :class:`~shardalchemy.ShardedSession`
    (``ShardedSession(shard_map=...)``) or use :meth:`sessionmaker`.
    """

    placement: str

    def __init__(self, shard_names: Sequence[str], backends: Iterable[str | None] = ()) -> None:
        self.shard_names: tuple[str, ...] = _check_names(shard_names, self.placement)
        self._binds: dict[str, Engine] = {}
        self._lock = threading.RLock()
        # the backends the shards run, read from their URLs without connecting: shard keys
        # are routed by the value those databases store (sharding/canonical.py)
        known = [backend for backend in backends if backend is not None]
        self.rules = RuleBook(
            self.shard_names, unsharded_home=self._unsharded_home(), dialect=known or None
        )
        """The resolved sharding rules of models and tables, checked against this map."""
        self.router = Router(self.rules, self.shard_names)
        """Routes statements over this map's shards (pure; caches per statement shape)."""
        self.planner = Planner(self.rules)
        """Plans statements that run on several shards (pure; see shardalchemy.planner)."""

    def _unsharded_home(self) -> str | None:
        """The shard through which the one copy of each unsharded table is reached.

        ``None`` (the default): every shard has its own copy.
        """
        return None

    # -- construction ----------------------------------------------------
    @staticmethod
    def databases(shards: Mapping[str, str | URL | Engine], **engine_options: Any) -> ShardMap:
        """A database (or server) per shard: ``{"asia": "postgresql+psycopg://.../asia", ...}``."""
        return DatabaseShardMap(shards, **engine_options)

    @staticmethod
    def schemas(
        url: str | URL | Engine,
        shards: Sequence[str] | Mapping[str, str],
        **engine_options: Any,
    ) -> ShardMap:
        """A schema per shard in one database; ``shards`` maps shard -> schema name."""
        return SchemaShardMap(url, shards, **engine_options)

    @staticmethod
    def tables(
        url: str | URL | Engine,
        shards: Sequence[str],
        *,
        naming: str = "{shard}_{table}",
        **engine_options: Any,
    ) -> ShardMap:
        """A set of tables per shard in one database, named by ``naming``."""
        return TablesShardMap(url, shards, naming=naming, **engine_options)

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> ShardMap:
        """Build a shard map from plain data (e.g. parsed TOML/JSON).

        Example:

        >>> ShardMap.from_config(
        ...     {"placement": "tables", "url": "sqlite://", "shards": ["asia", "europe"]}
        ... )
        <TablesShardMap tables shards=['asia', 'europe']>
        """
        if not isinstance(config, Mapping):
            raise ShardMapError(f"a shard map config is a mapping of settings, not {config!r}")
        placement = config.get("placement")
        known = {"placement", "url", "shards", "naming", "engine_options"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ShardMapError(f"unknown shard map setting(s) {unknown}; known: {sorted(known)}")
        if "shards" not in config:
            raise ShardMapError("shard map config needs 'shards'")
        shards = config["shards"]
        if isinstance(shards, str | bytes) or not isinstance(shards, Sequence | Mapping):
            raise ShardMapError(
                f"shard map config 'shards' must be a list of shard names (or a mapping of "
                f"shard -> URL or schema), not {shards!r}"
            )
        engine_options = config.get("engine_options", {})
        if not isinstance(engine_options, Mapping):
            raise ShardMapError(
                "shard map config 'engine_options' must be a mapping of create_engine() "
                f"arguments, not {engine_options!r}"
            )
        options = dict(engine_options)
        if placement == "database":
            return DatabaseShardMap(config["shards"], **options)
        if "url" not in config:
            raise ShardMapError(f"a {placement!r} shard map config needs 'url'")
        if placement == "schema":
            return SchemaShardMap(config["url"], config["shards"], **options)
        if placement == "tables":
            naming = config.get("naming", "{shard}_{table}")
            return TablesShardMap(config["url"], config["shards"], naming=naming, **options)
        raise ShardMapError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}")

    # -- engines -----------------------------------------------------------
    def bind(self, shard: str) -> Engine:
        """The engine that executes statements for ``shard``."""
        bind = self._binds.get(shard)
        if bind is None:
            self.check_shard(shard, "ShardMap.bind()")
            with self._lock:
                bind = self._binds.get(shard)
                if bind is None:
                    bind = self._binds[shard] = self._make_bind(shard)
        return bind

    def binds(self) -> dict[str, Engine]:
        """Every shard's engine, by shard name, in declaration order."""
        return {name: self.bind(name) for name in self.shard_names}

    def _make_bind(self, shard: str) -> Engine:
        raise NotImplementedError

    def check_shard(self, shard: Any, where: str) -> str:
        """Return ``shard`` if the map defines it, else raise :class:`UnknownShardError`."""
        if shard not in self.shard_names:
            raise UnknownShardError(shard, self.shard_names, where)
        return str(shard)

    def location(self, shard: str) -> str:
        """Where ``shard`` lives, in words (for ``explain`` and the demo)."""
        raise NotImplementedError

    def table_name(self, table: Any, shard: str) -> str:
        """The name ``table`` has on ``shard`` (schema-qualified where relevant)."""
        return str(table.name)

    # -- schema management ----------------------------------------------
    def check(self, metadata: MetaData) -> None:
        """Check the sharding of every model and table in ``metadata`` against this map.

        Raises :class:`~shardalchemy.ModelConfigurationError` or
        :class:`~shardalchemy.UnknownShardError` now rather than at first use.
        :meth:`create_all` calls it first.
        """
        self.rules.check(metadata)

    def create_all(self, metadata: MetaData) -> None:
        """Create every table of ``metadata`` on every shard (and schemas); idempotent."""
        self.check(metadata)
        for shard in self.shard_names:
            with self.bind(shard).begin() as connection:
                self._create_tables(connection, shard, metadata)
                self._check_key_collations(connection, shard, metadata)

    def drop_all(self, metadata: MetaData) -> None:
        """Drop every table of ``metadata`` on every shard; idempotent."""
        for shard in self.shard_names:
            with self.bind(shard).begin() as connection:
                self._drop_tables(connection, shard, metadata)

    async def create_all_async(self, metadata: MetaData) -> None:
        """:meth:`create_all` for a shard map built from async URLs."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        self.check(metadata)
        for shard in self.shard_names:
            async with AsyncEngine(self.bind(shard)).begin() as connection:
                await connection.run_sync(self._create_tables, shard, metadata)
                await connection.run_sync(self._check_key_collations, shard, metadata)

    async def drop_all_async(self, metadata: MetaData) -> None:
        """:meth:`drop_all` for a shard map built from async URLs."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        for shard in self.shard_names:
            async with AsyncEngine(self.bind(shard)).begin() as connection:
                await connection.run_sync(self._drop_tables, shard, metadata)

    def _create_tables(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        metadata.create_all(connection, checkfirst=True)

    def _check_key_collations(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        """Refuse a string shard key whose real collation on ``shard`` its routing does not fit."""
        check_key_collations(
            connection,
            shard,
            self.rules.check(metadata),
            lambda table: self._location(table, shard),
        )

    def _location(self, table: Any, shard: str) -> tuple[str | None, str]:
        """(schema or None, table name) of ``table`` on ``shard``."""
        return table.schema, str(table.name)

    def _drop_tables(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        metadata.drop_all(connection, checkfirst=True)

    def _engines(self) -> list[Engine]:
        """The distinct engines (and so pools) behind the shards' binds."""
        engines: dict[int, Engine] = {}
        for bind in self._binds.values():
            engine = drivers.engine_of(bind)
            engines.setdefault(id(engine), engine)
        return list(engines.values())

    def dispose(self) -> None:
        """Close every pooled connection of every shard's engine."""
        for engine in self._engines():
            engine.dispose()

    async def dispose_async(self) -> None:
        """:meth:`dispose` for a shard map built from async URLs."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        for engine in self._engines():
            await AsyncEngine(engine).dispose()

    # -- sessions ----------------------------------------------------------
    def sessionmaker(self, **session_options: Any) -> Any:
        """A :class:`~sqlalchemy.orm.sessionmaker` of sessions over this shard map.

        Example:

        >>> Session = shard_map.sessionmaker(expire_on_commit=False)
        >>> with Session() as session:
        ...     session.get(City, 1)
        City('Tokyo')
        """
        from sqlalchemy.orm import sessionmaker

        return sessionmaker(class_=self._session_class(), shard_map=self, **session_options)

    def async_sessionmaker(self, **session_options: Any) -> Any:
        """An :class:`~sqlalchemy.ext.asyncio.async_sessionmaker` over this shard map.

        The shard map must have been built from async URLs
        (``sqlite+aiosqlite``, ``postgresql+asyncpg``, ...).
        """
        from sqlalchemy.ext.asyncio import async_sessionmaker

        return async_sessionmaker(
            sync_session_class=self._session_class(), shard_map=self, **session_options
        )

    session_class: ClassVar[type[Any] | None] = None
    """The session class :meth:`sessionmaker` makes: ``shardalchemy.ShardedSession``.

    Set by :mod:`shardalchemy.orm` when it is imported (``import shardalchemy``
    imports it): the ORM room depends on the topology, never the reverse.
    """

    def _session_class(self) -> type[Any]:
        if ShardMap.session_class is None:  # pragma: no cover - shardalchemy/__init__ sets it
            raise ShardMapError("import shardalchemy (its ORM session) before sessionmaker()")
        return ShardMap.session_class

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.placement} shards={list(self.shard_names)}>"


class DatabaseShardMap(ShardMap):
    """A database per shard. See :meth:`ShardMap.databases`."""

    placement = "database"

    def __init__(self, shards: Mapping[str, str | URL | Engine], **engine_options: Any) -> None:
        if not isinstance(shards, Mapping):
            raise ShardMapError(
                "ShardMap.databases() needs a mapping of shard name -> URL or Engine"
            )
        super().__init__(list(shards), [_backend_of(target) for target in shards.values()])
        self._targets = dict(shards)
        self._engine_options = engine_options
        _refuse_shared_databases(self._targets)

    def _make_bind(self, shard: str) -> Engine:
        engine = _engine_for(self._targets[shard], self._engine_options)
        return engine.execution_options(**{SHARD_OPTION: shard})

    def create_all(self, metadata: MetaData) -> None:
        """Create every table on every shard, after checking no two shards are one database.

        URLs that differ can still name one database (``localhost`` and ``127.0.0.1``):
        each shard's server is asked who it is first.
        """
        self.check(metadata)
        owners: dict[Any, str] = {}
        for shard in self.shard_names:
            with self.bind(shard).connect() as connection:
                identity = _database_identity(connection)
            if identity is None:
                continue
            other = owners.setdefault(identity, shard)
            if other != shard:
                where = self.location(shard)
                raise ShardMapError(
                    f"shards {other!r} and {shard!r} reach the same database ({where}): they "
                    "would share their rows; give each shard a database of its own"
                )
        super().create_all(metadata)

    def location(self, shard: str) -> str:
        return f"database {self.bind(shard).url.render_as_string(hide_password=True)}"


class _OneDatabaseShardMap(ShardMap):
    """Shared machinery of the placements that keep every shard in one database."""

    def __init__(
        self, url: str | URL | Engine, shard_names: Sequence[str], **engine_options: Any
    ) -> None:
        super().__init__(shard_names, [_backend_of(url)])
        self._database_url = url
        self._engine_options = engine_options
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The one engine (and pool) of the database that holds every shard."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    engine = _engine_for(self._database_url, self._engine_options)
                    self._setup_engine(engine)
                    self._engine = engine
        return self._engine

    def _setup_engine(self, engine: Engine) -> None:
        """Install connect-time hooks on the shared engine."""

    def _engines(self) -> list[Engine]:
        return [self._engine] if self._engine is not None else []


class SchemaShardMap(_OneDatabaseShardMap):
    """A schema per shard in one database. See :meth:`ShardMap.schemas`."""

    placement = "schema"

    def __init__(
        self,
        url: str | URL | Engine,
        shards: Sequence[str] | Mapping[str, str],
        **engine_options: Any,
    ) -> None:
        schemas = dict(shards) if isinstance(shards, Mapping) else {name: name for name in shards}
        super().__init__(url, list(schemas), **engine_options)
        for shard, schema in schemas.items():
            if not isinstance(schema, str) or not schema or "[" in schema or "]" in schema:
                raise ShardMapError(f"shard {shard!r}: invalid schema name {schema!r}")
        shared = _repeated(schemas, str.lower)  # MariaDB/SQLite fold schema names' case
        if shared:
            raise ShardMapError(
                f"shards {' and '.join(map(repr, shared[0]))} name the same schema "
                f"{schemas[shared[0][0]]!r}: they would share their rows; give each shard a "
                "schema of its own"
            )
        self.schema_names = schemas

    def _setup_engine(self, engine: Engine) -> None:
        if engine.dialect.name != "sqlite":
            return
        database = engine.url.database
        files = {
            schema: (
                ":memory:"
                if not database or database == ":memory:"
                else str(Path(database).with_suffix(f".{schema}{Path(database).suffix or '.db'}"))
            )
            for schema in self.schema_names.values()
        }
        self.sqlite_files = files

        quote = engine.dialect.identifier_preparer.quote_identifier  # always quoted, " doubled

        @event.listens_for(engine, "connect")
        def attach_shard_files(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            for schema, path in files.items():
                cursor.execute(f"ATTACH DATABASE ? AS {quote(schema)}", (path,))
            cursor.close()

    def _make_bind(self, shard: str) -> Engine:
        return self.engine.execution_options(
            schema_translate_map={None: self.schema_names[shard]}, **{SHARD_OPTION: shard}
        )

    def _create_tables(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        if connection.dialect.name != "sqlite":  # on SQLite, ATTACH created the schema's file
            # SQLAlchemy's DDL construct quotes the name and escapes it for the driver's
            # paramstyle (a schema named 50%off on psycopg)
            connection.execute(CreateSchema(self.schema_names[shard], if_not_exists=True))
        super()._create_tables(connection, shard, metadata)

    def location(self, shard: str) -> str:
        return f"schema {self.schema_names[shard]!r}"

    def _location(self, table: Any, shard: str) -> tuple[str | None, str]:
        return self.schema_names[shard], str(table.name)

    def table_name(self, table: Any, shard: str) -> str:
        return f"{self.schema_names[shard]}.{table.name}"


class TablesShardMap(_OneDatabaseShardMap):
    """A set of tables per shard in one database. See :meth:`ShardMap.tables`."""

    placement = "tables"

    def __init__(
        self,
        url: str | URL | Engine,
        shards: Sequence[str],
        *,
        naming: str = "{shard}_{table}",
        **engine_options: Any,
    ) -> None:
        if isinstance(shards, Mapping | str):
            raise ShardMapError("ShardMap.tables() needs a sequence of shard names")
        super().__init__(url, shards, **engine_options)
        try:
            sample = naming.format(shard="s", table="t")
        except (KeyError, IndexError, ValueError) as error:
            raise ShardMapError(
                f"table naming {naming!r} may only use {{shard}} and {{table}}: {error}"
            ) from None
        if "{shard}" not in naming or "{table}" not in naming or not sample:
            raise ShardMapError(f"table naming {naming!r} must contain {{shard}} and {{table}}")
        self.naming = naming

    def _unsharded_home(self) -> str | None:
        # one copy of each unsharded table, in the database every shard shares
        return self.shard_names[0]

    def _setup_engine(self, engine: Engine) -> None:
        # The dialect learns server facts (version, quoting) in SQLAlchemy's
        # own "connect" listener on the first connection; this one is
        # registered later, so it runs after it and refreshes the copies.
        initialized = False

        @event.listens_for(engine, "connect")
        def refresh_shard_dialects(dbapi_connection: Any, record: Any) -> None:
            nonlocal initialized
            if not initialized:
                for bind in list(self._binds.values()):
                    refresh_shard_dialect(bind.dialect, engine.dialect)
                initialized = True

    def _make_bind(self, shard: str) -> Engine:
        engine = self.engine
        bind = engine.execution_options(**{SHARD_OPTION: shard})
        bind.dialect = shard_dialect(engine, shard_renamer(shard, self.naming))
        return bind

    def check(self, metadata: MetaData) -> None:
        """Also refuse physical names that coincide (``eu`` + ``west_orders`` = ``eu_west`` +
        ``orders``): two shards' tables would be one table."""
        super().check(metadata)
        owners: dict[str, str] = {}
        for table in metadata.sorted_tables:
            for shard in self.shard_names:
                name = self.table_name(table, shard).lower()
                owner = f"table {table.name!r} of shard {shard!r}"
                if self.table_name(table, shard) == str(table.name):
                    owner = f"the unsharded table {table.name!r}"
                previous = owners.setdefault(name, owner)
                if previous != owner:
                    raise ShardMapError(
                        f"{previous} and {owner} would both be the table {name!r} in the "
                        f"tables placement (naming {self.naming!r}); rename a table or a shard, "
                        "or choose a naming with a separator the names do not contain"
                    )

    # ``checkfirst`` would look for the unprefixed names, so look ourselves
    def _create_tables(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        existing = set(inspect(connection).get_table_names())
        missing = [t for t in metadata.sorted_tables if self.table_name(t, shard) not in existing]
        metadata.create_all(connection, tables=missing, checkfirst=False)

    def _drop_tables(self, connection: Connection, shard: str, metadata: MetaData) -> None:
        existing = set(inspect(connection).get_table_names())
        present = [t for t in metadata.sorted_tables if self.table_name(t, shard) in existing]
        metadata.drop_all(connection, tables=present, checkfirst=False)

    def location(self, shard: str) -> str:
        return f"tables named {self.naming.format(shard=shard, table='<table>')!r}"

    def _location(self, table: Any, shard: str) -> tuple[str | None, str]:
        return table.schema, self.table_name(table, shard)

    def table_name(self, table: Any, shard: str) -> str:
        return physical_table_name(table, shard, self.naming)
