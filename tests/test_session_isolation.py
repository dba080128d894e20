"""Sessions are isolated as their connections are, at any thread count (issue 13 §3).

Where shards share one database (the ``schema`` and ``tables`` placements), each
session owns one connection for all its shards there, and one transaction on it.  Two
sessions are then exactly as isolated as two plain Sessions on two connections of that
database: proved by running generated interleavings of flushes, commits, rollbacks and
reads on two sharded sessions and on two plain Sessions of one reference database, and
comparing every step's outcome.  A stress test runs 16 threads of sessions at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, String, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shardalchemy import Lookup, ShardKey, ShardMap

SHARDS = ("east", "west")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    __sharding__ = ShardKey("region", Lookup({"east": "east", "west": "west"}))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    region: Mapped[str] = mapped_column(String(10))


# -- two sessions in one thread, against two plain Sessions -----------------------------

# what one step does: (session 0 or 1, action)
ACTIONS = ("write_east", "write_west", "write_both", "count", "commit", "rollback")
steps = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(ACTIONS)), max_size=10)


class Pair:
    """Two sessions, and what each step they take gives (a value, or the error's kind)."""

    def __init__(self, make: Callable[[], Session], plain: bool) -> None:
        self.sessions = [make(), make()]
        self.plain = plain
        self.next_id = [0, 1]  # each session its own ids: no row lock waits on a server

    def step(self, who: int, action: str) -> Any:
        session = self.sessions[who]
        try:
            if action == "count":
                return session.scalar(select(func.count()).select_from(Item))
            if action in ("commit", "rollback"):
                getattr(session, action)()
                return action
            regions = {"write_east": ["east"], "write_west": ["west"]}.get(action, ["east", "west"])
            for region in regions:
                self.next_id[who] += 2
                session.add(Item(id=self.next_id[who], region=region))
            session.flush()
            return "flushed"
        except sa.exc.OperationalError as error:  # SQLite: the file's write lock is taken
            session.rollback()
            return f"refused: {'locked' if 'locked' in str(error) else error}"

    def close(self) -> None:
        for session in self.sessions:
            session.rollback()
            session.close()


def run_pairs(sharded: Callable[[], Session], plain: Callable[[], Session], script: Any) -> None:
    sharded_pair, plain_pair = Pair(sharded, False), Pair(plain, True)
    try:
        for number, (who, action) in enumerate(script):
            got = sharded_pair.step(who, action)
            expected = plain_pair.step(who, action)
            assert got == expected, f"step {number} ({who}, {action}) of {script}"
    finally:
        sharded_pair.close()
        plain_pair.close()
    with sharded() as session, plain() as reference:
        stored = sorted(session.scalars(select(Item.id)))
        assert stored == sorted(reference.scalars(select(Item.id)))


def _emptied(make: Callable[[], Session]) -> None:
    with make() as session:
        session.execute(sa.delete(Item).execution_options(allow_multi_shard=True))
        session.commit()


def _one_database_maps(url: URL) -> Iterator[tuple[str, ShardMap]]:
    quick = {"connect_args": {"timeout": 0.05}} if url.get_backend_name() == "sqlite" else {}
    yield "tables", ShardMap.tables(url, SHARDS, **quick)
    if url.get_backend_name() != "sqlite":  # SQLite's schemas are files, each its own lock
        yield "schema", ShardMap.schemas(url, {"east": "iso_east", "west": "iso_west"})


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def two_session_worlds(
    request: pytest.FixtureRequest, make_database: Callable[[str], URL]
) -> Iterator[list[tuple[str, Callable[[], Session], Callable[[], Session]]]]:
    """(placement, sharded sessionmaker, plain sessionmaker of a reference database)."""
    backend = request.param
    worlds, engines = [], []
    for placement, shard_map in _one_database_maps(make_database(backend)):
        shard_map.create_all(Base.metadata)
        reference_url = make_database(backend)
        options = {"connect_args": {"timeout": 0.05}} if backend == "sqlite" else {}
        reference = sa.create_engine(reference_url, **options)
        Base.metadata.create_all(reference, tables=[Item.__table__])
        engines.append((shard_map, reference))
        worlds.append((placement, shard_map.sessionmaker(), sa.orm.sessionmaker(reference)))
    yield worlds
    for shard_map, reference in engines:
        shard_map.dispose()
        reference.dispose()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=steps)
def test_two_sessions_in_one_thread_behave_as_two_plain_sessions(
    two_session_worlds: list[Any], script: list[tuple[int, str]]
) -> None:
    for _placement, sharded, plain in two_session_worlds:
        _emptied(sharded)
        _emptied(plain)
        run_pairs(sharded, plain, script)


def test_a_helper_sessions_commit_keeps_nothing_the_outer_session_rolled_back(
    tmp_path: Path,
) -> None:
    # the example: an outer session flushes, a helper session commits its own
    # row, the outer one rolls back; only the helper's row stays
    shard_map = ShardMap.tables(f"sqlite:///{tmp_path}/one.db", SHARDS)
    shard_map.create_all(Base.metadata)
    Session = shard_map.sessionmaker()
    with Session() as outer:
        outer.add(Item(id=1, region="east"))
        outer.flush()
        outer.rollback()
        with Session() as helper:
            helper.add(Item(id=2, region="west"))
            helper.commit()
        outer.add(Item(id=3, region="east"))
        outer.flush()
        outer.rollback()
    with Session() as session:
        assert sorted(session.scalars(select(Item.id))) == [2]
    shard_map.dispose()


# -- many threads at once -------------------------------------------------------------


def _stress(shard_map: ShardMap, threads: int, rounds: int) -> None:
    """``threads`` threads, each with its own sessions: writes kept or rolled back, reads."""
    shard_map.create_all(Base.metadata)
    Session = shard_map.sessionmaker()
    kept: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        try:
            for round_ in range(rounds):
                ids = [number * 10_000 + round_ * 2 + offset for offset in (0, 1)]
                keep = round_ % 3 != 2
                while True:  # SQLite: one writer per file; a busy file is retried
                    with Session() as session:
                        try:
                            session.add_all(Item(id=id_, region=SHARDS[id_ % 2]) for id_ in ids)
                            session.flush()
                            seen = set(session.scalars(select(Item.id).where(Item.id.in_(ids))))
                            assert seen == set(ids)  # its own flushed rows, on both shards
                            if keep:
                                session.commit()
                            else:
                                session.rollback()
                            break
                        except sa.exc.OperationalError as error:
                            if "locked" not in str(error):
                                raise
                            session.rollback()
                if keep:
                    with lock:
                        kept.extend(ids)
        except BaseException as error:  # reported below, on the test's thread
            failures.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures[0]
    with Session() as session:
        stored = sorted(session.scalars(select(Item.id)))
    assert stored == sorted(kept)
    shard_map.dispose()


@pytest.mark.parametrize("placement", ["tables", "schema"])
def test_sixteen_threads_on_one_sqlite_file(tmp_path: Path, placement: str) -> None:
    # before: SingletonThreadPool (size 5) closed connections other threads were using
    url = f"sqlite:///{tmp_path}/one.db"
    shard_map = (
        ShardMap.tables(url, SHARDS, connect_args={"timeout": 30})
        if placement == "tables"
        else ShardMap.schemas(url, SHARDS, connect_args={"timeout": 30})
    )
    _stress(shard_map, threads=16, rounds=6)


@pytest.mark.postgresql
@pytest.mark.parametrize("placement", ["tables", "schema"])
def test_sixteen_threads_on_postgresql(postgresql_url: URL, placement: str) -> None:
    shard_map = (
        ShardMap.tables(postgresql_url, SHARDS, pool_size=16)
        if placement == "tables"
        else ShardMap.schemas(postgresql_url, {"east": "st_east", "west": "st_west"}, pool_size=16)
    )
    _stress(shard_map, threads=16, rounds=6)


# -- the connection budget: one connection per session per database ---------------------


@pytest.mark.postgresql
def test_a_twenty_shard_scatter_needs_one_connection(postgresql_url: URL) -> None:
    shards = [f"s{number:02}" for number in range(20)]

    class Wide(DeclarativeBase):
        pass

    class Row(Wide):
        __tablename__ = "rows"
        __sharding__ = ShardKey("shard", Lookup({name: name for name in shards}))
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        shard: Mapped[str] = mapped_column(String(10))

    # two connections in all, for two sessions scattering at once from two threads
    shard_map = ShardMap.tables(postgresql_url, shards, pool_size=2, max_overflow=0)
    shard_map.create_all(Wide.metadata)
    Session = shard_map.sessionmaker(shard_timeout=30)
    with Session() as session:
        session.add_all(Row(id=n, shard=shards[n % 20]) for n in range(100))
        session.commit()
    counts: list[int] = []

    def scatter() -> None:
        with Session() as session:
            for _ in range(5):
                counts.append(session.scalar(select(func.count()).select_from(Row)))

    workers = [threading.Thread(target=scatter) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert counts == [100] * 10
    assert shard_map.engine.pool.checkedout() == 0  # every session gave its connection back
    shard_map.dispose()


# -- asyncio --------------------------------------------------------------------------


def test_two_async_sessions_on_one_file_are_isolated(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/one.db"

    async def scenario() -> list[int]:
        shard_map = ShardMap.tables(url, SHARDS, connect_args={"timeout": 0.05})
        await shard_map.create_all_async(Base.metadata)
        Session = shard_map.async_sessionmaker()
        async with Session() as first, Session() as second:
            first.add(Item(id=1, region="east"))
            await first.flush()
            # the second session sees none of the first's uncommitted rows
            assert await second.scalar(select(func.count()).select_from(Item)) == 0
            await second.rollback()
            await first.rollback()
            second.add(Item(id=2, region="west"))
            await second.commit()
        async with Session() as session:
            stored = sorted(await session.scalars(select(Item.id)))
        await shard_map.dispose_async()
        return stored

    assert asyncio.run(scenario()) == [2]


# -- streams of several shards on the session's one connection --------------------------


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ],
)
@pytest.mark.parametrize("merge", ["merge", "concatenate"])
def test_streamed_shards_of_one_database_lose_no_row(
    make_database: Callable[[str], URL], server: str, merge: str
) -> None:
    # MariaDB holds one unread server-side result per connection: the shards' streams on
    # the session's one connection are read whole instead of losing each other's rows
    shard_map = ShardMap.tables(make_database(server), SHARDS)
    shard_map.create_all(Base.metadata)
    Session = shard_map.sessionmaker(cross_shard=merge)
    with Session() as session:
        session.add_all(Item(id=n, region=SHARDS[n % 2]) for n in range(300))
        session.commit()
    with Session() as session:
        statement = select(Item).order_by(Item.id).execution_options(yield_per=7)
        objects = [item.id for item in session.scalars(statement)]
        core = [
            row.id
            for row in session.execute(
                select(Item.__table__.c.id).order_by(Item.__table__.c.id),
                execution_options={"stream_results": True, "max_row_buffer": 5},
            )
        ]
    expected = list(range(300))
    assert sorted(objects) == expected and sorted(core) == expected
    if merge == "merge":
        assert objects == expected and core == expected
    shard_map.dispose()


# -- a fan-out's savepoints inside the session's nested transaction ---------------------


@pytest.mark.parametrize(
    "server",
    [
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ],
)
@given(reads=st.integers(1, 3), keep=st.booleans())
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_scatters_with_savepoints_keep_the_nested_transaction_intact(
    make_database: Callable[[str], URL], server: str, reads: int, keep: bool
) -> None:
    # a scatter with shard_timeout runs each shard in a SAVEPOINT; on the session's one
    # connection they must not take the name of the nested transaction's (MariaDB drops
    # the older savepoint of a name), so its rollback still undoes its rows
    shard_map = ShardMap.tables(make_database(server), SHARDS)
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker(shard_timeout=30)() as session:
        session.add(Item(id=1, region="east"))
        session.flush()
        nested = session.begin_nested()
        session.add_all([Item(id=2, region="east"), Item(id=3, region="west")])
        session.flush()
        for _ in range(reads):
            assert session.scalar(select(func.count()).select_from(Item)) == 3
        if keep:
            nested.commit()
        else:
            nested.rollback()
        session.commit()
    with shard_map.sessionmaker()() as session:
        assert sorted(session.scalars(select(Item.id))) == ([1, 2, 3] if keep else [1])
    shard_map.dispose()
