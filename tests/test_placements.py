"""The three placements on every backend: create_all/drop_all and physical table names.

Each test inspects the shards with plain engines (see ``models_weather.Deployment``), so
what it checks is what really exists in the databases, not what shardalchemy believes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from models_weather import (
    PLACEMENTS,
    SHARDS,
    TABLES,
    Base,
    Deployment,
    Tag,
    WeatherLocation,
    deployed,
)

from shardalchemy import StatementLog


@pytest.fixture(params=PLACEMENTS)
def placement(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def empty(make_database, backend: str, placement: str) -> Iterator[Deployment]:
    """A deployment whose shards have no tables yet."""
    yield from deployed(make_database, backend, placement, create=False)


@pytest.fixture
def empty_in(make_database, backend: str) -> Iterator[Callable[[str], Deployment]]:
    """``empty_in(placement)``: an empty deployment in one given placement."""
    generators = []

    def make(placement: str) -> Deployment:
        generator = deployed(make_database, backend, placement, create=False)
        generators.append(generator)
        return next(generator)

    yield make
    for generator in generators:
        generator.close()


def all_existing(deployment: Deployment) -> dict[str, set[str]]:
    return {shard: deployment.existing_tables(shard) for shard in SHARDS}


def expected_layout(deployment: Deployment) -> dict[str, set[str]]:
    """The tables each shard's database/schema holds once create_all ran."""
    if deployment.placement == "tables":
        # one database holds every shard's tables, and no unprefixed copies
        every = {f"{shard}_{table}" for shard in SHARDS for table in TABLES}
        return {shard: every for shard in SHARDS}
    return {shard: set(TABLES) for shard in SHARDS}


def test_create_all_and_drop_all_on_every_shard_idempotently(empty: Deployment) -> None:
    shard_map = empty.shard_map
    nothing = {shard: set() for shard in SHARDS}
    assert all_existing(empty) == nothing

    with StatementLog(shard_map) as log:
        shard_map.create_all(Base.metadata)
    assert all_existing(empty) == expected_layout(empty)
    creates = [e for e in log.entries if e.sql.lstrip().upper().startswith("CREATE TABLE")]
    assert sorted(e.shard for e in creates) == sorted(SHARDS * len(TABLES))
    for entry in creates:
        if empty.placement == "tables":
            assert f"CREATE TABLE {entry.shard}_" in entry.sql
        elif empty.placement == "schema" and empty.backend != "sqlite":
            assert f"{empty.schemas[entry.shard]}." in entry.sql

    # a row survives a second create_all, which creates nothing
    with shard_map.sessionmaker()() as session:
        session.add(WeatherLocation(id=1, continent="Asia", city="Tokyo"))
        session.commit()
    with StatementLog(shard_map) as log:
        shard_map.create_all(Base.metadata)
    assert [e.sql for e in log.entries if "CREATE TABLE" in e.sql.upper()] == []
    assert all_existing(empty) == expected_layout(empty)
    assert empty.rows("asia", "weather_locations", "city") == [("Tokyo",)]

    shard_map.drop_all(Base.metadata)
    assert all_existing(empty) == nothing
    shard_map.drop_all(Base.metadata)  # idempotent
    assert all_existing(empty) == nothing

    shard_map.create_all(Base.metadata)  # and the shards can be set up again, empty
    assert all_existing(empty) == expected_layout(empty)
    assert empty.total_rows() == 0


def test_tables_placement_names_tables_by_shard(empty_in) -> None:
    empty = empty_in("tables")
    empty.shard_map.create_all(Base.metadata)
    with empty.plain_engine(SHARDS[0]).connect() as connection:
        names = set(sa.inspect(connection).get_table_names())
        # the foreign key of a shard's reports points at the same shard's locations
        foreign_keys = sa.inspect(connection).get_foreign_keys("asia_weather_reports")
    assert "asia_weather_locations" in names
    assert "north_america_weather_reports" in names
    assert "weather_locations" not in names
    assert [fk["referred_table"] for fk in foreign_keys] == ["asia_weather_locations"]
    assert empty.shard_map.table_name(WeatherLocation.__table__, "asia") == (
        "asia_weather_locations"
    )


def test_schema_placement_puts_each_shard_in_its_schema(empty_in) -> None:
    empty = empty_in("schema")
    empty.shard_map.create_all(Base.metadata)
    with empty.main_engine().connect() as connection:
        inspector = sa.inspect(connection)
        # the main database/schema itself holds no tables
        assert inspector.get_table_names() == []
        if empty.backend != "sqlite":
            schemas = set(inspector.get_schema_names())
            assert {empty.schemas[shard] for shard in SHARDS} <= schemas
            for shard in SHARDS:
                schema = empty.schemas[shard]
                assert set(inspector.get_table_names(schema=schema)) == set(TABLES)
                assert empty.shard_map.table_name(Tag.__table__, shard) == f"{schema}.tags"
    if empty.backend == "sqlite":
        # schemas are ATTACHed files, one per shard, next to the main file
        files = {str(empty.shard_urls[shard].database) for shard in SHARDS}
        assert len(files) == len(SHARDS)
        assert str(empty.url.database) not in files


def test_database_placement_uses_separate_databases(empty_in) -> None:
    empty = empty_in("database")
    assert len({empty.shard_urls[shard] for shard in SHARDS}) == len(SHARDS)
    empty.shard_map.create_all(Base.metadata)
    for shard in SHARDS:
        bind_url = empty.shard_map.bind(shard).url
        assert bind_url.database == empty.shard_urls[shard].database
        assert empty.existing_tables(shard) == set(TABLES)
