"""Multi-shard statements fan out: concurrently, with timeouts, failures and partial results.

Four shards in separate databases (SQLite files, PostgreSQL or MariaDB databases).  A shard
is made slow with a sleep that only fires where a marker row lives, so one statement is fast
on three shards and slow on the fourth.  Concurrency is proved by counting statements in
flight at once, never by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import Backend, MakeDatabase
from sqlalchemy import String, event, func, insert, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import (
    ConfigurationError,
    Lookup,
    ShardedSession,
    ShardKey,
    ShardMap,
    ShardQueryError,
    ShardTimeoutError,
)

SHARDS = ("s0", "s1", "s2", "s3")
ROWS_PER_SHARD = 25
SLOW_SHARD = "s2"
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mariadb": "mysql+aiomysql",
}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "fan_out_items"
    __sharding__ = ShardKey("home", Lookup({shard: shard for shard in SHARDS}))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    home: Mapped[str] = mapped_column(String(10))
    value: Mapped[int]
    slow: Mapped[bool] = mapped_column(default=False)


class Counter(Base):  # not sharded: one table in the tables placement, one per shard else
    __tablename__ = "fan_out_counters"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    hits: Mapped[int]


def rows() -> list[Item]:
    items = []
    for number, shard in enumerate(SHARDS):
        for index in range(ROWS_PER_SHARD):
            identity = number * 1000 + index
            items.append(Item(id=identity, home=shard, value=(identity * 7919) % 101, slow=False))
    items.append(Item(id=99_999, home=SLOW_SHARD, value=0, slow=True))
    return items


def sleep_where_slow(backend: str, seconds: float, everywhere: bool = False) -> Any:
    """A WHERE clause that sleeps ``seconds`` once per statement on the slow shard only."""
    condition = "1 = 1" if everywhere else f"EXISTS (SELECT 1 FROM {Item.__tablename__} WHERE slow)"
    if backend == "postgresql":
        sleep = f"pg_sleep(CASE WHEN {condition} THEN {seconds} ELSE 0 END)"
        return text(f"(SELECT {sleep}) IS NOT NULL")
    if backend == "mariadb":
        # MariaDB evaluates the subquery per row: split the sleep over a shard's rows
        seconds = round(seconds / (ROWS_PER_SHARD + 1), 3)
        return text(f"(SELECT SLEEP(CASE WHEN {condition} THEN {seconds} ELSE 0 END)) = 0")
    # SQLite has no sleep: count to a large number, which interrupt() stops
    limit = int(seconds * 2_000_000)
    return text(
        f"(CASE WHEN {condition} THEN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
        f"SELECT x + 1 FROM c WHERE x < {limit}) SELECT count(*) FROM c) ELSE 1 END) > 0"
    )


def everywhere_but_slow() -> Any:
    return Item.slow.is_(False)


@pytest.fixture
def urls(make_database: MakeDatabase, backend: Backend) -> dict[str, URL]:
    return {shard: make_database(backend) for shard in SHARDS}


@pytest.fixture
def shard_map(urls: dict[str, URL]) -> Iterator[ShardMap]:
    shard_map = ShardMap.databases(urls)
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        session.add_all(rows())
        session.commit()
    yield shard_map
    shard_map.dispose()


class InFlight:
    """Counts statements running at once on a set of engines, and which threads ran them."""

    def __init__(self, engines: list[Any]) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.threads: set[int] = set()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self.before)
            event.listen(engine, "after_cursor_execute", self.after)

    def before(self, *args: Any) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())

    def after(self, *args: Any) -> None:
        with self.lock:
            self.now -= 1


def server_backends() -> list[Any]:
    return [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]


@pytest.mark.parametrize("backend", server_backends(), indirect=True)
def test_shards_run_at_once_and_objects_load_on_the_calling_thread(
    shard_map: ShardMap, backend: str
) -> None:
    in_flight = InFlight([shard_map.bind(shard) for shard in SHARDS])
    loaded_on: set[int] = set()

    def on_load(target: Any, context: Any) -> None:
        loaded_on.add(threading.get_ident())

    event.listen(Item, "load", on_load)
    try:
        statement = (
            select(Item)
            .where(sleep_where_slow(backend, 0.5, everywhere=True), everywhere_but_slow())
            .order_by(Item.value.desc(), Item.id)
            .limit(5)
        )
        with shard_map.sessionmaker()() as session:
            items = session.scalars(statement).all()
    finally:
        event.remove(Item, "load", on_load)
    assert in_flight.most == len(SHARDS)  # all four statements were in the database at once
    assert threading.get_ident() not in in_flight.threads  # ... sent from the pool's threads
    assert loaded_on == {threading.get_ident()}  # ORM objects are built on the caller's thread
    expected = sorted(rows()[:-1], key=lambda item: (-item.value, item.id))[:5]
    assert [item.id for item in items] == [item.id for item in expected]


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_shard_concurrency_bounds_the_shards_at_once(shard_map: ShardMap, backend: str) -> None:
    in_flight = InFlight([shard_map.bind(shard) for shard in SHARDS])
    statement = select(func.count()).select_from(Item).where(sleep_where_slow(backend, 0.2, True))
    with shard_map.sessionmaker()() as session:
        one = session.execute(statement.execution_options(shard_concurrency=1)).scalar()
        assert in_flight.most == 1
        two = session.execute(statement.execution_options(shard_concurrency=2)).scalar()
        assert in_flight.most == 2
    assert one == two == len(SHARDS) * ROWS_PER_SHARD + 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_shards_run_on_the_calling_thread(shard_map: ShardMap) -> None:
    # pysqlite connections belong to the thread that opened them
    in_flight = InFlight([shard_map.bind(shard) for shard in SHARDS])
    with shard_map.sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 101
    assert in_flight.threads == {threading.get_ident()}
    assert in_flight.most == 1


def running_sleeps(shard_map: ShardMap, backend: str) -> int:
    """Statements still sleeping on the server (a cancelled one is gone)."""
    engine = shard_map.bind(SLOW_SHARD)
    with engine.connect() as connection:
        if backend == "postgresql":
            sql = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query LIKE '%pg_sleep(CASE%' AND state = 'active' "
                "AND pid <> pg_backend_pid()"
            )
        else:
            sql = (
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE info LIKE '%SLEEP(CASE%' AND id <> connection_id()"
            )
        return int(connection.execute(text(sql)).scalar() or 0)


@pytest.mark.parametrize("backend", ["sqlite", *server_backends()], indirect=True)
def test_a_slow_shard_times_out_and_the_session_goes_on(shard_map: ShardMap, backend: str) -> None:
    statement = select(Item.id).where(sleep_where_slow(backend, 30))
    with shard_map.sessionmaker()() as session:
        session.scalar(select(func.count()).select_from(Item))  # a transaction with work in it
        with pytest.raises(ShardTimeoutError) as caught:
            session.scalars(statement.execution_options(shard_timeout=0.5)).all()
        error = caught.value
        assert error.shard == SLOW_SHARD
        assert list(error.failures) == [SLOW_SHARD]
        assert f"{SLOW_SHARD!r} did not answer within shard_timeout=0.5s" in str(error)
        if backend != "sqlite":
            assert "completed: s0, s1, s3" in str(error)
            assert running_sleeps(shard_map, backend) == 0  # cancelled, not left running
        # the statement ran in a savepoint per shard: no rollback needed to go on
        assert session.scalar(select(func.count()).select_from(Item)) == 101


@pytest.mark.parametrize("backend", server_backends(), indirect=True)
def test_allow_partial_returns_the_shards_that_answered(shard_map: ShardMap, backend: str) -> None:
    statement = (
        select(Item.id)
        .where(sleep_where_slow(backend, 30))
        .order_by(Item.id)
        .execution_options(shard_timeout=0.5, allow_partial=True)
    )
    with shard_map.sessionmaker()() as session:
        result = session.execute(statement)
        ids = result.scalars().all()
        assert set(result.failed_shards) == {SLOW_SHARD}
        assert isinstance(result.failed_shards[SLOW_SHARD], ShardTimeoutError)
        assert ids == sorted(item.id for item in rows() if item.home != SLOW_SHARD)
        assert session.scalar(select(func.count()).select_from(Item)) == 101


@pytest.mark.parametrize("backend", ["sqlite", *server_backends()], indirect=True)
def test_a_failing_shard_is_named_and_the_others_are_not_blamed(
    shard_map: ShardMap, urls: dict[str, URL], backend: str
) -> None:
    plain = sa.create_engine(urls["s1"])
    with plain.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE {Item.__tablename__}")
    plain.dispose()
    with shard_map.sessionmaker()() as session:
        with pytest.raises(ShardQueryError) as caught:
            session.scalars(select(Item).order_by(Item.value)).all()
        assert caught.value.shard == "s1"
        assert str(caught.value).startswith("the statement failed on shard 's1'")
        assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
        session.rollback()
        assert session.scalar(select(func.count()).where(Item.home == "s0")) == ROWS_PER_SHARD
        result = session.execute(
            select(Item.id).execution_options(allow_partial=True)  # savepoints: s1 undone alone
        )
        assert len(result.all()) == 101 - ROWS_PER_SHARD
        assert list(result.failed_shards) == ["s1"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shard_timeout": -1}, "shard_timeout must be a positive number"),
        ({"shard_timeout": "soon"}, "shard_timeout must be a positive number"),
        ({"shard_concurrency": 0}, "shard_concurrency must be a positive integer"),
        ({"cross_shard": "union"}, "cross_shard must be 'merge' or 'concatenate'"),
    ],
)
def test_fan_out_options_are_checked(
    shard_map: ShardMap, options: dict[str, Any], message: str
) -> None:
    with shard_map.sessionmaker()() as session, pytest.raises(ConfigurationError, match=message):
        session.execute(select(Item).execution_options(**options))
    with pytest.raises(ConfigurationError, match=message):
        ShardedSession(shard_map=shard_map, **options)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bulk_batch_size": 0}, "bulk_batch_size must be a positive number"),
        ({"bulk_batch_size": "many"}, "bulk_batch_size must be a positive number"),
        ({"bulk_concurrency": 0}, "bulk_concurrency must be a positive number"),
        ({"bulk_concurrency": True}, "bulk_concurrency must be a positive number"),
    ],
)
def test_bulk_options_are_checked(
    shard_map: ShardMap, options: dict[str, Any], message: str
) -> None:
    rows = [{"id": 1000 + i, "home": SHARDS[i], "value": i} for i in range(4)]
    with shard_map.sessionmaker()() as session:
        before = session.scalar(select(func.count()).select_from(Item))
        with pytest.raises(ConfigurationError, match=message):
            session.execute(insert(Item).execution_options(**options), rows)
        assert session.scalar(select(func.count()).select_from(Item)) == before


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_concatenate_keeps_sqlalchemys_behaviour(shard_map: ShardMap) -> None:
    statement = select(func.count()).select_from(Item)
    with shard_map.sessionmaker()() as session:
        assert session.execute(statement).scalars().all() == [101]
        per_shard = session.execute(statement.execution_options(cross_shard="concatenate"))
        assert per_shard.scalars().all() == [25, 25, 26, 25]
    with shard_map.sessionmaker(cross_shard="concatenate")() as session:
        assert len(session.execute(statement).all()) == len(SHARDS)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_yield_per_streams_each_shard_from_a_server_side_cursor(shard_map: ShardMap) -> None:
    server_side: list[bool] = []
    for shard in SHARDS:
        event.listen(
            shard_map.bind(shard),
            "before_cursor_execute",
            lambda *args: server_side.append(args[4]._is_server_side),
        )
    with shard_map.sessionmaker()() as session:
        result = session.execute(
            select(Item).order_by(Item.value, Item.id).execution_options(yield_per=7)
        )
        partitions = [len(part) for part in result.scalars().partitions()]
        assert server_side == [True] * len(SHARDS)
    assert sum(partitions) == 101 and max(partitions) == 7


# -- AsyncSession ------------------------------------------------------------------------


def async_urls(urls: dict[str, URL], backend: str) -> dict[str, URL]:
    return {shard: url.set(drivername=ASYNC_DRIVERS[backend]) for shard, url in urls.items()}


@pytest.mark.parametrize("backend", ["sqlite", *server_backends()], indirect=True)
def test_async_session_merges_and_fans_out_concurrently(
    shard_map: ShardMap, urls: dict[str, URL], backend: str
) -> None:
    async_map = ShardMap.databases(async_urls(urls, backend))
    engines = [async_map.bind(shard) for shard in SHARDS]
    in_flight = InFlight([getattr(engine, "sync_engine", engine) for engine in engines])

    async def main() -> tuple[list[int], int, Any]:
        async with AsyncSession(sync_session_class=ShardedSession, shard_map=async_map) as session:
            top = (
                await session.scalars(
                    select(Item)
                    .where(sleep_where_slow(backend, 0.3, everywhere=True))
                    .order_by(Item.value.desc(), Item.id)
                    .limit(3)
                    .offset(1)
                )
            ).all()
            count = await session.scalar(select(func.count()).select_from(Item))
            extremes = select(func.min(Item.value), func.max(Item.value))
            stats = (await session.execute(extremes)).one()
        await async_map.dispose_async()
        return [item.id for item in top], count, tuple(stats)

    ids, count, stats = asyncio.run(main())
    expected = sorted(rows(), key=lambda item: (-item.value, item.id))[1:4]
    assert ids == [item.id for item in expected]
    assert count == 101
    assert stats == (0, max(item.value for item in rows()))
    # every shard has its own connection (aiosqlite: its own thread), so all run at once
    assert in_flight.most == len(SHARDS)


@pytest.mark.parametrize("backend", server_backends(), indirect=True)
def test_async_timeout_cancels_on_the_server_and_the_session_goes_on(
    shard_map: ShardMap, urls: dict[str, URL], backend: str
) -> None:
    async_map = ShardMap.databases(async_urls(urls, backend))

    async def main() -> tuple[ShardTimeoutError, int]:
        async with AsyncSession(sync_session_class=ShardedSession, shard_map=async_map) as session:
            statement = select(Item.id).where(sleep_where_slow(backend, 30))
            try:
                await session.scalars(statement.execution_options(shard_timeout=0.5))
            except ShardTimeoutError as error:
                caught = error
            else:
                raise AssertionError("no timeout")
            count = await session.scalar(select(func.count()).select_from(Item))
        await async_map.dispose_async()
        return caught, count

    error, count = asyncio.run(main())
    assert error.shard == SLOW_SHARD
    assert count == 101
    assert running_sleeps(shard_map, backend) == 0


def test_statements_on_no_sharded_table_run_on_one_shard(make_database: MakeDatabase) -> None:
    # one copy of the table: four shards would return its rows four times, and
    # apply an UPDATE four times
    shard_map = ShardMap.tables(make_database("sqlite"), SHARDS)
    shard_map.create_all(Base.metadata)
    try:
        with shard_map.sessionmaker()() as session:
            session.add(Counter(id=1, hits=0))
            session.commit()
            bump = sa.update(Counter).values(hits=Counter.hits + 1)
            assert session.execute(bump).rowcount == 1
            assert session.scalars(select(Counter.hits)).all() == [1]
            assert session.scalar(select(func.count()).select_from(Counter)) == 1
            assert session.execute(select(sa.literal(7))).all() == [(7,)]
            route = session.explain(select(Counter))
            assert route.shards == (SHARDS[0],)
            assert route.reason == "reads only tables that are not sharded: one shard answers"
    finally:
        shard_map.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_exists_is_true_when_any_shard_has_the_row(shard_map: ShardMap) -> None:
    # only s2 holds the slow row: shard by shard, s0 would answer False first
    with shard_map.sessionmaker()() as session:
        assert session.scalar(select(sa.exists().where(Item.slow))) is True
        assert session.execute(select(sa.exists().where(Item.value > 1000))).all() == [(False,)]
        assert session.query(session.query(Item).filter(Item.slow).exists()).scalar() is True


@pytest.mark.parametrize("backend", ["sqlite", *server_backends()], indirect=True)
def test_entities_in_the_session_do_not_change_the_order(
    shard_map: ShardMap, urls: dict[str, URL], backend: str
) -> None:
    # the shards sort by what they store; objects already in the session keep the
    # values they were loaded with (SQLAlchemy does not overwrite them), and the merge
    # must follow the shards, not those objects
    statement = select(Item).order_by(Item.value.desc(), Item.id).limit(3)
    with shard_map.sessionmaker(expire_on_commit=False)() as session:
        loaded = session.scalars(select(Item)).all()  # every object, held in the session
        session.commit()  # (the next transaction sees the change below)
        plain = sa.create_engine(urls["s1"])
        with plain.begin() as connection:
            connection.execute(sa.update(Item).where(Item.id == 1003).values(value=500))
        plain.dispose()
        first = session.scalars(statement).first()
        assert first is not None and first.id == 1003
        assert first.value != 500  # its loaded value, as SQLAlchemy keeps it
        refreshed = session.scalars(statement.execution_options(populate_existing=True))
        assert next(iter(refreshed)).value == 500
        assert len(loaded) == 101


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_async_stream_merges_server_side_cursors(
    shard_map: ShardMap, urls: dict[str, URL], backend: str
) -> None:
    async_map = ShardMap.databases(async_urls(urls, backend))
    statement = select(Item).order_by(Item.value, Item.id).execution_options(yield_per=7)

    async def main() -> list[int]:
        async with AsyncSession(sync_session_class=ShardedSession, shard_map=async_map) as session:
            streamed = await session.stream(statement)
            ids = [item.id async for item in streamed.scalars()]
        await async_map.dispose_async()
        return ids

    expected = sorted(rows(), key=lambda item: (item.value, item.id))
    assert asyncio.run(main()) == [item.id for item in expected]
