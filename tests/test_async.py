"""AsyncSession over shard maps built from async URLs (aiosqlite, asyncpg, aiomysql).

Each test is a plain function that runs its coroutine with ``asyncio.run`` (no
pytest-asyncio).  Lazy loads cannot run under asyncio, so relationships are loaded with
``selectinload``.  The shard maps under test are async; the rows they write are checked with
the plain synchronous engines of ``models_weather.Deployment``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest
from models_weather import (
    PLACEMENTS,
    SHARDS,
    Base,
    Deployment,
    DeploymentPool,
    Report,
    WeatherLocation,
    async_shard_map,
    deployed,
    new_cities,
)
from sqlalchemy import insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from shardalchemy import (
    BulkWriteError,
    ShardedSession,
    ShardMap,
    StatementLog,
    UnknownShardError,
    UnknownShardKeyError,
    set_shard_id,
)

COMBOS = [
    *(pytest.param("sqlite", placement, id=f"sqlite-{placement}") for placement in PLACEMENTS),
    *(
        pytest.param("postgresql", placement, marks=pytest.mark.postgresql, id=f"pg-{placement}")
        for placement in PLACEMENTS
    ),
    *(
        pytest.param("mariadb", placement, marks=pytest.mark.mariadb, id=f"mariadb-{placement}")
        for placement in PLACEMENTS
    ),
]
over_async_backends = pytest.mark.parametrize(
    ("backend", "placement"), COMBOS, indirect=["backend"]
)


def run_with(deployment: Deployment, body: Callable[[ShardMap], Awaitable[None]]) -> None:
    """Build the async shard map, run ``body`` with it in a new event loop, dispose it."""

    async def main() -> None:
        shard_map = async_shard_map(deployment)
        try:
            await body(shard_map)
        finally:
            await shard_map.dispose_async()

    asyncio.run(main())


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentPool]:
    pool = DeploymentPool(tmp_path_factory.mktemp("async_shards"))
    yield pool
    pool.close()


@pytest.fixture
def deployment(pool: DeploymentPool, backend: str, placement: str) -> Deployment:
    """Tables created on every shard (through the sync shard map), no rows."""
    deployment = pool.get(backend, placement)
    assert deployment.total_rows() == 0
    return deployment


SEED_COUNTS = {"north_america": 2, "asia": 1, "europe": 2, "south_america": 2}


@over_async_backends
def test_async_seed_scenario(deployment: Deployment) -> None:
    async def body(shard_map: ShardMap) -> None:
        Session = shard_map.async_sessionmaker(expire_on_commit=False)
        assert isinstance(Session, async_sessionmaker)
        async with Session() as session:
            assert isinstance(session, AsyncSession)
            assert isinstance(session.sync_session, ShardedSession)
            session.add_all(new_cities())
            await session.commit()
        counts = deployment.count_rows()
        for shard, count in SEED_COUNTS.items():
            assert counts[(shard, "weather_locations")] == count
            assert counts[(shard, "weather_reports")] == count

        async with Session() as session:
            with StatementLog(shard_map) as log:
                tokyo = await session.get(
                    WeatherLocation, 1, options=[selectinload(WeatherLocation.reports)]
                )
                assert tokyo is not None and tokyo.city == "Tokyo"
                assert inspect(tokyo).identity_token == "asia"
                assert [r.temperature for r in tokyo.reports] == [80.0]
                # the eager load of the reports reached Tokyo's shard (and, for now, the
                # others too: see test_session's selectinload xfail)
                report_loads = [e for e in log.entries if "weather_reports" in e.sql]
                assert "asia" in [e.shard for e in report_loads]

                log.clear()
                (tokyo_again,) = (
                    await session.scalars(
                        select(WeatherLocation).where(WeatherLocation.continent == "Asia")
                    )
                ).all()
                assert tokyo_again is tokyo
                assert log.shards() == ["asia"]

                log.clear()
                north = (
                    await session.scalars(
                        select(WeatherLocation).options(
                            set_shard_id("north_america"), selectinload(WeatherLocation.reports)
                        )
                    )
                ).all()
                assert {c.city for c in north} == {"New York", "Toronto"}
                assert log.shards() == ["north_america"]

                log.clear()
                asia_and_europe = (
                    await session.scalars(
                        select(WeatherLocation).filter(
                            WeatherLocation.continent.in_(["Europe", "Asia"])
                        )
                    )
                ).all()
                assert {c.city for c in asia_and_europe} == {"London", "Dublin", "Tokyo"}
                assert sorted(log.shards()) == ["asia", "europe"]

            newyork = next(c for c in north if c.city == "New York")
            assert inspect(newyork.reports[0]).identity_key == (Report, (1,), "north_america")
            assert inspect(tokyo.reports[0]).identity_key == (Report, (1,), "asia")
            europe_report = await session.get(Report, 1, identity_token="europe")
            assert europe_report is not None
            assert europe_report.location_id == 4
            assert europe_report is not tokyo.reports[0]

    run_with(deployment, body)


@over_async_backends
def test_async_errors_write_nothing_and_session_stays_usable(deployment: Deployment) -> None:
    async def body(shard_map: ShardMap) -> None:
        Session = shard_map.async_sessionmaker()
        async with Session() as session:
            session.add_all([*new_cities(), WeatherLocation(id=50, continent="Atlantis", city="X")])
            with pytest.raises(UnknownShardKeyError, match=r"WeatherLocation\.continent"):
                await session.commit()
            await session.rollback()
            assert deployment.total_rows() == 0

            with pytest.raises(UnknownShardError, match="'mars'"):
                await session.execute(select(WeatherLocation).options(set_shard_id("mars")))
            await session.rollback()

            session.add(WeatherLocation(id=1, continent="Asia", city="Tokyo"))
            await session.commit()
        assert deployment.rows("asia", "weather_locations", "id", "city") == [(1, "Tokyo")]
        assert deployment.total_rows() == 1

    run_with(deployment, body)


@over_async_backends
def test_async_bulk_insert_routes_rows_and_undoes_a_refused_statement(
    deployment: Deployment,
) -> None:
    continents = ["Asia", "Europe", "North America", "South America"]
    rows = [  # enough rows that a sync session on servers would write shards at once
        {"id": i, "continent": continents[i % 4], "city": f"city {i}"} for i in range(1, 1201)
    ]

    async def body(shard_map: ShardMap) -> None:
        async with shard_map.async_sessionmaker(expire_on_commit=False)() as session:
            returned = (
                await session.scalars(insert(WeatherLocation).returning(WeatherLocation), rows)
            ).all()
            assert [city.id for city in returned] == [row["id"] for row in rows]
            assert {inspect(city).key[2] for city in returned[:4]} == {
                "asia",
                "europe",
                "north_america",
                "south_america",
            }
            duplicate = {"id": 1, "continent": "Europe", "city": "again"}
            extra = [{"id": 5000, "continent": "Asia", "city": "new"}, duplicate]
            with pytest.raises(BulkWriteError) as caught:
                await session.execute(insert(WeatherLocation), extra)
            assert (caught.value.row_index, caught.value.shard) == (1, "europe")
            await session.commit()  # the first statement's rows, none of the second's
        assert deployment.total_rows() == len(rows)
        assert len(deployment.rows("europe", "weather_locations", "id", "city")) == 300

    run_with(deployment, body)


@pytest.fixture
def empty(make_database, backend: str, placement: str) -> Iterator[Deployment]:
    """A deployment whose shards have no tables yet."""
    yield from deployed(make_database, backend, placement, create=False)


@over_async_backends
def test_async_create_all_and_drop_all(empty: Deployment) -> None:
    async def body(shard_map: ShardMap) -> None:
        await shard_map.create_all_async(Base.metadata)
        await shard_map.create_all_async(Base.metadata)  # idempotent
        for shard in SHARDS:
            assert empty.expected_tables(shard) <= empty.existing_tables(shard)
        async with shard_map.async_sessionmaker()() as session:
            session.add_all(new_cities())
            await session.commit()
        assert empty.total_rows() == 14
        await shard_map.drop_all_async(Base.metadata)
        await shard_map.drop_all_async(Base.metadata)  # idempotent
        # the decision log of atomic commits outlives drop_all: in-doubt participants of
        # other processes may still need its decisions
        left = {
            shard: empty.existing_tables(shard) - {"shardalchemy_decisions"} for shard in SHARDS
        }
        assert left == {shard: set() for shard in SHARDS}

    run_with(empty, body)


@over_async_backends
def test_async_dispose_closes_connections_inside_the_loop(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        shard_map = async_shard_map(deployment)
        async with shard_map.async_sessionmaker()() as session:
            cities = (await session.scalars(select(WeatherLocation))).all()
            assert cities == []
        await shard_map.dispose_async()

    with caplog.at_level(logging.ERROR, logger="sqlalchemy.pool"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
