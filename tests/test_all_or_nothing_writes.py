"""A multi-shard UPDATE/DELETE that fails on one shard changes no shard (issue 14 §5).

Proved by difference: the same rows on the sharded session (two shards, every placement)
and on one reference database; the same statements on both.  After a statement refused
by a CHECK or a unique constraint on some shard (hypothesis picks the rows and so which
shards refuse), the session sees the reference's rows, and a following commit stores what
the reference's commit stores.  The backends differ, and the sharded session follows each:
after a failed statement PostgreSQL aborts the transaction until rollback (its COMMIT
rolls back), MariaDB and SQLite undo the statement and go on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import DatabaseFactory, drop_server_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import CheckConstraint, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shardalchemy import (
    ConfigurationError,
    Lookup,
    ShardKey,
    ShardMap,
    ShardQueryError,
    ShardTimeoutError,
)

REGIONS = {"r0": "a", "r1": "b", "r2": "a", "r3": "b"}
SHARDS = ("a", "b")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "aon_items"
    __sharding__ = ShardKey("region", Lookup(REGIONS))
    __table_args__ = (
        CheckConstraint("v >= 0", name="aon_v_not_negative"),
        UniqueConstraint("region", "code", name="aon_region_code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    region: Mapped[str] = mapped_column(String(10))
    code: Mapped[int] = mapped_column(Integer)
    v: Mapped[int] = mapped_column(Integer)


class World:
    """A sharded deployment and a reference database holding the same rows."""

    def __init__(self, factory: DatabaseFactory, backend: str, placement: str) -> None:
        self.backend = backend
        self.cleanups: list[Any] = []
        url = factory.create(backend)  # type: ignore[arg-type]
        self.url = url
        if placement == "database":
            self.urls = {"a": url, "b": factory.create(backend)}  # type: ignore[arg-type]
            self.shard_map = ShardMap.databases(self.urls)
        elif placement == "tables":
            self.urls = dict.fromkeys(SHARDS, url)
            self.shard_map = ShardMap.tables(url, SHARDS)
        else:
            self.urls = dict.fromkeys(SHARDS, url)
            if backend == "mariadb":
                names = {shard: f"{url.database}_{shard}" for shard in SHARDS}
                self.shard_map = ShardMap.schemas(url, names)
                for name in names.values():
                    self.cleanups.append(lambda n=name: drop_server_database("mariadb", n))
            else:
                self.shard_map = ShardMap.schemas(url, SHARDS)
        self.shard_map.create_all(Base.metadata)
        self.reference_engine = sa.create_engine(factory.create(backend))  # type: ignore[arg-type]
        Base.metadata.create_all(self.reference_engine)

    def session(self, **options: Any) -> Any:
        return self.shard_map.sessionmaker(**options)()

    def reference(self) -> Session:
        return Session(self.reference_engine)

    def load(self, rows: list[tuple[int, str, int, int]]) -> None:
        with self.session() as session:
            for shard in SHARDS:
                session.execute(delete(Item), bind_arguments={"shard_id": shard})
            session.add_all(Item(id=i, region=r, code=c, v=v) for i, r, c, v in rows)
            session.commit()
        with self.reference() as reference:
            reference.execute(delete(Item))
            reference.add_all(Item(id=i, region=r, code=c, v=v) for i, r, c, v in rows)
            reference.commit()

    def stored(self) -> tuple[list[Any], list[Any]]:
        """The committed rows: sharded (read by a new session), reference."""
        with self.session() as session:
            sharded = session.execute(select(Item.id, Item.code, Item.v).order_by(Item.id)).all()
        with self.reference() as reference:
            plain = reference.execute(select(Item.id, Item.code, Item.v).order_by(Item.id)).all()
        return sharded, plain

    def close(self) -> None:
        self.shard_map.dispose()
        self.reference_engine.dispose()
        for cleanup in self.cleanups:
            cleanup()


BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(sqlite_dir=tmp_path_factory.mktemp("aon"))
    yield factory
    factory.drop_all()


_worlds: dict[tuple[str, str], World] = {}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    from conftest import require_server

    if request.param != "sqlite":
        require_server(request.param)
    return str(request.param)


@pytest.fixture(params=["database", "schema", "tables"])
def world(factory: DatabaseFactory, backend: str, request: pytest.FixtureRequest) -> World:
    key = (backend, request.param)
    if key not in _worlds:
        _worlds[key] = World(factory, backend, request.param)
    return _worlds[key]


@pytest.fixture(scope="module", autouse=True)
def _close_worlds() -> Iterator[None]:
    yield
    for world in _worlds.values():
        world.close()
    _worlds.clear()


def rows_of(draw_values: list[tuple[int, int]]) -> list[tuple[int, str, int, int]]:
    """Rows with ids 1.., regions round-robin over both shards, codes unique per region."""
    return [(i + 1, f"r{i % 4}", 10 + i, v) for i, (v, _) in enumerate(draw_values)]


def run_both(world: World, statement: Any, *, before: Any = None) -> None:
    """``statement`` on both sides (after ``before``), then commit on both; same outcomes."""
    session, reference = world.session(), world.reference()
    try:
        if before is not None:
            session.execute(before)
            reference.execute(before)
        try:
            reference.execute(statement)
            reference_failed = None
        except sa.exc.DBAPIError as error:
            reference_failed = error
        try:
            session.execute(statement)
            sharded_failed = None
        except ShardQueryError as error:
            sharded_failed = error
            assert isinstance(error.__cause__, sa.exc.DBAPIError), error
            assert error.shard in SHARDS
            assert "no shard was changed" in str(error)
        assert (sharded_failed is None) == (reference_failed is None), (
            sharded_failed,
            reference_failed,
        )
        see = select(Item.id, Item.code, Item.v).order_by(Item.id)
        if reference_failed is not None and world.backend == "postgresql":
            # one PostgreSQL database: the transaction is aborted until rollback
            aborted = "current transaction is aborted"
            with pytest.raises(Exception, match=aborted):
                session.execute(see)
            with pytest.raises(Exception, match=aborted):
                reference.execute(see)
            # PostgreSQL wants a rollback (its COMMIT would roll back; the shards'
            # atomic commit refuses to commit an aborted shard instead)
            session.rollback()
            reference.rollback()
        else:
            assert session.execute(see).all() == reference.execute(see).all()
        session.commit()
        reference.commit()
    finally:
        session.close()
        reference.close()
    sharded, plain = world.stored()
    assert sharded == plain


values = st.lists(st.tuples(st.integers(0, 9), st.just(0)), min_size=2, max_size=8)
FAST = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(values=values, minus=st.integers(0, 9), orm=st.booleans())
def test_update_refused_by_a_check_on_some_shard(
    world: World, values: Any, minus: int, orm: bool
) -> None:
    rows = rows_of(values)
    world.load(rows)
    if orm:
        statement = update(Item).values(v=Item.v - minus)
        statement = statement.execution_options(synchronize_session="fetch")
    else:
        table = Item.__table__
        statement = update(table).values(v=table.c.v - minus)
    # an earlier statement of the transaction: kept on MariaDB/SQLite, lost on PostgreSQL
    before = update(Item.__table__).where(Item.__table__.c.id == 1).values(code=99)
    run_both(world, statement, before=before)


@FAST
@given(values=values, chosen=st.sets(st.integers(1, 8), min_size=1, max_size=4))
def test_update_refused_by_a_unique_constraint_on_some_shard(
    world: World, values: Any, chosen: set[int]
) -> None:
    world.load(rows_of(values))
    run_both(world, update(Item).where(Item.id.in_(sorted(chosen))).values(code=0))


@pytest.mark.parametrize("placement", ["database"])
@pytest.mark.parametrize("synchronize", ["evaluate", "fetch"])
def test_issue_example_and_the_sessions_objects(
    factory: DatabaseFactory, backend: str, placement: str, synchronize: str
) -> None:
    """The issue's example: ``update(Item).values(v=...)``, one shard refuses, nothing changes."""
    world = _worlds.get((backend, placement)) or World(factory, backend, placement)
    _worlds[(backend, placement)] = world
    world.load([(1, "r0", 1, 5), (2, "r1", 2, 1)])  # v - 3: shard a may, shard b refuses
    session = world.session()
    try:
        loaded = {item.id: item for item in session.scalars(select(Item))}
        with pytest.raises(ShardQueryError) as caught:
            session.execute(
                update(Item).values(v=Item.v - 3).execution_options(synchronize_session=synchronize)
            )
        assert caught.value.shard == "b"
        if backend == "postgresql":
            session.rollback()
        # the objects do not claim the rolled-back values
        assert {key: item.v for key, item in loaded.items()} == {1: 5, 2: 1}
        session.commit()
    finally:
        session.close()
    assert world.stored()[0] == [(1, 1, 5), (2, 2, 1)]


def test_delete_synchronized_then_rolled_back_keeps_the_objects(world: World) -> None:
    """A DELETE that fails after one shard's objects were synchronized away: they stay."""
    world.load([(1, "r0", 1, 5), (2, "r1", 2, 1)])
    session = world.session()
    try:
        loaded = {item.id: item for item in session.scalars(select(Item))}
        calls = []

        # the second shard's DELETE fails after the first shard's objects were synchronized
        @sa.event.listens_for(session, "do_orm_execute")
        def fail_second(orm_context: Any) -> None:
            shard = orm_context.bind_arguments.get("shard_id")
            if orm_context.is_delete and shard is not None:
                calls.append(shard)
                if len(calls) == 2:
                    raise RuntimeError("shard b lost")

        with pytest.raises(ShardQueryError):
            session.execute(delete(Item).execution_options(synchronize_session="evaluate"))
        sa.event.remove(session, "do_orm_execute", fail_second)
        if world.backend == "postgresql":
            session.rollback()
        assert all(sa.inspect(item).persistent for item in loaded.values())
        assert sorted(session.scalars(select(Item.id))) == [1, 2]
        session.commit()
    finally:
        session.close()
    assert [row[0] for row in world.stored()[0]] == [1, 2]


def test_in_list_batches_are_one_statement(world: World) -> None:
    """Several statements per shard (an IN list past the bind limit): undone together."""
    world.load([(1, "r0", 1, 5), (2, "r2", 2, 5), (3, "r1", 3, 5), (4, "r3", 4, 1)])
    statement = (
        update(Item)
        .where(Item.region.in_(["r0", "r2", "r1", "r3"]))
        .values(v=Item.v - 3)
        .execution_options(bind_limit=2, synchronize_session=False)
    )
    run_both(world, statement)
    # and one shard alone, several batches: the second batch's refusal undoes the first
    world.load([(1, "r0", 1, 5), (2, "r2", 2, 1)])
    run_both(
        world,
        update(Item)
        .where(Item.region.in_(["r0", "r2"]))
        .values(v=Item.v - 3)
        .execution_options(bind_limit=2, synchronize_session=False),
    )


def test_allow_partial_is_refused_for_a_write(world: World) -> None:
    world.load([(1, "r0", 1, 5), (2, "r1", 2, 5)])
    with world.session() as session, pytest.raises(ConfigurationError, match="all or nothing"):
        session.execute(update(Item).values(v=0).execution_options(allow_partial=True))
    # a session-wide allow_partial is for reads: its writes stay all or nothing
    with world.session(allow_partial=True) as session:
        with pytest.raises(ShardQueryError):
            session.execute(update(Item).values(v=Item.v - 6))
        if world.backend == "postgresql":
            session.rollback()
        session.commit()
    assert world.stored()[0] == [(1, 1, 5), (2, 2, 5)]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_shard_timing_out_on_a_lock_undoes_the_others(
    factory: DatabaseFactory, backend: str
) -> None:
    world = _worlds.get((backend, "database")) or World(factory, backend, "database")
    _worlds[(backend, "database")] = world
    world.load([(1, "r0", 1, 5), (2, "r1", 2, 5)])
    locker = sa.create_engine(world.urls["b"])
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with locker.begin() as connection:
            connection.execute(sa.text("UPDATE aon_items SET v = v WHERE id = 2"))
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    try:
        assert locked.wait(10)
        session = world.session()
        try:
            with pytest.raises(ShardTimeoutError):
                session.execute(update(Item).values(v=0).execution_options(shard_timeout=0.5))
            if backend == "postgresql":
                session.rollback()
            session.commit()
        finally:
            session.close()
    finally:
        release.set()
        thread.join()
        locker.dispose()
    assert world.stored()[0] == [(1, 1, 5), (2, 2, 5)]
