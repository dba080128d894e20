"""The ID generators against real databases: hi/lo sequences, shard-aware IDs, UUIDv7.

Each generator is used the ways the issue asks for: ``next_id()`` directly, as an ORM
column default on a sharded model, from Core, sync and async; and each fault path is
checked to raise an error that names the sequence or generator and the shard, with
nothing written.  Multi-process tests live in ``test_ids_concurrency.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, Integer, String, Table, insert, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import Lookup, ShardingError, ShardKey, ShardMap, UnknownShardError, shard_table
from shardalchemy.ids import (
    ID_GENERATOR_INFO,
    ClockMovedBackwardsError,
    HiLoSequence,
    IdConfigurationError,
    IdLayout,
    IdLayoutError,
    InvalidIdError,
    SequenceUnavailableError,
    ShardAwareIdGenerator,
    UUIDv7Generator,
    WorkerLeaseError,
    create_id_tables,
    create_id_tables_async,
    generator_of,
    id_column,
    mapped_id_column,
    shard_of_id,
)
from shardalchemy.ids.tables import sequences_table, workers_table

SHARDS = ("asia", "europe")
CONTINENTS = {"Asia": "asia", "Europe": "europe"}
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
}


SERVERS_ONLY = pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)


def async_url(url: URL) -> URL:
    return url.set(drivername=ASYNC_DRIVERS[url.get_backend_name()])


@dataclass
class Setup:
    """Two shards in the ``tables`` placement, and where the ID tables live.

    On the servers the ID tables live on the designated shard ``asia``; on SQLite, which lets
    one connection at a time write a file, in a file of their own.
    """

    backend: str
    url: URL
    ids_url: URL | None  # None: the ID tables live on shard "asia"
    shard_map: ShardMap

    def store(self) -> Any:
        return self.ids_url if self.ids_url is not None else self.shard_map.bind("asia")

    def async_store(self, shard_map: ShardMap) -> Any:
        if self.ids_url is not None:
            return async_url(self.ids_url)
        return shard_map.bind("asia")

    def async_shard_map(self) -> ShardMap:
        return ShardMap.tables(async_url(self.url), SHARDS)

    def plain_engine(self) -> Engine:
        return sa.create_engine(self.url)


@pytest.fixture
def setup(make_database: Callable[[str], URL], backend: str) -> Iterator[Setup]:
    url = make_database(backend)
    shard_map = ShardMap.tables(url, SHARDS)
    ids_url = make_database("sqlite") if backend == "sqlite" else None
    result = Setup(backend, url, ids_url, shard_map)
    create_id_tables(result.store())
    yield result
    shard_map.dispose()


def make_models(
    primary: Any, *, key_type: Any = BigInteger
) -> tuple[type[DeclarativeBase], type[Any]]:
    """A sharded ``City`` model numbered by ``primary`` (a generator)."""

    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", Lookup(CONTINENTS))
        id: Mapped[Any] = mapped_id_column(primary)
        continent: Mapped[str] = mapped_column(String(50))
        name: Mapped[str] = mapped_column(String(50))

    return Base, City


def rows_on(setup: Setup, shard: str) -> list[tuple[Any, str]]:
    engine = setup.plain_engine()
    try:
        with engine.connect() as connection:
            return [
                tuple(row)  # type: ignore[misc]
                for row in connection.execute(sa.text(f"SELECT id, name FROM {shard}_cities"))
            ]
    finally:
        engine.dispose()


# -- hi/lo -------------------------------------------------------------------------------
def test_hilo_leases_blocks_and_hands_out_each_value_once(setup: Setup) -> None:
    first = HiLoSequence("orders", setup.store(), block_size=3)
    second = HiLoSequence("orders", setup.store(), block_size=3)
    other = HiLoSequence("invoices", setup.store(), block_size=5, start=1000)
    try:
        assert [first.next_id() for _ in range(4)] == [1, 2, 3, 4]  # blocks [1,4) and [4,7)
        assert [second.next_id() for _ in range(4)] == [7, 8, 9, 10]
        assert first.next_id() == 5
        assert [other.next_id() for _ in range(2)] == [1000, 1001]
        assert first.shard == ("asia" if setup.ids_url is None else None)
        assert first.lease_block() == range(13, 16)
    finally:
        for sequence in (first, second, other):
            sequence.close()


def test_hilo_threads_share_blocks_without_duplicates(setup: Setup) -> None:
    sequence = HiLoSequence("orders", setup.store(), block_size=7)
    results: list[list[int]] = [[] for _ in range(8)]

    def draw(out: list[int]) -> None:
        out.extend(sequence.next_id() for _ in range(300))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sequence.close()
    values = [value for out in results for value in out]
    assert len(values) == len(set(values)) == 2400
    assert all(out == sorted(out) for out in results)  # increasing within a thread


def test_hilo_as_orm_default_and_from_core(setup: Setup) -> None:
    sequence = HiLoSequence("cities", setup.store(), block_size=10)
    Base, City = make_models(sequence)
    setup.shard_map.create_all(Base.metadata)
    with setup.shard_map.sessionmaker()() as session:
        cities = [City(continent="Asia", name="Tokyo"), City(continent="Europe", name="Oslo")]
        session.add_all(cities)
        session.commit()
        assert sorted(city.id for city in cities) == [1, 2]
    with setup.shard_map.bind("europe").begin() as connection:
        connection.execute(insert(City.__table__), [{"continent": "Europe", "name": "Rome"}])
    assert rows_on(setup, "asia") == [(cities[0].id, "Tokyo")]
    assert sorted(rows_on(setup, "europe")) == sorted([(cities[1].id, "Oslo"), (3, "Rome")])
    assert generator_of(City.id) is sequence
    assert shard_of_id(City.__table__.c.id, 1) is None  # hi/lo values name no shard
    sequence.close()


def test_hilo_async_next_id_orm_and_core(setup: Setup) -> None:
    async def body() -> None:
        shard_map = setup.async_shard_map()
        sequence = HiLoSequence("cities", setup.async_store(shard_map), block_size=2)
        try:
            Base, City = make_models(sequence)
            async with AsyncEngine(shard_map.bind("asia")).begin() as connection:
                await connection.run_sync(lambda c: Base.metadata.create_all(c))
            async with AsyncEngine(shard_map.bind("europe")).begin() as connection:
                await connection.run_sync(lambda c: Base.metadata.create_all(c))
            assert [await sequence.next_id_async() for _ in range(3)] == [1, 2, 3]
            async with shard_map.async_sessionmaker()() as session:
                session.add_all(
                    [City(continent="Asia", name="Seoul"), City(continent="Europe", name="Bern")]
                )
                await session.commit()  # the column default runs in SQLAlchemy's greenlet
            async with AsyncEngine(shard_map.bind("europe")).begin() as connection:
                await connection.execute(insert(City.__table__), {"continent": "E", "name": "Ulm"})
        finally:
            await sequence.close_async()
            await shard_map.dispose_async()

    asyncio.run(body())
    ids = [row[0] for shard in SHARDS for row in rows_on(setup, shard)]
    assert sorted(ids) == [4, 5, 6]


@SERVERS_ONLY  # a shard's SQLite file holds no ID tables (see test_sqlite_store_in_...)
def test_hilo_missing_table_names_sequence_and_shard(
    make_database: Callable[[str], URL], server: str
) -> None:
    backend = server
    url = make_database(backend)
    shard_map = ShardMap.databases({"main": url, "other": make_database(backend)})
    sequence = HiLoSequence("orders", shard_map.bind("main"), block_size=10)
    try:
        with pytest.raises(SequenceUnavailableError) as caught:
            sequence.next_id()
    finally:
        shard_map.dispose()
    error = caught.value
    assert (error.sequence, error.shard) == ("orders", "main")
    message = str(error)
    assert "sequence 'orders' on shard 'main'" in message
    assert "table 'shardalchemy_sequences' does not exist there" in message
    assert "create_id_tables" in message
    assert isinstance(error, ShardingError)


def test_hilo_unreachable_database_names_sequence(tmp_path: Any) -> None:
    unreachable = [
        f"sqlite:///{tmp_path}/no/such/dir/ids.db",
        "postgresql+psycopg://postgres@127.0.0.1:1/ids",
    ]
    for url in unreachable:
        sequence = HiLoSequence("orders", url)
        with pytest.raises(SequenceUnavailableError, match="the database is unreachable") as caught:
            sequence.next_id()
        assert "sequence 'orders' on database" in str(caught.value)
        assert caught.value.shard is None
        sequence.close()


def test_failed_allocation_writes_nothing(setup: Setup) -> None:
    other = ShardMap.databases({"asia": setup.url})  # a store without the table
    missing = (
        HiLoSequence("cities", setup.url.set(database=str(setup.ids_url.database) + ".none.db"))
        if setup.ids_url is not None
        else HiLoSequence("cities", other.bind("asia"))
    )
    with setup.plain_engine().begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {sequences_table.name}"))
    Base, City = make_models(missing)
    setup.shard_map.create_all(Base.metadata)
    with setup.shard_map.sessionmaker()() as session:
        session.add(City(continent="Asia", name="Tokyo"))
        with pytest.raises(SequenceUnavailableError, match="sequence 'cities'"):
            session.commit()
        session.rollback()
    with (
        setup.shard_map.bind("asia").begin() as connection,
        pytest.raises(SequenceUnavailableError),
    ):
        connection.execute(insert(City.__table__), {"continent": "Asia", "name": "X"})
    assert rows_on(setup, "asia") == [] and rows_on(setup, "europe") == []
    missing.close()
    other.dispose()


def test_failed_worker_lease_writes_nothing(setup: Setup) -> None:
    engine = setup.plain_engine() if setup.ids_url is None else sa.create_engine(setup.ids_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {workers_table.name}"))
    engine.dispose()
    ids = ShardAwareIdGenerator(setup.store(), setup.shard_map, name="cities")
    Base, City = make_models(ids)
    setup.shard_map.create_all(Base.metadata)
    with setup.shard_map.sessionmaker()() as session:
        session.add(City(continent="Europe", name="Oslo"))
        with pytest.raises(WorkerLeaseError, match="generator 'cities'"):
            session.commit()
        session.rollback()
    assert rows_on(setup, "asia") == [] and rows_on(setup, "europe") == []


def test_sqlite_store_in_the_shards_file_is_refused(tmp_path: Any) -> None:
    # SQLite lets one connection at a time write a file: a lease in its own transaction
    # would wait on the session's own writes to that shard
    shard_map = ShardMap.tables(f"sqlite:///{tmp_path}/shards.db", SHARDS)
    with pytest.raises(IdConfigurationError, match="their own SQLite file"):
        HiLoSequence("orders", shard_map.bind("asia"))
    own_files = ShardMap.databases({shard: f"sqlite:///{tmp_path}/{shard}.db" for shard in SHARDS})
    with pytest.raises(IdConfigurationError, match="is a shard's"):
        ShardAwareIdGenerator(own_files.bind("asia"), SHARDS)
    own_files.dispose()
    with pytest.raises(IdConfigurationError, match="in-memory SQLite"):
        ShardAwareIdGenerator("sqlite://", SHARDS)
    with pytest.raises(IdConfigurationError, match="block_size must be an int >= 1"):
        HiLoSequence("orders", f"sqlite:///{tmp_path}/ids.db", block_size=0)
    shard_map.dispose()


def test_async_store_from_plain_sync_code_says_what_to_do(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ids.db"
    sequence = HiLoSequence("orders", url)
    with pytest.raises(IdConfigurationError, match="await"):
        sequence.next_id()
    sequence.close()


# -- shard-aware ---------------------------------------------------------------------------
def test_shard_aware_orm_default_embeds_the_rows_shard(setup: Setup) -> None:
    ids = ShardAwareIdGenerator(setup.store(), setup.shard_map)
    Base, City = make_models(ids)
    setup.shard_map.create_all(Base.metadata)
    with setup.shard_map.sessionmaker()() as session:
        cities = [
            City(continent=continent, name=f"{continent}-{index}")
            for index in range(5)
            for continent in CONTINENTS
        ]
        session.add_all(cities)
        session.commit()
        for city in cities:
            assert ids.shard_of(city.id) == CONTINENTS[city.continent]
            assert shard_of_id(City.id, city.id) == CONTINENTS[city.continent]
    assert {name for _, name in rows_on(setup, "asia")} == {f"Asia-{i}" for i in range(5)}
    assert all(ids.shard_of(i) == "europe" for i, _ in rows_on(setup, "europe"))
    assert generator_of(City.id) is ids
    assert City.__table__.c.id.info[ID_GENERATOR_INFO] is ids
    assert ids.worker is not None
    assert all(ids.decode(city.id).worker == ids.worker for city in cities)
    assert abs(ids.unix_ms_of(cities[0].id) - time.time() * 1000) < 60_000
    ids.close()


def test_shard_aware_from_core_and_with_a_plain_default(setup: Setup) -> None:
    ids = ShardAwareIdGenerator(setup.store(), {"asia": 5, "europe": 9}, name="core")
    metadata = sa.MetaData()
    cities = Table(
        "cities",
        metadata,
        Column("id", BigInteger, primary_key=True, default=ids.column_default),
        Column("name", String(50)),
    )
    shard_table(cities, ShardKey("name", Lookup({"Tokyo": "asia", "Rome": "europe"})))
    setup.shard_map.create_all(metadata)
    with setup.shard_map.bind("europe").begin() as connection:
        connection.execute(insert(cities), [{"name": "Rome"}, {"name": "Rome"}])
    europe = rows_on(setup, "europe")
    assert len(europe) == 2 and {ids.decode(i).shard for i, _ in europe} == {9}
    assert generator_of(cities.c.id) is ids  # found through the plain default too
    assert shard_of_id(cities.c.id, europe[0][0]) == "europe"
    partial = ShardAwareIdGenerator(setup.store(), ["asia"], name="partial")
    towns = Table("towns", sa.MetaData(), id_column("id", partial), Column("name", String(9)))
    setup.shard_map.create_all(towns.metadata)
    with (
        setup.shard_map.bind("europe").begin() as connection,
        pytest.raises(IdConfigurationError, match="no number for shard 'europe'"),
    ):
        connection.execute(insert(towns), [{"name": "Rome"}])
    partial.close()
    # a connection that is not a shard's cannot say which shard the row is on
    engine = setup.plain_engine()
    with engine.begin() as connection, pytest.raises(IdConfigurationError, match="on a shard"):
        connection.execute(insert(cities).values(name="Tokyo"))
    engine.dispose()
    ids.close()


def test_shard_aware_async_orm_core_and_next_id(setup: Setup) -> None:
    async def body() -> list[int]:
        shard_map = setup.async_shard_map()
        ids = ShardAwareIdGenerator(setup.async_store(shard_map), shard_map, name="async")
        try:
            Base, City = make_models(ids)
            for shard in SHARDS:
                async with AsyncEngine(shard_map.bind(shard)).begin() as connection:
                    await connection.run_sync(lambda c: Base.metadata.create_all(c))
            async with shard_map.async_sessionmaker()() as session:
                session.add_all(  # the first lease happens in the flush's greenlet
                    [City(continent="Asia", name="Seoul"), City(continent="Europe", name="Bern")]
                )
                await session.commit()
            direct = await ids.next_id_async("europe")
            async with AsyncEngine(shard_map.bind("asia")).begin() as connection:
                await connection.execute(insert(City.__table__), {"continent": "A", "name": "Ulm"})
            await ids.close_async()
            return [direct]
        finally:
            await shard_map.dispose_async()

    (direct,) = asyncio.run(body())
    ids = ShardAwareIdGenerator(setup.store(), SHARDS, name="decoder")
    assert ids.shard_of(direct) == "europe"
    assert {ids.shard_of(i) for i, _ in rows_on(setup, "asia")} == {"asia"}
    assert {ids.shard_of(i) for i, _ in rows_on(setup, "europe")} == {"europe"}
    assert len(rows_on(setup, "asia")) == 2


def test_async_store_renews_on_use(setup: Setup) -> None:
    async def body() -> None:
        shard_map = setup.async_shard_map()
        ids = ShardAwareIdGenerator(setup.async_store(shard_map), SHARDS, lease_seconds=0.6)
        try:
            await ids.start_async()
            lease = ids._lease
            assert lease is not None and ids._renewer is None  # no thread for async drivers
            first_deadline = lease.use_until
            values = []
            for _ in range(12):  # twice the lease: only renewals keep it issuing
                values.append(await ids.next_id_async("asia"))
                await asyncio.sleep(0.1)
            assert ids._lease is lease and lease.use_until > first_deadline + 0.5
            assert values == sorted(set(values))
            await ids.close_async()
        finally:
            await shard_map.dispose_async()

    asyncio.run(body())


def test_live_processes_never_share_a_worker_number(setup: Setup) -> None:
    layout = IdLayout(worker_bits=2)
    generators = [
        ShardAwareIdGenerator(setup.store(), SHARDS, layout=layout, lease_timeout=0.5)
        for _ in range(5)
    ]
    for generator in generators[:4]:
        generator.start()
    assert sorted(generator.worker for generator in generators[:4]) == [0, 1, 2, 3]
    with pytest.raises(WorkerLeaseError, match="all 4 worker numbers") as caught:
        generators[4].next_id("asia")
    assert caught.value.generator == "default"
    # a closed generator releases its number; the next holder starts after its last ID
    last = generators[1].next_id("asia")
    released = generators[1].worker
    generators[1].close()
    first = generators[4].next_id("asia")
    assert generators[4].worker == released and first > last
    with pytest.raises(IdConfigurationError, match="closed"):
        generators[1].next_id("asia")
    for generator in generators:
        generator.close()


def test_an_expired_lease_is_taken_over_and_its_holder_stops(setup: Setup) -> None:
    layout = IdLayout(worker_bits=0)  # one number: the two must take turns
    stalled = ShardAwareIdGenerator(
        setup.store(), SHARDS, layout=layout, lease_seconds=1.0, lease_timeout=0.3
    )
    before = [stalled.next_id("asia") for _ in range(100)]
    stalled._stop_renewing.set()  # a process that stops renewing (stuck, or cut off)
    time.sleep(1.1)
    successor = ShardAwareIdGenerator(setup.store(), SHARDS, layout=layout, lease_timeout=5)
    after = [successor.next_id("asia") for _ in range(100)]
    assert min(after) > max(before)  # it starts after the stalled holder's last possible ID
    with pytest.raises(WorkerLeaseError, match="worker numbers"):
        stalled.next_id("asia")  # its renewal fails (owner changed): it issues nothing
    successor.close()
    stalled.close()


def test_renewal_failure_past_expiry_stops_issuing(setup: Setup) -> None:
    ids = ShardAwareIdGenerator(setup.store(), SHARDS, lease_seconds=1.0, lease_timeout=0.3)
    # the lease starts inside the first next_id(): 90% of it later at the earliest, the
    # generator may stop (measured from before the call, whatever the machine's load)
    deadline = time.monotonic() + 0.9
    ids.next_id("asia")
    engine = setup.plain_engine() if setup.ids_url is None else sa.create_engine(setup.ids_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {workers_table.name}"))
    engine.dispose()
    issued = 0
    with pytest.raises(WorkerLeaseError) as caught:
        while True:
            ids.next_id("europe")
            issued += 1
            time.sleep(0.01)
    assert time.monotonic() >= deadline - 0.05 and issued > 0
    assert "table 'shardalchemy_workers' does not exist there" in str(caught.value)
    ids._stop_renewing.set()


@SERVERS_ONLY  # a shard's SQLite file holds no ID tables (see test_sqlite_store_in_...)
def test_missing_worker_table_names_generator_and_shard(
    make_database: Callable[[str], URL], server: str
) -> None:
    backend = server
    shard_map = ShardMap.databases({"ids": make_database(backend)})
    ids = ShardAwareIdGenerator(shard_map.bind("ids"), ["a"], name="orders")
    with pytest.raises(WorkerLeaseError) as caught:
        ids.next_id("a")
    shard_map.dispose()
    assert (caught.value.generator, caught.value.shard) == ("orders", "ids")
    assert "generator 'orders'" in str(caught.value) and "shard 'ids'" in str(caught.value)
    assert "does not exist there" in str(caught.value)


def test_clock_moving_backwards(setup: Setup) -> None:
    now = [int(time.time() * 1000)]
    ids = ShardAwareIdGenerator(
        setup.store(), SHARDS, clock=lambda: now[0], max_clock_backward=0.02
    )
    first = ids.next_id("asia")
    now[0] -= 10  # a small step back: it waits, then continues (here the test's clock jumps)
    waited = threading.Timer(0.05, lambda: now.__setitem__(0, now[0] + 11))
    waited.start()
    second = ids.next_id("asia")
    assert second > first
    now[0] -= 1000  # far back: refuse
    with pytest.raises(ClockMovedBackwardsError, match="1000 ms before"):
        ids.next_id("asia")
    ids.close()


def test_shard_aware_configuration_errors(setup: Setup) -> None:
    with pytest.raises(IdLayoutError, match=r"shard field has 1 bits \(2 values\) but 3 shards"):
        ShardAwareIdGenerator(setup.store(), ["a", "b", "c"], layout=IdLayout(shard_bits=1))
    with pytest.raises(IdLayoutError, match="needs 64 bits"):
        ShardAwareIdGenerator(setup.store(), SHARDS, layout=IdLayout(time_bits=42))
    ids = ShardAwareIdGenerator(setup.store(), {"asia": 0, "europe": 2})
    with pytest.raises(UnknownShardError, match="'mars'"):
        ids.next_id("mars")
    with pytest.raises(InvalidIdError, match="shard number 1, which names no shard"):
        ids.shard_of(IdLayout().encode(5, 1, 0, 0))
    with pytest.raises(InvalidIdError):
        ids.shard_of(-1)
    assert ids.shard_of(IdLayout().encode(5, 2, 0, 0)) == "europe"
    ids.close()


# -- UUIDv7 ---------------------------------------------------------------------------------
def test_uuid7_orm_core_async(setup: Setup) -> None:
    uuids = UUIDv7Generator()
    values = [uuids.next_id() for _ in range(10_000)]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(value.version == 7 for value in values)
    assert abs(uuids.unix_ms_of(values[0]) - time.time() * 1000) < 60_000
    Base, City = make_models(uuids)
    assert isinstance(City.__table__.c.id.type, sa.Uuid)
    setup.shard_map.create_all(Base.metadata)
    with setup.shard_map.sessionmaker()() as session:
        city = City(continent="Europe", name="Oslo")
        session.add(city)
        session.commit()
        assert isinstance(city.id, uuid.UUID) and city.id > values[-1]
    assert shard_of_id(City.id, city.id) is None  # the shard is not in a UUID
    assert isinstance(asyncio.run(uuids.next_id_async()), uuid.UUID)


def test_uuid7_stays_ordered_when_the_clock_goes_back() -> None:
    now = [1_800_000_000_000]
    uuids = UUIDv7Generator(clock=lambda: now[0])
    first = [uuids.next_id() for _ in range(5000)]  # more than a 12-bit counter: borrows ms
    now[0] -= 5
    second = [uuids.next_id() for _ in range(10)]
    everything = first + second
    assert everything == sorted(everything) and len(set(everything)) == len(everything)


# -- table creation ----------------------------------------------------------------------------
def test_create_id_tables_is_idempotent_sync_and_async(tmp_path: Any) -> None:
    create_id_tables(f"sqlite:///{tmp_path}/ids.db")
    create_id_tables(f"sqlite:///{tmp_path}/ids.db")

    async def body() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/ids.db")
        await create_id_tables_async(engine)
        await engine.dispose()

    asyncio.run(body())
    engine = sa.create_engine(f"sqlite:///{tmp_path}/ids.db")
    assert {"shardalchemy_sequences", "shardalchemy_workers"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()


def test_id_column_for_core_tables(tmp_path: Any) -> None:
    uuids = UUIDv7Generator()
    table = Table("events", sa.MetaData(), id_column("id", uuids), Column("n", Integer))
    assert table.c.id.primary_key and generator_of(table.c.id) is uuids
    engine = sa.create_engine(f"sqlite:///{tmp_path}/events.db")
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(table), [{"n": 1}, {"n": 2}])
        assert len(set(connection.scalars(select(table.c.id)))) == 2
    engine.dispose()
