"""Shared test models and deployments: SQLAlchemy's weather sharding scenario.

``WeatherLocation`` is sharded by ``continent`` through a :class:`~shardalchemy.Lookup`;
``Report`` and ``Tag`` follow their location.  ``Tag`` has columns named like tables
(``tags``, ``weather_locations``, ``asia_weather_locations``) so the ``tables`` placement
proves it renames table names only.

:func:`deploy` builds a :class:`Deployment`: a shard map for (backend, placement) over
fresh databases from the ``make_database`` fixture, plus plain engines that look at each
shard's physical tables without going through shardalchemy.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _servers import DatabaseFactory, drop_server_database
from sqlalchemy import DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shardalchemy import FollowParent, Lookup, ShardKey, ShardMap

PLACEMENTS = ("database", "schema", "tables")

CONTINENTS = {
    "North America": "north_america",
    "Asia": "asia",
    "Europe": "europe",
    "South America": "south_america",
}
SHARDS = tuple(CONTINENTS.values())

# (id, continent, city): ids are unique across shards, as the seed's id generator makes them
CITIES = (
    (1, "Asia", "Tokyo"),
    (2, "North America", "New York"),
    (3, "North America", "Toronto"),
    (4, "Europe", "London"),
    (5, "Europe", "Dublin"),
    (6, "South America", "Brasilia"),
    (7, "South America", "Quito"),
)


class Base(DeclarativeBase):
    pass


class WeatherLocation(Base):
    __tablename__ = "weather_locations"
    __sharding__ = ShardKey("continent", Lookup(CONTINENTS))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    continent: Mapped[str] = mapped_column(String(50), index=True)
    city: Mapped[str] = mapped_column(String(50))

    reports: Mapped[list[Report]] = relationship(back_populates="location", order_by="Report.id")
    tags: Mapped[list[Tag]] = relationship(back_populates="location", order_by="Tag.id")

    def __repr__(self) -> str:
        return f"WeatherLocation({self.id!r}, {self.continent!r}, {self.city!r})"


class Report(Base):
    __tablename__ = "weather_reports"
    __sharding__ = FollowParent("location")

    # a plain per-shard autoincrement: the same id exists on several shards
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("weather_locations.id"))
    temperature: Mapped[float] = mapped_column(Float)
    report_time: Mapped[datetime.datetime] = mapped_column(DateTime, default=datetime.datetime.now)

    location: Mapped[WeatherLocation] = relationship(back_populates="reports")


class Tag(Base):
    """Columns named like tables, and free text; none of it may be renamed."""

    __tablename__ = "tags"
    __sharding__ = FollowParent("location")

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("weather_locations.id"))
    tags: Mapped[str] = mapped_column(String(50), default="")
    weather_locations: Mapped[str] = mapped_column(String(50), default="")
    asia_weather_locations: Mapped[str] = mapped_column(String(50), default="")

    location: Mapped[WeatherLocation] = relationship(back_populates="tags")


TABLES = ("weather_locations", "weather_reports", "tags")


def new_cities() -> list[WeatherLocation]:
    """The seed's seven cities, each with one report at 80.0 degrees."""
    cities = []
    for id_, continent, city in CITIES:
        location = WeatherLocation(id=id_, continent=continent, city=city)
        location.reports.append(Report(temperature=80.0))
        cities.append(location)
    return cities


@dataclasses.dataclass
class Deployment:
    """A shard map in one placement on one backend, and plain views of its shards."""

    backend: str
    placement: str
    shard_map: ShardMap
    url: URL  # the database of the tables/schema placements; the first shard's otherwise
    shard_urls: dict[str, URL]  # where each shard's tables are, for a plain engine
    schemas: dict[str, str | None]  # the schema of each shard's tables (None: default)
    schema_names: dict[str, str] | None = None  # what ShardMap.schemas() was given
    cleanups: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    _plain: dict[URL, Engine] = dataclasses.field(default_factory=dict)

    def physical_name(self, shard: str, table: str) -> str:
        """The unqualified physical name of ``table`` on ``shard``."""
        return f"{shard}_{table}" if self.placement == "tables" else table

    def plain_engine(self, shard: str) -> Engine:
        """An engine unrelated to shardalchemy, on the database holding ``shard``'s tables."""
        url = self.shard_urls[shard]
        if url not in self._plain:
            self._plain[url] = sa.create_engine(url)
        return self._plain[url]

    def existing_tables(self, shard: str) -> set[str]:
        """Every table in the database/schema that holds ``shard``'s tables."""
        schema = self.schemas[shard]
        with self.plain_engine(shard).connect() as connection:
            inspector = sa.inspect(connection)
            if schema is not None and schema not in inspector.get_schema_names():
                return set()  # create_all makes the schema
            return set(inspector.get_table_names(schema=schema))

    def main_engine(self) -> Engine:
        """A plain engine on :attr:`url` (the main database of one-database placements)."""
        if self.url not in self._plain:
            self._plain[self.url] = sa.create_engine(self.url)
        return self._plain[self.url]

    def expected_tables(self, shard: str) -> set[str]:
        return {self.physical_name(shard, table) for table in TABLES}

    def count_rows(self) -> dict[tuple[str, str], int]:
        """Rows of each (shard, table), counted with plain SQL outside shardalchemy."""
        counts = {}
        for shard in SHARDS:
            with self.plain_engine(shard).connect() as connection:
                for table in TABLES:
                    physical = sa.table(
                        self.physical_name(shard, table), schema=self.schemas[shard]
                    )
                    counts[(shard, table)] = connection.scalar(
                        sa.select(sa.func.count()).select_from(physical)
                    )
        return counts

    def rows(self, shard: str, table: str, *columns: str) -> list[tuple[Any, ...]]:
        """Selected columns of every row of ``table`` on ``shard``, by plain SQL, ordered."""
        physical = sa.table(
            self.physical_name(shard, table),
            *(sa.column(name) for name in columns),
            schema=self.schemas[shard],
        )
        with self.plain_engine(shard).connect() as connection:
            query = sa.select(*physical.c).order_by(*physical.c)
            return [tuple(row) for row in connection.execute(query)]

    def total_rows(self) -> int:
        return sum(self.count_rows().values())

    def reset(self) -> None:
        """Empty every table on every shard and restart ids at 1, with plain SQL."""
        for shard in SHARDS:
            with self.plain_engine(shard).begin() as connection:
                quote = connection.dialect.identifier_preparer.format_table
                # children before parents
                names = [
                    quote(sa.table(self.physical_name(shard, table), schema=self.schemas[shard]))
                    for table in reversed(TABLES)
                ]
                if self.backend == "postgresql":
                    connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                    connection.exec_driver_sql(
                        f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"
                    )
                elif self.backend == "mariadb":
                    connection.exec_driver_sql("SET SESSION lock_wait_timeout = 10")
                    connection.exec_driver_sql("SET SESSION foreign_key_checks = 0")
                    for name in names:
                        connection.exec_driver_sql(f"TRUNCATE TABLE {name}")
                else:  # SQLite restarts an INTEGER PRIMARY KEY at max(id) + 1
                    for name in names:
                        connection.exec_driver_sql(f"DELETE FROM {name}")

    def close(self) -> None:
        self.shard_map.dispose()
        for engine in self._plain.values():
            engine.dispose()
        self._plain.clear()
        while self.cleanups:
            self.cleanups.pop()()


def deploy(make_database: Callable[[Any], URL], backend: str, placement: str) -> Deployment:
    """A fresh, empty deployment (no tables yet) of the weather shards.

    ``database``: one new database per shard.  ``schema``: one new database with a schema per
    shard (on MariaDB schemas are databases, so they get unique names and are dropped by
    :meth:`Deployment.close`; on SQLite they are ATTACHed files next to the main file).
    ``tables``: one new database, tables named ``{shard}_{table}``.
    """
    if placement == "database":
        urls = {shard: make_database(backend) for shard in SHARDS}
        shard_map = ShardMap.databases(urls)
        return Deployment(
            backend, placement, shard_map, urls[SHARDS[0]], urls, dict.fromkeys(SHARDS)
        )
    url = make_database(backend)
    if placement == "tables":
        shard_map = ShardMap.tables(url, SHARDS)
        return Deployment(
            backend, placement, shard_map, url, dict.fromkeys(SHARDS, url), dict.fromkeys(SHARDS)
        )
    assert placement == "schema", placement
    deployment_schemas: dict[str, str | None]
    if backend == "mariadb":
        schema_names = {shard: f"{url.database}_{shard}" for shard in SHARDS}
        shard_map = ShardMap.schemas(url, schema_names)
        deployment = Deployment(
            backend,
            placement,
            shard_map,
            url,
            dict.fromkeys(SHARDS, url),
            dict(schema_names),
            schema_names=schema_names,
        )
        for name in schema_names.values():
            deployment.cleanups.append(lambda name=name: drop_server_database("mariadb", name))
        return deployment
    shard_map = ShardMap.schemas(url, SHARDS)
    if backend == "sqlite":
        # each schema is an ATTACHed file: weather.db -> weather.asia.db
        main = Path(url.database or "")
        shard_urls = {
            shard: url.set(database=str(main.with_suffix(f".{shard}{main.suffix}")))
            for shard in SHARDS
        }
        deployment_schemas = dict.fromkeys(SHARDS)
    else:
        shard_urls = dict.fromkeys(SHARDS, url)
        deployment_schemas = {shard: shard for shard in SHARDS}
    deployment = Deployment(
        backend,
        placement,
        shard_map,
        url,
        shard_urls,
        deployment_schemas,
        schema_names={shard: shard for shard in SHARDS},
    )
    if backend == "sqlite":
        deployment.cleanups.extend(
            lambda path=Path(u.database or ""): path.unlink(missing_ok=True)
            for u in shard_urls.values()
        )
    return deployment


class DeploymentPool:
    """Deployments reused by the tests of one module, emptied before each test.

    Creating databases (four per ``database`` deployment) dominates a test's cost on the
    servers, so each (backend, placement) is created once per module and reset with plain
    SQL (``TRUNCATE``) before it is handed out again.
    """

    def __init__(self, directory: Path) -> None:
        self.factory = DatabaseFactory(sqlite_dir=directory)
        self.deployments: dict[tuple[str, str], Deployment] = {}

    def get(self, backend: str, placement: str) -> Deployment:
        key = (backend, placement)
        deployment = self.deployments.get(key)
        if deployment is not None:
            deployment.reset()
            return deployment
        deployment = deploy(self.factory.create, backend, placement)
        self.deployments[key] = deployment
        deployment.shard_map.create_all(Base.metadata)
        # A first flush resolves the models' sharding rules, so the routing every test sees
        # does not depend on which test ran first (see test_session's rule-resolution xfail).
        with deployment.shard_map.sessionmaker()() as session:
            session.add(WeatherLocation(id=1, continent="Asia", city="warm-up"))
            session.flush()
            session.rollback()
        return deployment

    def close(self) -> None:
        errors = []
        for deployment in self.deployments.values():
            try:
                deployment.close()
            except Exception as error:  # close the others, then report
                errors.append(error)
        self.deployments.clear()
        self.factory.drop_all()
        if errors:
            raise errors[0]


def deployed(
    make_database: Callable[[Any], URL], backend: str, placement: str, *, create: bool = True
) -> Iterator[Deployment]:
    """Generator for a fixture: yield a deployment (tables created), close it afterwards."""
    deployment = deploy(make_database, backend, placement)
    try:
        if create:
            deployment.shard_map.create_all(Base.metadata)
        yield deployment
    finally:
        deployment.close()


# -- the same deployment through an async driver ------------------------------------------------

ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
}


def async_url(url: URL) -> URL:
    """``url`` with the async driver of its backend."""
    return url.set(drivername=ASYNC_DRIVERS[url.get_backend_name()])


def async_shard_map(deployment: Deployment) -> ShardMap:
    """The same shards as ``deployment``'s shard map, through an async driver."""
    if deployment.placement == "database":
        return ShardMap.databases(
            {shard: async_url(deployment.shard_urls[shard]) for shard in SHARDS}
        )
    if deployment.placement == "schema":
        assert deployment.schema_names is not None
        return ShardMap.schemas(async_url(deployment.url), deployment.schema_names)
    return ShardMap.tables(async_url(deployment.url), SHARDS)
